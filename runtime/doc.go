// Package runtime runs Castellan tasks: WebAssembly modules executed by wazero in a sandbox
// with no filesystem, no environment, no arguments and no sockets, whose only way out is the
// castellan_v1 host ABI (package hostfuncs).
//
// The unit of isolation is the job: every job runs in a fresh, anonymous instance that is
// discarded afterwards, so nothing a task leaves in memory, globals or tables can reach the
// next job. Mutually untrusted modules never share a wazero runtime (named modules in one
// runtime can import each other's exports), but every runtime shares one compilation cache,
// so a module is compiled to machine code once per digest and, with a cache directory, once
// per machine.
//
// Limits are enforced by the engine, not by the guest's good will:
//   - wall clock: a context deadline with RuntimeConfig.WithCloseOnContextDone(true); without
//     it a spinning guest ignores the deadline (and blocks the Go GC for the whole process);
//   - memory: a page limit per runtime; memory.grow past it fails;
//   - output, logs and HTTP calls: counted by the host functions;
//   - the call stack: bounded by wazero (a runaway recursion traps with "stack overflow").
//
// A Go guest spends about 3 ms starting its runtime in _initialize. A reactor's _initialize
// therefore runs once per loaded module, and every instance starts from a snapshot of the
// memory and globals it left (snapshot.go); what cannot be captured faithfully runs
// _initialize per instance as before. Each reactor module also keeps a pool of instances made
// ahead of time, before their job is known, sized from the arrival rate (pool.go); each is
// used for exactly one job and then closed, and the pool refills in the background.
//
// Outcomes are typed (package outcome): callers decide with errors.As or outcome.CodeOf.
package runtime

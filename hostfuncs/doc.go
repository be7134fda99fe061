// Package hostfuncs is the host side of the Castellan ABI, version 1 (docs/abi.md): the
// castellan_v1 host module through which a sandboxed task reads its input, writes its output,
// logs, and makes scoped HTTP requests, plus the import audit that decides which modules may
// load at all.
//
// The functions read and write the guest's own linear memory through wazero's bounds-checked
// api.Memory, copying at most once; there is no intermediate kernel module as in Extism. A
// host function never trusts a pointer: an out-of-bounds range ends the job as a trap.
//
// Per-job state travels in the context of the exported-function call (WithJob), so one
// compiled host module serves every instance of a runtime, and an instance that was created
// before its job was known (the pre-initialised pool) picks up the job when its entry runs.
//
// Policy violations do not return an error code to the guest: the host function records the
// fatal outcome and panics, which unwinds the guest at once. A task must not be able to probe
// the policy by trial and error, nor keep running after it tried something forbidden.
package hostfuncs

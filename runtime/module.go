package runtime

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/hostfuncs"
	"github.com/castellan-dev/castellan/outcome"
)

const i32 = api.ValueTypeI32

// Module is a compiled task module, ready to run jobs. It is safe for concurrent use: every
// job gets its own instance.
type Module struct {
	engine     *Engine
	cfg        ModuleConfig
	limits     Limits
	memLimit   uint64 // bytes of linear memory an instance may have: the limit less the tables' share
	digest     string
	rt         wazero.Runtime
	compiled   wazero.CompiledModule
	imports    []hostfuncs.Import
	initialize bool // reactor with _initialize
	command    bool // command module: the job runs in _start
	pool       *pool
	log        *zap.Logger
	ext        *extismModule // set for Extism plugins (extism.go); rt and compiled are nil then
	memCache   *memoryCache  // zeroed linear-memory buffers for the next instances
	// rw, when set, is the rewritten module jobs instantiate (snapshot.go): each instance
	// starts from img; with snapshot set, img is the state _initialize left, otherwise the
	// module's data, and the instance runs _initialize itself.
	rw       *rewrite
	img      *image
	snapshot bool

	baseConfigOnce sync.Once
	baseConfig     wazero.ModuleConfig

	closeOnce sync.Once
}

// Digest is the hex SHA-256 of the module binary.
func (m *Module) Digest() string { return m.digest }

// Imports lists the functions the module imports, for the security audit.
func (m *Module) Imports() []hostfuncs.Import { return append([]hostfuncs.Import(nil), m.imports...) }

// PoolReady returns how many pre-initialised instances are waiting for a job.
func (m *Module) PoolReady() int {
	if m.pool == nil {
		return 0
	}
	return len(m.pool.ready)
}

// PoolStats is what a module's pool of pre-initialised instances has done.
type PoolStats struct {
	Hits   int64 // jobs that found an instance ready
	Misses int64 // jobs that found the pool empty and instantiated on their own path
	Target int   // how many instances the pool aims to keep ready now
}

// PoolStats returns the pool's counters; zero without a pool.
func (m *Module) PoolStats() PoolStats {
	if m.pool == nil {
		return PoolStats{}
	}
	return PoolStats{Hits: m.pool.hits.Load(), Misses: m.pool.empty.Load(), Target: int(m.pool.target.Load())}
}

// Limits returns the effective limits, defaults applied.
func (m *Module) Limits() Limits { return m.limits }

// Close releases the module's instances and runtime. Jobs running on it fail.
func (m *Module) Close(ctx context.Context) error {
	m.engine.mu.Lock()
	delete(m.engine.mods, m)
	m.engine.mu.Unlock()
	return m.close(ctx)
}

func (m *Module) close(ctx context.Context) error {
	var err error
	m.closeOnce.Do(func() {
		if m.pool != nil {
			m.pool.stop(ctx)
		}
		if m.ext != nil {
			err = m.ext.close(ctx)
			return
		}
		err = m.rt.Close(ctx)
		if m.img != nil && m.img.file != nil {
			m.img.file.close()
		}
	})
	return err
}

// Job is one execution request.
type Job struct {
	ID    string
	Input []byte
	// Log is the logger for this job's lines. Optional; default is the engine's logger
	// tagged with task and job.
	Log *zap.Logger
}

// Result is how a job ended. Err is nil on success, otherwise an *outcome.Error; Output is
// only set on success (or when the output guard redacted it).
type Result struct {
	Output    []byte
	Err       error
	Duration  time.Duration
	HTTPCalls int
	Digest    string
	// Instantiate is the part of Duration spent creating the instance on the job's path:
	// near zero when a pre-initialised instance was ready.
	Instantiate time.Duration
}

// Code returns the outcome code of r.
func (r Result) Code() outcome.Code { return outcome.CodeOf(r.Err) }

// Run runs one job in a fresh instance and returns how it ended. It never panics on
// anything the guest does. The job's wall-clock limit starts here and covers instantiation
// when no pre-initialised instance is ready.
func (m *Module) Run(ctx context.Context, job Job) Result {
	start := time.Now()
	if m.ext != nil {
		return m.runExtism(ctx, job, start)
	}
	ctx, cancel := context.WithTimeout(ctx, m.limits.Timeout)
	defer cancel()

	log := job.Log
	if log == nil {
		log = m.log.With(zap.String("job", job.ID))
	}
	j := &hostfuncs.Job{
		ID:          job.ID,
		Task:        m.cfg.Name,
		Input:       job.Input,
		OutputLimit: m.limits.OutputBytes,
		HTTP:        m.cfg.HTTP,
		HTTPCalls:   m.limits.HTTPCalls,
		Log:         log,
		LogBytes:    m.limits.LogBytes,
	}
	if m.cfg.Guard != nil {
		j.Scrub = m.cfg.Guard
	}
	res := Result{Digest: m.digest}
	err := m.run(ctx, j, &res.Instantiate)
	res.HTTPCalls = j.Calls()
	res.Duration = time.Since(start)
	if err == nil {
		res.Output, err = m.guardOutput(j.Output())
	}
	if err != nil {
		res.Err = m.guardError(err)
		res.Output = nil
	}
	return res
}

func (m *Module) run(ctx context.Context, j *hostfuncs.Job, took *time.Duration) error {
	if m.command {
		// A command module runs the job in _start, so it cannot be prepared ahead; its whole
		// run counts as instantiation.
		start := time.Now()
		inst, err := m.instantiate(hostfuncs.WithJob(ctx, j), j, []string{"_start"})
		*took = time.Since(start)
		if inst != nil {
			defer inst.close(ctx)
		}
		j.CloseResponses()
		return m.classify(ctx, inst, j, 0, err)
	}
	start := time.Now()
	inst, err := m.take(ctx, j)
	*took = time.Since(start)
	if err != nil {
		return err
	}
	inst.stdio.bind(j)
	inst.sleep.set(ctx)
	var results []uint64
	err = m.safely("running", func() (err error) {
		results, err = inst.entry.Call(hostfuncs.WithJob(ctx, j))
		return err
	})
	// The call has returned: no guest code runs on this instance again, so its memory may
	// go back to the cache, before the pool refills and would want it.
	inst.close(ctx)
	if m.pool != nil {
		m.pool.jobDone()
	}
	j.CloseResponses()
	var rc uint32
	if len(results) == 1 {
		rc = api.DecodeU32(results[0])
	}
	return m.classify(ctx, inst, j, rc, err)
}

// take returns a pre-initialised instance, or makes one now.
func (m *Module) take(ctx context.Context, j *hostfuncs.Job) (*instance, error) {
	if m.pool != nil {
		if inst := m.pool.get(); inst != nil {
			return inst, nil
		}
	}
	inst, err := m.instantiate(ctx, nil, m.startFunctions())
	if err != nil {
		err = m.classify(ctx, inst, j, 0, err)
		if inst != nil {
			// No guest code runs once instantiate has returned: its memory (a mapping of
			// the image, see imagemap_linux.go) can go now rather than at a later GC.
			inst.close(ctx)
		}
		return nil, err
	}
	if m.pool != nil {
		m.pool.healthy()
	}
	return inst, nil
}

func (m *Module) startFunctions() []string {
	if m.initialize && m.rw == nil {
		return []string{"_initialize"}
	}
	return nil
}

// instance is one instantiation of the module, used for exactly one job.
type instance struct {
	mod   api.Module
	entry api.Function
	mem   *linearMemory
	stdio *stdio
	sleep *sleeper
}

// close closes the instance and releases its memory. Call it only when no guest call on it
// is running (see linearMemory); it is safe to call more than once.
func (i *instance) close(ctx context.Context) {
	if i.mod != nil {
		_ = i.mod.Close(ctx)
		i.mod = nil
	}
	if i.mem != nil {
		i.mem.release()
	}
}

// moduleConfig is the part of every instance's configuration that does not change between
// instances. Built once: each With call copies the whole configuration.
func (m *Module) moduleConfig() wazero.ModuleConfig {
	m.baseConfigOnce.Do(func() {
		m.baseConfig = wazero.NewModuleConfig().
			WithName(""). // anonymous: nothing else in the runtime can import it
			WithSysWalltime().
			WithSysNanotime().
			WithRandSource(rand.Reader)
	})
	return m.baseConfig
}

// instantiate creates a fresh anonymous instance and runs its start functions. j, when set,
// receives the stdout/stderr lines (command modules); otherwise they go to the module log
// until a job is bound.
func (m *Module) instantiate(ctx context.Context, j *hostfuncs.Job, start []string) (*instance, error) {
	inst := &instance{
		mem:   &linearMemory{limit: m.memLimit, cache: m.memCache, img: m.img},
		stdio: newStdio(m.log, m.limits.LogBytes),
		sleep: newSleeper(ctx),
	}
	if j != nil {
		inst.stdio.bind(j)
	}
	mc := m.moduleConfig().
		WithStartFunctions(start...).
		WithNanosleep(inst.sleep.nanosleep).
		WithStdout(inst.stdio.stream("stdout")).
		WithStderr(inst.stdio.stream("stderr"))
	var mod api.Module
	err := m.safely("instantiating", func() (err error) {
		mod, err = m.rt.InstantiateModule(experimental.WithMemoryAllocator(ctx, inst.mem), m.compiled, mc)
		if err != nil || m.rw == nil {
			return err
		}
		if err := m.img.apply(mod, m.rw.globals); err != nil {
			return outcome.Wrap(outcome.Internal, err, "the sandbox failed while instantiating the task")
		}
		if !m.snapshot {
			_, err = mod.ExportedFunction("_initialize").Call(ctx)
		}
		return err
	})
	inst.stdio.flush()
	if mod != nil {
		inst.mod = mod
	}
	if err != nil {
		return inst, err
	}
	if !m.command {
		inst.entry = mod.ExportedFunction(m.cfg.Entry)
	}
	return inst, nil
}

// classify turns what a native instance did into an outcome.
func (m *Module) classify(ctx context.Context, inst *instance, j *hostfuncs.Job, rc uint32, err error) error {
	e := ending{fatal: j.Fatal(), rc: rc, err: err}
	if inst != nil {
		inst.stdio.flush()
		e.refused = inst.mem.refused
	}
	e.failMsg, e.failed = j.Failure()
	return m.decide(ctx, e)
}

// ending is what is known when a guest call returns, however it ran (native or Extism).
type ending struct {
	fatal   error  // recorded by a host function that ended the job
	refused bool   // a memory.grow past the limit was refused
	failMsg string // the task's own failure message
	failed  bool
	rc      uint32 // the entry's return value
	err     error  // what the call returned
}

// decide turns an ending into an outcome. The order matters: a fatal condition recorded by a
// host function wins over the trap it caused; the job's deadline wins over the exit it
// forced; a refused memory.grow explains the trap or exit that followed it.
func (m *Module) decide(ctx context.Context, e ending) error {
	if e.fatal != nil {
		return e.fatal
	}
	err := e.err
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case sys.ExitCodeDeadlineExceeded:
			return outcome.Wrap(outcome.Timeout, context.DeadlineExceeded, "task exceeded its %s time limit", m.limits.Timeout)
		case sys.ExitCodeContextCanceled:
			return outcome.Wrap(outcome.Cancelled, context.Canceled, "job cancelled")
		case 0:
			err = nil // proc_exit(0): a normal end
		}
	}
	if err == nil && ctx.Err() != nil {
		// The deadline passed while the last host call returned; the result is not trusted.
		return m.ctxOutcome(ctx)
	}
	if err != nil {
		var oe *outcome.Error
		switch {
		case errors.As(err, &oe):
			return oe
		case e.refused:
			return outcome.Wrap(outcome.MemoryLimit, err, "task exceeded its memory limit of %d pages (%d MiB)",
				m.limits.MemoryPages, m.limits.MemoryPages/16)
		case ctx.Err() != nil:
			return m.ctxOutcome(ctx)
		case exit != nil:
			msg := fmt.Sprintf("task exited with code %d", exit.ExitCode())
			if e.failed {
				msg = e.failMsg
			}
			return outcome.Wrap(outcome.TaskError, err, "%s", msg)
		case isLinkError(err):
			return outcome.Wrap(outcome.ModuleRejected, err, "task %q: %s", m.cfg.Name, firstLine(err))
		default:
			return outcome.Wrap(outcome.Trap, err, "%s", firstLine(err))
		}
	}
	if e.failed {
		return outcome.New(outcome.TaskError, "%s", e.failMsg)
	}
	if e.rc != 0 {
		return outcome.New(outcome.TaskError, "task returned %d", e.rc)
	}
	return nil
}

func (m *Module) ctxOutcome(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return outcome.Wrap(outcome.Cancelled, context.Canceled, "job cancelled")
	}
	return outcome.Wrap(outcome.Timeout, context.DeadlineExceeded, "task exceeded its %s time limit", m.limits.Timeout)
}

func isLinkError(err error) bool {
	s := err.Error()
	return strings.Contains(s, "import") && (strings.Contains(s, "not instantiated") || strings.Contains(s, "not exported"))
}

func firstLine(err error) string {
	s := err.Error()
	s, _, _ = strings.Cut(s, "\n")
	return strings.TrimSuffix(s, " (recovered by wazero)")
}

func joinLines(ss []string) string { return strings.Join(ss, "\n  ") }

// guardOutput is the output guard: no credential value leaves the worker in a result.
func (m *Module) guardOutput(out []byte) ([]byte, error) {
	g := m.cfg.Guard
	if g == nil || !g.Contains(out) {
		return out, nil
	}
	if m.cfg.RedactOutput {
		m.log.Warn("credential value redacted from task output")
		return g.Redact(out), nil
	}
	return nil, outcome.New(outcome.SecretInOutput, "the output contained a credential value and was discarded")
}

// guardError applies the output guard to the message of a failure, which is sent to the
// control plane as well.
func (m *Module) guardError(err error) error {
	g := m.cfg.Guard
	var oe *outcome.Error
	if g == nil || !errors.As(err, &oe) || !g.Contains([]byte(oe.Msg)) {
		return err
	}
	if m.cfg.RedactOutput {
		return &outcome.Error{Code: oe.Code, Msg: g.RedactString(oe.Msg), Err: oe.Err}
	}
	return outcome.New(outcome.SecretInOutput, "the task's error message contained a credential value and was discarded")
}

// safely runs f, a guest call or an instantiation, and turns a panic that escapes it into an
// internal failure of this job: no task can stop the worker. wazero recovers panics of guest
// code and host functions itself; what reaches here is a fault in the engine or the go-sdk
// (wazero panics, for one, when an allocator cannot give a memory its minimum). The log
// records the panic's type and stack, never its value, which may hold guest bytes.
func (m *Module) safely(what string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			m.log.Error("recovered a panic in the sandbox", zap.String("while", what),
				zap.String("panic_type", fmt.Sprintf("%T", r)), zap.ByteString("stack", debug.Stack()))
			err = outcome.New(outcome.Internal, "the sandbox failed while %s the task", what)
		}
	}()
	return f()
}

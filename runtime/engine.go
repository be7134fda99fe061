package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/tetratelabs/wabin/wasm"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/hostfuncs"
	"github.com/castellan-dev/castellan/internal/options"
	"github.com/castellan-dev/castellan/outcome"
)

// Config configures an Engine.
type Config struct {
	// CacheDir is where compiled machine code is kept between processes. Optional; default
	// is an in-memory cache shared by the Engine's modules only.
	CacheDir string
	// Logger receives engine and task logs. Optional; default is no logging.
	Logger *zap.Logger
	// Load bounds what loading one module may cost. Optional; zero fields take the defaults
	// documented on LoadLimits.
	Load LoadLimits
}

// DefaultPoolSize is how many pre-initialised instances a reactor keeps ready unless
// ModuleConfig says otherwise.
const DefaultPoolSize = 2

// compilationWorkers is how many goroutines compile one module. More than one makes wazero
// watch the compile deadline; two keeps one load from taking every core of a small machine.
const compilationWorkers = 2

// ErrClosed is returned by Load on an Engine that was closed.
const ErrClosed = engineError("runtime: engine closed")

type engineError string

func (e engineError) Error() string { return string(e) }

// Engine compiles and runs task modules. It is safe for concurrent use.
type Engine struct {
	cache wazero.CompilationCache
	log   *zap.Logger
	load  LoadLimits
	// busy counts Loads under way and compilations Load gave up on at their deadline: Close
	// waits for them before closing the cache they use.
	busy sync.WaitGroup

	mu     sync.Mutex
	closed bool
	mods   map[*Module]struct{}

	// copyImages makes snapshot instances copy the image even where they could map it, so
	// that tests cover both ways. Set only before the first Load.
	copyImages bool
}

// NewEngine returns an Engine. Close it to release every module and the cache.
func NewEngine(cfg Config) (*Engine, error) {
	if err := options.CheckNotNegative(cfg); err != nil {
		return nil, err
	}
	ll, err := cfg.Load.withDefaults()
	if err != nil {
		return nil, err
	}
	e := &Engine{log: cfg.Logger, load: ll, mods: map[*Module]struct{}{}}
	if e.log == nil {
		e.log = zap.NewNop()
	}
	if cfg.CacheDir != "" {
		c, err := wazero.NewCompilationCacheWithDir(cfg.CacheDir)
		if err != nil {
			return nil, fmt.Errorf("compilation cache %s: %w", cfg.CacheDir, err)
		}
		e.cache = c
	} else {
		e.cache = wazero.NewCompilationCache()
	}
	return e, nil
}

// Close closes every module loaded by e, then the cache. It waits for Loads under way and
// for compilations Load abandoned at their deadline, until ctx is done. Load on a closed
// Engine returns ErrClosed.
func (e *Engine) Close(ctx context.Context) error {
	e.mu.Lock()
	e.closed = true
	mods := e.mods
	e.mods = map[*Module]struct{}{}
	e.mu.Unlock()
	var errs []error
	for m := range mods {
		errs = append(errs, m.close(ctx))
	}
	idle := make(chan struct{})
	go func() { e.busy.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-ctx.Done():
		return errors.Join(append(errs, fmt.Errorf("closing the engine: loads still running: %w", ctx.Err()))...)
	}
	errs = append(errs, e.cache.Close(ctx))
	return errors.Join(errs...)
}

// enter registers a Load, or reports that e is closed.
func (e *Engine) enter() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.busy.Add(1)
	return true
}

// compile compiles wasm in rt within the engine's compile deadline. wazero's compiler does
// not watch its context, so it runs on a goroutine of its own; when Load stops waiting (the
// deadline, or ctx), that goroutine closes rt once the compilation ends. The bool reports
// whether rt is still the caller's to close.
func (e *Engine) compile(ctx context.Context, name string, rt wazero.Runtime, wasm []byte) (wazero.CompiledModule, bool, error) {
	type result struct {
		c       wazero.CompiledModule
		err     error
		expired bool // the compilation stopped at the deadline
	}
	// With more than one compilation worker, wazero checks its context between functions
	// (experimental.WithCompilationWorkers): past the deadline, the compilation stops once the
	// function it is on is done, bounded by LoadLimits.FunctionBodyBytes.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.load.CompileTimeout)
	cctx = experimental.WithCompilationWorkers(cctx, compilationWorkers)
	done := make(chan result, 1)
	e.busy.Add(1)
	go func() {
		defer e.busy.Done()
		defer cancel()
		c, err := rt.CompileModule(cctx, wasm)
		done <- result{c, err, err != nil && cctx.Err() != nil}
	}()
	t := time.NewTimer(e.load.CompileTimeout)
	defer t.Stop()
	abandon := func() {
		cancel()
		e.busy.Add(1)
		go func() {
			defer e.busy.Done()
			<-done
			_ = rt.Close(context.Background())
		}()
	}
	select {
	case r := <-done:
		if r.expired {
			return nil, true, outcome.New(outcome.ModuleRejected, "task %q: compiling the module took longer than the limit of %s", name, e.load.CompileTimeout)
		}
		if r.err != nil {
			return nil, true, outcome.Wrap(outcome.ModuleRejected, r.err, "task %q: invalid module: %v", name, firstLine(r.err))
		}
		return r.c, true, nil
	case <-t.C:
		abandon()
		return nil, false, outcome.New(outcome.ModuleRejected, "task %q: compiling the module took longer than the limit of %s", name, e.load.CompileTimeout)
	case <-ctx.Done():
		abandon()
		return nil, false, outcome.Wrap(outcome.Cancelled, ctx.Err(), "task %q: loading cancelled", name)
	}
}

// Limits bound one job. Every field is optional: zero takes the default named on it, and a
// negative value makes Load fail with an error naming the field. Where a limit can allow
// nothing at all, that is a separate No… field, never a magic number (docs/embedding.md).
type Limits struct {
	// MemoryPages bounds the job's linear memory, in 64 KiB pages. Optional; default
	// DefaultMemoryPages (64 MiB); at most MaxMemoryPages.
	MemoryPages uint32
	// Timeout bounds the wall clock of the whole job. Optional; default DefaultTimeout.
	Timeout time.Duration
	// OutputBytes bounds the job's output. Optional; default DefaultOutputBytes.
	OutputBytes int64
	// NoOutput allows no output at all (OutputBytes must then be 0). Optional; default off.
	NoOutput bool
	// HTTPCalls bounds the job's http_request calls. Optional; default DefaultHTTPCalls.
	HTTPCalls int
	// NoHTTPCalls allows no http_request call at all (HTTPCalls must then be 0). Optional;
	// default off.
	NoHTTPCalls bool
	// LogBytes bounds the task's log lines plus its captured stdout and stderr. Optional;
	// default DefaultLogBytes.
	LogBytes int64
	// NoLogs keeps no log line and no stdout or stderr at all (LogBytes must then be 0).
	// Optional; default off.
	NoLogs bool
}

const (
	DefaultMemoryPages = 1024
	DefaultTimeout     = 30 * time.Second
	DefaultOutputBytes = 1 << 20
	DefaultHTTPCalls   = 100
	DefaultLogBytes    = 64 << 10
	// MaxMemoryPages keeps well below wazero's 65536-page ceiling (wazero #2505).
	MaxMemoryPages = 16384
)

// withDefaults returns the effective limits: every field as it applies, the No… fields kept
// (with their limit at 0), so that Module.Limits given back to Load means the same.
func (l Limits) withDefaults() (Limits, error) {
	if err := options.CheckNotNegative(l); err != nil {
		return l, err
	}
	if l.MemoryPages == 0 {
		l.MemoryPages = DefaultMemoryPages
	}
	if l.Timeout == 0 {
		l.Timeout = DefaultTimeout
	}
	var err error
	l.OutputBytes, err = limitOrNone(l.OutputBytes, l.NoOutput, DefaultOutputBytes, "OutputBytes", "NoOutput")
	if err != nil {
		return l, err
	}
	l.HTTPCalls, err = limitOrNone(l.HTTPCalls, l.NoHTTPCalls, DefaultHTTPCalls, "HTTPCalls", "NoHTTPCalls")
	if err != nil {
		return l, err
	}
	l.LogBytes, err = limitOrNone(l.LogBytes, l.NoLogs, DefaultLogBytes, "LogBytes", "NoLogs")
	return l, err
}

// limitOrNone applies a limit's default, or its No… field.
func limitOrNone[T int | int64](v T, none bool, def T, field, noField string) (T, error) {
	switch {
	case none && v != 0:
		return v, fmt.Errorf("runtime.Limits.%s is %d and %s is set; set one of them", field, v, noField)
	case none:
		return 0, nil
	case v == 0:
		return def, nil
	}
	return v, nil
}

// ModuleConfig describes a task module to load.
type ModuleConfig struct {
	// Name is the task name, used in logs and errors.
	Name string
	// Wasm is the module binary.
	Wasm []byte
	// SHA256, if set, pins the module: a binary with another digest is rejected.
	SHA256 string
	// Entry is the exported function a reactor runs per job. Optional; default "run".
	Entry string
	// Limits bound each job.
	Limits Limits
	// PoolSize is how many pre-initialised instances a reactor keeps ready at least.
	// Optional; default DefaultPoolSize; negative is refused (NoPool keeps none). Under load
	// the pool grows with the arrival rate, within 64 MiB of instances per module (pool.go),
	// and shrinks back when jobs stop arriving.
	PoolSize int
	// NoPool keeps no instance ready: every job instantiates on its own path (for a module
	// that runs once). PoolSize must then be 0. Optional; default off.
	NoPool bool
	// HTTP performs the task's scoped requests. Optional; nil means the task has no endpoint.
	HTTP hostfuncs.HTTPDoer
	// Guard holds every credential value the worker knows, for the output guard and log
	// scrubbing. Optional only in tests of modules that never see a credential.
	Guard Guard
	// RedactOutput makes the output guard redact credential values instead of failing the
	// job with secret_in_output.
	RedactOutput bool
	// NoSnapshot makes every instance of a reactor run _initialize, as without snapshots
	// (snapshot.go); for comparisons and for guests that need a fresh _initialize per job.
	NoSnapshot bool
}

// Guard finds and removes credential values; *redact.Set implements it.
type Guard interface {
	Contains([]byte) bool
	Redact([]byte) []byte
	RedactString(string) string
}

// Load validates, compiles and prepares a module. Errors are *outcome.Error with code
// ModuleRejected when the module itself is at fault (bad digest, invalid binary, imports
// outside the ABI, missing entry or memory export, a load limit exceeded); ErrClosed when e
// is closed.
func (e *Engine) Load(ctx context.Context, cfg ModuleConfig) (*Module, error) {
	if !e.enter() {
		return nil, ErrClosed
	}
	defer e.busy.Done()
	sum := sha256.Sum256(cfg.Wasm)
	digest := hex.EncodeToString(sum[:])
	if cfg.SHA256 != "" && cfg.SHA256 != digest {
		return nil, outcome.New(outcome.ModuleRejected, "task %q: module sha256 is %s, policy pins %s", cfg.Name, digest, cfg.SHA256)
	}
	if err := options.CheckNotNegative(cfg); err != nil {
		return nil, fmt.Errorf("task %q: %w", cfg.Name, err)
	}
	lim, err := cfg.Limits.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("task %q: %w", cfg.Name, err)
	}
	if lim.MemoryPages > MaxMemoryPages {
		return nil, outcome.New(outcome.ModuleRejected, "task %q: memory limit of %d pages exceeds the maximum of %d", cfg.Name, lim.MemoryPages, MaxMemoryPages)
	}
	if cfg.Entry == "" {
		cfg.Entry = "run"
	}
	switch {
	case cfg.NoPool && cfg.PoolSize != 0:
		return nil, fmt.Errorf("task %q: runtime.ModuleConfig.PoolSize is %d and NoPool is set; set one of them", cfg.Name, cfg.PoolSize)
	case cfg.PoolSize == 0 && !cfg.NoPool:
		cfg.PoolSize = DefaultPoolSize
	}
	ins := inspect(cfg.Wasm, e.load)
	switch {
	case len(ins.problems) > 0:
		return nil, outcome.New(outcome.ModuleRejected, "task %q: module exceeds the load limits or the ABI:\n  %s", cfg.Name, joinLines(ins.problems))
	case ins.invalid != nil:
		return nil, outcome.Wrap(outcome.ModuleRejected, ins.invalid, "task %q: invalid module: %v", cfg.Name, firstLine(ins.invalid))
	}
	budget := uint64(lim.MemoryPages) * 65536
	if ins.tableBytes >= budget {
		return nil, outcome.New(outcome.ModuleRejected, "task %q: the module's tables count %d bytes against a memory limit of %d bytes (%d bytes per element)",
			cfg.Name, ins.tableBytes, budget, TableElementBytes)
	}

	// One runtime per module: untrusted modules never share a namespace. The compiler
	// engine is chosen where supported (NewRuntimeConfig), the interpreter elsewhere.
	rc := wazero.NewRuntimeConfig().
		WithCompilationCache(e.cache).
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(lim.MemoryPages + 1) // see linearMemory
	rt := wazero.NewRuntimeWithConfig(ctx, rc)
	fail := func(err error) (*Module, error) {
		_ = rt.Close(ctx)
		return nil, err
	}
	if err := hostfuncs.Instantiate(ctx, rt); err != nil {
		return fail(outcome.Wrap(outcome.Internal, err, "task %q: host modules", cfg.Name))
	}
	var rw *rewrite
	if !cfg.NoSnapshot && wantsRewrite(ins.mod, cfg.Entry) {
		var why string
		if rw, why = rewriteModule(ins.mod); rw == nil {
			e.log.Info("module runs without a snapshot", zap.String("task", cfg.Name), zap.String("reason", why))
		}
	}
	var compiled wazero.CompiledModule
	var ours bool
	if rw != nil {
		compiled, ours, err = e.compile(ctx, cfg.Name, rt, rw.wasm)
		if err != nil && ours && ctx.Err() == nil && strings.Contains(err.Error(), "invalid module") {
			// The rewrite must never be why a module is refused: the original is compiled
			// instead, and its instances run _initialize.
			e.log.Warn("module runs without a snapshot", zap.String("task", cfg.Name),
				zap.String("reason", "the rewritten module does not compile: "+firstLine(err)))
			rw = nil
		}
	}
	if rw == nil {
		compiled, ours, err = e.compile(ctx, cfg.Name, rt, ins.wasm)
	}
	if err != nil {
		if ours {
			_ = rt.Close(ctx)
		}
		return nil, err
	}
	if usesExtism(compiled) { // an Extism plugin: runs through the go-sdk (extism.go)
		defer rt.Close(ctx)
		return e.loadExtism(ctx, cfg, lim, digest, compiled, ins)
	}
	if bad := hostfuncs.CheckImports(rt, compiled); len(bad) > 0 {
		return fail(outcome.New(outcome.ModuleRejected, "task %q: module imports what the sandbox does not offer:\n  %s",
			cfg.Name, joinLines(bad)))
	}
	mem, ok := compiled.ExportedMemories()["memory"]
	if !ok {
		return fail(outcome.New(outcome.ModuleRejected, "task %q: module must export its memory as \"memory\"", cfg.Name))
	}
	if mem.Min() > lim.MemoryPages {
		return fail(outcome.New(outcome.ModuleRejected, "task %q: module needs %d memory pages at start, the task's limit is %d",
			cfg.Name, mem.Min(), lim.MemoryPages))
	}
	if uint64(mem.Min())*65536+ins.tableBytes > budget {
		return fail(outcome.New(outcome.ModuleRejected, "task %q: module needs %d memory pages and %d bytes of tables at start, the task's limit is %d pages",
			cfg.Name, mem.Min(), ins.tableBytes, lim.MemoryPages))
	}
	exports := compiled.ExportedFunctions()
	if err := checkInitialize(cfg.Name, exports); err != nil {
		return fail(err)
	}
	m := &Module{
		engine:   e,
		cfg:      cfg,
		limits:   lim,
		digest:   digest,
		rt:       rt,
		compiled: compiled,
		imports:  hostfuncs.ImportsOf(compiled),
		log:      e.log.With(zap.String("task", cfg.Name)),
		memLimit: budget - ins.tableBytes,
	}
	if d, ok := exports[cfg.Entry]; ok {
		if len(d.ParamTypes()) != 0 || len(d.ResultTypes()) != 1 || d.ResultTypes()[0] != i32 {
			return fail(outcome.New(outcome.ModuleRejected, "task %q: entry %q must have type () -> i32", cfg.Name, cfg.Entry))
		}
		_, m.initialize = exports["_initialize"]
	} else if _, ok := exports["_start"]; ok {
		m.command = true
	} else {
		return fail(outcome.New(outcome.ModuleRejected, "task %q: module exports neither the entry %q nor _start", cfg.Name, cfg.Entry))
	}
	maxBuffer := uint64(maxCachedBuffer)
	if rw != nil && !m.command && m.initialize {
		m.rw = rw
		start := time.Now()
		im, why := m.capture(ctx, rc, rw)
		if im == nil {
			m.img = rw.data
			m.log.Warn("module runs without a snapshot: each instance runs _initialize", zap.String("reason", why))
		} else {
			m.img, m.snapshot = im, true
			rw.data = nil // only instances that run _initialize start from it
			mapped := false
			if !e.copyImages {
				if im.file, err = newImageFile(im); err != nil {
					m.log.Info("snapshot instances copy the image (no copy-on-write mapping)", zap.String("reason", err.Error()))
				}
				mapped = im.file != nil
			}
			m.log.Info("snapshot of _initialize taken", zap.Uint32("pages", im.pages), zap.Int("bytes", im.bytes()),
				zap.Int("ranges", len(im.ranges)), zap.Bool("mapped", mapped), zap.Duration("took", time.Since(start)))
		}
		maxBuffer = max(maxBuffer, 2*m.img.size())
	}
	m.memCache = newMemoryCache(maxCachedMemory, maxBuffer)
	if !m.command && cfg.PoolSize > 0 {
		size := uint64(max(mem.Min(), 1)) * 65536
		if m.img != nil {
			size = m.img.size()
		}
		m.pool = newPool(m, cfg.PoolSize, size)
	}

	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		_ = m.close(ctx)
		return nil, ErrClosed
	}
	e.mods[m] = struct{}{}
	e.mu.Unlock()
	if m.pool != nil {
		m.pool.start()
	}
	return m, nil
}

// wantsRewrite reports whether mod is a reactor with _initialize that image instantiation
// applies to (snapshot.go): not an Extism plugin, whose instances the go-sdk makes.
func wantsRewrite(mod *wasm.Module, entry string) bool {
	if mod == nil {
		return false
	}
	for _, imp := range mod.ImportSection {
		if imp.Module == ExtismEnvModule {
			return false
		}
	}
	var init, run bool
	for _, e := range mod.ExportSection {
		if e.Type == wasm.ExternTypeFunc {
			init = init || e.Name == "_initialize"
			run = run || e.Name == entry
		}
	}
	return init && run
}

// checkInitialize refuses an _initialize export of any type but () -> (): it would fail every
// job's instantiation instead of the load.
func checkInitialize(name string, exports map[string]api.FunctionDefinition) error {
	if d, ok := exports["_initialize"]; ok && (len(d.ParamTypes()) != 0 || len(d.ResultTypes()) != 0) {
		return outcome.New(outcome.ModuleRejected, "task %q: _initialize must have type () -> ()", name)
	}
	return nil
}

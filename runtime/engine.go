package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/tetratelabs/wazero"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/hostfuncs"
	"github.com/castellan-dev/castellan/outcome"
)

// Config configures an Engine.
type Config struct {
	// CacheDir is where compiled machine code is kept between processes. Optional; default
	// is an in-memory cache shared by the Engine's modules only.
	CacheDir string
	// Logger receives engine and task logs. Optional; default is no logging.
	Logger *zap.Logger
}

// Engine compiles and runs task modules. It is safe for concurrent use.
type Engine struct {
	cache wazero.CompilationCache
	log   *zap.Logger

	mu     sync.Mutex
	closed bool
	mods   map[*Module]struct{}
}

// NewEngine returns an Engine. Close it to release every module and the cache.
func NewEngine(cfg Config) (*Engine, error) {
	e := &Engine{log: cfg.Logger, mods: map[*Module]struct{}{}}
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

// Close closes every module loaded by e, then the cache.
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
	errs = append(errs, e.cache.Close(ctx))
	return errors.Join(errs...)
}

// Limits bound one job. Zero values take the defaults below; a negative OutputBytes,
// HTTPCalls or LogBytes means none at all.
type Limits struct {
	MemoryPages uint32        // 64 KiB pages; default 1024 (64 MiB)
	Timeout     time.Duration // wall clock for the whole job; default 30s
	OutputBytes int64         // default 1 MiB
	HTTPCalls   int           // default 100; a negative value means none
	LogBytes    int64         // task log lines plus captured stdout/stderr; default 64 KiB
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

func (l Limits) withDefaults() Limits {
	if l.MemoryPages == 0 {
		l.MemoryPages = DefaultMemoryPages
	}
	if l.Timeout <= 0 {
		l.Timeout = DefaultTimeout
	}
	switch {
	case l.OutputBytes == 0:
		l.OutputBytes = DefaultOutputBytes
	case l.OutputBytes < 0:
		l.OutputBytes = 0
	}
	switch {
	case l.HTTPCalls == 0:
		l.HTTPCalls = DefaultHTTPCalls
	case l.HTTPCalls < 0:
		l.HTTPCalls = 0
	}
	switch {
	case l.LogBytes == 0:
		l.LogBytes = DefaultLogBytes
	case l.LogBytes < 0:
		l.LogBytes = 0
	}
	return l
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
	// PoolSize is how many pre-initialised instances a reactor keeps ready. Optional;
	// default 2; negative disables the pool (every job instantiates on its own path).
	PoolSize int
	// HTTP performs the task's scoped requests. Optional; nil means the task has no endpoint.
	HTTP hostfuncs.HTTPDoer
	// Guard holds every credential value the worker knows, for the output guard and log
	// scrubbing. Optional only in tests of modules that never see a credential.
	Guard Guard
	// RedactOutput makes the output guard redact credential values instead of failing the
	// job with secret_in_output.
	RedactOutput bool
}

// Guard finds and removes credential values; *redact.Set implements it.
type Guard interface {
	Contains([]byte) bool
	Redact([]byte) []byte
	RedactString(string) string
}

// Load validates, compiles and prepares a module. Errors are *outcome.Error with code
// ModuleRejected when the module itself is at fault (bad digest, invalid binary, imports
// outside the ABI, missing entry or memory export).
func (e *Engine) Load(ctx context.Context, cfg ModuleConfig) (*Module, error) {
	sum := sha256.Sum256(cfg.Wasm)
	digest := hex.EncodeToString(sum[:])
	if cfg.SHA256 != "" && cfg.SHA256 != digest {
		return nil, outcome.New(outcome.ModuleRejected, "task %q: module sha256 is %s, policy pins %s", cfg.Name, digest, cfg.SHA256)
	}
	lim := cfg.Limits.withDefaults()
	if lim.MemoryPages > MaxMemoryPages {
		return nil, outcome.New(outcome.ModuleRejected, "task %q: memory limit of %d pages exceeds the maximum of %d", cfg.Name, lim.MemoryPages, MaxMemoryPages)
	}
	if cfg.Entry == "" {
		cfg.Entry = "run"
	}
	if cfg.PoolSize == 0 {
		cfg.PoolSize = 2
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
	compiled, err := rt.CompileModule(ctx, cfg.Wasm)
	if err != nil {
		return fail(outcome.Wrap(outcome.ModuleRejected, err, "task %q: invalid module: %v", cfg.Name, firstLine(err)))
	}
	if usesExtism(compiled) { // an Extism plugin: runs through the go-sdk (extism.go)
		defer rt.Close(ctx)
		return e.loadExtism(ctx, cfg, lim, digest, compiled)
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
	exports := compiled.ExportedFunctions()
	m := &Module{
		engine:   e,
		cfg:      cfg,
		limits:   lim,
		digest:   digest,
		rt:       rt,
		compiled: compiled,
		imports:  hostfuncs.ImportsOf(compiled),
		log:      e.log.With(zap.String("task", cfg.Name)),
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
	m.memCache = newMemoryCache(maxCachedMemory)
	if !m.command && cfg.PoolSize > 0 {
		m.pool = newPool(m, cfg.PoolSize)
	}

	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		_ = m.close(ctx)
		return nil, errors.New("engine closed")
	}
	e.mods[m] = struct{}{}
	e.mu.Unlock()
	if m.pool != nil {
		m.pool.start()
	}
	return m, nil
}

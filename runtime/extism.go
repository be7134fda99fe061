package runtime

// Extism compatibility: a module that imports extism:host/env is an Extism plugin, and runs
// through github.com/extism/go-sdk under the same policy and limits as a native module.
//
// Extism's own escape hatches stay closed. The manifest never carries AllowedHosts,
// AllowedPaths or Config; a plugin that imports Extism's http_request is rejected at load
// (in extism/go-sdk v1.7.1 its host matching is a hostname glob, `*example.com` matching
// `attackerexample.com`, it follows redirects to other hosts, and it has no credential hook); WASI
// is the same subset native modules get; Extism's log functions and the guest's stdout and
// stderr go to the job's bounded, redacted log rather than the process's. The only way out
// is castellan_http_request in extism:host/user, which goes through the same egress
// gateway (policy, credential injection, redaction, audit) as castellan_v1.http_request.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	extism "github.com/extism/go-sdk"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/hostfuncs"
	"github.com/castellan-dev/castellan/outcome"
)

const (
	// ExtismEnvModule is the Extism kernel's import module; importing it makes a module an
	// Extism plugin.
	ExtismEnvModule = "extism:host/env"
	// ExtismUserModule is where Castellan offers its host functions to Extism plugins.
	ExtismUserModule = "extism:host/user"
	// ExtismHTTPRequest is Castellan's scoped HTTP function for Extism plugins:
	// castellan_http_request(request i64) -> i64, both Extism memory offsets to JSON.
	ExtismHTTPRequest = "castellan_http_request"
	// MaxExtismResponseBody bounds the body castellan_http_request reads into kernel memory,
	// on top of the endpoint's own max_response_bytes.
	MaxExtismResponseBody = 16 << 20
	// extismVarBytes bounds Extism's per-instance var store (vars never outlive a job).
	extismVarBytes = 64 << 10
)

// extismForbidden are kernel imports refused at load, with the reason shown to the author.
var extismForbidden = map[string]string{
	"http_request":     "Extism's HTTP is not offered (no credential scoping); use extism:host/user castellan_http_request",
	"http_status_code": "Extism's HTTP is not offered; castellan_http_request returns the status in its response",
	"http_headers":     "Extism's HTTP is not offered; castellan_http_request returns the headers in its response",
}

// usesExtism reports whether m imports the Extism kernel.
func usesExtism(m wazero.CompiledModule) bool {
	for _, d := range m.ImportedFunctions() {
		if mod, _, _ := d.Import(); mod == ExtismEnvModule {
			return true
		}
	}
	return false
}

// extismImportProblems lists the imports of an Extism plugin that the sandbox does not offer.
func extismImportProblems(m wazero.CompiledModule) []string {
	allowedWASI := map[string]bool{}
	for _, n := range hostfuncs.WASIFunctions() {
		allowedWASI[n] = true
	}
	var bad []string
	for _, imp := range hostfuncs.ImportsOf(m) {
		switch imp.Module {
		case ExtismEnvModule:
			if why, ok := extismForbidden[imp.Name]; ok {
				bad = append(bad, imp.String()+": "+why)
			}
		case ExtismUserModule:
			if imp.Name != ExtismHTTPRequest {
				bad = append(bad, imp.String()+": no such function in "+ExtismUserModule+" (Castellan offers only "+ExtismHTTPRequest+")")
			}
		case wasi_snapshot_preview1.ModuleName:
			if !allowedWASI[imp.Name] {
				bad = append(bad, imp.String()+": WASI function not offered (no filesystem, sockets or process control)")
			}
		default:
			bad = append(bad, imp.String()+": unknown import module")
		}
	}
	for _, d := range m.ImportedMemories() {
		mod, name, _ := d.Import()
		bad = append(bad, fmt.Sprintf("memory %s.%s: modules must define their own memory", mod, name))
	}
	return bad
}

var extismLogLevel sync.Once

// extismModule is the Extism side of a Module.
type extismModule struct {
	plugin *extism.CompiledPlugin
	wasi   bool
}

// loadExtism compiles an Extism plugin. compiled is the module as compiled for the import
// check; it belongs to a runtime the caller closes.
func (e *Engine) loadExtism(ctx context.Context, cfg ModuleConfig, lim Limits, digest string, compiled wazero.CompiledModule, ins inspected) (*Module, error) {
	if _, ok := os.LookupEnv("EXTISM_ENABLE_WASI_OUTPUT"); ok {
		// The go-sdk would send the plugin's stdout and stderr to the worker's own, unredacted.
		return nil, outcome.New(outcome.Internal, "task %q: EXTISM_ENABLE_WASI_OUTPUT is set in the worker's environment; unset it: Extism plugins' stdout and stderr must go to the redacted job log", cfg.Name)
	}
	if bad := extismImportProblems(compiled); len(bad) > 0 {
		return nil, outcome.New(outcome.ModuleRejected, "task %q: Extism plugin imports what the sandbox does not offer:\n  %s", cfg.Name, joinLines(bad))
	}
	if err := checkInitialize(cfg.Name, compiled.ExportedFunctions()); err != nil {
		return nil, err
	}
	d, ok := compiled.ExportedFunctions()[cfg.Entry]
	if !ok {
		return nil, outcome.New(outcome.ModuleRejected, "task %q: Extism plugin does not export the entry %q", cfg.Name, cfg.Entry)
	}
	if len(d.ParamTypes()) != 0 || len(d.ResultTypes()) > 1 || (len(d.ResultTypes()) == 1 && d.ResultTypes()[0] != i32) {
		return nil, outcome.New(outcome.ModuleRejected, "task %q: entry %q must have type () -> i32 or () -> ()", cfg.Name, cfg.Entry)
	}
	var wasi bool
	for _, imp := range hostfuncs.ImportsOf(compiled) {
		wasi = wasi || imp.Module == wasi_snapshot_preview1.ModuleName
	}

	// Extism's log functions only reach a plugin's logger at or above this process-wide
	// level; every Castellan plugin instance gets a logger that writes to its job's log.
	// Info, not lower: the go-sdk logs its own debug lines before a logger can be set, to
	// the process's standard logger. A plugin's log_debug and log_trace lines are dropped.
	extismLogLevel.Do(func() { extism.SetLogLevel(extism.LogLevelInfo) })

	manifest := extism.Manifest{
		Wasm: []extism.Wasm{extism.WasmData{Data: ins.wasm, Name: "main"}},
		// Every field set explicitly: a zero MaxVarBytes would make var_set panic, and a
		// MaxPages of zero would lift the memory limit (extism/go-sdk v1.7.1 manifest.go). The runtime is
		// configured one page above the limit, as for native modules (see linearMemory).
		Memory: &extism.ManifestMemory{
			MaxPages:             lim.MemoryPages + 1,
			MaxHttpResponseBytes: 0, // Extism's HTTP is refused at load anyway
			MaxVarBytes:          extismVarBytes,
		},
		Timeout: uint64(lim.Timeout / time.Millisecond),
		// AllowedHosts, AllowedPaths and Config stay empty: see the file comment.
	}
	rc := wazero.NewRuntimeConfig().
		WithCompilationCache(e.cache).
		WithCloseOnContextDone(true).
		WithMemoryLimitPages(lim.MemoryPages + 1)
	plugin, err := extism.NewCompiledPlugin(ctx, manifest, extism.PluginConfig{
		RuntimeConfig: rc,
		EnableWasi:    wasi,
	}, []extism.HostFunction{extismHTTPFunction()})
	if err != nil {
		return nil, outcome.Wrap(outcome.ModuleRejected, err, "task %q: Extism plugin: %v", cfg.Name, firstLine(err))
	}
	m := &Module{
		engine:   e,
		cfg:      cfg,
		limits:   lim,
		digest:   digest,
		imports:  hostfuncs.ImportsOf(compiled),
		log:      e.log.With(zap.String("task", cfg.Name)),
		ext:      &extismModule{plugin: plugin, wasi: wasi},
		memLimit: uint64(lim.MemoryPages)*65536 - ins.tableBytes,
	}
	// One trial instance, so that a link error (an import with the wrong signature) is a
	// load-time rejection rather than every job's failure.
	p, err := plugin.Instance(ctx, extism.PluginInstanceConfig{ModuleConfig: wazero.NewModuleConfig()})
	if err != nil {
		_ = plugin.Close(ctx)
		return nil, outcome.Wrap(outcome.ModuleRejected, err, "task %q: Extism plugin: %v", cfg.Name, firstLine(err))
	}
	_ = p.Close(ctx)

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		_ = plugin.Close(ctx)
		return nil, ErrClosed
	}
	e.mods[m] = struct{}{}
	return m, nil
}

func (x *extismModule) close(ctx context.Context) error { return x.plugin.Close(ctx) }

// extismJob is the per-job state the Extism host function and logger see.
type extismJob struct {
	*hostfuncs.Job // identity, HTTP, budgets, log
	calls          int
	fatal          *outcome.Error
}

type extismJobKey struct{}

// terminate records a fatal outcome and unwinds the guest, as hostfuncs does.
func (j *extismJob) terminate(err *outcome.Error) {
	if j.fatal == nil {
		j.fatal = err
	}
	panic(err)
}

// sharedMemory is the memory allocator of one Extism instance: the plugin's memory and the
// kernel's memory share the task's page budget, so a plugin cannot double its memory by
// allocating through the kernel.
//
// wazero panics when an allocator cannot give a memory its minimum at instantiation, and a
// limit between the plugin's minimum and the plugin's plus the kernel's lets that happen (each
// fits alone). The first allocation of each memory is therefore always given, and marks the
// instance short: callExtism then ends the job as memory_limit before any guest code runs. The
// overshoot is bounded by the memories' minimums, which the load checked against the limit.
type sharedMemory struct {
	limit   uint64
	mems    []*trackedMemory
	refused bool
	short   bool // a memory's minimum did not fit: the instance must not run
}

type trackedMemory struct {
	owner   *sharedMemory
	buf     []byte
	started bool
}

var _ experimental.MemoryAllocator = (*sharedMemory)(nil)

func (s *sharedMemory) used() uint64 {
	var n uint64
	for _, m := range s.mems {
		n += uint64(len(m.buf))
	}
	return n
}

func (s *sharedMemory) Allocate(capacity, _ uint64) experimental.LinearMemory {
	m := &trackedMemory{owner: s}
	s.mems = append(s.mems, m)
	return m
}

func (m *trackedMemory) Reallocate(size uint64) []byte {
	s := m.owner
	first := !m.started
	m.started = true
	if s.used()-uint64(len(m.buf))+size > s.limit {
		s.refused = true
		if !first {
			return nil
		}
		s.short = true
	}
	if size <= uint64(cap(m.buf)) {
		m.buf = m.buf[:size]
		return m.buf
	}
	nb := make([]byte, size, max(size, 2*uint64(cap(m.buf))))
	copy(nb, m.buf)
	m.buf = nb
	return nb
}

func (m *trackedMemory) Free() { m.buf = nil }

// runExtism runs one job on a fresh plugin instance and returns its Result, through the
// same output guard as native modules.
func (m *Module) runExtism(ctx context.Context, job Job, start time.Time) Result {
	ctx, cancel := context.WithTimeout(ctx, m.limits.Timeout)
	defer cancel()
	log := job.Log
	if log == nil {
		log = m.log.With(zap.String("job", job.ID))
	}
	j := &extismJob{Job: &hostfuncs.Job{
		ID: job.ID, Task: m.cfg.Name, Input: job.Input, OutputLimit: m.limits.OutputBytes,
		HTTP: m.cfg.HTTP, HTTPCalls: m.limits.HTTPCalls, Log: log, LogBytes: m.limits.LogBytes,
	}}
	if m.cfg.Guard != nil {
		j.Scrub = m.cfg.Guard
	}
	res := Result{Digest: m.digest}
	out, err := m.callExtism(ctx, j)
	res.HTTPCalls = j.calls
	res.Duration = time.Since(start)
	if err == nil {
		res.Output, err = m.guardOutput(out)
	}
	if err != nil {
		res.Err = m.guardError(err)
		res.Output = nil
	}
	return res
}

func (m *Module) callExtism(ctx context.Context, j *extismJob) ([]byte, error) {
	mem := &sharedMemory{limit: m.memLimit}
	st := newStdio(m.log, m.limits.LogBytes)
	st.bind(j.Job)
	mc := wazero.NewModuleConfig().
		WithSysWalltime().
		WithSysNanotime().
		WithNanosleep(newSleeper(ctx).nanosleep). // see sleeper
		WithRandSource(rand.Reader).
		WithStdout(st.stream("stdout")).
		WithStderr(st.stream("stderr"))
	ictx := experimental.WithMemoryAllocator(ctx, mem)
	var p *extism.Plugin
	err := m.safely("instantiating", func() (err error) {
		p, err = m.ext.plugin.Instance(ictx, extism.PluginInstanceConfig{ModuleConfig: mc})
		return err
	})
	if err == nil && mem.short {
		_ = p.Close(context.Background())
		return nil, outcome.New(outcome.MemoryLimit, "task exceeded its memory limit of %d pages (%d MiB): the plugin and the Extism kernel need more at start",
			m.limits.MemoryPages, m.limits.MemoryPages/16)
	}
	if err != nil {
		if mem.refused {
			return nil, outcome.Wrap(outcome.MemoryLimit, err, "task exceeded its memory limit of %d pages (%d MiB)", m.limits.MemoryPages, m.limits.MemoryPages/16)
		}
		return nil, m.classifyExtism(ctx, j, mem, st, 0, err)
	}
	defer p.Close(context.Background())
	p.SetLogger(func(level extism.LogLevel, msg string) {
		lv := 1
		switch level {
		case extism.LogLevelTrace, extism.LogLevelDebug:
			lv = 0
		case extism.LogLevelWarn:
			lv = 2
		case extism.LogLevelError:
			lv = 3
		}
		j.WriteLog(lv, "extism log", []byte(msg))
	})
	cctx := context.WithValue(ictx, extismJobKey{}, j)
	// The go-sdk writes the input into kernel memory without checking that the kernel could
	// allocate it: input that does not fit reaches the plugin empty. Write it once here, where
	// a failed allocation shows (offset 0); the call below resets and writes it again.
	if len(j.Input) > 0 {
		var off uint64
		err = m.safely("writing the input of", func() (err error) {
			off, err = p.SetInputWithContext(ictx, j.Input)
			return err
		})
		if err != nil {
			return nil, m.classifyExtism(ctx, j, mem, st, 0, err)
		}
		if off == 0 {
			return nil, outcome.New(outcome.MemoryLimit, "task exceeded its memory limit of %d pages (%d MiB): its input of %d bytes does not fit",
				m.limits.MemoryPages, m.limits.MemoryPages/16, len(j.Input))
		}
	}
	var rc uint32
	var out []byte
	err = m.safely("running", func() (err error) {
		rc, out, err = p.CallWithContext(cctx, m.cfg.Entry, j.Input)
		return err
	})
	var oe *outcome.Error
	if errors.As(err, &oe) && oe.Code == outcome.Internal && j.fatal == nil && !mem.refused {
		return nil, err // the recovered panic of safely
	}
	if err == nil || ctx.Err() != nil || j.fatal != nil {
		return m.checkOutput(out, m.classifyExtism(ctx, j, mem, st, rc, err))
	}
	// CallWithContext reports the plugin's error_set message as its error; anything else is
	// the Wasm failing (a trap, an exit, a kernel allocation refused).
	if msg := p.GetError(); msg != "" && err.Error() == msg {
		if len(msg) > hostfuncs.MaxFailMessage {
			msg = msg[:hostfuncs.MaxFailMessage]
		}
		st.flush()
		return nil, outcome.New(outcome.TaskError, "%s", msg)
	}
	return nil, m.classifyExtism(ctx, j, mem, st, rc, err)
}

// checkOutput applies the output limit to a successful result.
func (m *Module) checkOutput(out []byte, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > m.limits.OutputBytes {
		return nil, outcome.New(outcome.OutputTooLarge, "task output of %d bytes exceeds its limit of %d", len(out), m.limits.OutputBytes)
	}
	return out, nil
}

// classifyExtism is classify for a plugin call.
func (m *Module) classifyExtism(ctx context.Context, j *extismJob, mem *sharedMemory, st *stdio, rc uint32, err error) error {
	st.flush()
	e := ending{refused: mem.refused, rc: rc, err: err}
	if j.fatal != nil { // j.fatal is a *outcome.Error: a nil one must stay a nil error
		e.fatal = j.fatal
	}
	return m.decide(ctx, e)
}

// ExtismRequest is the JSON a plugin passes to castellan_http_request.
type ExtismRequest struct {
	Endpoint string            `json:"endpoint"`
	Method   string            `json:"method"`
	Path     string            `json:"path"` // path relative to the endpoint, optional "?query"
	Headers  map[string]string `json:"headers,omitempty"`
	Body     []byte            `json:"body,omitempty"` // base64 in JSON
}

// ExtismResponse is the JSON castellan_http_request returns. Error is set (and Status 0)
// when the endpoint could not be reached ("E_UPSTREAM") or the body exceeded its limit
// ("E_TOO_LARGE"); a request the policy does not allow ends the job instead.
type ExtismResponse struct {
	Status  int               `json:"status"`
	Headers map[string]string `json:"headers,omitempty"`
	Body    []byte            `json:"body,omitempty"` // base64 in JSON
	Error   string            `json:"error,omitempty"`
}

func extismHTTPFunction() extism.HostFunction {
	f := extism.NewHostFunctionWithStack(ExtismHTTPRequest, extismHTTP,
		[]extism.ValueType{extism.ValueTypeI64}, []extism.ValueType{extism.ValueTypeI64})
	f.SetNamespace(ExtismUserModule)
	return f
}

// extismHTTP is castellan_http_request. Policy violations end the job as for castellan_v1;
// a malformed request JSON is denied too (the plugin cannot tell the two apart).
func extismHTTP(ctx context.Context, p *extism.CurrentPlugin, stack []uint64) {
	j, _ := ctx.Value(extismJobKey{}).(*extismJob)
	if j == nil {
		panic(outcome.New(outcome.Internal, "castellan_http_request called outside a job"))
	}
	raw, err := p.ReadBytes(stack[0])
	if err != nil {
		j.terminate(outcome.Wrap(outcome.Trap, err, "castellan_http_request: reading the request from Extism memory: %v", err))
	}
	j.calls++
	if j.calls > j.HTTPCalls {
		j.terminate(outcome.New(outcome.CallBudgetExceeded, "more than %d HTTP calls", j.HTTPCalls))
	}
	var req ExtismRequest
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		j.terminate(outcome.New(outcome.Denied, "castellan_http_request: request is not the documented JSON object: %s", firstLine(err)))
	}
	if j.HTTP == nil {
		j.terminate(outcome.New(outcome.Denied, "endpoint %q is not granted to task %q", clipName(req.Endpoint), j.Task))
	}
	h := http.Header{}
	for k, v := range req.Headers {
		h.Add(k, v)
	}
	resp, err := j.HTTP.Do(ctx, egress.JobRef{Task: j.Task, Job: j.ID}, egress.Request{
		Endpoint: req.Endpoint, Method: req.Method, Target: req.Path, Header: h, Body: req.Body,
	})
	var out ExtismResponse
	if err != nil {
		if ctx.Err() != nil {
			j.terminate(jobCtxOutcome(ctx, "job ended during an HTTP call"))
		}
		var up *egress.UpstreamError
		if !errors.As(err, &up) {
			var oe *outcome.Error
			if !errors.As(err, &oe) {
				oe = outcome.Wrap(outcome.Internal, err, "http request failed on the host")
			}
			j.terminate(oe)
		}
		j.Log.Info("http request failed upstream", zap.String("endpoint", req.Endpoint), zap.Error(err))
		out.Error = "E_UPSTREAM"
	} else {
		body, rerr := io.ReadAll(io.LimitReader(resp.Body, MaxExtismResponseBody+1))
		_ = resp.Body.Close()
		switch {
		case errors.Is(rerr, egress.ErrResponseTooLarge) || len(body) > MaxExtismResponseBody:
			out.Error = "E_TOO_LARGE"
		case rerr != nil:
			if ctx.Err() != nil {
				j.terminate(jobCtxOutcome(ctx, "job ended while reading a response"))
			}
			out.Error = "E_UPSTREAM"
		default:
			out.Status = resp.Status
			out.Body = body
			out.Headers = map[string]string{}
			keys := make([]string, 0, len(resp.Header))
			for k := range resp.Header {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				out.Headers[k] = strings.Join(resp.Header[k], ", ")
			}
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		j.terminate(outcome.Wrap(outcome.Internal, err, "encoding the HTTP response for the plugin"))
	}
	off, err := p.WriteBytes(b)
	if err != nil {
		// The kernel could not allocate: the plugin is out of memory.
		j.terminate(outcome.Wrap(outcome.MemoryLimit, err, "task exceeded its memory limit receiving an HTTP response of %d bytes", len(b)))
	}
	stack[0] = off
}

func clipName(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	return strings.ToValidUTF8(s, "?")
}

func jobCtxOutcome(ctx context.Context, msg string) *outcome.Error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return outcome.Wrap(outcome.Cancelled, ctx.Err(), "%s", msg)
	}
	return outcome.Wrap(outcome.Timeout, ctx.Err(), "%s", msg)
}

// Package tasks turns a policy (and, optionally, a plugins directory) into runnable tasks: for
// each task it reads and pins the module, compiles it in its own sandbox runtime, and gives it
// a gateway holding only the endpoints the policy grants it, the credential store, and the
// output guard. The CLI's run command and the worker both go through it, so a task behaves
// the same wherever it runs.
//
// With a plugins directory the set is dynamic: plugins are added, replaced and removed while
// jobs run (plugins.go). Each task name maps to one current version, swapped atomically;
// a job holds a reference to the version it started on, and a replaced version is closed
// only when its last job ends. So a job always runs one complete version, old or new. The
// worker runs each job with RunVersion, on exactly the version its approval names, or not at
// all when that version is not the one loaded.
package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/plugins"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/runtime"
	"github.com/castellan-dev/castellan/secrets"
)

// Options configure a Set.
type Options struct {
	Policy *policy.Policy
	Engine *runtime.Engine
	// Secrets resolves credentials; Redactor learns every value it loads.
	Secrets  *secrets.Store
	Redactor *redact.Set
	Log      *zap.Logger
	// Audit receives one event per HTTP call. Optional; default logs it.
	Audit func(egress.Event)
	// Only limits loading to these tasks. Optional; default all. With PluginsDir set it
	// also limits which plugins are served.
	Only []string
	// PoolSize is passed to each module (runtime.ModuleConfig.PoolSize). Optional; default
	// runtime.DefaultPoolSize.
	PoolSize int
	// NoPool keeps no instance ready in any module (runtime.ModuleConfig.NoPool), for a
	// process that runs one job. Optional; default off.
	NoPool bool
	// PluginsDir, when set, serves every plugin in this directory (docs/plugins.md) besides
	// the policy's tasks with a module, and watches it: plugins added, replaced or removed
	// take effect without a restart, and Updates delivers each new catalog. Optional.
	PluginsDir string
	// Debounce is how long a plugin's files must be quiet before a change is loaded.
	// Optional; default plugins.DefaultDebounce (250ms).
	Debounce time.Duration
}

// Task is one loaded version of a task.
type Task struct {
	Name string
	// Policy is the effective grant: for a plugin, the policy's grant narrowed to what its
	// manifest requests, with Module, Entry and Version from the plugin.
	Policy *policy.Task
	Module *runtime.Module
	// Def is what the control plane's catalog shows for this task.
	Def api.TaskDef
	// Plugin is the plugin this version came from; nil for a task with a module in the policy.
	Plugin *plugins.Plugin

	output *jsonschema.Schema // Def.OutputSchema compiled; nil without one

	gateway *egress.Gateway // nil without endpoints; its pooled connections close with the version
}

// close releases the version's module and its gateway's pooled connections, which nothing
// else would close once the version is retired.
func (t *Task) close(ctx context.Context) error {
	if t.gateway != nil {
		t.gateway.CloseIdleConnections()
	}
	return t.Module.Close(ctx)
}

// slot is a task version in the set with the jobs running on it.
type slot struct {
	task    *Task
	running int
	retired bool // replaced or removed: close when running drops to 0
}

// Set is the tasks loaded from one policy (and plugins directory). It is safe for concurrent
// use.
type Set struct {
	opts  Options
	log   *zap.Logger
	audit func(egress.Event)

	mu     sync.Mutex
	tasks  map[string]*slot
	closed bool

	// Plugins only (plugins.go).
	trust   *plugins.Trust
	updates chan []api.TaskDef
	stop    context.CancelFunc
	done    chan struct{}
}

// Load loads the tasks of opts.Policy that have a module, and the plugins of opts.PluginsDir
// when set. A policy task that fails to load makes Load fail: a worker with a broken policy
// should not start half-armed. A plugin that fails to load is logged and skipped (and its
// previous version, on a later reload, keeps serving): plugins come and go while the worker
// runs, and one bad file must not stop the others.
func Load(ctx context.Context, opts Options) (*Set, error) {
	log := opts.Log
	if log == nil {
		log = zap.NewNop()
	}
	opts.Log = log
	audit := opts.Audit
	if audit == nil {
		audit = LogAudit(log.Named("audit"))
	}
	s := &Set{opts: opts, log: log, audit: audit, tasks: map[string]*slot{}}
	names := opts.Only
	if len(names) == 0 {
		names = opts.Policy.TaskNames()
	}
	for _, name := range names {
		pt, ok := opts.Policy.Tasks[name]
		if !ok {
			if opts.PluginsDir != "" {
				continue // may be a plugin without a grant; the plugin loader reports it
			}
			s.Close(ctx)
			return nil, fmt.Errorf("task %q is not defined in policy %s (defined: %v)", name, opts.Policy.Path, opts.Policy.TaskNames())
		}
		if pt.IsPluginGrant() {
			if opts.PluginsDir == "" && len(opts.Only) > 0 {
				s.Close(ctx)
				return nil, fmt.Errorf("task %q has no module in policy %s: it is a grant for a plugin; pass the plugins directory (--plugins DIR)", name, opts.Policy.Path)
			}
			continue
		}
		t, err := s.build(ctx, pt, nil)
		if err != nil {
			s.Close(ctx)
			return nil, err
		}
		s.tasks[name] = &slot{task: t}
	}
	if opts.PluginsDir != "" {
		if err := s.startPlugins(ctx); err != nil {
			s.Close(ctx)
			return nil, err
		}
	}
	return s, nil
}

// build compiles one task version. wasm is the module when the caller already read it (a
// plugin, whose bytes were verified); nil reads pt.Module.
func (s *Set) build(ctx context.Context, pt *policy.Task, p *plugins.Plugin) (*Task, error) {
	opts := s.opts
	var wasm []byte
	if p != nil {
		wasm = p.Wasm
	} else {
		var err error
		if wasm, err = os.ReadFile(pt.Module); err != nil {
			return nil, outcome.Wrap(outcome.ModuleRejected, err, "task %q: read module: %v", pt.Name, err)
		}
	}
	def, err := taskDef(pt, p)
	if err != nil {
		return nil, err
	}
	// Compiled by the package the control planes use, so a schema they would refuse stops
	// the task here, and the worker checks outputs against the very schema it publishes.
	var output *jsonschema.Schema
	for _, sc := range []struct {
		field string
		raw   json.RawMessage
		dst   **jsonschema.Schema
	}{{"input_schema", def.InputSchema, nil}, {"output_schema", def.OutputSchema, &output}} {
		if len(sc.raw) == 0 {
			continue
		}
		compiled, err := schema.Compile(sc.raw)
		if err != nil {
			return nil, outcome.Wrap(outcome.ModuleRejected, err, "task %q: %s is not a valid JSON Schema: %v", pt.Name, sc.field, err)
		}
		if sc.dst != nil {
			*sc.dst = compiled
		}
	}
	cfg := runtime.ModuleConfig{
		Name:         pt.Name,
		Wasm:         wasm,
		SHA256:       pt.SHA256,
		Entry:        pt.Entry,
		PoolSize:     opts.PoolSize,
		NoPool:       opts.NoPool,
		RedactOutput: pt.OnSecretInOutput == "redact",
		Limits: runtime.Limits{
			MemoryPages: pt.Limits.MemoryPages,
			Timeout:     pt.Limits.Timeout,
			OutputBytes: pt.Limits.OutputBytes,
			HTTPCalls:   pt.Limits.HTTPCalls,
			LogBytes:    pt.Limits.LogBytes,
			// In the policy zero means zero; in runtime.Limits zero means "default".
			NoOutput:    pt.Limits.OutputBytes == 0,
			NoHTTPCalls: pt.Limits.HTTPCalls == 0,
			NoLogs:      pt.Limits.LogBytes == 0,
		},
	}
	if opts.Redactor != nil { // a nil *redact.Set in the interface would not be a nil Guard
		cfg.Guard = opts.Redactor
	}
	if len(pt.Endpoints) > 0 {
		eps := make([]*egress.Endpoint, 0, len(pt.Endpoints))
		for _, name := range pt.Endpoints {
			eps = append(eps, opts.Policy.Endpoints[name])
		}
		var creds egress.Credentials
		if opts.Secrets != nil {
			creds = opts.Secrets
		}
		gw, err := egress.New(egress.Config{Endpoints: eps, Credentials: creds, Redactor: opts.Redactor, Audit: s.audit})
		if err != nil {
			return nil, fmt.Errorf("task %q: %w", pt.Name, err)
		}
		cfg.HTTP = gw
	}
	m, err := opts.Engine.Load(ctx, cfg)
	if err != nil {
		return nil, err
	}
	t := &Task{Name: pt.Name, Policy: pt, Module: m, Def: def, Plugin: p, output: output}
	if gw, ok := cfg.HTTP.(*egress.Gateway); ok {
		t.gateway = gw
	}
	if p != nil {
		// The runtime refuses imports outside the ABI; what a grant allows is checked here.
		if bad := plugins.CheckImports(m.Imports(), pt.Endpoints); len(bad) > 0 {
			_ = t.close(ctx)
			return nil, outcome.New(outcome.ModuleRejected, "plugin %q (%s): forbidden imports:\n  %s", pt.Name, p.Dir, joinLines(bad))
		}
	}
	s.log.Info("task loaded", zap.String("task", pt.Name), zap.String("version", pt.Version),
		zap.String("sha256", m.Digest()), zap.Strings("endpoints", pt.Endpoints))
	return t, nil
}

// defaultInputSchema accepts any JSON object, as docs/policy.md says.
var defaultInputSchema = json.RawMessage(`{"type":"object"}`)

func taskDef(pt *policy.Task, p *plugins.Plugin) (api.TaskDef, error) {
	def := api.TaskDef{Name: pt.Name, Version: pt.Version, Title: pt.Title, Description: pt.Description,
		InputSchema: defaultInputSchema, Annotations: annotations(pt.Annotations)}
	if p != nil {
		if s := p.Manifest.InputSchema; s != nil {
			def.InputSchema = s
		}
		def.OutputSchema = p.Manifest.OutputSchema
		return def, nil
	}
	for _, sc := range []struct {
		path string
		dst  *json.RawMessage
	}{{pt.InputSchema, &def.InputSchema}, {pt.OutputSchema, &def.OutputSchema}} {
		if sc.path == "" {
			continue
		}
		b, err := os.ReadFile(sc.path)
		if err != nil {
			return def, fmt.Errorf("task %q: schema: %w", pt.Name, err)
		}
		if !json.Valid(b) {
			return def, fmt.Errorf("task %q: schema %s is not valid JSON", pt.Name, sc.path)
		}
		*sc.dst = b
	}
	return def, nil
}

// annotations converts the policy's annotations for the catalog. For a plugin pt is the
// effective grant, whose annotations are the policy's: a manifest cannot set them.
func annotations(a *policy.Annotations) *api.ToolAnnotations {
	if a == nil {
		return nil
	}
	return &api.ToolAnnotations{ReadOnly: a.ReadOnly, Destructive: a.Destructive, Idempotent: a.Idempotent}
}

// ErrUnknownTask is returned by Run for a task the set does not hold.
var ErrUnknownTask = errors.New("unknown task")

// ErrVersionNotLoaded is the cause of RunVersion's error when the set does not hold that
// version of the task now (it was swapped out, or not yet in). Nothing ran: the job may run
// on this version elsewhere, or here later.
var ErrVersionNotLoaded = errors.New("task version not loaded")

// Run runs one job of the named task on its current version. The version is held until the
// job ends, even if a new one is swapped in meanwhile.
func (s *Set) Run(ctx context.Context, task, jobID string, input []byte) runtime.Result {
	sl := s.acquire(task)
	if sl == nil {
		return runtime.Result{Err: outcome.Wrap(outcome.Rejected, ErrUnknownTask, "task %q is not served by this worker", task)}
	}
	defer s.release(ctx, sl)
	return s.run(ctx, sl, jobID, input)
}

// RunVersion runs one job on exactly the given version of task, the version its approval
// names: the check and the hold on that version are one step under the set's lock, so a
// plugin swapped in or out at the same moment can never run in its place. When the set does
// not hold that version now, nothing runs and the error (outcome.Cancelled) wraps
// ErrVersionNotLoaded: the job should be handed back for another attempt, not refused.
func (s *Set) RunVersion(ctx context.Context, task, version, jobID string, input []byte) runtime.Result {
	sl := s.acquireVersion(task, version)
	if sl == nil {
		serving := "nothing under that name"
		if cur, ok := s.Get(task); ok {
			serving = fmt.Sprintf("version %q", cur.Def.Version)
		}
		return runtime.Result{Err: outcome.Wrap(outcome.Cancelled, ErrVersionNotLoaded,
			"task %q version %q is not loaded on this worker now (it serves %s); the job was not run", task, version, serving)}
	}
	defer s.release(ctx, sl)
	return s.run(ctx, sl, jobID, input)
}

func (s *Set) run(ctx context.Context, sl *slot, jobID string, input []byte) runtime.Result {
	// Lazy: the fields are encoded only if the job writes a line (most write none at warn).
	res := sl.task.Module.Run(ctx, runtime.Job{ID: jobID, Input: input,
		Log: s.log.WithLazy(zap.String("task", sl.task.Name), zap.String("job", jobID))})
	if res.Err == nil && sl.task.output != nil {
		if err := checkOutput(sl.task.output, res.Output); err != nil {
			res.Output, res.Err = nil, err
		}
	}
	return res
}

// checkOutput holds an ok output to the task's output schema. It runs here, on the path
// both `castellan run` and the worker take, after the output guard, so the control plane and
// an agent reading structured output only ever see output of the declared shape. The error
// names where and which rule failed, never the value: the output may hold data that only
// the result is meant to carry.
const maxLocation = 128

func checkOutput(sch *jsonschema.Schema, output []byte) error {
	if !json.Valid(output) {
		return outcome.New(outcome.InvalidOutput, "output is not JSON (%d bytes), but the task declares an output_schema", len(output))
	}
	issues, err := schema.ValidateBlind(sch, output)
	if err != nil {
		return outcome.Wrap(outcome.InvalidOutput, err, "output could not be checked against the task's output_schema")
	}
	if len(issues) == 0 {
		return nil
	}
	parts := make([]string, len(issues))
	for i, is := range issues {
		loc := is.Location
		if loc == "" {
			loc = "(root)"
		}
		if len(loc) > maxLocation { // keys are the output's; keep the message bounded
			loc = strings.ToValidUTF8(loc[:maxLocation], "") + "..."
		}
		parts[i] = fmt.Sprintf("at %s: %s", loc, is.Message)
	}
	return outcome.New(outcome.InvalidOutput, "output does not match the task's output_schema: %s", strings.Join(parts, "; "))
}

// acquire holds the current version of the task called name.
func (s *Set) acquire(name string) *slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := s.tasks[name]
	if sl != nil {
		sl.running++
	}
	return sl
}

// acquireVersion holds the current version of the task called name if it is version.
func (s *Set) acquireVersion(name, version string) *slot {
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := s.tasks[name]
	if sl == nil || sl.task.Def.Version != version {
		return nil
	}
	sl.running++
	return sl
}

func (s *Set) release(ctx context.Context, sl *slot) {
	s.mu.Lock()
	sl.running--
	closeNow := sl.retired && sl.running == 0
	s.mu.Unlock()
	if closeNow {
		_ = sl.task.close(context.WithoutCancel(ctx))
	}
}

// swap makes t the current version of its task (nil removes the task) and retires the
// previous version, which is closed once its last job ends. It reports whether the set
// changed.
func (s *Set) swap(ctx context.Context, name string, t *Task) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		if t != nil {
			_ = t.close(ctx)
		}
		return false
	}
	old := s.tasks[name]
	if t == nil {
		delete(s.tasks, name)
	} else {
		s.tasks[name] = &slot{task: t}
	}
	var closeOld bool
	if old != nil {
		old.retired = true
		closeOld = old.running == 0
	}
	s.mu.Unlock()
	if closeOld {
		_ = old.task.close(ctx)
	}
	return old != nil || t != nil
}

// Get returns the current version of a loaded task.
func (s *Set) Get(name string) (*Task, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sl, ok := s.tasks[name]
	if !ok {
		return nil, false
	}
	return sl.task, true
}

// Names returns the loaded task names, sorted.
func (s *Set) Names() []string {
	s.mu.Lock()
	out := make([]string, 0, len(s.tasks))
	for n := range s.tasks {
		out = append(out, n)
	}
	s.mu.Unlock()
	sort.Strings(out)
	return out
}

// Catalog returns what the worker tells the control plane it can run: one definition per
// served task, sorted by name.
func (s *Set) Catalog() []api.TaskDef {
	s.mu.Lock()
	out := make([]api.TaskDef, 0, len(s.tasks))
	for _, sl := range s.tasks {
		out = append(out, sl.task.Def)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Close stops watching plugins and releases every module. Jobs still running fail; drain
// them first.
func (s *Set) Close(ctx context.Context) {
	if s.stop != nil {
		s.stop()
		<-s.done
	}
	s.mu.Lock()
	s.closed = true
	tasks := s.tasks
	s.tasks = map[string]*slot{}
	s.mu.Unlock()
	for _, sl := range tasks {
		_ = sl.task.close(ctx)
	}
}

// LogAudit returns an audit sink writing one structured line per HTTP call to log. The event
// holds no secret, body, header value or query by construction (egress.Event).
func LogAudit(log *zap.Logger) func(egress.Event) {
	return func(ev egress.Event) {
		log.Info("http call",
			zap.String("task", ev.Task), zap.String("job", ev.Job),
			zap.String("endpoint", ev.Endpoint), zap.String("method", ev.Method), zap.String("path", ev.Path),
			zap.Int("status", ev.Status), zap.Int64("request_bytes", ev.RequestBytes),
			zap.Int64("response_bytes", ev.ResponseBytes), zap.Duration("duration", ev.Duration),
			zap.String("decision", ev.Decision), zap.String("reason", ev.Reason))
	}
}

func joinLines(s []string) string {
	out := ""
	for i, l := range s {
		if i > 0 {
			out += "\n  "
		}
		out += l
	}
	return out
}

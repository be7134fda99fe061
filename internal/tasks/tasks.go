// Package tasks turns a policy into runnable tasks: for each task it reads and pins the module,
// compiles it in its own sandbox runtime, and gives it a gateway holding only the endpoints the
// policy grants it, the credential store, and the output guard. The CLI's run command and the
// worker both go through it, so a task behaves the same wherever it runs.
package tasks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/outcome"
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
	// Only limits loading to these tasks. Optional; default all.
	Only []string
	// PoolSize is passed to each module. Optional.
	PoolSize int
}

// Task is one loaded task.
type Task struct {
	Name   string
	Policy *policy.Task
	Module *runtime.Module
}

// Set is the tasks loaded from one policy.
type Set struct {
	tasks map[string]*Task
	log   *zap.Logger
}

// Load loads the tasks of opts.Policy. A task that fails to load makes Load fail: a worker
// with a broken policy should not start half-armed.
func Load(ctx context.Context, opts Options) (*Set, error) {
	log := opts.Log
	if log == nil {
		log = zap.NewNop()
	}
	audit := opts.Audit
	if audit == nil {
		audit = LogAudit(log.Named("audit"))
	}
	names := opts.Only
	if len(names) == 0 {
		names = opts.Policy.TaskNames()
	}
	s := &Set{tasks: map[string]*Task{}, log: log}
	for _, name := range names {
		pt, ok := opts.Policy.Tasks[name]
		if !ok {
			s.Close(ctx)
			return nil, fmt.Errorf("task %q is not defined in policy %s (defined: %v)", name, opts.Policy.Path, opts.Policy.TaskNames())
		}
		t, err := loadTask(ctx, opts, pt, audit, log)
		if err != nil {
			s.Close(ctx)
			return nil, err
		}
		s.tasks[name] = t
	}
	return s, nil
}

func loadTask(ctx context.Context, opts Options, pt *policy.Task, audit func(egress.Event), log *zap.Logger) (*Task, error) {
	wasm, err := os.ReadFile(pt.Module)
	if err != nil {
		return nil, outcome.Wrap(outcome.ModuleRejected, err, "task %q: read module: %v", pt.Name, err)
	}
	cfg := runtime.ModuleConfig{
		Name:         pt.Name,
		Wasm:         wasm,
		SHA256:       pt.SHA256,
		Entry:        pt.Entry,
		PoolSize:     opts.PoolSize,
		Guard:        opts.Redactor,
		RedactOutput: pt.OnSecretInOutput == "redact",
		Limits: runtime.Limits{
			MemoryPages: pt.Limits.MemoryPages,
			Timeout:     pt.Limits.Timeout,
			OutputBytes: pt.Limits.OutputBytes,
			HTTPCalls:   pt.Limits.HTTPCalls,
			LogBytes:    pt.Limits.LogBytes,
		},
	}
	// In the policy zero means zero; in runtime.Limits zero means "default".
	if pt.Limits.HTTPCalls == 0 {
		cfg.Limits.HTTPCalls = -1
	}
	if pt.Limits.OutputBytes == 0 {
		cfg.Limits.OutputBytes = -1
	}
	if pt.Limits.LogBytes == 0 {
		cfg.Limits.LogBytes = -1
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
		gw, err := egress.New(egress.Config{Endpoints: eps, Credentials: creds, Redactor: opts.Redactor, Audit: audit})
		if err != nil {
			return nil, fmt.Errorf("task %q: %w", pt.Name, err)
		}
		cfg.HTTP = gw
	}
	m, err := opts.Engine.Load(ctx, cfg)
	if err != nil {
		return nil, err
	}
	log.Info("task loaded", zap.String("task", pt.Name), zap.String("sha256", m.Digest()),
		zap.Strings("endpoints", pt.Endpoints))
	return &Task{Name: pt.Name, Policy: pt, Module: m}, nil
}

// ErrUnknownTask is returned by Run for a task the set does not hold.
var ErrUnknownTask = errors.New("unknown task")

// Run runs one job of the named task.
func (s *Set) Run(ctx context.Context, task, jobID string, input []byte) runtime.Result {
	t, ok := s.tasks[task]
	if !ok {
		return runtime.Result{Err: outcome.Wrap(outcome.Rejected, ErrUnknownTask, "task %q is not served by this worker", task)}
	}
	return t.Module.Run(ctx, runtime.Job{ID: jobID, Input: input,
		Log: s.log.With(zap.String("task", task), zap.String("job", jobID))})
}

// Get returns a loaded task.
func (s *Set) Get(name string) (*Task, bool) {
	t, ok := s.tasks[name]
	return t, ok
}

// Names returns the loaded task names, sorted.
func (s *Set) Names() []string {
	out := make([]string, 0, len(s.tasks))
	for n := range s.tasks {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Close releases every module.
func (s *Set) Close(ctx context.Context) {
	for _, t := range s.tasks {
		_ = t.Module.Close(ctx)
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

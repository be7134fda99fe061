package worker_test

// The worker against the real control plane: a server on a temporary SQLite file and a
// loopback listener, real bearer tokens, real Ed25519 approvals. The happy path runs a real
// Wasm module; tests about the loop's timing (drain, cancel) use a native runner whose
// progress the test controls.

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

const pool = "default"

type stack struct {
	t        *testing.T
	srv      *server.Server
	url      string
	admin    *client.Client
	submit   *client.Client
	approver jose.JSONWebKey
	trusted  *jose.JSONWebKeySet
}

func newStack(t *testing.T) *stack {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{
		DBPath:       filepath.Join(t.TempDir(), "cp.db"),
		LeaseTTL:     3 * time.Second,
		ReapInterval: 100 * time.Millisecond,
		RetryBase:    10 * time.Millisecond,
		RetryCap:     50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := netListen()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done; _ = srv.Close() })
	s := &stack{t: t, srv: srv, url: "http://" + ln.Addr().String()}
	s.submit = s.client(api.RoleClient)
	priv, pub, err := approval.GenerateKey("approver-1")
	if err != nil {
		t.Fatal(err)
	}
	s.approver = priv
	s.trusted = &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}}
	return s
}

func (s *stack) client(role api.Role) *client.Client {
	s.t.Helper()
	tok, err := s.srv.Store().CreateToken(context.Background(), role, pool, string(role), time.Now())
	if err != nil {
		s.t.Fatal(err)
	}
	c, err := client.New(s.url, tok.Secret)
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// funcRunner is a native task: tests control when it returns.
type funcRunner func(ctx context.Context, task, jobID string, input []byte) runtime.Result

func (f funcRunner) Run(ctx context.Context, task, jobID string, input []byte) runtime.Result {
	return f(ctx, task, jobID, input)
}

// wasmRunner runs the echo fixture in the real sandbox.
type wasmRunner struct{ m *runtime.Module }

func (w wasmRunner) Run(ctx context.Context, task, jobID string, input []byte) runtime.Result {
	return w.m.Run(ctx, runtime.Job{ID: jobID, Input: input})
}

func newWasmRunner(t *testing.T) wasmRunner {
	t.Helper()
	e, err := runtime.NewEngine(runtime.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close(context.Background()) })
	wasm, err := os.ReadFile("../../runtime/testdata/echo.wasm")
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.Load(context.Background(), runtime.ModuleConfig{Name: "echo", Wasm: wasm})
	if err != nil {
		t.Fatal(err)
	}
	return wasmRunner{m}
}

var catalog = []api.TaskDef{{
	Name: "echo", Version: "1.0.0", Description: "echoes its input",
	InputSchema: json.RawMessage(`{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]}`),
}}

type running struct {
	w          *worker.Worker
	stopLease  context.CancelFunc
	cancelJobs context.CancelFunc
	done       chan error
}

func (s *stack) startWorker(r worker.Runner, opts ...approval.VerifierOption) *running {
	s.t.Helper()
	v := approval.NewVerifier(s.trusted, approval.NewMemoryReplayStore(), opts...)
	w, err := worker.New(worker.Config{
		Client: s.client(api.RoleWorker), Runner: r, Catalog: catalog, Verifier: v,
		Concurrency: 2, LeaseWait: time.Second, Heartbeat: 200 * time.Millisecond,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	})
	if err != nil {
		s.t.Fatal(err)
	}
	lease, stopLease := context.WithCancel(context.Background())
	jobs, cancelJobs := context.WithCancel(context.Background())
	rw := &running{w: w, stopLease: stopLease, cancelJobs: cancelJobs, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(lease, jobs) }()
	s.t.Cleanup(func() {
		stopLease()
		cancelJobs()
		<-rw.done
	})
	return rw
}

// waitCatalog polls until a worker has published its catalog (submits need it).
func (s *stack) waitCatalog() {
	s.t.Helper()
	poll(s.t, "catalog published", func() bool {
		c, err := s.submit.Catalog(context.Background(), pool)
		return err == nil && len(c.Tasks) > 0
	})
}

func (s *stack) submitJob(input string) api.Job {
	s.t.Helper()
	j, err := s.submit.Submit(context.Background(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(input), MaxAttempts: 2})
	if err != nil {
		s.t.Fatalf("Submit(%s) = %v", input, err)
	}
	return j
}

func (s *stack) sign(j api.Job, input string, key jose.JSONWebKey, mutate func(*approval.Request)) string {
	s.t.Helper()
	r := approval.Request{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool,
		Input: []byte(input), MaxAttempts: j.MaxAttempts, Approver: "alice"}
	if mutate != nil {
		mutate(&r)
	}
	tok, _, err := approval.Sign(key, r)
	if err != nil {
		s.t.Fatal(err)
	}
	return tok
}

func (s *stack) approve(j api.Job, tok string) {
	s.t.Helper()
	if _, err := s.client(api.RoleApprover).Approve(context.Background(), j.ID, tok); err != nil {
		s.t.Fatalf("Approve(%s) = %v", j.ID, err)
	}
}

func (s *stack) wait(id string) api.Job {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	j, err := s.submit.Wait(ctx, id)
	if err != nil {
		s.t.Fatalf("Wait(%s) = %v", id, err)
	}
	return j
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHappyPathRealSandbox(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.startWorker(newWasmRunner(t))
	s.waitCatalog()
	in := `{"n":42}`
	j := s.submitJob(in)
	if j.State != api.StatePendingApproval {
		t.Fatalf("submitted job state = %s, want pending_approval", j.State)
	}
	s.approve(j, s.sign(j, in, s.approver, nil))
	got := s.wait(j.ID)
	if got.State != api.StateSucceeded || string(got.Output) != in || got.ModuleDigest == "" {
		t.Fatalf("job = state %s output %s digest %q outcome %s (%s), want succeeded with the echoed input",
			got.State, got.Output, got.ModuleDigest, got.Outcome, got.ErrorMessage)
	}
}

// TestRefusedApprovals: the worker refuses, without running anything, every job whose approval
// does not verify, even though the control plane queued it.
func TestRefusedApprovals(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	var ran sync.Map
	r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		ran.Store(id, true)
		return runtime.Result{Output: in}
	})
	s.startWorker(r)
	s.waitCatalog()
	strangerPriv, _, _ := approval.GenerateKey("stranger")
	impostor, _, _ := approval.GenerateKey("approver-1") // a trusted kid, another key
	other := s.submitJob(`{"n":1}`)
	tests := []struct {
		name   string
		input  string
		token  func(j api.Job) string
		reason approval.Reason
	}{
		{"input altered after approval", `{"n":2}`, func(j api.Job) string { return s.sign(j, `{"n":3}`, s.approver, nil) }, approval.InputMismatch},
		{"approval of another job", `{"n":4}`, func(j api.Job) string { return s.sign(other, `{"n":1}`, s.approver, nil) }, approval.WrongJob},
		{"unknown key", `{"n":5}`, func(j api.Job) string { return s.sign(j, `{"n":5}`, strangerPriv, nil) }, approval.UnknownKey},
		{"trusted kid, other key", `{"n":6}`, func(j api.Job) string { return s.sign(j, `{"n":6}`, impostor, nil) }, approval.BadSignature},
		{"other task version", `{"n":7}`, func(j api.Job) string {
			return s.sign(j, `{"n":7}`, s.approver, func(r *approval.Request) { r.TaskVersion = "0.9.0" })
		}, approval.WrongVersion},
		{"other pool", `{"n":8}`, func(j api.Job) string {
			return s.sign(j, `{"n":8}`, s.approver, func(r *approval.Request) { r.Pool = "finance" })
		}, approval.WrongPool},
	}
	for _, tt := range tests {
		j := s.submitJob(tt.input)
		s.approve(j, tt.token(j))
		got := s.wait(j.ID)
		if got.State != api.StateRejected || got.Outcome != string(outcome.Rejected) || !strings.Contains(got.ErrorMessage, string(tt.reason)) {
			t.Errorf("%s: job = %s/%s %q, want rejected with reason %s", tt.name, got.State, got.Outcome, got.ErrorMessage, tt.reason)
		}
		if _, ok := ran.Load(j.ID); ok {
			t.Errorf("%s: the task ran", tt.name)
		}
	}
}

func TestExpiredApprovalRefused(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ran := false
	var mu sync.Mutex
	// The worker's clock is two hours ahead: every approval with the default 1h TTL is expired.
	s.startWorker(funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		mu.Lock()
		ran = true
		mu.Unlock()
		return runtime.Result{Output: in}
	}), approval.WithClock(func() time.Time { return time.Now().Add(2 * time.Hour) }))
	s.waitCatalog()
	j := s.submitJob(`{"n":1}`)
	s.approve(j, s.sign(j, `{"n":1}`, s.approver, nil))
	got := s.wait(j.ID)
	mu.Lock()
	defer mu.Unlock()
	if got.State != api.StateRejected || !strings.Contains(got.ErrorMessage, string(approval.Expired)) || ran {
		t.Fatalf("job = %s %q (ran %v), want rejected as expired without running", got.State, got.ErrorMessage, ran)
	}
}

// TestDrainThenCancel: the first shutdown stage stops leasing and lets the running job finish;
// a job still running at the second stage is cancelled and goes back to the queue.
func TestDrainThenCancel(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	release := make(chan struct{})
	started := make(chan string, 4)
	r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		started <- id
		select {
		case <-release:
			return runtime.Result{Output: in}
		case <-ctx.Done():
			return runtime.Result{Err: outcome.Wrap(outcome.Cancelled, ctx.Err(), "job cancelled")}
		}
	})
	w := s.startWorker(r)
	s.waitCatalog()

	j1 := s.submitJob(`{"n":1}`)
	s.approve(j1, s.sign(j1, `{"n":1}`, s.approver, nil))
	<-started
	w.stopLease() // stage one: drain
	select {
	case err := <-w.done:
		t.Fatalf("Run returned %v while a job was running; want it to wait", err)
	case <-time.After(100 * time.Millisecond):
	}
	// A job approved during the drain is not leased by this worker.
	j2 := s.submitJob(`{"n":2}`)
	s.approve(j2, s.sign(j2, `{"n":2}`, s.approver, nil))
	close(release)
	if err := <-w.done; err != nil {
		t.Fatalf("Run after drain = %v, want nil", err)
	}
	w.done <- nil // for the cleanup
	if got := s.wait(j1.ID); got.State != api.StateSucceeded {
		t.Errorf("drained job state = %s, want succeeded", got.State)
	}
	if got, _ := s.submit.Get(context.Background(), j2.ID); got.State != api.StateQueued {
		t.Errorf("job approved during drain = %s, want still queued", got.State)
	}

	// Stage two on a second worker: the running job is cancelled and requeued for another.
	release2 := make(chan struct{})
	w2 := s.startWorker(funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		started <- id
		select {
		case <-release2:
			return runtime.Result{Output: in}
		case <-ctx.Done():
			return runtime.Result{Err: outcome.Wrap(outcome.Cancelled, ctx.Err(), "job cancelled")}
		}
	}))
	<-started
	w2.stopLease()
	w2.cancelJobs()
	if err := <-w2.done; err != nil {
		t.Fatalf("Run after cancel = %v", err)
	}
	w2.done <- nil
	got, _ := s.submit.Get(context.Background(), j2.ID)
	if got.State != api.StateQueued || got.Outcome != string(outcome.Cancelled) {
		t.Errorf("job cancelled by shutdown = %s/%s, want queued again after a cancelled attempt", got.State, got.Outcome)
	}
}

// TestControlPlaneCancel: cancelling a running job reaches the worker through its heartbeat.
func TestControlPlaneCancel(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	started := make(chan struct{}, 1)
	s.startWorker(funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		started <- struct{}{}
		<-ctx.Done()
		return runtime.Result{Err: outcome.Wrap(outcome.Cancelled, ctx.Err(), "job cancelled")}
	}))
	s.waitCatalog()
	j := s.submitJob(`{"n":1}`)
	s.approve(j, s.sign(j, `{"n":1}`, s.approver, nil))
	<-started
	if _, err := s.submit.Cancel(context.Background(), j.ID); err != nil {
		t.Fatal(err)
	}
	if got := s.wait(j.ID); got.State != api.StateCancelled {
		t.Fatalf("job = %s, want cancelled", got.State)
	}
}

// TestThousandJobsThreeWorkers: every job runs in the real sandbox and completes exactly once.
func TestThousandJobsThreeWorkers(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 jobs: skipped with -short")
	}
	t.Parallel()
	s := newStack(t)
	r := newWasmRunner(t)
	for range 3 {
		s.startWorker(r)
	}
	s.waitCatalog()
	const n = 1000
	ids := make([]string, n)
	approver := s.client(api.RoleApprover)
	for i := range n {
		in := `{"n":` + itoa(i) + `}`
		j := s.submitJob(in)
		if _, err := approver.Approve(context.Background(), j.ID, s.sign(j, in, s.approver, nil)); err != nil {
			t.Fatal(err)
		}
		ids[i] = j.ID
	}
	for i, id := range ids {
		got := s.wait(id)
		if got.State != api.StateSucceeded || got.Attempt != 1 || string(got.Output) != `{"n":`+itoa(i)+`}` {
			t.Fatalf("job %d = %s attempt %d output %s, want succeeded once with its own output", i, got.State, got.Attempt, got.Output)
		}
	}
	counts, err := s.srv.Store().Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if counts.Jobs[api.StateSucceeded] != n || counts.Completions != n || counts.Attempts != n {
		t.Errorf("database: %d succeeded, %d attempts, %d completions; want %d each", counts.Jobs[api.StateSucceeded], counts.Attempts, counts.Completions, n)
	}
}

func itoa(i int) string { return jsonInt(i) }

func jsonInt(i int) string { b, _ := json.Marshal(i); return string(b) }

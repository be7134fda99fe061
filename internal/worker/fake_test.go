package worker_test

// A control plane that lies: an in-process worker.Queue whose every answer the test decides.
// It records what the worker did (leases asked, reports received) so that tests assert on
// counters instead of timing.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/tasks"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

type report struct {
	JobID string
	Req   api.CompleteRequest
}

type fakeQueue struct {
	pool string // the pool announced at registration

	mu      sync.Mutex
	pending [][]api.LeasedJob // answers to the next Lease calls, in order
	leases  int               // Lease calls made
	inLease int               // Lease calls not returned yet
	live    int               // Lease calls entered with a live context
	asked   []int             // max of each Lease call
	reports []report          // successful Complete calls
	calls   int               // Complete calls, failed or not
	// completeErr, when set, decides the error of each Complete call (nil: accepted).
	completeErr func(call int, jobID string, req api.CompleteRequest) error
	// heartbeat, when set, answers each Heartbeat.
	heartbeat  func(leaseToken string) (api.HeartbeatResponse, error)
	heartbeats int
	// onLease, when set, is called (locked) at each Lease call, before it answers.
	onLease func(q *fakeQueue)
	changed chan struct{} // closed and replaced at every recorded change
}

var _ worker.Queue = (*fakeQueue)(nil)

func newFakeQueue(pool string) *fakeQueue {
	return &fakeQueue{pool: pool, changed: make(chan struct{})}
}

func (q *fakeQueue) notify() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// push queues the answer to one future Lease call.
func (q *fakeQueue) push(jobs ...api.LeasedJob) {
	q.mu.Lock()
	q.pending = append(q.pending, jobs)
	q.notify()
	q.mu.Unlock()
}

func (q *fakeQueue) Register(ctx context.Context, req api.RegisterRequest) (api.RegisterResponse, error) {
	return api.RegisterResponse{WorkerID: "w1", Pool: q.pool, LeaseTTLSeconds: 30, MaxWaitSeconds: 30}, nil
}

func (q *fakeQueue) PublishCatalog(ctx context.Context, tasks []api.TaskDef) (api.CatalogResponse, error) {
	return api.CatalogResponse{}, nil
}

// Lease answers the next queued answer at once, or waits like a long-poll until one is
// queued, wait elapses, or ctx ends.
func (q *fakeQueue) Lease(ctx context.Context, max int, wait time.Duration) ([]api.LeasedJob, error) {
	t := time.NewTimer(wait)
	defer t.Stop()
	q.mu.Lock()
	q.leases++
	q.inLease++
	if ctx.Err() == nil {
		q.live++
	}
	defer func() {
		q.mu.Lock()
		q.inLease--
		q.notify()
		q.mu.Unlock()
	}()
	q.asked = append(q.asked, max)
	if q.onLease != nil {
		q.onLease(q)
	}
	q.notify()
	for len(q.pending) == 0 {
		ch := q.changed
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, nil
		case <-ch:
		}
		q.mu.Lock()
	}
	jobs := q.pending[0]
	q.pending = q.pending[1:]
	q.mu.Unlock()
	return jobs, nil
}

func (q *fakeQueue) Heartbeat(ctx context.Context, leaseToken string) (api.HeartbeatResponse, error) {
	q.mu.Lock()
	q.heartbeats++
	hb := q.heartbeat
	q.notify()
	q.mu.Unlock()
	if hb != nil {
		return hb(leaseToken)
	}
	return api.HeartbeatResponse{LeaseExpiresAt: time.Now().Add(30 * time.Second)}, nil
}

func (q *fakeQueue) Complete(ctx context.Context, jobID string, req api.CompleteRequest) (api.CompleteResponse, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.calls++
	defer q.notify()
	if q.completeErr != nil {
		if err := q.completeErr(q.calls, jobID, req); err != nil {
			return api.CompleteResponse{}, err
		}
	}
	q.reports = append(q.reports, report{jobID, req})
	return api.CompleteResponse{JobID: jobID}, nil
}

// waitUntil polls cond (called locked) until it holds, failing the test after a deadline.
func (q *fakeQueue) waitUntil(t *testing.T, what string, cond func(q *fakeQueue) bool) {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		q.mu.Lock()
		ok := cond(q)
		ch := q.changed
		q.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func (q *fakeQueue) snapshot() (leases int, reports []report, calls int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.leases, append([]report(nil), q.reports...), q.calls
}

// signer mints approvals with a trusted key.
type signer struct {
	key     jose.JSONWebKey
	trusted *jose.JSONWebKeySet
}

func newSigner(t *testing.T) *signer {
	t.Helper()
	priv, pub, err := approval.GenerateKey("approver-1")
	if err != nil {
		t.Fatal(err)
	}
	return &signer{key: priv, trusted: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}}}
}

func (s *signer) verifier() *approval.Verifier {
	return approval.NewVerifier(s.trusted, approval.NewMemoryReplayStore())
}

// job returns a leased job approved for exactly task, version and pool.
func (s *signer) job(t *testing.T, id, task, version, pool string) api.LeasedJob {
	t.Helper()
	in := fmt.Sprintf(`{"id":%q}`, id)
	tok, _, err := approval.Sign(s.key, approval.Request{JobID: id, Task: task, TaskVersion: version, Pool: pool,
		Input: []byte(in), MaxAttempts: 3, Approver: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	return api.LeasedJob{JobID: id, Task: task, TaskVersion: version, Pool: pool, Input: json.RawMessage(in),
		Approval: tok, Attempt: 1, MaxAttempts: 3, LeaseToken: "lease-" + id, LeaseExpiresAt: time.Now().Add(30 * time.Second)}
}

// startFake runs a worker against q until the test ends; it returns the stop functions.
func startFake(t *testing.T, cfg worker.Config) *running {
	t.Helper()
	if cfg.LeaseWait == 0 {
		cfg.LeaseWait = time.Second
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = time.Hour
	}
	cfg.BackoffMin, cfg.BackoffMax = time.Millisecond, 5*time.Millisecond
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lease, stopLease := context.WithCancel(context.Background())
	jobs, cancelJobs := context.WithCancel(context.Background())
	rw := &running{w: w, stopLease: stopLease, cancelJobs: cancelJobs, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(lease, jobs) }()
	t.Cleanup(func() {
		stopLease()
		cancelJobs()
		select {
		case <-rw.done:
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return 30s after shutdown")
		}
	})
	return rw
}

// retryable reports whether a report hands the job back for another attempt.
func retryable(r api.CompleteRequest) bool {
	if r.Retryable != nil {
		return *r.Retryable
	}
	return outcome.Code(r.Outcome).Retryable()
}

var errOutage = errors.New("connection refused")

// swapRunner serves one task whose current version flips between "1" and "2", as a plugin
// being hot-swapped; each version has its own module digest.
type swapRunner struct {
	mu      sync.RWMutex
	current string
	updates chan []api.TaskDef
}

func newSwapRunner() *swapRunner {
	return &swapRunner{current: "1", updates: make(chan []api.TaskDef, 1)}
}

func (r *swapRunner) catalog() []api.TaskDef {
	return []api.TaskDef{{Name: "hot", Version: r.current, InputSchema: json.RawMessage(`{"type":"object"}`)}}
}

// flip swaps the other version in and offers the new catalog, replacing an unread one.
func (r *swapRunner) flip() {
	r.mu.Lock()
	r.current = map[string]string{"1": "2", "2": "1"}[r.current]
	cat := r.catalog()
	r.mu.Unlock()
	for {
		select {
		case r.updates <- cat:
			return
		case <-r.updates:
		}
	}
}

func (r *swapRunner) Run(ctx context.Context, task, jobID string, input []byte) runtime.Result {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return runtime.Result{Output: input, Digest: "sha-v" + r.current}
}

func (r *swapRunner) RunVersion(ctx context.Context, task, version, jobID string, input []byte) runtime.Result {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if version != r.current {
		return runtime.Result{Err: outcome.Wrap(outcome.Cancelled, tasks.ErrVersionNotLoaded, "version %q not loaded", version)}
	}
	return runtime.Result{Output: input, Digest: "sha-v" + version}
}

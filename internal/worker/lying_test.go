package worker_test

// The worker against a control plane that lies or fails: what runs, and what is reported,
// is decided by the worker's own configuration and the approval, never by the lease.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

// TestHotSwapRunsApprovedVersion: while the task's version flips between 1 and 2 at every
// lease, jobs approved for each run on exactly their version's module or are handed back
// for another attempt; none runs the other version and none is refused for good.
func TestHotSwapRunsApprovedVersion(t *testing.T) {
	t.Parallel()
	s := newSigner(t)
	q := newFakeQueue("alpha")
	r := newSwapRunner()
	q.onLease = func(*fakeQueue) { r.flip() }
	const n = 400
	version := map[string]string{}
	for i := range n {
		id := fmt.Sprintf("job-%d", i)
		version[id] = []string{"1", "2"}[i%2]
		q.push(s.job(t, id, "hot", version[id], "alpha"))
	}
	startFake(t, worker.Config{Client: q, Runner: r, Catalog: r.catalog(), CatalogUpdates: r.updates,
		Verifier: s.verifier(), Concurrency: 4})
	q.waitUntil(t, "every job reported", func(q *fakeQueue) bool { return len(q.reports) >= n })
	_, reports, _ := q.snapshot()
	seen := map[string]int{}
	ran, back := 0, 0
	for _, rep := range reports {
		seen[rep.JobID]++
		v := version[rep.JobID]
		switch {
		case rep.Req.Outcome == string(outcome.OK):
			ran++
			if rep.Req.ModuleDigest != "sha-v"+v {
				t.Errorf("job %s approved for version %s ran module %s", rep.JobID, v, rep.Req.ModuleDigest)
			}
		case retryable(rep.Req):
			back++
		default:
			t.Errorf("job %s approved for version %s: %s %q, final; want it run on its version or handed back", rep.JobID, v, rep.Req.Outcome, rep.Req.ErrorMessage)
		}
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("job %s reported %d times, want once", id, c)
		}
	}
	if ran == 0 {
		t.Errorf("no job ran (%d handed back)", back)
	}
	t.Logf("%d ran on their approved version, %d handed back", ran, back)
}

// TestPoolFromOwnConfiguration: a control plane that leases work approved for pool beta to a
// worker of pool alpha cannot make it run, whatever pool it writes in the lease; and a worker
// configured for alpha does not serve a pool the control plane registers it in instead.
func TestPoolFromOwnConfiguration(t *testing.T) {
	t.Parallel()
	for _, configured := range []string{"alpha", ""} { // "": the pool announced at registration
		t.Run("configured="+configured, func(t *testing.T) {
			t.Parallel()
			s := newSigner(t)
			q := newFakeQueue("alpha")
			var ran atomic.Int64
			r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
				ran.Add(1)
				return runtime.Result{Output: in}
			})
			lieBeta := s.job(t, "beta-says-beta", "echo", "1.0.0", "beta")   // approval and lease say beta
			lieAlpha := s.job(t, "beta-says-alpha", "echo", "1.0.0", "beta") // approval beta, lease alpha
			lieAlpha.Pool = "alpha"
			honest := s.job(t, "alpha", "echo", "1.0.0", "alpha")
			q.push(lieBeta)
			q.push(lieAlpha)
			q.push(honest)
			startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Verifier: s.verifier(), Pool: configured})
			q.waitUntil(t, "three reports", func(q *fakeQueue) bool { return len(q.reports) >= 3 })
			_, reports, _ := q.snapshot()
			for _, rep := range reports {
				wantOK := rep.JobID == "alpha"
				gotOK := rep.Req.Outcome == string(outcome.OK)
				if gotOK != wantOK || (!wantOK && (rep.Req.Outcome != string(outcome.Rejected) || retryable(rep.Req) ||
					!strings.Contains(rep.Req.ErrorMessage, string(approval.WrongPool)))) {
					t.Errorf("job %s = %s %q (retryable %v); want only the alpha job run, the others refused as %s",
						rep.JobID, rep.Req.Outcome, rep.Req.ErrorMessage, retryable(rep.Req), approval.WrongPool)
				}
			}
			if n := ran.Load(); n != 1 {
				t.Errorf("%d jobs ran, want 1 (the alpha job)", n)
			}
		})
	}
	t.Run("registered elsewhere", func(t *testing.T) {
		t.Parallel()
		s := newSigner(t)
		q := newFakeQueue("beta")
		w, err := worker.New(worker.Config{Client: q, Runner: funcRunner(nil), Catalog: catalog, Verifier: s.verifier(), Pool: "alpha"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if err := w.Run(ctx, ctx); err == nil || !strings.Contains(err.Error(), `"beta"`) {
			t.Errorf("Run with pool alpha registered in beta = %v, want an error naming beta", err)
		}
		if leases, _, _ := q.snapshot(); leases != 0 {
			t.Errorf("%d leases made, want none", leases)
		}
	})
}

// TestLeaseAnswersBeyondAsked: a lease answered with more jobs than asked, and with the same
// job twice, never runs more jobs than the worker's concurrency: the jobs beyond what was
// asked are handed back unrun, a repeated job runs once, and the worker goes on leasing and
// stops when told.
func TestLeaseAnswersBeyondAsked(t *testing.T) {
	t.Parallel()
	s := newSigner(t)
	q := newFakeQueue("alpha")
	gate := make(chan struct{})
	var mu sync.Mutex
	running, maxRunning, ran := 0, 0, map[string]int{}
	r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		mu.Lock()
		running++
		maxRunning = max(maxRunning, running)
		ran[id]++
		mu.Unlock()
		<-gate
		mu.Lock()
		running--
		mu.Unlock()
		return runtime.Result{Output: in}
	})
	var answer []api.LeasedJob
	for i := range 6 {
		answer = append(answer, s.job(t, fmt.Sprintf("job-%d", i), "echo", "1.0.0", "alpha"))
	}
	again := answer[0] // the same lease twice
	other := answer[1] // the same job under another lease token
	other.LeaseToken = "lease-job-1-again"
	answer = append(answer, again, other)
	q.push(answer...)
	rw := startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Verifier: s.verifier(), Concurrency: 2})

	// Every job beyond the two asked for is reported back at once, before either runs out.
	q.waitUntil(t, "the surplus handed back", func(q *fakeQueue) bool { return len(q.reports) >= 5 })
	mu.Lock()
	if maxRunning > 2 || len(ran) > 2 {
		t.Errorf("%d jobs ran at once (%d distinct), want at most the concurrency, 2", maxRunning, len(ran))
	}
	mu.Unlock()
	close(gate)
	q.waitUntil(t, "another lease after the two jobs ran", func(q *fakeQueue) bool {
		return len(q.reports) >= 7 && q.leases >= 2
	})
	_, reports, _ := q.snapshot()
	byLease := map[string]int{}
	for _, rep := range reports {
		byLease[rep.Req.LeaseToken]++
		mu.Lock()
		didRun := ran[rep.JobID] > 0 && rep.Req.Outcome == string(outcome.OK)
		mu.Unlock()
		if !didRun && !(rep.Req.Outcome == string(outcome.Cancelled) && retryable(rep.Req)) {
			t.Errorf("job %s (lease %s) = %s %q (retryable %v), want run or handed back retryable",
				rep.JobID, rep.Req.LeaseToken, rep.Req.Outcome, rep.Req.ErrorMessage, retryable(rep.Req))
		}
	}
	for tok, n := range byLease {
		if n != 1 {
			t.Errorf("lease %s reported %d times, want once", tok, n)
		}
	}
	if len(byLease) != 7 {
		t.Errorf("%d leases reported, want 7 (6 jobs and the second lease of job-1)", len(byLease))
	}
	mu.Lock()
	for id, n := range ran {
		if n != 1 {
			t.Errorf("job %s ran %d times", id, n)
		}
	}
	mu.Unlock()
	q.mu.Lock()
	for i, n := range q.asked {
		if n < 1 || n > 2 {
			t.Errorf("lease %d asked for %d jobs, want 1 or 2", i, n)
		}
	}
	q.mu.Unlock()
	rw.stopLease()
	select {
	case err := <-rw.done:
		if err != nil {
			t.Errorf("Run after drain = %v, want nil", err)
		}
		rw.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return 10s after the drain began")
	}
}

// TestNoLeaseWhileResultsUndeliverable: while a result cannot be delivered, the worker takes
// no new work (the poll in flight is cut and no other begins); once a report goes through it
// leases again.
func TestNoLeaseWhileResultsUndeliverable(t *testing.T) {
	t.Parallel()
	s := newSigner(t)
	q := newFakeQueue("alpha")
	fixed := false
	q.completeErr = func(call int, jobID string, req api.CompleteRequest) error {
		if fixed {
			return nil
		}
		return errOutage
	}
	r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		return runtime.Result{Output: in}
	})
	q.push(s.job(t, "a", "echo", "1.0.0", "alpha"))
	startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Verifier: s.verifier(), Concurrency: 2, LeaseWait: 50 * time.Millisecond})
	q.waitUntil(t, "a failing report and no poll in flight", func(q *fakeQueue) bool { return q.calls >= 3 && q.inLease == 0 })
	q.mu.Lock()
	live, calls := q.live, q.calls
	q.mu.Unlock()
	q.push(s.job(t, "b", "echo", "1.0.0", "alpha"))
	q.waitUntil(t, "more failed reports", func(q *fakeQueue) bool { return q.calls >= calls+10 })
	q.mu.Lock()
	// A poll begun just before the first failure registered is cut on entry; only a live
	// one would take work.
	if q.live != live {
		t.Errorf("while reports failed: %d more lease calls, want none", q.live-live)
	}
	fixed = true
	q.mu.Unlock()
	q.waitUntil(t, "both jobs reported once results go through", func(q *fakeQueue) bool { return len(q.reports) == 2 })
	_, reports, _ := q.snapshot()
	for _, rep := range reports {
		if rep.Req.Outcome != string(outcome.OK) {
			t.Errorf("job %s = %s %q, want ok", rep.JobID, rep.Req.Outcome, rep.Req.ErrorMessage)
		}
	}
}

// TestReportDeadlineFollowsHeartbeats: a job whose first lease expired long ago but whose
// heartbeats extended it still gets its result reported through a failed attempt: the report
// deadline follows the latest expiry the control plane announced.
func TestReportDeadlineFollowsHeartbeats(t *testing.T) {
	t.Parallel()
	s := newSigner(t)
	q := newFakeQueue("alpha")
	q.heartbeat = func(string) (api.HeartbeatResponse, error) {
		return api.HeartbeatResponse{LeaseExpiresAt: time.Now().Add(time.Hour)}, nil
	}
	q.completeErr = func(call int, jobID string, req api.CompleteRequest) error {
		if call == 1 {
			return errOutage
		}
		return nil
	}
	r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		q.waitUntil(t, "heartbeats answered", func(q *fakeQueue) bool { return q.heartbeats >= 2 })
		return runtime.Result{Output: in}
	})
	j := s.job(t, "long", "echo", "1.0.0", "alpha")
	j.LeaseExpiresAt = time.Now().Add(-2 * time.Minute) // the first lease's expiry, long past
	q.push(j)
	startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Verifier: s.verifier(), Heartbeat: 5 * time.Millisecond})
	q.waitUntil(t, "the result reported on the second try", func(q *fakeQueue) bool { return len(q.reports) == 1 })
	if _, reports, calls := q.snapshot(); reports[0].Req.Outcome != string(outcome.OK) || calls != 2 {
		t.Errorf("report = %s after %d calls, want ok after 2", reports[0].Req.Outcome, calls)
	}
}

// TestShutdownBoundedWhateverTheGuest: a task that ignores cancellation and never returns does
// not hold the worker: StopTimeout after the jobs are cancelled Run gives up on it, reports it
// cancelled and retryable, and returns an error saying so; with the control plane down as
// well, it still returns in bounded time.
func TestShutdownBoundedWhateverTheGuest(t *testing.T) {
	t.Parallel()
	for _, down := range []bool{false, true} {
		t.Run(fmt.Sprintf("control plane down=%v", down), func(t *testing.T) {
			t.Parallel()
			s := newSigner(t)
			q := newFakeQueue("alpha")
			if down {
				q.completeErr = func(int, string, api.CompleteRequest) error { return errOutage }
			}
			never := make(chan struct{})
			t.Cleanup(func() { close(never) })
			started := make(chan struct{}, 1)
			r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
				started <- struct{}{}
				<-never // ignores ctx, as a host call that never returns would
				return runtime.Result{Output: in}
			})
			q.push(s.job(t, "stuck", "echo", "1.0.0", "alpha"))
			const stop = 200 * time.Millisecond
			rw := startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Verifier: s.verifier(), StopTimeout: stop})
			<-started
			rw.stopLease()
			rw.cancelJobs()
			select {
			case err := <-rw.done:
				if err == nil || !errors.Is(err, worker.ErrAbandoned) {
					t.Errorf("Run = %v, want an error saying a job was abandoned", err)
				}
				rw.done <- nil
			case <-time.After(2*stop + 5*time.Second):
				t.Fatal("Run did not return after the stop timeout")
			}
			if down {
				return
			}
			_, reports, _ := q.snapshot()
			if len(reports) != 1 || reports[0].Req.Outcome != string(outcome.Cancelled) || !retryable(reports[0].Req) {
				t.Errorf("reports = %+v, want the stuck job reported cancelled and retryable", reports)
			}
		})
	}
}

// TestAnyLeaseAnswer: for generated lease answers (none, fewer, as many or up to three times
// as many jobs as asked, with repeats of a lease and of a job under another lease token), the
// worker never runs more jobs at once than its concurrency nor more than a lease asked for,
// reports every distinct lease exactly once, keeps leasing, and drains when told.
func TestAnyLeaseAnswer(t *testing.T) {
	t.Parallel()
	s := newSigner(t)
	q := newFakeQueue("alpha")
	rng := rand.New(rand.NewPCG(1, 13))
	const rounds, concurrency = 150, 3
	leases := map[[2]string]bool{}
	var answered []api.LeasedJob
	next := 0
	q.onLease = func(q *fakeQueue) {
		if q.leases > rounds {
			return
		}
		max := q.asked[len(q.asked)-1]
		var answer []api.LeasedJob
		for range rng.IntN(3*max + 1) {
			switch c := rng.IntN(6); {
			case c == 0 && len(answer) > 0: // the same lease again
				answer = append(answer, answer[rng.IntN(len(answer))])
			case c == 1 && len(answer) > 0: // the same job under another lease
				j := answer[rng.IntN(len(answer))]
				j.LeaseToken += "-again"
				answer = append(answer, j)
			default:
				next++
				answer = append(answer, s.job(t, fmt.Sprintf("job-%d", next), "echo", "1.0.0", "alpha"))
			}
		}
		for _, j := range answer {
			leases[[2]string{j.JobID, j.LeaseToken}] = true
		}
		answered = append(answered, answer...)
		q.pending = append(q.pending, answer)
	}
	var mu sync.Mutex
	running, maxRunning := 0, 0
	r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		mu.Lock()
		running++
		maxRunning = max(maxRunning, running)
		mu.Unlock()
		defer func() { mu.Lock(); running--; mu.Unlock() }()
		return runtime.Result{Output: in}
	})
	rw := startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Verifier: s.verifier(),
		Concurrency: concurrency, LeaseWait: 20 * time.Millisecond})
	q.waitUntil(t, "every generated lease answered and reported", func(q *fakeQueue) bool {
		return q.leases > rounds && len(q.reports) >= len(leases)
	})
	rw.stopLease()
	select {
	case err := <-rw.done:
		if err != nil {
			t.Errorf("Run after drain = %v, want nil", err)
		}
		rw.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return 10s after the drain began")
	}
	_, reports, _ := q.snapshot()
	got := map[[2]string]int{}
	ran := 0
	for _, rep := range reports {
		got[[2]string{rep.JobID, rep.Req.LeaseToken}]++
		switch {
		case rep.Req.Outcome == string(outcome.OK):
			ran++
		case rep.Req.Outcome != string(outcome.Cancelled) || !retryable(rep.Req):
			t.Errorf("job %s (lease %s) = %s %q, want run or handed back retryable", rep.JobID, rep.Req.LeaseToken, rep.Req.Outcome, rep.Req.ErrorMessage)
		}
	}
	for l := range leases {
		if got[l] != 1 {
			t.Errorf("lease %v reported %d times, want once", l, got[l])
		}
	}
	if len(got) != len(leases) {
		t.Errorf("%d distinct leases reported, want the %d answered", len(got), len(leases))
	}
	q.mu.Lock()
	asked := 0
	for _, n := range q.asked[:rounds] {
		asked += n
	}
	q.mu.Unlock()
	if ran > asked || maxRunning > concurrency {
		t.Errorf("%d jobs ran (%d asked for), at most %d at once; want at most what was asked, at most %d at once", ran, asked, maxRunning, concurrency)
	}
	t.Logf("%d answers, %d jobs answered, %d ran, %d handed back", rounds, len(answered), ran, len(reports)-ran)
}

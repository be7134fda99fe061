package worker_test

// The worker against a control plane that lies or fails: what runs, and what is reported,
// is decided by the worker's own configuration and the approval, never by the lease.

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/approval"
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

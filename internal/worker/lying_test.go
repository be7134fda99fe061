package worker_test

// The worker against a control plane that lies or fails: what runs, and what is reported,
// is decided by the worker's own configuration and the approval, never by the lease.

import (
	"fmt"
	"testing"

	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/outcome"
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

var _ = api.LeasedJob{}

package worker_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

// failingReplay is a replay store that cannot answer: it fails with err, or with its
// context's error when err is nil and the context ends first.
type failingReplay struct{ err error }

func (f failingReplay) Consume(ctx context.Context, nonce, jobID string, attempt, max int, expiry time.Time) error {
	if f.err != nil {
		return f.err
	}
	<-ctx.Done()
	return fmt.Errorf("replay store: %w", ctx.Err())
}

// TestUncheckedApprovalHandedBack: an approval whose check could not finish (the replay store
// failed, or shutdown cancelled the check) was not refused: the job goes back to the queue
// unrun and retryable, never ends as rejected. A genuine refusal stays final.
func TestUncheckedApprovalHandedBack(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		store approval.ReplayStore
		stop  bool // cancel the jobs while the check waits
		want  outcome.Code
		retry bool
	}{
		{"store fails", failingReplay{err: errors.New("disk I/O error")}, false, outcome.Internal, true},
		{"shutdown during the check", failingReplay{}, true, outcome.Cancelled, true},
		{"replayed approval", replayedStore{}, false, outcome.Rejected, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newSigner(t)
			q := newFakeQueue("default")
			var ran atomic.Int64
			r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
				ran.Add(1)
				return runtime.Result{Output: in}
			})
			q.push(s.job(t, "j1", "echo", "1.0.0", "default"))
			rw := startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Pool: "default",
				Verifier: approval.NewVerifier(s.trusted, tt.store), StopTimeout: 5 * time.Second})
			if tt.stop {
				q.waitUntil(t, "the job leased", func(q *fakeQueue) bool { return q.leases > 0 })
				rw.stopLease()
				rw.cancelJobs()
			}
			q.waitUntil(t, "one report", func(q *fakeQueue) bool { return len(q.reports) >= 1 })
			_, reports, _ := q.snapshot()
			got := reports[0].Req
			if outcome.Code(got.Outcome) != tt.want || retryable(got) != tt.retry {
				t.Errorf("report = %s %q (retryable %v), want %s (retryable %v)", got.Outcome, got.ErrorMessage, retryable(got), tt.want, tt.retry)
			}
			if n := ran.Load(); n != 0 {
				t.Errorf("%d jobs ran, want none", n)
			}
		})
	}
}

// replayedStore refuses every approval as replayed.
type replayedStore struct{}

func (replayedStore) Consume(ctx context.Context, nonce, jobID string, attempt, max int, expiry time.Time) error {
	m := approval.NewMemoryReplayStore()
	_ = m.Consume(ctx, nonce, jobID, attempt, max, expiry)
	return m.Consume(ctx, nonce, jobID, attempt, max, expiry) // the second use is a replay
}

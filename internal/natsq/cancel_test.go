package natsq_test

import (
	"context"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestCompleteUnderCancelRequest: a job asked to stop while it runs ends cancelled whatever
// its outcome, and its message is settled for good (not redelivered), whether the cancel
// request decides the settle (a retryable failure with attempts left, a rejection) or only
// the state answered (success, failure); without a request each outcome keeps its state.
func TestCompleteUnderCancelRequest(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	d, _, _ := startDispatcher(t, url, natsq.Options{})
	q, err := natsq.DialWorker(t.Context(), url, natsq.Options{Pool: pool, RetryBase: 10 * time.Millisecond, RetryCap: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	if _, err := q.Register(t.Context(), api.RegisterRequest{Name: "w", AgentVersion: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.PublishCatalog(t.Context(), catalog); err != nil {
		t.Fatal(err)
	}
	st := jobsStream(t, url)
	for _, tt := range []struct {
		outcome string
		cancel  bool
		want    api.State
	}{
		{"ok", true, api.StateCancelled},
		{"task_error", true, api.StateCancelled},
		{"internal", true, api.StateCancelled},
		{"rejected", true, api.StateCancelled},
		{"ok", false, api.StateSucceeded},
		{"task_error", false, api.StateFailed},
		{"rejected", false, api.StateRejected},
	} {
		id := "job-" + tt.outcome
		if tt.cancel {
			id += "-cancelled"
		}
		t.Run(id, func(t *testing.T) {
			if _, err := d.Dispatch(t.Context(), s.envelope(t, id, `{"n":1}`, 3)); err != nil {
				t.Fatal(err)
			}
			var jobs []api.LeasedJob
			poll(t, 20*time.Second, "the job leased", func() bool {
				jobs, err = q.Lease(t.Context(), 1, 100*time.Millisecond)
				return err == nil && len(jobs) == 1
			})
			if jobs[0].JobID != id {
				t.Fatalf("leased %s, want %s", jobs[0].JobID, id)
			}
			if tt.cancel {
				if j, err := d.Cancel(t.Context(), id); err != nil || j.State != api.StateCancelRequested {
					t.Fatalf("Cancel = %s, %v, want %s", j.State, err, api.StateCancelRequested)
				}
			}
			resp, err := q.Complete(t.Context(), id, api.CompleteRequest{LeaseToken: jobs[0].LeaseToken,
				Attempt: jobs[0].Attempt, Outcome: tt.outcome, ErrorMessage: "as the test says"})
			if err != nil || resp.State != tt.want {
				t.Fatalf("Complete(%s) = %s, %v, want %s", tt.outcome, resp.State, err, tt.want)
			}
			waitState(t, d, id, 20*time.Second, tt.want)
			poll(t, 10*time.Second, "the job's message settled", func() bool {
				info, err := st.Info(context.Background())
				return err == nil && info.State.Msgs == 0
			})
		})
	}
}

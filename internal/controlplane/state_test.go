package controlplane

import (
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
)

func TestRetryAtIsCapped(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	exact := func(m time.Duration) time.Duration { return m }
	for attempt, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 9: 256 * time.Second, 10: 5 * time.Minute, 99: 5 * time.Minute} {
		if got := RetryAt(now, attempt, time.Second, 5*time.Minute, exact).Sub(now); got != want {
			t.Errorf("RetryAt(attempt %d) = now+%s, want now+%s", attempt, got, want)
		}
	}
}

// TestTransitionsFromEveryState: each transition is allowed from exactly the states the
// lifecycle in docs/api.md names, and a refused one leaves the job as it was.
func TestTransitionsFromEveryState(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	for _, st := range api.States {
		j := api.Job{ID: "job_x", State: st}
		err := Approve(&j)
		if (err == nil) != (st == api.StatePendingApproval) || (err != nil && j.State != st) {
			t.Errorf("Approve(%s) = %v, state %s", st, err, j.State)
		}
		j = api.Job{ID: "job_x", State: st}
		err = Deny(&j, "alice", "no", now)
		if (err == nil) != (st == api.StatePendingApproval) || (err != nil && j.State != st) {
			t.Errorf("Deny(%s) = %v, state %s", st, err, j.State)
		}
		if err == nil && (j.State != api.StateDenied || j.DeniedBy != "alice" || j.Outcome != api.OutcomeDeniedByApprover || j.FinishedAt == nil) {
			t.Errorf("Deny(%s) = %+v", st, j)
		}
		j = api.Job{ID: "job_x", State: st}
		changed, err := Cancel(&j, now)
		switch st {
		case api.StatePendingApproval, api.StateQueued:
			if err != nil || !changed || j.State != api.StateCancelled || j.FinishedAt == nil {
				t.Errorf("Cancel(%s) = %v, %v, %+v; want cancelled at once", st, changed, err, j)
			}
		case api.StateRunning:
			if err != nil || !changed || j.State != api.StateCancelRequested {
				t.Errorf("Cancel(%s) = %v, %v, %s; want cancel_requested", st, changed, err, j.State)
			}
		case api.StateCancelRequested:
			if err != nil || changed {
				t.Errorf("Cancel(%s) = %v, %v; want unchanged", st, changed, err)
			}
		default:
			if err == nil || !st.Terminal() || j.State != st {
				t.Errorf("Cancel(%s) = %v, %v, %s; want refused (terminal)", st, changed, err, j.State)
			}
		}
	}
}

func TestCompleteAndExpireState(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cur       api.State
		code      outcome.Code
		retryable bool
		attempt   int
		want      api.State
	}{
		{api.StateRunning, outcome.OK, false, 1, api.StateSucceeded},
		{api.StateCancelRequested, outcome.OK, false, 1, api.StateCancelled},
		{api.StateRunning, outcome.Rejected, false, 1, api.StateRejected},
		{api.StateRunning, outcome.Timeout, true, 1, api.StateQueued},
		{api.StateRunning, outcome.Timeout, true, 3, api.StateDead},
		{api.StateRunning, outcome.Timeout, false, 1, api.StateFailed},
	} {
		if got := CompleteState(c.cur, c.code, c.retryable, c.attempt, 3); got != c.want {
			t.Errorf("CompleteState(%s, %s, retryable %v, attempt %d of 3) = %s, want %s", c.cur, c.code, c.retryable, c.attempt, got, c.want)
		}
	}
	if got := ExpireState(api.StateRunning, 3, 3); got != api.StateDead {
		t.Errorf("ExpireState(last attempt) = %s, want dead", got)
	}
	if got := ExpireState(api.StateRunning, 1, 3); got != api.StateQueued {
		t.Errorf("ExpireState(attempt 1 of 3) = %s, want queued", got)
	}
	if got := ExpireState(api.StateCancelRequested, 1, 3); got != api.StateCancelled {
		t.Errorf("ExpireState(cancel requested) = %s, want cancelled", got)
	}
}

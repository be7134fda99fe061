package controlplane

import (
	"net/http"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
)

// The job state machine, as pure functions on api.Job: each checks that the transition is
// allowed from the job's state and applies it, or returns the refusal. Both backends call
// them on the job they read inside their SQL transaction or KV compare-and-set loop, so
// that which state allows what is decided once (docs/api.md, "Job lifecycle").

// Approve attaches an approval to a pending_approval job: it becomes queued.
func Approve(j *api.Job) error {
	if j.State != api.StatePendingApproval {
		return Refuse(http.StatusConflict, api.CodeInvalidState, "job %s is %s; only a pending_approval job takes an approval", j.ID, j.State)
	}
	j.State, j.HasApproval = api.StateQueued, true
	return nil
}

// Deny ends a pending_approval job as denied by who, with the approver's reason (checked
// by api.CheckDenyReason before). Nothing reaches a worker: only a queued job is handed out.
func Deny(j *api.Job, who, reason string, now time.Time) error {
	if j.State != api.StatePendingApproval {
		return Refuse(http.StatusConflict, api.CodeInvalidState, "job %s is %s; only a pending_approval job can be denied", j.ID, j.State)
	}
	j.State, j.Outcome, j.ErrorMessage, j.DeniedBy, j.FinishedAt = api.StateDenied, api.OutcomeDeniedByApprover, reason, who, &now
	j.NotBefore = nil
	return nil
}

// Cancel cancels a job: one nobody runs (pending_approval, queued, a retry waiting) is
// cancelled at once; a running one is asked to stop (cancel_requested), which its worker
// learns from its next heartbeat. Cancelling a cancel_requested job again changes nothing
// (changed false). A terminal job is refused.
func Cancel(j *api.Job, now time.Time) (changed bool, err error) {
	switch j.State {
	case api.StatePendingApproval, api.StateQueued:
		j.State, j.FinishedAt, j.NotBefore = api.StateCancelled, &now, nil
		return true, nil
	case api.StateRunning:
		j.State = api.StateCancelRequested
		return true, nil
	case api.StateCancelRequested:
		return false, nil
	}
	return false, Refuse(http.StatusConflict, api.CodeInvalidState, "job %s is already %s", j.ID, j.State)
}

// CompleteState is the state a job in state cur moves to when attempt (of maxAttempts)
// ends with code: a requested cancel wins, then success and a refused approval, then a
// retryable failure is queued again while attempts are left and dead after the last.
func CompleteState(cur api.State, code outcome.Code, retryable bool, attempt, maxAttempts int) api.State {
	switch {
	case cur == api.StateCancelRequested || cur == api.StateCancelled:
		return api.StateCancelled
	case code == outcome.OK:
		return api.StateSucceeded
	case code == outcome.Rejected:
		return api.StateRejected
	case retryable && attempt < maxAttempts:
		return api.StateQueued
	case retryable:
		return api.StateDead
	}
	return api.StateFailed
}

// ExpireState is the state of a job whose attempt ended without a result (its lease
// expired, or its message was delivered again): a requested cancel ends it cancelled, the
// last attempt dead (as a timeout), any other queued for the next attempt.
func ExpireState(cur api.State, attempt, maxAttempts int) api.State {
	switch {
	case cur == api.StateCancelRequested:
		return api.StateCancelled
	case attempt >= maxAttempts:
		return api.StateDead
	}
	return api.StateQueued
}

// RetryAt is when a job whose attempt failed retryably may run again: now plus
// api.RetryDelay's full jitter under base doubled per attempt, at most ceiling. jitter
// picks the delay under its bound (api.FullJitter; tests pass a fixed one).
func RetryAt(now time.Time, attempt int, base, ceiling time.Duration, jitter func(time.Duration) time.Duration) time.Time {
	if jitter == nil {
		jitter = api.FullJitter
	}
	return now.Add(jitter(api.RetryCeiling(attempt, base, ceiling)))
}

// CheckCompletion is the check of a completion report that do not depend on the job:
// the refusal, or the outcome code and whether it is retryable.
func CheckCompletion(req api.CompleteRequest) (outcome.Code, bool, error) {
	bad := func(format string, args ...any) (outcome.Code, bool, error) {
		return "", false, Refuse(http.StatusBadRequest, api.CodeInvalidField, format, args...)
	}
	code := outcome.Code(req.Outcome)
	switch {
	case req.LeaseToken == "":
		return bad("lease_token is required")
	case req.Attempt < 1:
		return bad("attempt is %d, want the attempt number from the lease (>= 1)", req.Attempt)
	case !code.Known():
		return bad("outcome %q is not an outcome code (see the outcome codes in docs/api.md)", req.Outcome)
	case len(req.ErrorMessage) > api.MaxErrorMessage:
		return bad("error_message is %d bytes, at most %d", len(req.ErrorMessage), api.MaxErrorMessage)
	case req.DurationMS < 0:
		return bad("duration_ms is negative")
	case len(req.ModuleDigest) > 128:
		return bad("module_digest is over 128 bytes")
	case req.Retryable != nil && *req.Retryable && (code == outcome.OK || code == outcome.Rejected):
		return bad("outcome %q cannot be retryable", code)
	}
	retryable := code.Retryable()
	if req.Retryable != nil {
		retryable = *req.Retryable
	}
	return code, retryable, nil
}

package api

import (
	"errors"
	"net/http"
)

// Errors a worker's queue returns, in both modes, for the refusals it must act on. Test
// with errors.Is: internal/client's *APIError and natsq's WorkerQueue refusals match them
// by code, so that a worker decides what to do without reading HTTP statuses (which the
// JetStream transport does not have).
var (
	// ErrLeaseLost: the lease is no longer this worker's (expired, re-leased, finished,
	// unknown). Stop the job and do not complete it. Code lease_lost.
	ErrLeaseLost = errors.New("lease lost")
	// ErrJobCancelled: the job was cancelled. Stop it and do not complete it. Code
	// job_cancelled.
	ErrJobCancelled = errors.New("job cancelled")
	// ErrFenced: a completion for a stale lease or attempt, or a second one; nothing was
	// recorded and retrying it cannot succeed. Code lease_conflict.
	ErrFenced = errors.New("completion fenced")
	// ErrNotRegistered: register (and publish the catalog) before this call. Code
	// not_registered.
	ErrNotRegistered = errors.New("worker not registered")
	// ErrFinal: the request was refused for what it is (a bad token, a bad request, one of
	// the refusals above); sending it again cannot succeed. Every other error is an outage
	// to retry with back-off. Every 4xx but 408 and 429.
	ErrFinal = errors.New("refused for good")
)

// IsRefusal reports whether an error with HTTP status and code matches target, one of the
// errors above. internal/client's *APIError calls it from its Is method.
func IsRefusal(status int, code string, target error) bool {
	switch target {
	case ErrLeaseLost:
		return code == CodeLeaseLost
	case ErrJobCancelled:
		return code == CodeJobCancelled
	case ErrFenced:
		return code == CodeLeaseConflict
	case ErrNotRegistered:
		return code == CodeNotRegistered
	case ErrFinal:
		return status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests
	}
	return false
}

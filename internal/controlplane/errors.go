package controlplane

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// A refusal is *client.APIError on both sides of the wire: what a backend returns is what
// the Go client decodes, and errors.Is(err, api.ErrLeaseLost) and the like hold for it.
// Its message goes back to the caller and into the log: it must never hold a secret.

// Refuse returns a refusal with status, code and a message.
func Refuse(status int, code, format string, args ...any) *client.APIError {
	return &client.APIError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrTokenInvalid is what Backend.Authenticate returns for a malformed, unknown, revoked or
// otherwise unusable bearer token: 401 unauthenticated, whatever the reason.
var ErrTokenInvalid = errors.New("invalid bearer token")

// ErrNoJob is what Backend.Job returns for an id it does not hold: 404 not_found.
var ErrNoJob = errors.New("no such job")

// NoJob is the refusal for a job the caller may not see or that does not exist: the same
// answer for both, so that ids in other pools cannot be probed.
func NoJob(id string) *client.APIError {
	return Refuse(http.StatusNotFound, api.CodeNotFound, "no job %q in the pools your token may see", id)
}

// Visible returns j's refusal for p (NoJob) unless p may see j's pool. Backends call it
// inside their transaction or compare-and-set loop, on the job they read there.
func Visible(p Principal, j api.Job) error {
	if !p.CanPool(j.Pool) {
		return NoJob(j.ID)
	}
	return nil
}

func asRefusal(err error) (*client.APIError, bool) {
	var ae *client.APIError
	if errors.As(err, &ae) {
		return ae, true
	}
	if errors.Is(err, ErrNoJob) {
		return Refuse(http.StatusNotFound, api.CodeNotFound, "no job in the pools your token may see"), true
	}
	return nil, false
}

// ErrRegistrationUsed is what RegistrationExchanger returns for a registration token
// already exchanged (or revoked since it authenticated): 401, since it authenticates
// nothing any more.
var ErrRegistrationUsed = errors.New("the registration token was already used")

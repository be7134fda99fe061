package server

import (
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/controlplane"
)

// apiError is an expected failure with its HTTP status and stable code (the layer's
// refusal type). Its message must never contain a secret (tokens, approvals): it goes
// back to the caller and the log.
type apiError = client.APIError

func errf(status int, code, format string, args ...any) *apiError {
	return controlplane.Refuse(status, code, format, args...)
}

package castellan

import (
	"fmt"

	"github.com/castellan-dev/castellan/sdk/go/internal/abi"
)

// Errno is an error code returned by the host. The constants below are its only values in
// ABI version 1 (numbered as in docs/abi.md); compare with errors.Is, since the SDK wraps
// them with what was being done.
type Errno int32

const (
	// ErrInvalid: malformed arguments, such as a header with a newline in its value.
	ErrInvalid = Errno(abi.EInvalid)
	// ErrUpstream: the endpoint could not be reached, reset the connection or timed out.
	// Retrying may help.
	ErrUpstream = Errno(abi.EUpstream)
	// ErrTooLarge: the response body exceeded the endpoint's max_response_bytes.
	ErrTooLarge = Errno(abi.ETooLarge)
	// ErrBadHandle: the response is not open (already closed, or never opened).
	ErrBadHandle = Errno(abi.EBadHandle)
	// ErrTooManyOpen: 8 responses are already open; close one first.
	ErrTooManyOpen = Errno(abi.ETooManyOpen)
	// ErrNotInJob: an HTTP request was made outside a job, for example from an init function.
	ErrNotInJob = Errno(abi.ENotInJob)
)

func (e Errno) Error() string {
	switch e {
	case ErrInvalid:
		return "invalid arguments (E_INVALID)"
	case ErrUpstream:
		return "endpoint unreachable or timed out (E_UPSTREAM)"
	case ErrTooLarge:
		return "response body larger than the endpoint allows (E_TOO_LARGE)"
	case ErrBadHandle:
		return "response is not open (E_BAD_HANDLE)"
	case ErrTooManyOpen:
		return "too many open responses, close one first (E_TOO_MANY_OPEN)"
	case ErrNotInJob:
		return "called outside a job, e.g. from init (E_NOT_IN_JOB)"
	}
	return fmt.Sprintf("unknown host error %d", int32(e))
}

package castellan

import "fmt"

// Errno is an error code returned by the host. The constants below are its only values in
// ABI version 1; compare with errors.Is, since the SDK wraps them with what was being done.
type Errno int32

const (
	// ErrInvalid: malformed arguments, such as a header with a newline in its value.
	ErrInvalid Errno = -1
	// ErrUpstream: the endpoint could not be reached, reset the connection or timed out.
	// Retrying may help.
	ErrUpstream Errno = -2
	// ErrTooLarge: the response body exceeded the endpoint's max_response_bytes.
	ErrTooLarge Errno = -3
	// ErrBadHandle: the response is not open (already closed, or never opened).
	ErrBadHandle Errno = -4
	// ErrTooManyOpen: 8 responses are already open; close one first.
	ErrTooManyOpen Errno = -5
	// ErrNotInJob: an HTTP request was made outside a job, for example from an init function.
	ErrNotInJob Errno = -6
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

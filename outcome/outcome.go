// Package outcome names how a job ended. Every layer (sandbox, host functions, egress, worker,
// queue) reports failure as an *Error carrying a Code, and callers decide retry, ack or
// rejection with errors.As / CodeOf, never by matching strings.
package outcome

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// Code is the stable, machine-readable name of an outcome. The values are part of the
// control-plane API and the CLI output: never rename one.
type Code string

const (
	OK                    Code = "ok"
	TaskError             Code = "task_error"             // the task reported failure itself
	Timeout               Code = "timeout"                // wall-clock deadline hit (guest or host call)
	Cancelled             Code = "cancelled"              // the job's context was cancelled (drain, cancel)
	MemoryLimit           Code = "memory_limit"           // the guest hit its memory page limit
	Trap                  Code = "trap"                   // unreachable, stack overflow, out-of-bounds...
	OutputTooLarge        Code = "output_too_large"       // output or error message over its byte limit
	CallBudgetExceeded    Code = "call_budget_exceeded"   // more host HTTP calls than the task may make
	Denied                Code = "denied"                 // a request the policy does not allow
	ModuleRejected        Code = "module_rejected"        // invalid module, bad digest, forbidden imports
	SecretInOutput        Code = "secret_in_output"       // a credential value reached the output
	InvalidOutput         Code = "invalid_output"         // the output is not JSON or breaks the task's output_schema
	CredentialUnavailable Code = "credential_unavailable" // the secrets provider failed (Vault down, missing)
	Rejected              Code = "rejected"               // the worker refused the job (bad approval)
	Internal              Code = "internal"               // a bug or host failure; not the task's fault
)

// Codes lists every code, for documentation and validation. It returns a new slice each time.
func Codes() []Code { return slices.Clone(codes) }

// Known reports whether c is one of Codes.
func (c Code) Known() bool { return slices.Contains(codes, c) }

var codes = []Code{OK, TaskError, Timeout, Cancelled, MemoryLimit, Trap, OutputTooLarge,
	CallBudgetExceeded, Denied, ModuleRejected, SecretInOutput, InvalidOutput, CredentialUnavailable, Rejected, Internal}

// Retryable reports whether running the same job again could reasonably succeed. Decided
// here, once, so that the worker and every queue transport agree.
func (c Code) Retryable() bool {
	switch c {
	case Timeout, CredentialUnavailable, Internal:
		return true
	}
	return false
}

// Error is a job failure with its outcome code. Msg is safe to show to the control plane: it
// must never hold a credential, an internal URL or a request detail. Err, if set, is the
// local cause (kept for logs and errors.Is) and is never sent off the worker.
type Error struct {
	Code Code
	Msg  string
	Err  error
}

// New returns an *Error with a formatted, control-plane-safe message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error whose local cause is err.
func Wrap(code Code, err error, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...), Err: err}
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return string(e.Code)
	}
	return string(e.Code) + ": " + e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// Is lets errors.Is(err, context.DeadlineExceeded) hold for every timeout and
// errors.Is(err, context.Canceled) for every cancellation, even when the cause was lost.
func (e *Error) Is(target error) bool {
	switch {
	case e.Code == Timeout && target == context.DeadlineExceeded:
		return true
	case e.Code == Cancelled && target == context.Canceled:
		return true
	}
	return false
}

// CodeOf returns the outcome code of err: OK for nil, the code of the first *Error in the
// chain, Timeout or Cancelled for bare context errors, and Internal for anything else.
func CodeOf(err error) Code {
	if err == nil {
		return OK
	}
	var oe *Error
	if errors.As(err, &oe) {
		return oe.Code
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return Timeout
	case errors.Is(err, context.Canceled):
		return Cancelled
	}
	return Internal
}

// Message returns the control-plane-safe message of err: the Msg of the first *Error, or a
// generic text for anything else (an untyped error may carry local detail).
func Message(err error) string {
	var oe *Error
	if errors.As(err, &oe) {
		return oe.Msg
	}
	switch CodeOf(err) {
	case Timeout:
		return "deadline exceeded"
	case Cancelled:
		return "cancelled"
	}
	return "internal error on the worker (see the worker's log)"
}

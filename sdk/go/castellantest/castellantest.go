// Package castellantest runs a Castellan task handler natively, against an in-process fake
// of the worker, so that task authors can test their logic with plain `go test` before
// building the .wasm.
//
// The fake plays the host's part of docs/abi.md faithfully enough to catch the mistakes that
// matter: it serves the endpoints from ordinary http.Handlers, refuses what the real host
// refuses (unknown endpoints, paths that could escape the base URL, sensitive headers,
// off-origin redirects) by ending the job as denied, enforces the call budget, the output
// limit, the response size limit and the 8-open-responses rule. It does not inject
// credentials or redact: those are the worker's, and are tested there.
package castellantest

import (
	"context"
	"net/http"

	castellan "github.com/castellan-dev/castellan/sdk/go"
	"github.com/castellan-dev/castellan/sdk/go/internal/abi"

	"github.com/castellan-dev/castellan/outcome"
)

// Options configures a fake job. Every field is optional.
type Options struct {
	// Endpoints serves each endpoint name the task may call. A name not in the map is
	// denied, as on the worker.
	Endpoints map[string]http.Handler
	// HTTPCalls is the http_calls budget. Optional, default 0: unlimited.
	HTTPCalls int
	// OutputBytes is the output_bytes limit. Optional, default 0: unlimited.
	OutputBytes int
	// MaxResponseBytes bounds every response body; reading past it fails with
	// castellan.ErrTooLarge. Optional, default 1 MiB, as egress.DefaultMaxResponseBytes.
	MaxResponseBytes int
	// Log receives the task's log lines. Optional, default: discarded.
	Log func(level castellan.Level, msg string)
	// Context is the context of the requests handed to Endpoints. Optional, default
	// context.Background(); pass t.Context() in tests.
	Context context.Context
}

// Run runs handler once, as the worker would run a job with this input, and returns what the
// job wrote with Output, the message it failed with (empty on success), and a non-nil error
// only if the host ended the job itself. That error is an *outcome.Error whose Code says why:
// outcome.Denied (a request the policy would refuse), outcome.CallBudgetExceeded,
// outcome.OutputTooLarge, or outcome.TaskError when the entry failed without a message.
//
// Endpoints may be nil for a task that makes no HTTP calls.
func Run(handler func(*castellan.Context) error, input []byte, endpoints map[string]http.Handler) (output []byte, failMsg string, err error) {
	return RunOptions(handler, input, Options{Endpoints: endpoints})
}

// RunOptions is Run with limits and hooks.
func RunOptions(handler func(*castellan.Context) error, input []byte, opts Options) (output []byte, failMsg string, err error) {
	if opts.Context == nil {
		opts.Context = context.Background()
	}
	if opts.MaxResponseBytes <= 0 {
		opts.MaxResponseBytes = 1 << 20
	}
	h := &host{opts: opts, input: input, open: map[int32]*response{}}

	// The handler runs on its own goroutine so that a fatal condition can end it with
	// runtime.Goexit, as the worker ends the instance: the task cannot catch it.
	code := int32(-1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		code = abi.Entry(h, handler)
	}()
	<-done

	h.dead = true
	switch {
	case h.fatal != nil:
		return h.output, h.failMsg, h.fatal
	case code != 0 && !h.failed:
		return h.output, "", outcome.New(outcome.TaskError, "entry returned %d without calling fail", code)
	}
	return h.output, h.failMsg, nil
}

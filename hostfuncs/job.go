package hostfuncs

import (
	"bytes"
	"context"
	"net/http"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/outcome"
)

// HTTPDoer performs a scoped request; *egress.Gateway implements it.
type HTTPDoer interface {
	Do(ctx context.Context, job egress.JobRef, req egress.Request) (*egress.Response, error)
}

// Scrubber removes credential values from text bound for a log; *redact.Set implements it.
type Scrubber interface {
	RedactString(string) string
}

// Job is the state of one job while its instance runs. It is used from the guest's goroutine
// only (wazero calls host functions synchronously), so it needs no lock.
//
// Job is not an options struct: package runtime fills it from the effective limits of a
// module (runtime.Limits with every default applied), so its limits are exact and zero
// allows nothing; defaults and the check for negative values happen once, in runtime.Load.
type Job struct {
	ID    string
	Task  string
	Input []byte

	// OutputLimit bounds the bytes output_write may accept in total; 0 accepts none.
	OutputLimit int64
	// HTTP performs requests; nil means the task has no endpoint, and http_request is denied.
	HTTP HTTPDoer
	// HTTPCalls is the http_request budget; 0 allows none.
	HTTPCalls int
	// Log receives log lines, already tagged with task and job; LogBytes bounds their total
	// (0 keeps none).
	Log      *zap.Logger
	LogBytes int64
	// Scrub redacts log lines. Optional.
	Scrub Scrubber

	output    bytes.Buffer
	failMsg   string
	failed    bool
	calls     int
	logUsed   int64
	logMuted  bool
	responses map[int32]*openResponse
	next      int32
	// lastEndpoint is the endpoint name of the last http_request, kept to avoid converting
	// the same guest bytes to a new string on every call.
	lastEndpoint string
	fatal        error
}

type openResponse struct {
	resp     *egress.Response
	header   []byte // rendered on first use: most tasks never read response headers
	rendered bool
}

// headerBlock returns the response's (already redacted) headers as the ABI's text block.
func (r *openResponse) headerBlock() []byte {
	if !r.rendered {
		r.header, r.rendered = renderHeader(r.resp.Header), true
	}
	return r.header
}

// Output returns what the task wrote.
func (j *Job) Output() []byte { return j.output.Bytes() }

// Failure returns the task's fail message and whether it called fail.
func (j *Job) Failure() (string, bool) { return j.failMsg, j.failed }

// Fatal returns the error that made a host function end the job, if any.
func (j *Job) Fatal() error { return j.fatal }

// Calls returns how many http_request calls the task made.
func (j *Job) Calls() int { return j.calls }

// CloseResponses closes every response the task left open; each close emits its audit event.
func (j *Job) CloseResponses() {
	for h, r := range j.responses {
		_ = r.resp.Body.Close()
		delete(j.responses, h)
	}
}

// header block helpers shared by request parsing and response rendering.
func renderHeader(h http.Header) []byte {
	n := 0
	for k, vals := range h {
		for _, v := range vals {
			n += len(k) + len(v) + 3
		}
	}
	var b bytes.Buffer
	b.Grow(n)
	for _, k := range sortedKeys(h) {
		for _, v := range h[k] {
			b.WriteString(k)
			b.WriteString(": ")
			b.WriteString(v)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}

type jobKey struct{}

// WithJob returns a context carrying j, for the call of a module's entry function.
func WithJob(ctx context.Context, j *Job) context.Context {
	return context.WithValue(ctx, jobKey{}, j)
}

func jobFrom(ctx context.Context) *Job {
	j, _ := ctx.Value(jobKey{}).(*Job)
	return j
}

// terminate records a fatal outcome and unwinds the guest. wazero recovers the panic and
// returns it (wrapped with %w) from the entry call; the runtime prefers j.Fatal() anyway.
func (j *Job) terminate(err *outcome.Error) {
	if j.fatal == nil {
		j.fatal = err
	}
	panic(err)
}

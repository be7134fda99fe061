package hostfuncs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/tetratelabs/wazero/api"
	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/outcome"
)

// read returns a view of guest memory, or ends the job as a trap when the range is outside it.
// Out-of-bounds is always a guest bug (or an attack), never a condition to report back.
func read(ctx context.Context, mod api.Module, ptr, n uint32) []byte {
	b, ok := mod.Memory().Read(ptr, n)
	if !ok {
		trapOOB(ctx, ptr, n, mod)
	}
	return b
}

func trapOOB(ctx context.Context, ptr, n uint32, mod api.Module) {
	err := outcome.New(outcome.Trap, "host call with out-of-bounds memory range [%d, %d) (memory is %d bytes)",
		ptr, uint64(ptr)+uint64(n), mod.Memory().Size())
	if j := jobFrom(ctx); j != nil {
		j.terminate(err)
	}
	panic(err)
}

func ret(stack []uint64, v int32) { stack[0] = api.EncodeI32(v) }

func u32(v uint64) uint32 { return api.DecodeU32(v) }

func inputSize(ctx context.Context, _ api.Module, stack []uint64) {
	j := jobFrom(ctx)
	if j == nil {
		ret(stack, 0)
		return
	}
	ret(stack, int32(len(j.Input)))
}

// bufferAndJob is how a host function taking one (ptr, len) buffer starts: the buffer is
// bounds-checked even outside a job, and a call outside a job (nil Job) returns 0.
func bufferAndJob(ctx context.Context, mod api.Module, stack []uint64) ([]byte, *Job) {
	b := read(ctx, mod, u32(stack[0]), u32(stack[1]))
	j := jobFrom(ctx)
	if j == nil {
		ret(stack, 0)
	}
	return b, j
}

func inputRead(ctx context.Context, mod api.Module, stack []uint64) {
	dst, j := bufferAndJob(ctx, mod, stack)
	if j == nil {
		return
	}
	ret(stack, int32(copy(dst, j.Input)))
}

func outputWrite(ctx context.Context, mod api.Module, stack []uint64) {
	src, j := bufferAndJob(ctx, mod, stack)
	if j == nil {
		return
	}
	if int64(j.output.Len())+int64(len(src)) > j.OutputLimit {
		j.terminate(outcome.New(outcome.OutputTooLarge, "output exceeds the task's limit of %d bytes", j.OutputLimit))
	}
	j.output.Write(src)
	ret(stack, 0)
}

func fail(ctx context.Context, mod api.Module, stack []uint64) {
	src, j := bufferAndJob(ctx, mod, stack)
	if j == nil {
		return
	}
	msg := src
	if len(msg) > MaxFailMessage {
		msg = msg[:MaxFailMessage]
	}
	j.failMsg = strings.ToValidUTF8(string(msg), "\uFFFD")
	if len(src) > MaxFailMessage {
		j.failMsg += " [truncated]"
	}
	j.failed = true
	ret(stack, 0)
}

func logLine(ctx context.Context, mod api.Module, stack []uint64) {
	level, ptr, n := int32(stack[0]), u32(stack[1]), u32(stack[2])
	src := read(ctx, mod, ptr, n)
	if level < 0 || level > 3 {
		ret(stack, errInvalid)
		return
	}
	j := jobFrom(ctx)
	if j == nil || j.Log == nil {
		ret(stack, 0)
		return
	}
	j.WriteLog(int(level), "task log", src)
	ret(stack, 0)
}

// LogLineOverhead is what every log line counts against a job's log budget on top of its own
// bytes: the fields the worker adds (level, time, task, job, message name). Without it a task
// could flood the log with empty lines, each free.
const LogLineOverhead = 128

// LogCost is what one line of n guest bytes counts against a log budget.
func LogCost(n int) int64 { return int64(n) + LogLineOverhead }

// ChargeLog counts log bytes written before the job was bound to its instance (by
// _initialize) against the job's budget: one instance, one budget.
func (j *Job) ChargeLog(used int64) { j.logUsed += used }

// WriteLog sends guest-supplied text to the worker's log: bounded by the job's log budget
// (every line, empty or not, costs its bytes plus LogLineOverhead), made valid UTF-8, and
// scrubbed of credential values (an upstream response the task logs could carry one).
func (j *Job) WriteLog(level int, what string, src []byte) {
	if j.logMuted {
		return
	}
	cost := LogCost(len(src))
	if j.logUsed+cost > j.LogBytes {
		j.logMuted = true
		j.Log.Warn("task log budget exhausted; further lines dropped", zap.Int64("log_bytes", j.LogBytes))
		return
	}
	j.logUsed += cost
	msg := strings.ToValidUTF8(string(src), "\uFFFD")
	if j.Scrub != nil {
		msg = j.Scrub.RedactString(msg)
	}
	f := zap.String("msg", msg)
	switch level {
	case 0:
		j.Log.Debug(what, f)
	case 1:
		j.Log.Info(what, f)
	case 2:
		j.Log.Warn(what, f)
	default:
		j.Log.Error(what, f)
	}
}

func httpRequest(ctx context.Context, mod api.Module, stack []uint64) {
	endpoint := read(ctx, mod, u32(stack[0]), u32(stack[1]))
	method := read(ctx, mod, u32(stack[2]), u32(stack[3]))
	target := read(ctx, mod, u32(stack[4]), u32(stack[5]))
	headers := read(ctx, mod, u32(stack[6]), u32(stack[7]))
	body := read(ctx, mod, u32(stack[8]), u32(stack[9]))
	j := jobFrom(ctx)
	if j == nil {
		ret(stack, errNotInJob)
		return
	}
	j.calls++
	if j.calls > j.HTTPCalls {
		j.terminate(outcome.New(outcome.CallBudgetExceeded, "more than %d HTTP calls", j.HTTPCalls))
	}
	if len(j.responses) >= MaxOpenResponses {
		ret(stack, errTooManyOpen)
		return
	}
	h, err := parseHeaderBlock(headers)
	if err != nil {
		j.terminate(outcome.New(outcome.Denied, "request headers: %v", err))
	}
	if j.HTTP == nil {
		j.terminate(outcome.New(outcome.Denied, "endpoint %q is not granted to task %q", printable(endpoint), j.Task))
	}
	req := egress.Request{
		Endpoint: j.endpointName(endpoint),
		Method:   methodName(method),
		Target:   string(target),
		Header:   h,
		Body:     append([]byte(nil), body...),
	}
	resp, err := j.HTTP.Do(ctx, egress.JobRef{Task: j.Task, Job: j.ID}, req)
	if err != nil {
		if ctx.Err() != nil {
			// The job's own deadline or cancellation explains whatever failed (a credential
			// fetch or the request itself): report that, not its symptom.
			j.terminate(ctxOutcome(ctx, "job ended during an HTTP call"))
		}
		var up *egress.UpstreamError
		if errors.As(err, &up) {
			j.Log.Info("http request failed upstream", zap.String("endpoint", req.Endpoint), zap.Error(err))
			ret(stack, errUpstream)
			return
		}
		var oe *outcome.Error
		if !errors.As(err, &oe) {
			oe = outcome.Wrap(outcome.Internal, err, "http request failed on the host")
		}
		j.terminate(oe)
	}
	if j.responses == nil {
		j.responses = map[int32]*openResponse{}
	}
	j.next++
	j.responses[j.next] = &openResponse{resp: resp}
	ret(stack, j.next)
}

func response(ctx context.Context, stack []uint64) (*Job, *openResponse) {
	j := jobFrom(ctx)
	if j == nil {
		ret(stack, errNotInJob)
		return nil, nil
	}
	r := j.responses[int32(stack[0])]
	if r == nil {
		ret(stack, errBadHandle)
	}
	return j, r
}

func httpStatus(ctx context.Context, _ api.Module, stack []uint64) {
	if _, r := response(ctx, stack); r != nil {
		ret(stack, int32(r.resp.Status))
	}
}

func httpHeaderSize(ctx context.Context, _ api.Module, stack []uint64) {
	if _, r := response(ctx, stack); r != nil {
		ret(stack, int32(len(r.headerBlock())))
	}
}

func httpHeaderRead(ctx context.Context, mod api.Module, stack []uint64) {
	dst := read(ctx, mod, u32(stack[1]), u32(stack[2]))
	if _, r := response(ctx, stack); r != nil {
		ret(stack, int32(copy(dst, r.headerBlock())))
	}
}

func httpBodyRead(ctx context.Context, mod api.Module, stack []uint64) {
	// The body is read straight into guest memory: the only copy is the one the redacting
	// reader makes from its window.
	dst := read(ctx, mod, u32(stack[1]), u32(stack[2]))
	j, r := response(ctx, stack)
	if r == nil {
		return
	}
	if len(dst) == 0 {
		ret(stack, 0)
		return
	}
	for {
		n, err := r.resp.Body.Read(dst)
		switch {
		case n > 0:
			ret(stack, int32(n))
			return
		case err == io.EOF:
			ret(stack, 0)
			return
		case errors.Is(err, egress.ErrResponseTooLarge):
			ret(stack, errTooLarge)
			return
		case err != nil:
			if ctx.Err() != nil {
				j.terminate(ctxOutcome(ctx, "job ended while reading a response"))
			}
			j.Log.Info("http response body failed", zap.Error(err))
			ret(stack, errUpstream)
			return
		}
		// n == 0 and err == nil: read again, as io.Reader allows.
	}
}

func httpClose(ctx context.Context, _ api.Module, stack []uint64) {
	j, r := response(ctx, stack)
	if r == nil {
		return
	}
	_ = r.resp.Body.Close()
	delete(j.responses, int32(stack[0]))
	ret(stack, 0)
}

// methodName returns method as a string, without allocating for the common methods.
func methodName(b []byte) string {
	switch string(b) { // a switch on string(b) does not allocate
	case http.MethodGet:
		return http.MethodGet
	case http.MethodPost:
		return http.MethodPost
	case http.MethodPut:
		return http.MethodPut
	case http.MethodPatch:
		return http.MethodPatch
	case http.MethodDelete:
		return http.MethodDelete
	case http.MethodHead:
		return http.MethodHead
	}
	return string(b)
}

// endpointName returns b as a string, reusing the previous call's when it is the same
// endpoint (tasks usually call one or two endpoints many times).
func (j *Job) endpointName(b []byte) string {
	if string(b) != j.lastEndpoint { // comparing with string(b) does not allocate
		j.lastEndpoint = string(b)
	}
	return j.lastEndpoint
}

// parseHeaderBlock parses "Name: value\n" lines. Anything that is not exactly that (a bare CR,
// a line without a colon, an invalid name) is refused: header smuggling is not a formatting
// accident. Which names are allowed is the gateway's decision.
func parseHeaderBlock(b []byte) (http.Header, error) {
	if len(b) == 0 {
		return nil, nil // no headers; the gateway reads a nil Header as empty
	}
	h := http.Header{}
	if !utf8.Valid(b) {
		return nil, errors.New("header block is not valid UTF-8")
	}
	for i, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("line %d: want \"Name: value\"", i+1)
		}
		if !httpguts.ValidHeaderFieldName(name) {
			return nil, fmt.Errorf("line %d: invalid header name %q", i+1, printable([]byte(name)))
		}
		value = strings.TrimLeft(value, " \t")
		if strings.ContainsAny(value, "\r\x00") {
			return nil, fmt.Errorf("line %d: header %s: value contains CR or NUL", i+1, name)
		}
		h.Add(name, value)
	}
	return h, nil
}

// printable quotes at most 64 bytes of guest-supplied text for an error message.
func printable(b []byte) string {
	if len(b) > 64 {
		b = b[:64]
	}
	return strings.ToValidUTF8(string(b), "?")
}

func sortedKeys(h http.Header) []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func ctxOutcome(ctx context.Context, msg string) *outcome.Error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return outcome.Wrap(outcome.Cancelled, ctx.Err(), "%s", msg)
	}
	return outcome.Wrap(outcome.Timeout, ctx.Err(), "%s", msg)
}

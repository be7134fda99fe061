package castellantest

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"sort"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/castellan-dev/castellan/outcome"
	castellan "github.com/castellan-dev/castellan/sdk/go"
	"github.com/castellan-dev/castellan/sdk/go/internal/abi"
)

// host is the fake castellan_v1 module for one job. It is only used from the job's goroutine.
type host struct {
	opts    Options
	input   []byte
	output  []byte
	failMsg string
	failed  bool
	calls   int
	open    map[int32]*response
	next    int32
	fatal   *outcome.Error
	dead    bool // the job has ended: every further call is a no-op
}

type response struct {
	status int
	header []byte
	body   []byte
	off    int
	limit  int
}

var _ abi.Host = (*host)(nil)

// end ends the job with code, as the worker does for a fatal condition: the task's
// goroutine stops here, running its deferred calls, and the handler never sees an error.
func (h *host) end(code outcome.Code, format string, args ...any) {
	h.fatal = outcome.New(code, format, args...)
	h.dead = true
	runtime.Goexit()
}

func (h *host) InputSize() int32 {
	if h.dead {
		return 0
	}
	return int32(len(h.input))
}

func (h *host) InputRead(buf []byte) int32 {
	if h.dead {
		return 0
	}
	return int32(copy(buf, h.input))
}

func (h *host) OutputWrite(b []byte) int32 {
	if h.dead {
		return abi.ENotInJob
	}
	if h.opts.OutputBytes > 0 && len(h.output)+len(b) > h.opts.OutputBytes {
		h.end(outcome.OutputTooLarge, "output of %d bytes is over the %d-byte limit", len(h.output)+len(b), h.opts.OutputBytes)
	}
	h.output = append(h.output, b...)
	return 0
}

func (h *host) Fail(msg string) int32 {
	if h.dead {
		return abi.ENotInJob
	}
	if len(msg) > abi.MaxFailLength {
		msg = msg[:abi.MaxFailLength]
	}
	h.failed, h.failMsg = true, msg
	return 0
}

func (h *host) Log(level int32, msg string) int32 {
	if h.dead {
		return abi.ENotInJob
	}
	if level < 0 || level > 3 {
		return abi.EInvalid
	}
	if h.opts.Log != nil {
		h.opts.Log(castellan.Level(level), msg)
	}
	return 0
}

func (h *host) HTTPRequest(endpoint, method, target string, headers, body []byte) int32 {
	if h.dead {
		return abi.ENotInJob
	}
	h.calls++
	if h.opts.HTTPCalls > 0 && h.calls > h.opts.HTTPCalls {
		h.end(outcome.CallBudgetExceeded, "http_request call %d is over the budget of %d", h.calls, h.opts.HTTPCalls)
	}
	handler, ok := h.opts.Endpoints[endpoint]
	if !ok || handler == nil {
		h.end(outcome.Denied, "endpoint %q is not granted to the task (castellantest Options.Endpoints has no such key)", endpoint)
	}
	if !isMethod(method) {
		h.end(outcome.Denied, "method %q is not an upper-case HTTP token", method)
	}
	if why := badTarget(target); why != "" {
		h.end(outcome.Denied, "target %q %s", target, why)
	}
	hdr, err := parseRequestHeaders(headers)
	if err != nil {
		h.end(outcome.Denied, "request headers: %v", err) // as the worker's host does
	}
	for name := range hdr {
		if sensitiveHeader(name) {
			h.end(outcome.Denied, "request header %s may not be set by a task", name)
		}
	}
	if len(h.open) >= abi.MaxOpen {
		return abi.ETooManyOpen
	}

	resp := h.serve(endpoint, handler, method, target, hdr, body)
	if resp == nil {
		return abi.EUpstream
	}
	h.next++
	h.open[h.next] = resp
	return h.next
}

// serve sends the request to the endpoint's handler, following same-origin redirects the way
// the worker does (re-checking each hop's target).
func (h *host) serve(endpoint string, handler http.Handler, method, target string, hdr http.Header, body []byte) *response {
	base := "http://" + endpoint + ".castellantest.invalid"
	for hop := 0; ; hop++ {
		rec, ok := h.do(handler, method, base+target, hdr, body)
		if !ok {
			return nil
		}
		loc := rec.Header().Get("Location")
		if !isRedirect(rec.Code) || loc == "" {
			return newResponse(rec, h.opts.MaxResponseBytes)
		}
		if hop == 10 {
			return nil // too many redirects: the worker reports an upstream error
		}
		u, err := url.Parse(base + target)
		if err == nil {
			u, err = u.Parse(loc)
		}
		if err != nil || u.Scheme+"://"+u.Host != base {
			h.end(outcome.Denied, "endpoint %q redirected off the endpoint, to %q", endpoint, loc)
		}
		target = u.EscapedPath()
		if u.RawQuery != "" {
			target += "?" + u.RawQuery
		}
		if why := badTarget(target); why != "" {
			h.end(outcome.Denied, "endpoint %q redirected to target %q, which %s", endpoint, target, why)
		}
		if rec.Code == http.StatusSeeOther || (rec.Code <= http.StatusFound && method != http.MethodGet && method != http.MethodHead) {
			method, body = http.MethodGet, nil
		}
	}
}

// do runs one request against handler. A panicking handler (http.ErrAbortHandler is the
// idiomatic way) stands for a broken connection.
func (h *host) do(handler http.Handler, method, rawURL string, hdr http.Header, body []byte) (rec *httptest.ResponseRecorder, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			ok = false
		}
	}()
	req := httptest.NewRequestWithContext(h.opts.Context, method, rawURL, bytes.NewReader(body))
	for k, v := range hdr {
		req.Header[k] = v
	}
	rec = httptest.NewRecorder()
	handler.ServeHTTP(rec, req)
	return rec, true
}

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

func newResponse(rec *httptest.ResponseRecorder, limit int) *response {
	var keys []string
	for k := range rec.Header() {
		if k == "Set-Cookie" || hopByHop(k) {
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var block []byte
	for _, k := range keys {
		for _, v := range rec.Header()[k] {
			block = fmt.Appendf(block, "%s: %s\n", k, v)
		}
	}
	return &response{status: rec.Code, header: block, body: rec.Body.Bytes(), limit: limit}
}

func (h *host) get(handle int32) *response {
	if h.dead {
		return nil
	}
	return h.open[handle]
}

func (h *host) HTTPStatus(handle int32) int32 {
	r := h.get(handle)
	if r == nil {
		return abi.EBadHandle
	}
	return int32(r.status)
}

func (h *host) HTTPHeaderSize(handle int32) int32 {
	r := h.get(handle)
	if r == nil {
		return abi.EBadHandle
	}
	return int32(len(r.header))
}

func (h *host) HTTPHeaderRead(handle int32, buf []byte) int32 {
	r := h.get(handle)
	if r == nil {
		return abi.EBadHandle
	}
	return int32(copy(buf, r.header))
}

func (h *host) HTTPBodyRead(handle int32, buf []byte) int32 {
	r := h.get(handle)
	if r == nil {
		return abi.EBadHandle
	}
	if r.off >= r.limit && len(r.body) > r.limit {
		return abi.ETooLarge
	}
	end := min(len(r.body), r.limit, r.off+len(buf))
	n := copy(buf, r.body[r.off:end])
	r.off += n
	return int32(n)
}

func (h *host) HTTPClose(handle int32) int32 {
	if h.get(handle) == nil {
		return abi.EBadHandle
	}
	delete(h.open, handle)
	return 0
}

func isMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		if c := m[i]; c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

// badTarget says why target could escape or confuse the endpoint's base URL, following the
// list in docs/abi.md, or returns "".
func badTarget(target string) string {
	if !strings.HasPrefix(target, "/") {
		return "does not start with \"/\""
	}
	if strings.Contains(target, "//") {
		return "contains \"//\""
	}
	for i := 0; i < len(target); i++ {
		c := target[i]
		switch {
		case c < 0x20 || c == 0x7f:
			return fmt.Sprintf("contains control character %#x at byte %d", c, i)
		case c == ' ' || c == '\\' || c == '@' || c == '#':
			return fmt.Sprintf("contains %q at byte %d", c, i)
		}
	}
	path, _, _ := strings.Cut(target, "?")
	for _, seg := range strings.Split(path[1:], "/") {
		dec, err := url.PathUnescape(seg)
		if err != nil {
			return "has a malformed percent-encoding"
		}
		if dec == "." || dec == ".." {
			return "has a \".\" or \"..\" segment"
		}
		if strings.ContainsAny(dec, "/\\") {
			return "has an encoded slash or backslash"
		}
	}
	return ""
}

// parseRequestHeaders parses a request header block: "Name: value\n" lines, each
// terminated.
func parseRequestHeaders(b []byte) (http.Header, error) {
	hdr := http.Header{}
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil, fmt.Errorf("header block: last line is not terminated by \\n")
		}
		line := string(b[:i])
		b = b[i+1:]
		name, value, ok := strings.Cut(line, ":")
		if !ok || !httpguts.ValidHeaderFieldName(name) {
			return nil, fmt.Errorf("header block: line %q is not \"Name: value\"", line)
		}
		if strings.ContainsAny(value, "\r\x00") {
			return nil, fmt.Errorf("header block: value of %s has a control character", name)
		}
		hdr.Add(name, strings.TrimSpace(value))
	}
	return hdr, nil
}

func sensitiveHeader(name string) bool {
	name = http.CanonicalHeaderKey(name)
	switch name {
	case "Authorization", "Proxy-Authorization", "Cookie", "Host", "Content-Length", "Forwarded":
		return true
	}
	return hopByHop(name) || strings.HasPrefix(name, "Proxy-") || strings.HasPrefix(name, "X-Forwarded-")
}

func hopByHop(name string) bool {
	switch name {
	case "Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Connection":
		return true
	}
	return false
}

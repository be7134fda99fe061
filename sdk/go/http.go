package castellan

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/castellan-dev/castellan/sdk/go/internal/abi"
)

// Endpoint is an internal HTTP API the policy lets the task call, by its logical name. The
// task never sees the URL or the credential: the host builds the URL from the endpoint's
// base URL and the request path, checks the policy, and injects the credential itself.
type Endpoint struct {
	host abi.Host
	name string
}

// Name returns the endpoint's logical name.
func (e *Endpoint) Name() string { return e.name }

// Request is one HTTP request to an endpoint.
type Request struct {
	// Method is an HTTP method; empty means GET. It is sent upper-cased.
	Method string
	// Path is the path relative to the endpoint's base URL, starting with "/", optionally
	// followed by "?query". The host ends the job as denied for anything that could escape
	// the base URL ("..", "//", "@", "#", encoded slashes, an absolute URL...).
	Path string
	// Header holds extra request headers. Authorization, Cookie, Host, hop-by-hop headers
	// and the endpoint's credential header are refused by the host (the job is denied).
	Header Header
	// Body is the request body; nil for none.
	Body []byte
}

// Get sends a GET request for path.
func (e *Endpoint) Get(path string) (*Response, error) {
	return e.Do(&Request{Method: "GET", Path: path})
}

// Post sends a POST request for path with the given body and Content-Type.
func (e *Endpoint) Post(path, contentType string, body []byte) (*Response, error) {
	req := &Request{Method: "POST", Path: path, Body: body}
	if contentType != "" {
		req.Header = Header{"Content-Type": {contentType}}
	}
	return e.Do(req)
}

// Do sends req and returns the response with its status and headers read; the body is
// streamed from the host as it is read. The caller must Close the response (at most 8 may
// be open at once). Errors wrap one of the Errno values: ErrUpstream if the endpoint could
// not be reached, ErrInvalid if the request is malformed, ErrTooManyOpen.
//
// A request the policy does not allow does not return an error: the host ends the job as
// denied, so that a task cannot probe the policy.
func (e *Endpoint) Do(req *Request) (*Response, error) {
	method := strings.ToUpper(req.Method)
	if method == "" {
		method = "GET"
	}
	what := method + " " + e.name + " " + req.Path
	if !isToken(method) {
		return nil, fmt.Errorf("castellan: %s: method %q is not an HTTP token: %w", what, req.Method, ErrInvalid)
	}
	if !strings.HasPrefix(req.Path, "/") {
		return nil, fmt.Errorf("castellan: %s: path must start with \"/\" (it is relative to the endpoint's base URL): %w", what, ErrInvalid)
	}
	headers, err := req.Header.block()
	if err != nil {
		return nil, fmt.Errorf("castellan: %s: %w", what, err)
	}
	h := e.host.HTTPRequest(e.name, method, req.Path, headers, req.Body)
	if h < 0 {
		return nil, fmt.Errorf("castellan: %s: %w", what, Errno(h))
	}
	resp := &Response{Body: &body{host: e.host, handle: h, what: what}}
	if err := resp.readHead(e.host, h); err != nil {
		resp.Close()
		return nil, fmt.Errorf("castellan: %s: %w", what, err)
	}
	return resp, nil
}

// Response is an HTTP response from an endpoint.
type Response struct {
	// Status is the HTTP status code, e.g. 200.
	Status int
	// Header holds the response headers. The host has removed Set-Cookie and hop-by-hop
	// headers, and replaced any credential value with [REDACTED].
	Header Header
	// Body streams the response body from the host. Reads fail with an error wrapping
	// ErrTooLarge once the endpoint's response limit is passed, or ErrUpstream if the
	// connection breaks.
	Body io.ReadCloser
}

func (r *Response) readHead(host abi.Host, h int32) error {
	status := host.HTTPStatus(h)
	if status < 0 {
		return fmt.Errorf("reading status: %w", Errno(status))
	}
	r.Status = int(status)
	size := host.HTTPHeaderSize(h)
	if size < 0 {
		return fmt.Errorf("reading headers: %w", Errno(size))
	}
	buf := make([]byte, size)
	if n := host.HTTPHeaderRead(h, buf); n < 0 {
		return fmt.Errorf("reading headers: %w", Errno(n))
	} else {
		buf = buf[:n]
	}
	r.Header = parseHeaderBlock(buf)
	return nil
}

// Close releases the response on the host. It is safe to call more than once.
func (r *Response) Close() error { return r.Body.Close() }

// readChunk is the least free space Bytes offers the host per read.
const readChunk = 32 << 10

// maxSizeHint caps how much Bytes preallocates on the strength of Content-Length, which the
// upstream controls.
const maxSizeHint = 16 << 20

// Bytes reads the whole body and closes the response. The host writes each chunk straight
// into the returned slice.
func (r *Response) Bytes() ([]byte, error) {
	defer r.Close()
	size := readChunk
	if n, err := strconv.Atoi(r.Header.Get("Content-Length")); err == nil && n >= 0 && n < maxSizeHint {
		size = n + 1 // one spare byte, so the final read that sees EOF needs no growth
	}
	buf := make([]byte, 0, size)
	for {
		if cap(buf)-len(buf) == 0 {
			buf = append(buf, make([]byte, max(readChunk, cap(buf)))...)[:len(buf)]
		}
		n, err := r.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// JSON reads the whole body, closes the response and unmarshals the body into v. It does
// not look at the status: check r.Status first.
func (r *Response) JSON(v any) error {
	b, err := r.Bytes()
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("castellan: decoding response body (HTTP %d, %d bytes) as JSON: %w", r.Status, len(b), err)
	}
	return nil
}

// body reads a response body from the host: each Read is one http_body_read into the
// caller's buffer.
type body struct {
	host   abi.Host
	handle int32
	what   string
	err    error // sticky: io.EOF, a host error, or errClosed
	closed bool
}

func (b *body) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	n := b.host.HTTPBodyRead(b.handle, p)
	switch {
	case n > 0:
		return int(n), nil
	case n == 0:
		b.err = io.EOF
	default:
		b.err = fmt.Errorf("castellan: %s: reading body: %w", b.what, Errno(n))
	}
	return 0, b.err
}

func (b *body) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	if b.err == nil || b.err == io.EOF {
		b.err = fmt.Errorf("castellan: %s: read on closed response body: %w", b.what, ErrBadHandle)
	}
	if r := b.host.HTTPClose(b.handle); r < 0 {
		return fmt.Errorf("castellan: %s: closing response: %w", b.what, Errno(r))
	}
	return nil
}

// Header is a set of HTTP headers, keyed by canonical name ("Content-Type"). It has the
// same shape as net/http's Header, so http.Header(h) converts it; the SDK avoids importing
// net/http, which would add megabytes to every task.
type Header map[string][]string

// Get returns the first value for key, or "".
func (h Header) Get(key string) string {
	if v := h[CanonicalHeaderKey(key)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Values returns all values for key.
func (h Header) Values(key string) []string { return h[CanonicalHeaderKey(key)] }

// Set replaces the values for key with value.
func (h Header) Set(key, value string) { h[CanonicalHeaderKey(key)] = []string{value} }

// Add appends value to the values for key.
func (h Header) Add(key, value string) {
	k := CanonicalHeaderKey(key)
	h[k] = append(h[k], value)
}

// Del removes key.
func (h Header) Del(key string) { delete(h, CanonicalHeaderKey(key)) }

// CanonicalHeaderKey returns key with the first letter and each letter after a hyphen in
// upper case and the rest in lower case, as net/http does. A key that is not a valid header
// name is returned unchanged.
func CanonicalHeaderKey(key string) string {
	// One pass, and no copy when key is canonical already (the host sends canonical names):
	// in a task, each byte a loop visits costs far more than in native code.
	upper := true
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !tokenByte[c] {
			return key
		}
		if upper && 'a' <= c && c <= 'z' || !upper && 'A' <= c && c <= 'Z' {
			return canonicalise(key, i)
		}
		upper = c == '-'
	}
	return key
}

// canonicalise is CanonicalHeaderKey for a key whose first from bytes are canonical tokens.
func canonicalise(key string, from int) string {
	b := []byte(key)
	upper := from == 0 || b[from-1] == '-'
	for i := from; i < len(b); i++ {
		c := b[i]
		if !tokenByte[c] {
			return key
		}
		switch {
		case upper && 'a' <= c && c <= 'z':
			b[i] = c - 'a' + 'A'
		case !upper && 'A' <= c && c <= 'Z':
			b[i] = c - 'A' + 'a'
		}
		upper = c == '-'
	}
	return string(b)
}

// block serialises h as the ABI's header block, "Name: value\n" per value, names sorted so
// the bytes are deterministic. It refuses what would change the block's meaning on the host
// (a newline in a value would smuggle in another header).
func (h Header) block() ([]byte, error) {
	if len(h) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, len(h))
	size := 0
	for k, vs := range h {
		if !isToken(k) {
			return nil, fmt.Errorf("header name %q is not a valid HTTP token: %w", k, ErrInvalid)
		}
		for _, v := range vs {
			if i := strings.IndexFunc(v, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }); i >= 0 {
				return nil, fmt.Errorf("header %s: value has a control character (CR, LF, NUL...) at byte %d: %w", k, i, ErrInvalid)
			}
			size += len(k) + len(v) + 3
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b := make([]byte, 0, size)
	for _, k := range keys {
		for _, v := range h[k] {
			b = append(b, CanonicalHeaderKey(k)...)
			b = append(b, ": "...)
			b = append(b, strings.Trim(v, " \t")...)
			b = append(b, '\n')
		}
	}
	return b, nil
}

// parseHeaderBlock parses the host's response header block. The host only produces valid
// blocks; malformed lines are skipped rather than failing the request.
func parseHeaderBlock(b []byte) Header {
	h := Header{}
	for len(b) > 0 {
		var line []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			line, b = b, nil
		}
		if n := len(line); n > 0 && line[n-1] == '\r' {
			line = line[:n-1]
		}
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			continue
		}
		name := string(line[:i])
		if !isToken(name) {
			continue
		}
		name = CanonicalHeaderKey(name)
		h[name] = append(h[name], strings.Trim(string(line[i+1:]), " \t"))
	}
	return h
}

// isToken reports whether s is a non-empty RFC 9110 token (method or header name).
//
// The host side checks names with golang.org/x/net/http/httpguts; guest code cannot: that
// package imports net, whose initialisation makes a wasip1 module import path_open and
// path_filestat_get, which the sandbox refuses, and it adds 380 KB to a Go task. A test
// (TestIsTokenMatchesHTTPGuts) holds this copy to httpguts for every byte.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenByte[s[i]] {
			return false
		}
	}
	return true
}

// tokenByte holds the bytes RFC 9110 allows in a token: one lookup per byte, where a search
// of the punctuation list would be a loop per byte.
var tokenByte = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range []byte("!#$%&'*+-.^_`|~") {
		t[c] = true
	}
	return t
}()

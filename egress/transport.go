package egress

import (
	"bufio"
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// transport is the gateway's default http.RoundTripper: HTTP/1.1 on connections it keeps
// itself, each carrying one request at a time, written and read on the calling goroutine.
//
// net/http's Transport hands every request to a writer goroutine and every response back
// from a reader goroutine. On a worker whose calls go to nearby internal APIs those two
// hand-offs were a fifth of a call's latency, more than the whole sandbox added. The wire
// format is still net/http's own: Request.Write writes the request and http.ReadResponse
// parses the response (framing, chunked coding, conflicting lengths). What this type adds
// is the connection pool, deadlines and the checks that make reusing a connection safe:
//   - a connection goes back to the pool only after its response body was read to the end,
//     with no byte left over and no "Connection: close";
//   - before reuse, a connection that the server closed or that received bytes nobody asked
//     for is dropped (see idleUsable): a stray response must never answer the next request;
//   - a request on a reused connection that fails before any response byte is retried once
//     on a new connection, only when net/http would retry it (no body or a replayable one,
//     and an idempotent method).
//
// The request context bounds everything: its deadline is the connection's deadline until the
// body is closed, and its cancellation expires the connection at once. HTTP/2 and upgrades
// are not spoken; proxies are never used.
type transport struct {
	dialer         net.Dialer
	tlsConfig      *tls.Config // cloned per connection, ServerName set from the request
	tlsTimeout     time.Duration
	maxIdlePerHost int
	idleTimeout    time.Duration
	maxHeaderBytes int64

	mu   sync.Mutex
	idle map[string][]*persistConn // by connKey, most recently used last
}

// NewTransport returns a new transport of the kind every Gateway makes for itself unless
// Config.Transport is set: for callers outside the sandbox that want the same connection
// handling, and for benchmarks that compare a task's call with a native one on equal terms.
func NewTransport() http.RoundTripper { return newTransport() }

func newTransport() *transport {
	return &transport{
		dialer:         net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second},
		tlsConfig:      &tls.Config{MinVersion: tls.VersionTLS12},
		tlsTimeout:     10 * time.Second,
		maxIdlePerHost: 32,
		idleTimeout:    90 * time.Second,
		maxHeaderBytes: 1 << 20,
		idle:           map[string][]*persistConn{},
	}
}

// persistConn is one connection to one origin.
type persistConn struct {
	key    string
	conn   net.Conn
	raw    net.Conn // the TCP connection under TLS, for idleUsable
	lr     limitedConnReader
	br     *bufio.Reader
	bw     *bufio.Writer
	idleAt time.Time
}

// limitedConnReader caps what the response headers may pull from the connection: the limit
// is lifted once they are parsed, and the body is bounded by the gateway instead.
type limitedConnReader struct {
	c net.Conn
	n int64
}

var errHeadersTooLarge = errors.New("response headers too large")

func (r *limitedConnReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errHeadersTooLarge
	}
	if int64(len(p)) > r.n {
		p = p[:r.n]
	}
	n, err := r.c.Read(p)
	r.n -= int64(n)
	return n, err
}

const unlimited = 1<<63 - 1

func connKey(u string, scheme string) string { return scheme + "://" + u }

// canonicalAddr is host:port with the scheme's default port filled in.
func canonicalAddr(scheme, host string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	if scheme == "https" {
		return net.JoinHostPort(host, "443")
	}
	return net.JoinHostPort(host, "80")
}

// RoundTrip implements http.RoundTripper.
func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.roundTrip(req)
	if err != nil && req.Body != nil {
		req.Body.Close() // RoundTrip must close the body, even on errors
	}
	return resp, err
}

func (t *transport) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if req.URL == nil || (req.URL.Scheme != "http" && req.URL.Scheme != "https") || req.URL.Host == "" {
		return nil, errors.New("egress: the request has no http or https URL")
	}
	if !isMethodToken(req.Method) {
		return nil, fmt.Errorf("egress: invalid method %q", req.Method)
	}
	// The gateway checked every header already; a RoundTripper given anything else must
	// refuse it rather than write it (Request.Write does not check).
	for k, vs := range req.Header {
		if !isToken(k) {
			return nil, fmt.Errorf("egress: invalid header name %q", k)
		}
		for _, v := range vs {
			if !validHeaderValue(v) {
				return nil, fmt.Errorf("egress: invalid value for header %q", k)
			}
		}
	}
	addr := canonicalAddr(req.URL.Scheme, req.URL.Host)
	key := connKey(addr, req.URL.Scheme)
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		pc, reused := t.getIdle(key), true
		if pc == nil {
			var err error
			if pc, err = t.dial(ctx, req.URL.Scheme, addr, key); err != nil {
				return nil, err
			}
			reused = false
		}
		resp, gotBytes, err := t.exchange(ctx, pc, req)
		if err == nil {
			return resp, nil
		}
		pc.conn.Close()
		// A server may close a kept-alive connection just as it is taken; net/http retries
		// such requests once, and so does this, under the same conditions.
		if !reused || gotBytes || attempt > 0 || ctx.Err() != nil || !replayable(req) {
			return nil, err
		}
		if req.GetBody != nil {
			body, gerr := req.GetBody()
			if gerr != nil {
				return nil, err
			}
			r2 := *req
			r2.Body = body
			req = &r2
		}
	}
}

// replayable is net/http's rule for retrying a request on a new connection.
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	switch req.Method {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	_, k1 := req.Header["Idempotency-Key"]
	_, k2 := req.Header["X-Idempotency-Key"]
	return k1 || k2
}

func (t *transport) dial(ctx context.Context, scheme, addr, key string) (*persistConn, error) {
	c, err := t.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	pc := &persistConn{key: key, conn: c, raw: c}
	if scheme == "https" {
		host, _, _ := net.SplitHostPort(addr)
		cfg := t.tlsConfig.Clone()
		cfg.ServerName = host
		cfg.NextProtos = []string{"http/1.1"}
		tc := tls.Client(c, cfg)
		hctx, cancel := context.WithTimeout(ctx, t.tlsTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			c.Close()
			return nil, err
		}
		pc.conn = tc
	}
	pc.lr.c = pc.conn
	pc.br = bufio.NewReaderSize(&pc.lr, 4096)
	pc.bw = bufio.NewWriterSize(pc.conn, 4096)
	return pc, nil
}

// exchange writes req on pc and reads the response head. gotBytes reports whether any of a
// response arrived (then the request must not be retried).
func (t *transport) exchange(ctx context.Context, pc *persistConn, req *http.Request) (resp *http.Response, gotBytes bool, err error) {
	deadline, _ := ctx.Deadline()
	if err := pc.conn.SetDeadline(deadline); err != nil {
		return nil, false, err
	}
	stop := func() bool { return true }
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { pc.conn.SetDeadline(aLongTimeAgo) })
	}
	fail := func(err error, got bool) (*http.Response, bool, error) {
		stop()
		if cerr := ctx.Err(); cerr != nil {
			return nil, got, cerr
		}
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			return nil, got, context.DeadlineExceeded
		}
		return nil, got, err
	}
	hdr := req.Header
	if req.Method != "HEAD" && hdr.Get("Accept-Encoding") == "" && hdr.Get("Range") == "" {
		// As net/http does: ask for gzip and decompress it here, so that the redactor reads
		// what the server meant. A task may not set Accept-Encoding itself.
		h2 := make(http.Header, len(hdr)+1)
		for k, v := range hdr {
			h2[k] = v
		}
		h2["Accept-Encoding"] = []string{"gzip"}
		r2 := *req
		r2.Header = h2
		req = &r2
	}
	werr := req.Write(pc.bw)
	if werr == nil {
		werr = pc.bw.Flush()
	}
	// A server may answer before it has read the whole request (a 413, say) and close: read
	// what it sent even when the write failed.
	pc.lr.n = t.maxHeaderBytes // as net/http: the head may pull this much off the connection
	for informational := 0; ; informational++ {
		resp, err = http.ReadResponse(pc.br, req)
		if err != nil {
			if werr != nil {
				err = werr
			}
			if errors.Is(err, errHeadersTooLarge) {
				err = fmt.Errorf("response headers exceed %d bytes", t.maxHeaderBytes)
			}
			return fail(err, pc.br.Buffered() > 0 || pc.lr.n < t.maxHeaderBytes)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		if informational >= 5 {
			return fail(errors.New("too many 1xx informational responses"), true)
		}
	}
	pc.lr.n = unlimited
	if resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body.Close()
		return fail(errors.New("the server switched protocols, which is not supported"), true)
	}
	b := &connBody{t: t, pc: pc, rc: resp.Body, stop: stop, reusable: werr == nil && !resp.Close && !req.Close}
	resp.Body = b
	if resp.ContentLength == 0 || req.Method == "HEAD" || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified {
		b.eof = true // nothing follows the head, whatever the framing claims
	}
	switch ce := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding"))); {
	case ce == "" || ce == "identity" || b.eof:
	case ce == "gzip" && req.Header.Get("Accept-Encoding") == "gzip" && len(resp.Header["Content-Encoding"]) == 1:
		resp.Header.Del("Content-Encoding")
		resp.Header.Del("Content-Length")
		resp.ContentLength = -1
		resp.Uncompressed = true
		resp.Body = &gzipBody{body: b}
	default:
		// A coding the redactor cannot see through would carry an echoed credential past it.
		b.Close()
		return nil, true, fmt.Errorf("the response has Content-Encoding %q, which the gateway cannot inspect", clip(ce))
	}
	return resp, true, nil
}

// aLongTimeAgo is a deadline that has passed: setting it makes blocked I/O return at once.
var aLongTimeAgo = time.Unix(1, 0)

// connBody is a response body on a pooled connection.
type connBody struct {
	t        *transport
	pc       *persistConn
	rc       io.ReadCloser
	stop     func() bool
	reusable bool
	eof      bool
	mu       sync.Mutex // Close may run while a Read is blocked (the job ended)
	closed   bool
}

func (b *connBody) Read(p []byte) (int, error) {
	if b.eof {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.mu.Lock()
		b.eof = true
		b.mu.Unlock()
	}
	return n, err
}

func (b *connBody) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	eof, reusable := b.eof, b.reusable
	b.mu.Unlock()
	// The connection is reused only if it is exactly at the end of this response, and the
	// cancellation hook had not fired (its deadline would break the next request).
	if b.stop() && eof && reusable && b.pc.br.Buffered() == 0 {
		b.t.putIdle(b.pc)
		return nil
	}
	b.pc.conn.Close()
	return nil
}

// gzipBody decompresses a body that the transport asked to have gzipped.
type gzipBody struct {
	body *connBody
	zr   *gzip.Reader
	err  error
}

func (g *gzipBody) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.zr == nil {
		zr, err := gzip.NewReader(g.body)
		if err != nil {
			g.err = err
			return 0, err
		}
		zr.Multistream(false)
		g.zr = zr
	}
	n, err := g.zr.Read(p)
	if err == io.EOF {
		// The compressed stream ended: the body must end with it for the connection to be
		// reused, which a read of the rest tells.
		var one [1]byte
		if m, _ := g.body.Read(one[:]); m != 0 {
			g.body.mu.Lock()
			g.body.reusable = false
			g.body.mu.Unlock()
		}
	}
	if err != nil {
		g.err = err
	}
	return n, err
}

func (g *gzipBody) Close() error { return g.body.Close() }

func (t *transport) getIdle(key string) *persistConn {
	now := time.Now()
	for {
		t.mu.Lock()
		list := t.idle[key]
		if len(list) == 0 {
			t.mu.Unlock()
			return nil
		}
		pc := list[len(list)-1]
		list[len(list)-1] = nil
		t.idle[key] = list[:len(list)-1]
		t.mu.Unlock()
		if now.Sub(pc.idleAt) < t.idleTimeout && idleUsable(pc.raw) {
			return pc
		}
		pc.conn.Close()
	}
}

func (t *transport) putIdle(pc *persistConn) {
	if pc.conn.SetDeadline(time.Time{}) != nil {
		pc.conn.Close()
		return
	}
	pc.idleAt = time.Now()
	key := pc.key
	t.mu.Lock()
	list := t.idle[key]
	// There is no timer per idle connection: the oldest ones, at the front, are swept here
	// once they pass the idle timeout, and the rest when the gateway is retired.
	expired := 0
	for expired < len(list) && pc.idleAt.Sub(list[expired].idleAt) >= t.idleTimeout {
		expired++
	}
	stale := slices.Clone(list[:expired])
	list = slices.Delete(list, 0, expired)
	if len(list) < t.maxIdlePerHost {
		list = append(list, pc)
		pc = nil
	}
	t.idle[key] = list
	t.mu.Unlock()
	for _, s := range stale {
		s.conn.Close()
	}
	if pc != nil {
		pc.conn.Close()
	}
}

// CloseIdleConnections closes every pooled connection.
func (t *transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = map[string][]*persistConn{}
	t.mu.Unlock()
	for _, list := range idle {
		for _, pc := range list {
			pc.conn.Close()
		}
	}
}

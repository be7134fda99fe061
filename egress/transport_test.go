package egress

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawServer is a loopback TCP server whose connections are handled by script, which gets
// the connection's number (from 1) and reads requests itself: it can send what no
// well-behaved HTTP server would.
type rawServer struct {
	ln    net.Listener
	conns atomic.Int32
	wg    sync.WaitGroup
	mu    sync.Mutex
	open  []net.Conn
}

func newRawServer(t *testing.T, script func(n int, c net.Conn, br *bufio.Reader)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(s.conns.Add(1))
			s.mu.Lock()
			s.open = append(s.open, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				script(n, c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.open {
			c.Close() // the transport's pool may hold the other end open
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *rawServer) url() string { return "http://" + s.ln.Addr().String() }

// readRequest reads one request and its body; false when the client went away.
func readRequest(br *bufio.Reader) (*http.Request, bool) {
	r, err := http.ReadRequest(br)
	if err != nil {
		return nil, false
	}
	_, _ = io.Copy(io.Discard, r.Body)
	return r, true
}

func reply(c net.Conn, body string) {
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// get makes one GET through tr and returns the body as read to the end.
func get(t *testing.T, tr *transport, url string) (string, error) {
	t.Helper()
	return do(t, tr, "GET", url, nil)
}

func do(t *testing.T, tr *transport, method, url string, body io.Reader) (string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// waitUnusable polls until the pooled connection has something pending (bytes or the
// server's FIN): the state in which the next request must not use it.
func waitUnusable(t *testing.T, tr *transport) {
	t.Helper()
	waitFor(t, "the pooled connection to receive the server's bytes or FIN", func() bool {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		for _, list := range tr.idle {
			for _, pc := range list {
				if !idleUsable(pc.raw) {
					return true
				}
			}
		}
		return false
	})
}

func TestTransportReusesConnectionsOnlyAtTheEndOfABody(t *testing.T) {
	t.Parallel()
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/big" {
			_, _ = w.Write(bytes.Repeat([]byte("x"), 1<<20))
			return
		}
		fmt.Fprint(w, r.URL.Path)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	tr := newTransport()
	for i := range 50 {
		if got, err := get(t, tr, fmt.Sprintf("%s/%d", srv.URL, i)); err != nil || got != fmt.Sprintf("/%d", i) {
			t.Fatalf("GET /%d = %q, %v", i, got, err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("50 sequential requests used %d connections, want 1", n)
	}
	// A body closed before its end leaves the connection in the middle of a response: it
	// must be closed, and the next request must get its own answer on a new connection.
	req, _ := http.NewRequestWithContext(t.Context(), "GET", srv.URL+"/big", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := resp.Body.Read(make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got, err := get(t, tr, srv.URL+"/after"); err != nil || got != "/after" {
		t.Fatalf("GET /after an abandoned body = %q, %v; want /after", got, err)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("connections = %d, want 2 (the abandoned one is not reused)", n)
	}
}

// TestTransportDropsConnectionsWithUnsolicitedBytes is the desynchronisation attack: the
// upstream sends a second response nobody asked for, hoping it answers the next request
// (which would hand a task another caller's data, or a forged answer). It must not.
func TestTransportDropsConnectionsWithUnsolicitedBytes(t *testing.T) {
	t.Parallel()
	const forged = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
	for _, tc := range []struct {
		name string
		late bool // the forged response comes after the real one, not in the same write
	}{{"same write", false}, {"while idle", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sent := make(chan struct{})
			srv := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
				for {
					if _, ok := readRequest(br); !ok {
						return
					}
					real := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nconn-%d", n)
					if n > 1 {
						fmt.Fprint(c, real)
						continue
					}
					if !tc.late {
						fmt.Fprint(c, real+forged)
					} else {
						fmt.Fprint(c, real)
						time.Sleep(20 * time.Millisecond)
						fmt.Fprint(c, forged)
					}
					close(sent)
				}
			})
			tr := newTransport()
			if got, err := get(t, tr, srv.url()); err != nil || got != "conn-1" {
				t.Fatalf("first GET = %q, %v", got, err)
			}
			<-sent
			if tc.late {
				waitUnusable(t, tr)
			}
			got, err := get(t, tr, srv.url())
			if err != nil || got != "conn-2" {
				t.Fatalf("second GET = %q, %v; want conn-2, answered on a new connection", got, err)
			}
		})
	}
}

// TestTransportStaleConnections covers a server closing a kept-alive connection: seen
// before reuse (any request then goes to a new connection), or only when the request is
// sent (retried once if it is replayable, never otherwise).
func TestTransportStaleConnections(t *testing.T) {
	t.Parallel()
	t.Run("closed while idle", func(t *testing.T) {
		t.Parallel()
		var posts atomic.Int32
		srv := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
			r, ok := readRequest(br)
			if !ok {
				return
			}
			if r.Method == "POST" {
				posts.Add(1)
			}
			reply(c, fmt.Sprintf("conn-%d", n)) // keep-alive promised, then closed
		})
		tr := newTransport()
		if got, err := get(t, tr, srv.url()); err != nil || got != "conn-1" {
			t.Fatalf("GET = %q, %v", got, err)
		}
		waitUnusable(t, tr)
		// A POST cannot be retried; it must not be sent on the dead connection at all.
		if got, err := do(t, tr, "POST", srv.url(), strings.NewReader("once")); err != nil || got != "conn-2" {
			t.Fatalf("POST after the server closed the idle connection = %q, %v; want conn-2", got, err)
		}
		if n := posts.Load(); n != 1 {
			t.Fatalf("the server saw %d POSTs, want 1", n)
		}
	})
	t.Run("closed on the next request", func(t *testing.T) {
		t.Parallel()
		var posts atomic.Int32
		srv := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
			for i := 0; ; i++ {
				r, ok := readRequest(br)
				if !ok {
					return
				}
				if r.Method == "POST" {
					posts.Add(1)
				}
				if n == 1 && i == 1 || n == 3 && i == 1 {
					return // closes without answering, as a server timing out the idle connection would
				}
				reply(c, fmt.Sprintf("conn-%d", n))
			}
		})
		tr := newTransport()
		if got, err := get(t, tr, srv.url()); err != nil || got != "conn-1" {
			t.Fatalf("GET = %q, %v", got, err)
		}
		if got, err := get(t, tr, srv.url()); err != nil || got != "conn-2" {
			t.Fatalf("GET on a connection closed under it = %q, %v; want a retry answered by conn-2", got, err)
		}
		// conn-2 is idle and healthy: use it, so that conn-3 is next.
		tr.CloseIdleConnections()
		if got, err := get(t, tr, srv.url()); err != nil || got != "conn-3" {
			t.Fatalf("GET = %q, %v; want conn-3", got, err)
		}
		_, err := do(t, tr, "POST", srv.url(), strings.NewReader("once"))
		if err == nil {
			t.Fatal("a POST whose connection closed under it succeeded; it must fail, not be sent twice")
		}
		if n := posts.Load(); n != 1 {
			t.Fatalf("the server saw %d POSTs, want exactly 1", n)
		}
	})
}

func TestTransportResponseFraming(t *testing.T) {
	t.Parallel()
	gz := func(s string) string {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		_, _ = w.Write([]byte(s))
		_ = w.Close()
		return b.String()
	}
	for _, tc := range []struct {
		name    string
		resp    string // sent for the first request; later requests get "next"
		want    string // body, or the error's text with err set
		err     bool
		reuse   bool // the connection carries the next request
		headers int  // the transport's header limit, 0 for the default
	}{
		{name: "informational responses skipped", resp: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", want: "ok", reuse: true},
		{name: "too many informational responses", resp: strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 7), want: "informational", err: true},
		{name: "switching protocols", resp: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n", want: "switched protocols", err: true},
		{name: "chunked wins over a content length", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n", want: "hello", reuse: true}, // framed by the chunks, as net/http reads it
		{name: "conflicting content lengths", resp: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", want: "Content-Length", err: true},
		{name: "connection close", resp: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", want: "ok"},
		{name: "headers over the limit", resp: "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 8000) + "\r\nContent-Length: 2\r\n\r\nok", want: "headers exceed 4096 bytes", err: true, headers: 4096},
		{name: "gzip decompressed", resp: fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s", len(gz("plain text")), gz("plain text")), want: "plain text", reuse: true},
		{name: "gzip with trailing bytes inside the length", resp: fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%sXY", len(gz("plain"))+2, gz("plain")), want: "plain", reuse: true},
		{name: "an encoding the redactor cannot read", resp: "HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 4\r\n\r\nabcd", want: `Content-Encoding "br"`, err: true},
		{name: "two encodings", resp: fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s", len(gz(gz("x"))), gz(gz("x"))), want: `Content-Encoding "gzip"`, err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var acceptEncoding atomic.Value
			srv := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
				for i := 0; ; i++ {
					r, ok := readRequest(br)
					if !ok {
						return
					}
					if i == 0 && n == 1 {
						acceptEncoding.Store(r.Header.Get("Accept-Encoding"))
						fmt.Fprint(c, tc.resp)
						continue
					}
					reply(c, "next")
				}
			})
			tr := newTransport()
			if tc.headers > 0 {
				tr.maxHeaderBytes = int64(tc.headers)
			}
			got, err := get(t, tr, srv.url())
			switch {
			case tc.err && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("GET = %q, %v; want an error containing %q", got, err, tc.want)
			case !tc.err && (err != nil || got != tc.want):
				t.Fatalf("GET = %q, %v; want %q", got, err, tc.want)
			}
			if ae, _ := acceptEncoding.Load().(string); ae != "gzip" {
				t.Errorf("Accept-Encoding sent = %q, want gzip (so that the transport decompresses what it asked for)", ae)
			}
			if got, err := get(t, tr, srv.url()); err != nil || got != "next" {
				t.Fatalf("the next GET = %q, %v; want next", got, err)
			}
			if want := map[bool]int32{true: 1, false: 2}[tc.reuse]; srv.conns.Load() != want {
				t.Fatalf("connections = %d, want %d", srv.conns.Load(), want)
			}
		})
	}
}

// TestTransportDeadlineAndCancel checks that the request context bounds the whole call:
// its deadline while waiting for the head, its cancellation while reading the body.
func TestTransportDeadlineAndCancel(t *testing.T) {
	t.Parallel()
	hold := make(chan struct{})
	srv := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		r, ok := readRequest(br)
		if !ok {
			return
		}
		if r.URL.Path == "/body" {
			fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
		}
		<-hold
	})
	t.Cleanup(func() { close(hold) }) // before the server's cleanup, which waits for this script
	tr := newTransport()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.url()+"/head", nil)
	if _, err := tr.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RoundTrip past the deadline = %v, want context.DeadlineExceeded", err)
	}
	ctx, cancel = context.WithCancel(t.Context())
	req, _ = http.NewRequestWithContext(ctx, "GET", srv.url()+"/body", nil)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 7)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "partial" {
		t.Fatalf("first bytes = %q, %v", buf, err)
	}
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Fatal("a body read went on after the request context was cancelled")
	}
}

func TestTransportTLS(t *testing.T) {
	t.Parallel()
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.Proto)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	tr := newTransport()
	if _, err := get(t, tr, srv.URL); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("GET with an untrusted certificate = %v, want a certificate error", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	tr = newTransport()
	tr.tlsConfig.RootCAs = pool
	for range 3 {
		if got, err := get(t, tr, srv.URL); err != nil || got != "HTTP/1.1" {
			t.Fatalf("GET over TLS = %q, %v; want HTTP/1.1", got, err)
		}
	}
	if n := conns.Load(); n != 2 { // the refused handshake, then one reused connection
		t.Fatalf("connections = %d, want 2", n)
	}
}

// TestTransportRefusesWhatItWouldNotWrite checks that the transport itself refuses header
// injection, whoever calls it.
func TestTransportRefusesWhatItWouldNotWrite(t *testing.T) {
	t.Parallel()
	srv := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		if _, ok := readRequest(br); ok {
			reply(c, "sent")
		}
	})
	tr := newTransport()
	for _, h := range []http.Header{
		{"X-A": {"v\r\nX-Injected: 1"}},
		{"X-A\r\nX-Injected": {"v"}},
		{"X A": {"v"}},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", srv.url(), nil)
		req.Header = h
		if _, err := tr.RoundTrip(req); err == nil {
			t.Errorf("RoundTrip with header %q succeeded; want it refused", h)
		}
	}
	if n := srv.conns.Load(); n != 0 {
		t.Fatalf("the server saw %d connections; nothing should have been sent", n)
	}
}

// TestCredentialEchoCompressed is TestCredentialEcho with the echo compressed: gzip (which
// the transport asks for) is decompressed before the redactor reads it; a coding it cannot
// read fails the call instead of carrying the credential past the redactor.
func TestCredentialEchoCompressed(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		fmt.Fprintf(zw, `{"auth":%q}`, r.Header.Get("Authorization"))
		_ = zw.Close()
		w.Header().Set("Content-Encoding", strings.TrimPrefix(r.URL.Path, "/"))
		_, _ = w.Write(b.Bytes())
	})
	f := newFixture(t, srv.URL, "", bearer, "GET /*")
	resp, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/gzip"})
	if err != nil {
		t.Fatal(err)
	}
	body, err := readAll(t, resp)
	if err != nil {
		t.Fatal(err)
	}
	if contains(body, testSecret) || !contains(body, "REDACTED") {
		t.Errorf("gzip echo reached the task as %q; want the credential redacted", body)
	}
	if ce := resp.Header.Get("Content-Encoding"); ce != "" {
		t.Errorf("the task sees Content-Encoding %q for a body that is no longer encoded", ce)
	}
	_, err = f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x-unknown"})
	var ue *UpstreamError
	if !errors.As(err, &ue) || !contains(err.Error(), "cannot inspect") || contains(err.Error(), testSecret) {
		t.Fatalf("a response in an unreadable coding = %v; want an *UpstreamError saying the gateway cannot inspect it", err)
	}
}

// FuzzTransportResponse sends arbitrary bytes as the answer to a first request, then checks
// that the transport neither panics nor hangs past the request's deadline, and that a second
// request is answered by the server's genuine reply to it: whatever the first answer held
// (a forged second response, a lying length, garbage), it must not answer the next call.
func FuzzTransportResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2\r\nok\r\n0\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 6\r\n\r\nforged",
		"HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"garbage\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, first []byte) {
		srv := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
			for i := 0; ; i++ {
				// An idle connection is closed soon: a response framed "until close" ends.
				_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
				r, ok := readRequest(br)
				if !ok {
					return
				}
				if n == 1 && i == 0 {
					_, _ = c.Write(first)
					continue
				}
				reply(c, "genuine "+r.URL.Path)
			}
		})
		tr := newTransport()
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.url()+"/first", nil)
		if resp, err := tr.RoundTrip(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if ctx.Err() != nil {
			t.Fatalf("the first request took its whole deadline for %q", first)
		}
		got, err := get(t, tr, srv.url()+"/second")
		if err != nil || got != "genuine /second" {
			t.Fatalf("after a first answer of %q, the second request got %q, %v; want the server's genuine reply", first, got, err)
		}
	})
}

func TestTransportSweepsExpiredIdleConnections(t *testing.T) {
	t.Parallel()
	srv := newRawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		for {
			if _, ok := readRequest(br); !ok {
				return
			}
			reply(c, fmt.Sprintf("conn-%d", n))
		}
	})
	tr := newTransport()
	pooled := func() []*persistConn {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		var all []*persistConn
		for _, list := range tr.idle {
			all = append(all, list...)
		}
		return all
	}
	// Two responses open at once: two connections, both pooled when closed.
	var bodies []io.ReadCloser
	for range 2 {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", srv.url(), nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, resp.Body)
	}
	for _, b := range bodies {
		_, _ = io.Copy(io.Discard, b)
		b.Close()
	}
	if p := pooled(); len(p) != 2 {
		t.Fatalf("pooled connections = %d, want 2", len(p))
	}
	// Age the older one past the idle timeout. The next request takes the newer one, and
	// putting it back must sweep the older one: no timer per connection does it.
	old := pooled()[0]
	tr.mu.Lock()
	old.idleAt = old.idleAt.Add(-2 * tr.idleTimeout)
	tr.mu.Unlock()
	if _, err := get(t, tr, srv.url()); err != nil {
		t.Fatal(err)
	}
	if p := pooled(); len(p) != 1 || p[0] == old {
		t.Fatalf("pooled after the sweep = %d connections (expired one still there: %v), want 1", len(p), slices.Contains(p, old))
	}
	if _, err := old.conn.Read(make([]byte, 1)); err == nil || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("reading the swept connection = %v, want net.ErrClosed", err)
	}
}

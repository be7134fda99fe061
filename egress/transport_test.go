package egress

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testCA is a self-signed certificate for 127.0.0.1 and the pool that trusts it, shared by
// every TLS test server of the package.
var testCA = sync.OnceValues(func() (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "castellan test upstream"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
})

// rawServer is a loopback TCP (or TLS) server whose connections are handled by script, which
// gets the connection's number (from 1) and reads requests itself: it can send what no
// well-behaved HTTP server would.
type rawServer struct {
	ln    net.Listener
	tls   bool
	conns atomic.Int32
	done  atomic.Int32 // connections whose script returned
	wg    sync.WaitGroup
	mu    sync.Mutex
	open  []net.Conn
}

// transports are the two ways an upstream is reached: every desync and reuse test runs on both.
var transports = []struct {
	name string
	tls  bool
}{{"plaintext", false}, {"tls", true}}

func newRawServer(t *testing.T, useTLS bool, script func(n int, c net.Conn, br *bufio.Reader)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if useTLS {
		cert, _ := testCA()
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	}
	s := &rawServer{ln: ln, tls: useTLS}
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
				defer s.done.Add(1)
				defer c.Close()
				script(n, c, bufio.NewReader(c))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.open {
			c.Close() // the gateway's pool may hold the other end open
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *rawServer) url() string {
	if s.tls {
		return "https://" + s.ln.Addr().String()
	}
	return "http://" + s.ln.Addr().String()
}

// gateway returns a gateway with one endpoint "up" at s that allows everything and trusts
// the test certificate.
func (s *rawServer) gateway(t *testing.T, mod ...func(*Endpoint)) *Gateway {
	t.Helper()
	_, pool := testCA()
	ep := &Endpoint{Name: "up", BaseURL: mustURL(t, s.url()), Rules: []Rule{MustParseRule("* /**")}, RootCAs: pool}
	for _, m := range mod {
		m(ep)
	}
	gw, err := New(Config{Endpoints: []*Endpoint{ep}, Redactor: newSet(t, testSecret)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.CloseIdleConnections)
	return gw
}

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

// callUp makes one request through gw and returns the body as read to the end.
func callUp(t *testing.T, gw *Gateway, method, target string, body []byte) (string, error) {
	t.Helper()
	resp, err := gw.Do(t.Context(), JobRef{Task: "t", Job: "j"}, Request{Endpoint: "up", Method: method, Target: target, Body: body})
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return string(b), err
}

func TestConnectionsReusedOnlyAtTheEndOfABody(t *testing.T) {
	t.Parallel()
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			srv := newRawServer(t, tr.tls, func(n int, c net.Conn, br *bufio.Reader) {
				for {
					r, ok := readRequest(br)
					if !ok {
						return
					}
					if r.URL.Path == "/big" {
						reply(c, strings.Repeat("x", 1<<20))
						continue
					}
					reply(c, fmt.Sprintf("conn-%d %s", n, r.URL.Path))
				}
			})
			gw := srv.gateway(t)
			for i := range 20 {
				want := fmt.Sprintf("conn-1 /%d", i)
				if got, err := callUp(t, gw, "GET", fmt.Sprintf("/%d", i), nil); err != nil || got != want {
					t.Fatalf("GET /%d = %q, %v; want %q", i, got, err, want)
				}
			}
			// A body closed before its end leaves the connection in the middle of a response:
			// the next request must get its own answer on a new connection.
			resp, err := gw.Do(t.Context(), JobRef{}, Request{Endpoint: "up", Method: "GET", Target: "/big"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := resp.Body.Read(make([]byte, 10)); err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if got, err := callUp(t, gw, "GET", "/after", nil); err != nil || got != "conn-2 /after" {
				t.Fatalf("GET /after an abandoned body = %q, %v; want conn-2 /after", got, err)
			}
		})
	}
}

// TestUnsolicitedBytesNeverAnswerTheNextRequest is the desynchronisation attack: the
// upstream sends a second response nobody asked for, hoping it answers the next request
// (which would hand a task another job's data, or a forged answer). Over TLS the extra bytes
// sit in the TLS layer's buffers, not the socket's, so a check of the socket alone misses them.
func TestUnsolicitedBytesNeverAnswerTheNextRequest(t *testing.T) {
	t.Parallel()
	const forged = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
	for _, tr := range transports {
		for _, mode := range []string{"same write", "next write", "while idle"} {
			t.Run(tr.name+"/"+mode, func(t *testing.T) {
				t.Parallel()
				sendForged := make(chan struct{})
				srv := newRawServer(t, tr.tls, func(n int, c net.Conn, br *bufio.Reader) {
					for {
						if _, ok := readRequest(br); !ok {
							return
						}
						real := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nconn-%d", n)
						switch {
						case n > 1:
							fmt.Fprint(c, real)
							continue
						case mode == "same write":
							fmt.Fprint(c, real+forged)
						case mode == "next write":
							fmt.Fprint(c, real)
							fmt.Fprint(c, forged)
						default:
							fmt.Fprint(c, real)
							<-sendForged
							fmt.Fprint(c, forged)
						}
						// The client must hang up on this connection: wait for it.
						_, _ = br.ReadByte()
						return
					}
				})
				gw := srv.gateway(t)
				if got, err := callUp(t, gw, "GET", "/1", nil); err != nil || got != "conn-1" {
					t.Fatalf("first GET = %q, %v", got, err)
				}
				if mode == "while idle" {
					close(sendForged)
					// The forged bytes must have reached the client before the next request,
					// or they would merely be a fast reply to it: the client hanging up on the
					// connection says they did.
					waitFor(t, "the gateway to drop the connection with unsolicited bytes", func() bool {
						return srv.done.Load() == 1
					})
				}
				got, err := callUp(t, gw, "GET", "/2", nil)
				if err != nil || got != "conn-2" {
					t.Fatalf("second GET = %q, %v; want conn-2, answered on a new connection", got, err)
				}
			})
		}
	}
}

// TestStaleConnections covers a server closing a kept-alive connection: seen before reuse
// (any request then goes to a new connection), or only when the request is sent (retried
// once if it is replayable, never otherwise).
func TestStaleConnections(t *testing.T) {
	t.Parallel()
	for _, tr := range transports {
		t.Run(tr.name+"/closed while idle", func(t *testing.T) {
			t.Parallel()
			var posts atomic.Int32
			srv := newRawServer(t, tr.tls, func(n int, c net.Conn, br *bufio.Reader) {
				r, ok := readRequest(br)
				if !ok {
					return
				}
				if r.Method == "POST" {
					posts.Add(1)
				}
				reply(c, fmt.Sprintf("conn-%d", n)) // keep-alive promised, then closed
			})
			gw := srv.gateway(t)
			if got, err := callUp(t, gw, "GET", "/x", nil); err != nil || got != "conn-1" {
				t.Fatalf("GET = %q, %v", got, err)
			}
			waitFor(t, "the server to close the first connection", func() bool { return srv.done.Load() == 1 })
			if got, err := callUp(t, gw, "POST", "/x", []byte("once")); err != nil || got != "conn-2" {
				t.Fatalf("POST after the server closed the idle connection = %q, %v; want conn-2", got, err)
			}
			if n := posts.Load(); n != 1 {
				t.Fatalf("the server saw %d POSTs, want 1", n)
			}
		})
	}
}

// TestTLSHandshakeTimeout: an upstream that accepts the TCP connection and never answers the
// TLS handshake must cost the call the endpoint's timeout, not the job's deadline.
func TestTLSHandshakeTimeout(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	held.Add(1)
	go func() {
		defer held.Done()
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c) // accepted, never answered
		}
	}()
	t.Cleanup(func() { ln.Close(); held.Wait() })
	_, pool := testCA()
	ep := &Endpoint{Name: "up", BaseURL: mustURL(t, "https://"+ln.Addr().String()), Rules: []Rule{MustParseRule("GET /**")},
		RootCAs: pool, Timeout: 200 * time.Millisecond}
	gw, err := New(Config{Endpoints: []*Endpoint{ep}, Redactor: newSet(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.CloseIdleConnections)
	// The job's own deadline is far away; only the endpoint timeout can end the call in time.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err = gw.Do(ctx, JobRef{}, Request{Endpoint: "up", Method: "GET", Target: "/x"})
	elapsed := time.Since(start)
	var ue *UpstreamError
	if !errors.As(err, &ue) || !ue.Timeout() {
		t.Fatalf("Do() against a stalled TLS handshake = %v after %v; want an endpoint-timeout *UpstreamError", err, elapsed)
	}
	if elapsed > 5*time.Second {
		t.Fatalf("Do() against a stalled TLS handshake took %v; want about the endpoint timeout of 200ms", elapsed)
	}
}

// TestEndpointTLS: an endpoint's certificate is checked against its own CA, a certificate
// the endpoint does not trust is refused, and a client certificate is presented when the
// endpoint asks for one.
func TestEndpointTLS(t *testing.T) {
	t.Parallel()
	cert, pool := testCA()
	var sawClientCert atomic.Bool
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tln := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawClientCert.Store(len(r.TLS.PeerCertificates) > 0)
		fmt.Fprint(w, r.Proto)
	}), ErrorLog: log.New(io.Discard, "", 0)}
	go srv.Serve(tln)
	t.Cleanup(func() { srv.Close() })
	base := mustURL(t, "https://"+ln.Addr().String())
	do := func(ep *Endpoint) (string, error) {
		ep.Name, ep.BaseURL, ep.Rules = "up", base, []Rule{MustParseRule("GET /**")}
		gw, err := New(Config{Endpoints: []*Endpoint{ep}, Redactor: newSet(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer gw.CloseIdleConnections()
		return callUp(t, gw, "GET", "/x", nil)
	}
	if _, err := do(&Endpoint{}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("GET with a certificate the endpoint does not trust = %v, want a certificate error", err)
	}
	if got, err := do(&Endpoint{RootCAs: pool}); err != nil || got != "HTTP/1.1" || sawClientCert.Load() {
		t.Fatalf("GET with the endpoint's CA = %q, %v (client cert %v); want HTTP/1.1 without a client certificate", got, err, sawClientCert.Load())
	}
	if got, err := do(&Endpoint{RootCAs: pool, ClientCertificate: &cert}); err != nil || got != "HTTP/1.1" || !sawClientCert.Load() {
		t.Fatalf("GET with a client certificate = %q, %v (client cert %v); want HTTP/1.1 with the certificate presented", got, err, sawClientCert.Load())
	}
}

func TestResponseFraming(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		resp  string // sent for the first request; later requests get "next"
		want  string // body, or the error's text with err set
		err   bool
		reuse bool // the connection carries the next request
	}{
		{name: "informational responses skipped", resp: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", want: "ok", reuse: true},
		{name: "switching protocols", resp: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n", want: "upstream", err: true},
		{name: "chunked wins over a content length", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n", want: "hello", reuse: true}, // net/http frames by the chunks and keeps the connection
		{name: "conflicting content lengths", resp: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", want: "Content-Length", err: true},
		{name: "connection close", resp: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", want: "ok"},
		{name: "transfer coding other than chunked", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", want: "upstream", err: true},
		{name: "two transfer-encoding lines", resp: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", want: "upstream", err: true},
		{name: "headers over the limit", resp: "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("a", 2<<20) + "\r\nContent-Length: 2\r\n\r\nok", want: "upstream", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newRawServer(t, false, func(n int, c net.Conn, br *bufio.Reader) {
				for i := 0; ; i++ {
					if _, ok := readRequest(br); !ok {
						return
					}
					if i == 0 && n == 1 {
						fmt.Fprint(c, tc.resp)
						continue
					}
					reply(c, "next")
				}
			})
			gw := srv.gateway(t)
			got, err := callUp(t, gw, "GET", "/x", nil)
			switch {
			case tc.err && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("GET = %q, %v; want an error containing %q", got, err, tc.want)
			case !tc.err && (err != nil || got != tc.want):
				t.Fatalf("GET = %q, %v; want %q", got, err, tc.want)
			}
			if got, err := callUp(t, gw, "GET", "/x", nil); err != nil || got != "next" {
				t.Fatalf("the next GET = %q, %v; want next", got, err)
			}
			if want := map[bool]int32{true: 1, false: 2}[tc.reuse]; srv.conns.Load() != want {
				t.Fatalf("connections = %d, want %d", srv.conns.Load(), want)
			}
		})
	}
}

// FuzzTransportResponse sends arbitrary bytes as the answer to a first request, over
// plaintext or TLS, then checks that the gateway neither panics nor hangs past the
// endpoint's timeout, and that a second request is answered by the server's genuine reply to
// it: whatever the first answer held (a forged second response, a lying length, garbage), it
// must not answer the next call.
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
		"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"garbage\r\n\r\n",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, first []byte, useTLS bool) {
		srv := newRawServer(t, useTLS, func(n int, c net.Conn, br *bufio.Reader) {
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
		gw := srv.gateway(t, func(ep *Endpoint) { ep.Timeout = 2 * time.Second })
		start := time.Now()
		_, _ = callUp(t, gw, "GET", "/first", nil)
		if time.Since(start) > 4*time.Second {
			t.Fatalf("the first request outlived the endpoint timeout for %q", first)
		}
		got, err := callUp(t, gw, "GET", "/second", nil)
		if err != nil || got != "genuine /second" {
			t.Fatalf("after a first answer of %q, the second request got %q, %v; want the server's genuine reply", first, got, err)
		}
	})
}

// gzipped returns s compressed with gzip.
func gzipped(s string) string {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	_, _ = w.Write([]byte(s))
	_ = w.Close()
	return b.String()
}

package egress

import (
	"context"
	"crypto/tls"
	"net"
	"net/http/httptrace"
	"sync"
)

// guardedConn is an upstream's TCP connection, under TLS when there is TLS. It tells the
// gateway when a pooled connection is provably at rest: net/http's reader has asked it for
// more bytes and none were waiting, neither in net/http's buffer, nor in the TLS layer's, nor
// in the socket. Until then a connection taken from the pool may still hold bytes that the
// upstream sent after its last response, which net/http would read as the answer to the next
// request when that request reaches the connection first (it hands a freed connection
// straight to a waiting request, before its reader has looked for stray bytes). See
// awaitQuiet.
type guardedConn struct {
	net.Conn // *net.TCPConn

	mu      sync.Mutex
	quiet   bool // a Read is blocked with nothing left unread anywhere below net/http
	closed  bool
	changed chan struct{} // closed and replaced whenever quiet or closed changes
}

func newGuardedConn(c net.Conn) *guardedConn {
	return &guardedConn{Conn: c, changed: make(chan struct{})}
}

func (c *guardedConn) set(quiet, closed bool) {
	c.mu.Lock()
	if c.quiet != quiet || c.closed != closed {
		c.quiet, c.closed = quiet, closed
		close(c.changed)
		c.changed = make(chan struct{})
	}
	c.mu.Unlock()
}

func (c *guardedConn) Read(p []byte) (int, error) {
	// Reached only when every buffer above is empty; the socket's is checked here.
	if socketEmpty(c.Conn) {
		c.set(true, false)
	}
	n, err := c.Conn.Read(p)
	c.set(false, err != nil)
	return n, err
}

func (c *guardedConn) Close() error {
	c.set(false, true)
	return c.Conn.Close()
}

// awaitQuiet holds a request that was given a pooled connection until the connection is at
// rest or closed, so that whatever the upstream sent since its last response is seen by
// net/http's reader, which then closes the connection, before this request can be answered
// by it. A request on a closed connection fails before a byte is written, and net/http sends
// it again on a new one. It returns early when ctx ends.
func awaitQuiet(ctx context.Context, info httptrace.GotConnInfo) {
	if !info.Reused {
		return
	}
	c := info.Conn
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	gc, ok := c.(*guardedConn)
	if !ok {
		return
	}
	for {
		gc.mu.Lock()
		done, ch := gc.quiet || gc.closed, gc.changed
		gc.mu.Unlock()
		if done {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// guardedDialer dials TCP connections wrapped in guardedConn.
type guardedDialer struct{ net.Dialer }

func (d *guardedDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := d.Dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return newGuardedConn(c), nil
}

//go:build unix

package egress

import (
	"net"
	"syscall"
)

// idleUsable reports whether a pooled connection may carry the next request: the server has
// not closed it, and nothing arrived on it since its last response. Bytes that nobody asked
// for are a response to a request not yet sent; reading them as the answer to the next one
// is how a hostile or confused upstream desynchronises a connection, so the connection is
// dropped instead. One non-blocking MSG_PEEK, no data consumed.
func idleUsable(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	usable := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// EAGAIN: nothing to read, the connection is idle as it should be. Anything else is
		// the server's FIN (0 bytes), unsolicited data, or an error.
		usable = rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK
		return true // done: never wait for readiness
	})
	return err == nil && usable
}

//go:build unix

package egress

import (
	"net"
	"syscall"
)

// socketEmpty reports whether nothing is waiting to be read on c's socket: one non-blocking
// MSG_PEEK, no data consumed. An error or the peer's FIN (a zero-byte peek) counts as not
// empty: the Read that follows returns at once.
func socketEmpty(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	empty := false
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		empty = rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK
		return true // done: never wait for readiness
	})
	return err == nil && empty
}

//go:build !unix

package egress

import "net"

// idleUsable cannot look at the socket here: a pooled connection is taken as it is, and a
// request that fails on it before any response byte is retried as net/http would.
func idleUsable(net.Conn) bool { return true }

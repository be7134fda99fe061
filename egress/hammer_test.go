package egress

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
)

// TestUnsolicitedBytesUnderConcurrency is the desynchronisation attack with other jobs
// waiting for a connection: one call's upstream answers with a second, forged response in the
// same write while concurrent calls of other jobs share the pool. A connection freed by the
// first call may be handed straight to a waiting call; the forged bytes must never answer it.
func TestUnsolicitedBytesUnderConcurrency(t *testing.T) {
	t.Parallel()
	const forged = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			srv := newRawServer(t, tr.tls, func(n int, c net.Conn, br *bufio.Reader) {
				for {
					r, ok := readRequest(br)
					if !ok {
						return
					}
					if r.URL.Path == "/evil" {
						fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"+forged)
						continue
					}
					reply(c, "genuine")
				}
			})
			gw := srv.gateway(t)
			var wg sync.WaitGroup
			errs := make(chan error, 1000)
			for g := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 100 {
						path := "/good"
						if g == 0 || (i%3 == 0 && g%2 == 0) {
							path = "/evil"
						}
						got, err := callUp(t, gw, "GET", path, nil)
						if err == nil && strings.Contains(got, "forged") {
							errs <- fmt.Errorf("GET %s = %q: the forged response answered it", path, got)
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			n := 0
			for err := range errs {
				if n++; n <= 3 {
					t.Error(err)
				}
			}
			if n > 0 {
				t.Errorf("%d calls were answered by forged bytes", n)
			}
		})
	}
}

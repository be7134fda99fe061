package egress

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
)

// TestContentCodings is the compressed echo: an upstream returns the credential under every
// combination of Content-Encoding lines. All lines of the field count together (RFC 9110
// §5.3): the body is decompressed when they amount to one gzip layer, passed as is when they
// amount to none, and the call fails for anything else. In no case may the task get the
// credential, nor a body still encoded.
func TestContentCodings(t *testing.T) {
	t.Parallel()
	const (
		plain   = "plain"
		decoded = "decoded"
		refused = "refused"
	)
	for _, tc := range []struct {
		lines []string // one Content-Encoding field line each
		want  string
	}{
		{nil, plain},
		{[]string{"identity"}, plain},
		{[]string{""}, plain},
		{[]string{"identity", ""}, plain},
		{[]string{"gzip"}, decoded},
		{[]string{"GZIP"}, decoded},
		{[]string{"Gzip"}, decoded},
		{[]string{"x-gzip"}, decoded},
		{[]string{" gzip\t"}, decoded},
		{[]string{"identity", "gzip"}, decoded},
		{[]string{"", "gzip"}, decoded},
		{[]string{"gzip", "identity"}, decoded},
		{[]string{"identity, gzip"}, decoded},
		{[]string{", gzip,"}, decoded},
		{[]string{"gzip", ""}, decoded},
		{[]string{"gzip, gzip"}, refused},
		{[]string{"gzip", "gzip"}, refused},
		{[]string{"identity", "gzip", "gzip"}, refused},
		{[]string{"x-gzip, gzip"}, refused},
		{[]string{"br"}, refused},
		{[]string{"deflate"}, refused},
		{[]string{"compress"}, refused},
		{[]string{"zstd"}, refused},
		{[]string{"identity", "br"}, refused},
		{[]string{"gzip", "br"}, refused},
		{[]string{"br, gzip"}, refused},
		{[]string{"gzip;q=1"}, refused},
		{[]string{"gzip x"}, refused},
		{[]string{"gzip\x00"}, refused},
	} {
		t.Run(fmt.Sprintf("%q", tc.lines), func(t *testing.T) {
			t.Parallel()
			echo := `{"auth":"Bearer ` + testSecret + `"}`
			body := echo
			switch tc.want {
			case decoded:
				body = gzipped(echo)
			case refused:
				body = gzipped(gzipped(echo)) // two layers: one decompression still hides it
			}
			var head strings.Builder
			for _, l := range tc.lines {
				head.WriteString("Content-Encoding: " + l + "\r\n")
			}
			srv := newRawServer(t, false, func(n int, c net.Conn, br *bufio.Reader) {
				for {
					if _, ok := readRequest(br); !ok {
						return
					}
					fmt.Fprintf(c, "HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s", head.String(), len(body), body)
				}
			})
			gw := srv.gateway(t)
			resp, err := gw.Do(t.Context(), JobRef{}, Request{Endpoint: "up", Method: "GET", Target: "/x"})
			if tc.want == refused {
				var ue *UpstreamError
				// net/http refuses some lines itself (a NUL); the others are the gateway's refusal.
				if !errors.As(err, &ue) || strings.Contains(err.Error(), testSecret) ||
					!strings.Contains(err.Error(), "cannot inspect") && !strings.Contains(err.Error(), "malformed MIME header") {
					t.Fatalf("Do() with Content-Encoding lines %q = %v; want an *UpstreamError saying the gateway cannot inspect it", tc.lines, err)
				}
				if resp != nil {
					t.Fatalf("Do() returned a response and an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Do() with Content-Encoding lines %q = %v; want the body", tc.lines, err)
			}
			got, err := readAll(t, resp)
			if err != nil {
				t.Fatal(err)
			}
			if want := `{"auth":"Bearer [REDACTED]"}`; got != want {
				t.Errorf("body with Content-Encoding lines %q = %q; want %q (decoded, credential redacted)", tc.lines, got, want)
			}
			if tc.want == decoded && len(resp.Header["Content-Encoding"]) != 0 {
				t.Errorf("the task sees Content-Encoding %q for a body that is no longer encoded", resp.Header["Content-Encoding"])
			}
		})
	}
}

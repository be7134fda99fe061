package egress

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// TestConnectionsReused: a drained and closed body returns its connection to the pool, so
// sequential calls share one connection.
func TestConnectionsReused(t *testing.T) {
	t.Parallel()
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, benchBody)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	f := newFixture(t, srv.URL, "", bearer, "GET /x")
	for range 20 {
		resp, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := readAll(t, resp); err != nil {
			t.Fatal(err)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("20 sequential calls opened %d connections, want 1", n)
	}
}

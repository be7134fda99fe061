package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestShutdownEndsLongPollsCleanly: a graceful shutdown of a real server (Serve) answers
// the long-polls parked in it with their documented answers, not with a cancelled request's
// empty 200: a parked lease gets 200 {"jobs":[]}, a parked wait 503 unavailable as a JSON
// error, and the Go client reads both without an error of its own making.
func TestShutdownEndsLongPollsCleanly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- e.s.Serve(ctx, ln) }()
	j := e.submit(t.Context(), 1, false) // pending approval: the wait parks

	type answer struct {
		status int
		ctype  string
		body   []byte
		err    error
	}
	call := func(method, path, secret, body string) chan answer {
		out := make(chan answer, 1)
		go func() {
			req, err := http.NewRequest(method, base+path, strings.NewReader(body))
			if err != nil {
				out <- answer{err: err}
				return
			}
			req.Header.Set("Authorization", "Bearer "+secret)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				out <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			out <- answer{resp.StatusCode, resp.Header.Get("Content-Type"), b, err}
		}()
		return out
	}
	lease := call("POST", "/v1/lease", e.secrets["worker"], `{"max":1,"wait_seconds":60}`)
	wait := call("GET", "/v1/jobs/"+j.ID+"/wait?timeout=60", e.secrets["client"], "")
	eventually(t, "the lease to park", func() bool { return e.s.cp.Parked() == 1 })
	eventually(t, "the wait to park", func() bool { return e.s.cp.Waiters() == 1 })

	stop()
	within := time.After(8 * time.Second) // well before Shutdown's own 10s limit
	for name, ch := range map[string]chan answer{"lease": lease, "wait": wait} {
		var a answer
		select {
		case a = <-ch:
		case <-within:
			t.Fatalf("%s: no answer after shutdown began", name)
		}
		if a.err != nil {
			t.Fatalf("%s: %v", name, a.err)
		}
		switch name {
		case "lease":
			if a.status != http.StatusOK || !bytes.Equal(bytes.TrimSpace(a.body), []byte(`{"jobs":[]}`)) {
				t.Errorf("lease during shutdown = %d %q, want 200 {\"jobs\":[]}", a.status, a.body)
			}
		case "wait":
			var eb api.ErrorBody
			if a.status != http.StatusServiceUnavailable || json.Unmarshal(a.body, &eb) != nil || eb.Error.Code != api.CodeUnavailable {
				t.Errorf("wait during shutdown = %d %q, want 503 with error code %s", a.status, a.body, api.CodeUnavailable)
			}
		}
		if !strings.HasPrefix(a.ctype, "application/json") {
			t.Errorf("%s during shutdown: Content-Type %q, want application/json", name, a.ctype)
		}
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve() = %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Serve did not return after shutdown")
	}
}

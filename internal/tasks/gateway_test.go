package tasks

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/runtime"
)

// TestRetiredVersionClosesItsConnections: a version's gateway keeps connections to its
// endpoints pooled; once the version is retired and its last job has ended they must be
// closed, or every hot reload leaves sockets behind (CLOSE_WAIT on the worker's side).
func TestRetiredVersionClosesItsConnections(t *testing.T) {
	t.Parallel()
	var open atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	wasm, err := filepath.Abs(testdata + "/v1.wasm")
	if err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf("version: 1\nendpoints:\n  crm: {base_url: %q, allow: [\"GET /a\"]}\ntasks:\n  t: {module: %q, endpoints: [crm]}\n", srv.URL, wasm)
	pol, err := policy.Parse("policy.yaml", []byte(doc), "/")
	if err != nil {
		t.Fatal(err)
	}
	engine, err := runtime.NewEngine(runtime.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = engine.Close(context.Background()) })
	set, err := Load(t.Context(), Options{Policy: pol, Engine: engine, Log: zap.NewNop(), Redactor: redact.NewSet(), NoPool: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { set.Close(context.Background()) })

	sl := set.acquire("t") // a job in flight on the version about to be retired
	if sl.task.gateway == nil {
		t.Fatal("the task's version holds no gateway")
	}
	for range 3 {
		resp, err := sl.task.gateway.Do(t.Context(), egress.JobRef{Task: "t", Job: "j"}, egress.Request{Endpoint: "crm", Method: "GET", Target: "/a"})
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if n := open.Load(); n != 1 {
		t.Fatalf("open connections after three calls = %d, want 1 pooled", n)
	}
	set.swap(t.Context(), "t", nil) // retired while its job runs: the connection stays
	if n := open.Load(); n != 1 {
		t.Fatalf("open connections while the retired version still runs a job = %d, want 1", n)
	}
	set.release(t.Context(), sl) // its last job ends
	waitFor(t, "the retired version's pooled connection to close", func() bool { return open.Load() == 0 })
}

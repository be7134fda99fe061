package cli

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
)

// TestWorkerShutdownBoundedWithStuckTask: `castellan worker` running a task blocked in a
// one-hour host wait stops after two signals within --stop-timeout and a short bound, and
// the job goes back to the queue as a cancelled, retryable attempt.
func TestWorkerShutdownBoundedWithStuckTask(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	srv, err := server.New(ctx, server.Config{DBPath: filepath.Join(dir, "cp.db"), LeaseTTL: 30 * time.Second})
	must(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	served := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(served) }()
	t.Cleanup(func() { cancel(); <-served; _ = srv.Close() })
	base := "http://" + ln.Addr().String()
	token := func(role api.Role) string {
		tok, err := srv.Store().CreateToken(context.Background(), role, "default", string(role), time.Now())
		must(t, err)
		return tok.Secret
	}

	priv, pub, err := approval.GenerateKey("approver-1")
	must(t, err)
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}})
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "approvers.jwks.json"), jwks, 0o644))
	wasm, err := os.ReadFile("testdata/poll_hour.wasm")
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "poll_hour.wasm"), wasm, 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(`version: 1
tasks:
  hang:
    module: poll_hour.wasm
    version: "1"
    limits:
      timeout: 1h
`), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "worker.token"), []byte(token(api.RoleWorker)), 0o600))

	sigs := make(chan os.Signal, 2)
	done := make(chan error, 1)
	// Long enough that a loaded machine stops the cancelled task inside it (a task abandoned at
	// the timeout is reported differently); the task itself would wait an hour.
	const stop = 5 * time.Second
	go func() {
		done <- Worker(ctx, WorkerConfig{Server: base, TokenFile: filepath.Join(dir, "worker.token"),
			Policy: filepath.Join(dir, "policy.yaml"), TrustedKeys: []string{filepath.Join(dir, "approvers.jwks.json")},
			StateDir: filepath.Join(dir, "state"), CacheDir: "off", Concurrency: 1, Grace: time.Hour, StopTimeout: stop,
			Pool: "default", LogLevel: "error", LogFormat: "console"}, &syncBuffer{}, sigs)
	}()

	sub, err := client.New(base, token(api.RoleClient))
	must(t, err)
	appr, err := client.New(base, token(api.RoleApprover))
	must(t, err)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := sub.Catalog(t.Context(), "default"); err == nil && len(c.Tasks) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the worker never published its catalog")
		}
		time.Sleep(10 * time.Millisecond)
	}
	j, err := sub.Submit(t.Context(), api.SubmitRequest{Task: "hang", Pool: "default", Input: json.RawMessage(`{}`), MaxAttempts: 3})
	must(t, err)
	tok, _, err := approval.Sign(priv, approval.Request{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool,
		Input: []byte(`{}`), MaxAttempts: j.MaxAttempts})
	must(t, err)
	_, err = appr.Approve(t.Context(), j.ID, tok)
	must(t, err)
	for {
		if got, err := sub.Get(t.Context(), j.ID); err == nil && got.State == api.StateRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the job never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	sigs <- syscall.SIGTERM
	sigs <- syscall.SIGTERM
	select {
	case err := <-done:
		t.Logf("Worker() = %v", err)
		if ExitCode(err) != ExitTaskFailed {
			t.Errorf("Worker() after two signals = %v (exit %d), want exit %d", err, ExitCode(err), ExitTaskFailed)
		}
	case <-time.After(2*stop + 10*time.Second):
		t.Fatal("Worker() still running 10s after its stop timeout")
	}
	got, err := sub.Get(t.Context(), j.ID)
	must(t, err)
	if got.State != api.StateQueued || got.Outcome != string(outcome.Cancelled) {
		t.Errorf("job after the shutdown = %s/%s %q, want queued again after a cancelled attempt", got.State, got.Outcome, got.ErrorMessage)
	}
}

package e2e

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/cli"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/runtime"
)

// BenchmarkEndToEnd measures jobs/s through the control plane and one worker on loopback
// (in process: HTTP, SQLite and approval verification are real), for a trivial Wasm task and
// for the same task as native Go. The difference is the sandbox tax. Jobs are auto-approved
// so that no human is the bottleneck; b.N jobs are submitted first, then the worker starts
// and the clock runs until all have succeeded.
func BenchmarkEndToEnd(b *testing.B) {
	wasm, err := os.ReadFile("../../runtime/testdata/echo.wasm")
	if err != nil {
		b.Fatal(err)
	}
	b.Run("wasm", func(b *testing.B) {
		e, err := runtime.NewEngine(runtime.Config{})
		if err != nil {
			b.Fatal(err)
		}
		defer e.Close(context.Background())
		m, err := e.Load(context.Background(), runtime.ModuleConfig{Name: "echo", Wasm: wasm})
		if err != nil {
			b.Fatal(err)
		}
		benchJobs(b, runnerFunc(func(ctx context.Context, _, id string, in []byte) runtime.Result {
			return m.Run(ctx, runtime.Job{ID: id, Input: in})
		}))
	})
	b.Run("native", func(b *testing.B) {
		benchJobs(b, runnerFunc(func(_ context.Context, _, _ string, in []byte) runtime.Result {
			return runtime.Result{Output: append([]byte(nil), in...)}
		}))
	})
}

type runnerFunc func(ctx context.Context, task, jobID string, input []byte) runtime.Result

func (f runnerFunc) Run(ctx context.Context, task, jobID string, input []byte) runtime.Result {
	return f(ctx, task, jobID, input)
}

func benchJobs(b *testing.B, r worker.Runner) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	priv, pub, err := approval.GenerateKey("bench-auto")
	if err != nil {
		b.Fatal(err)
	}
	srv, err := server.New(ctx, server.Config{
		DBPath: filepath.Join(b.TempDir(), "cp.db"), AutoApprover: cli.AutoApprover{Key: priv, TTL: time.Hour},
		AutoApproveTasks: []string{"echo"}, DefaultMaxAttempts: 1,
	})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(served) }()
	defer func() { cancel(); <-served; _ = srv.Close() }()
	url := "http://" + ln.Addr().String()
	newClient := func(role api.Role) *client.Client {
		tok, err := srv.Store().CreateToken(ctx, role, pool, string(role), time.Now())
		if err != nil {
			b.Fatal(err)
		}
		c, err := client.New(url, tok.Secret)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	wc, sc := newClient(api.RoleWorker), newClient(api.RoleClient)
	catalog := []api.TaskDef{{Name: "echo", Version: "1", InputSchema: json.RawMessage(`{"type":"object"}`)}}
	if _, err := wc.Register(ctx, api.RegisterRequest{Name: "bench"}); err != nil {
		b.Fatal(err)
	}
	if _, err := wc.PublishCatalog(ctx, catalog); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		if _, err := sc.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(`{"n":1}`)}); err != nil {
			b.Fatal(err)
		}
	}
	// The durable replay store, as `castellan worker` uses it (one fsync'd write per job).
	replay, err := approval.OpenReplayStore(filepath.Join(b.TempDir(), "replay.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer replay.Close()
	w, err := worker.New(worker.Config{
		Client: wc, Runner: r, Catalog: catalog, Concurrency: 64, LeaseWait: time.Second,
		Verifier: approval.NewVerifier(&jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}}, replay),
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	lease, stopLease := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(lease, ctx) }()
	// Poll the worker's own counter: querying the database here would compete with the
	// control plane for its single SQLite connection and slow down what is measured.
	deadline := time.Now().Add(5 * time.Minute)
	for w.Done() < b.N {
		if time.Now().After(deadline) {
			b.Fatalf("worker finished %d jobs in 5 minutes, want %d", w.Done(), b.N)
		}
		time.Sleep(2 * time.Millisecond)
	}
	// Done counts a job once it ran, before its completion is recorded: wait for that too.
	for {
		c, err := srv.Store().Count(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if c.Jobs[api.StateSucceeded] == b.N {
			break
		}
		if n := c.Jobs[api.StateFailed] + c.Jobs[api.StateDead] + c.Jobs[api.StateRejected]; n > 0 || time.Now().After(deadline) {
			b.Fatalf("Count() = %+v, want %d succeeded jobs", c, b.N)
		}
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	stopLease()
	<-done
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
}

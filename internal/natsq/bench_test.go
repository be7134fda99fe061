package natsq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/runtime"
)

// BenchmarkTransports runs b.N trivial jobs end to end through each transport, with 1 and 4
// workers (each running up to 8 jobs at once): sign the approval, submit or dispatch, lease,
// verify, run a native no-op task, report, and record the result. The metric is jobs/s;
// dispatch-s (NATS) is how long dispatching alone took, approvals signed included.
func BenchmarkTransports(b *testing.B) {
	noop := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		return runtime.Result{Output: in}
	})
	for _, workers := range []int{1, 4} {
		b.Run(fmt.Sprintf("http/workers=%d", workers), func(b *testing.B) { benchHTTP(b, workers, noop) })
		b.Run(fmt.Sprintf("nats/workers=%d", workers), func(b *testing.B) { benchNATS(b, workers, noop) })
	}
}

func benchNATS(b *testing.B, workers int, r worker.Runner) {
	url := startNATS(b).ClientURL()
	s := newSigner(b)
	d, _, _ := startDispatcher(b, url, natsq.Options{})
	for range workers {
		startWorker(b, url, s, r, natsq.Options{}, 8)
	}
	// Warm up: streams, consumers and connections exist before the clock starts.
	warm := s.envelope(b, "warm", `{"n":0}`, 1)
	if _, err := d.Dispatch(b.Context(), warm); err != nil {
		b.Fatal(err)
	}
	waitState(b, d, "warm", 20*time.Second, api.StateSucceeded)
	prefix := fmt.Sprintf("bench%d", b.N)
	b.ResetTimer()
	start := time.Now()
	ids, err := dispatchMany(b, d, s, prefix, b.N)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(time.Since(start).Seconds(), "dispatch-s")
	waitAll(b, d, ids, 5*time.Minute)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
}

func benchHTTP(b *testing.B, workers int, r worker.Runner) {
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{DBPath: filepath.Join(b.TempDir(), "cp.db"), LeaseTTL: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(done) }()
	b.Cleanup(func() { cancel(); <-done; _ = srv.Close() })
	url := "http://" + ln.Addr().String()
	newClient := func(role api.Role) *client.Client {
		tok, err := srv.Store().CreateToken(context.Background(), role, pool, string(role), time.Now())
		if err != nil {
			b.Fatal(err)
		}
		c, err := client.New(url, tok.Secret)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	s := newSigner(b)
	for range workers {
		w, err := worker.New(worker.Config{Client: newClient(api.RoleWorker), Runner: r, Catalog: catalog,
			Verifier: approval.NewVerifier(s.trusted, approval.NewMemoryReplayStore()), Concurrency: 8, LeaseWait: time.Second,
			BackoffMin: 10 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		wctx, stop := context.WithCancel(context.Background())
		wdone := make(chan struct{})
		go func() { _ = w.Run(wctx, wctx); close(wdone) }()
		b.Cleanup(func() { stop(); <-wdone })
	}
	submitter, approver := newClient(api.RoleClient), newClient(api.RoleApprover)
	poll(b, 20*time.Second, "the catalog", func() bool {
		c, err := submitter.Catalog(context.Background(), pool)
		return err == nil && len(c.Tasks) > 0
	})
	b.ResetTimer()
	start := time.Now()
	ids := make([]string, b.N)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	var mu sync.Mutex
	next := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= b.N {
					return
				}
				in := fmt.Sprintf(`{"n":%d}`, i)
				j, err := submitter.Submit(context.Background(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(in), MaxAttempts: 3})
				if err == nil {
					var tok string
					tok, _, err = approval.Sign(s.key, approval.Request{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion,
						Pool: pool, Input: []byte(in), MaxAttempts: 3})
					if err == nil {
						_, err = approver.Approve(context.Background(), j.ID, tok)
					}
				}
				if err != nil {
					errs <- err
					return
				}
				ids[i] = j.ID
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	for _, id := range ids {
		wctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		j, err := submitter.Wait(wctx, id)
		cancel()
		if err != nil || j.State != api.StateSucceeded {
			b.Fatalf("Wait(%s) = %s, %v, want succeeded", id, j.State, err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
}

package worker_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/internal/logging"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/runtime"
)

// benchQueue is an in-process control plane that answers at once: jobs waiting in a
// channel, leased as soon as they are there. It records, per job, when the lease answer left
// it and when the report arrived: the worker's own share of a job's dispatch.
type benchQueue struct {
	jobs chan api.LeasedJob

	mu       sync.Mutex
	leasedAt map[string]time.Time
	share    []time.Duration // lease answer -> report received, per reported job
	reported chan struct{}   // one value per report
}

func newBenchQueue(n int) *benchQueue {
	return &benchQueue{jobs: make(chan api.LeasedJob, n), leasedAt: map[string]time.Time{}, reported: make(chan struct{}, n)}
}

func (q *benchQueue) Register(context.Context, api.RegisterRequest) (api.RegisterResponse, error) {
	return api.RegisterResponse{WorkerID: "w1", Pool: "p", LeaseTTLSeconds: 30, MaxWaitSeconds: 30}, nil
}

func (q *benchQueue) PublishCatalog(context.Context, []api.TaskDef) (api.CatalogResponse, error) {
	return api.CatalogResponse{}, nil
}

func (q *benchQueue) Lease(ctx context.Context, max int, wait time.Duration) ([]api.LeasedJob, error) {
	var out []api.LeasedJob
	select {
	case j := <-q.jobs:
		out = append(out, j)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(wait):
		return nil, nil
	}
more:
	for len(out) < max {
		select {
		case j := <-q.jobs:
			out = append(out, j)
		default:
			break more
		}
	}
	now := time.Now()
	q.mu.Lock()
	for _, j := range out {
		q.leasedAt[j.JobID] = now
	}
	q.mu.Unlock()
	return out, nil
}

func (q *benchQueue) Heartbeat(context.Context, string) (api.HeartbeatResponse, error) {
	return api.HeartbeatResponse{LeaseExpiresAt: time.Now().Add(30 * time.Second)}, nil
}

func (q *benchQueue) Complete(_ context.Context, jobID string, req api.CompleteRequest) (api.CompleteResponse, error) {
	now := time.Now()
	q.mu.Lock()
	q.share = append(q.share, now.Sub(q.leasedAt[jobID]))
	q.mu.Unlock()
	if req.Outcome != "ok" {
		return api.CompleteResponse{}, fmt.Errorf("job %s: %s %s", jobID, req.Outcome, req.ErrorMessage)
	}
	q.reported <- struct{}{}
	return api.CompleteResponse{JobID: jobID}, nil
}

// BenchmarkDispatch measures the worker's own share of a job, from the lease answer to the
// report, with everything `castellan worker` does around the task for real (approval
// verification, the durable SQLite replay store with its fsync, the signed audit log, zap
// logging through internal/logging) and a native task that copies its input, so that the
// sandbox is not in it. The control plane answers at once in process; its share and the
// network's are not in it either.
//
//   - latency: one job at a time; share-p50/p90/p99-ms;
//
//   - throughput-c32: b.N jobs waiting, the worker running 32 at once; jobs/s and the
//     process's CPU per job (getrusage; signing the approvals is outside it), with the log
//     at warn (as BenchmarkProcesses runs the worker) and at info (castellan worker's default).
//
//     go test -run '^$' -bench Dispatch -benchtime 1000x ./internal/worker/
func BenchmarkDispatch(b *testing.B) {
	priv, pub, err := approval.GenerateKey("approver-1")
	if err != nil {
		b.Fatal(err)
	}
	env := &benchEnv{priv: priv, pub: pub}
	b.Run("latency", func(b *testing.B) {
		q := newBenchQueue(1)
		env.start(b, q, "warn")
		jobs := env.sign(b, b.N)
		b.ResetTimer()
		for i := range b.N {
			q.jobs <- jobs[i]
			<-q.reported
		}
		b.StopTimer()
		q.mu.Lock()
		share := slices.Clone(q.share)
		q.mu.Unlock()
		slices.Sort(share)
		at := func(p float64) float64 {
			return float64(share[min(int(p*float64(len(share))), len(share)-1)].Microseconds()) / 1000
		}
		b.ReportMetric(at(0.50), "share-p50-ms")
		b.ReportMetric(at(0.90), "share-p90-ms")
		b.ReportMetric(at(0.99), "share-p99-ms")
	})
	for _, level := range []string{"warn", "info"} {
		b.Run("throughput-c32/log-"+level, func(b *testing.B) {
			q := newBenchQueue(b.N)
			env.start(b, q, level)
			jobs := env.sign(b, b.N)
			cpu0 := cpuTime(b)
			b.ResetTimer()
			t0 := time.Now()
			for _, j := range jobs {
				q.jobs <- j
			}
			for range b.N {
				<-q.reported
			}
			elapsed := time.Since(t0)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
			b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/job")
		})
	}
}

type benchEnv struct{ priv, pub jose.JSONWebKey }

// sign returns n leased jobs, each with its own approval.
func (e *benchEnv) sign(b *testing.B, n int) []api.LeasedJob {
	out := make([]api.LeasedJob, n)
	for i := range out {
		id := fmt.Sprintf("job-%d", i)
		in := fmt.Sprintf(`{"customer_id":"%d"}`, i)
		tok, _, err := approval.Sign(e.priv, approval.Request{JobID: id, Task: "t", TaskVersion: "1", Pool: "p",
			Input: []byte(in), MaxAttempts: 3, Approver: "bench", TTL: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		out[i] = api.LeasedJob{JobID: id, Task: "t", TaskVersion: "1", Pool: "p", Input: json.RawMessage(in),
			Approval: tok, Attempt: 1, MaxAttempts: 3, LeaseToken: "lease-" + id, LeaseExpiresAt: time.Now().Add(time.Hour)}
	}
	return out
}

// start runs a worker of concurrency 32 against q until the benchmark ends.
func (e *benchEnv) start(b *testing.B, q *benchQueue, level string) {
	dir := b.TempDir()
	log, err := logging.New(io.Discard, logging.Options{Level: level, Scrub: redact.NewSet()})
	if err != nil {
		b.Fatal(err)
	}
	replay, err := approval.OpenReplayStore(filepath.Join(dir, "replay.db"))
	if err != nil {
		b.Fatal(err)
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	alog, err := audit.Open(audit.Options{Path: filepath.Join(dir, "audit.log"), Key: key})
	if err != nil {
		b.Fatal(err)
	}
	w, err := worker.New(worker.Config{
		Client: q, Runner: echoRunner{}, Catalog: []api.TaskDef{{Name: "t", Version: "1", InputSchema: json.RawMessage(`{}`)}},
		Verifier: approval.NewVerifier(&jose.JSONWebKeySet{Keys: []jose.JSONWebKey{e.pub}}, replay),
		Pool:     "p", Concurrency: 32, Heartbeat: time.Hour, Audit: alog, Log: log,
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
		_ = alog.Close()
		_ = replay.Close()
	})
}

type echoRunner struct{}

func (echoRunner) Run(_ context.Context, _, _ string, input []byte) runtime.Result {
	return runtime.Result{Output: input, Digest: "sha256:echo"}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

package server

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// BenchmarkSubmitLeaseComplete measures jobs/s through the HTTP API on loopback: one
// submit (pre-approved), one lease, one completion per job, with a no-op worker.
func BenchmarkSubmitLeaseComplete(b *testing.B) {
	e := newEnv(b, func(c *Config) { c.Now = time.Now })
	ctx := b.Context()
	approval := fakeJWS("bench")
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := e.client.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: "alpha",
			Input: json.RawMessage(`{"n":1}`), Approval: approval}); err != nil {
			b.Fatal(err)
		}
		jobs, err := e.worker.Lease(ctx, 1, 0)
		if err != nil || len(jobs) != 1 {
			b.Fatalf("Lease() = %d jobs, %v", len(jobs), err)
		}
		if _, err := e.worker.Complete(ctx, jobs[0].JobID, api.CompleteRequest{LeaseToken: jobs[0].LeaseToken,
			Attempt: jobs[0].Attempt, Outcome: "ok", Output: json.RawMessage(`{}`)}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
}

// BenchmarkDispatchC32 is the control plane alone at the concurrency of BenchmarkProcesses'
// throughput: 32 clients each submit a pre-approved job and wait for its result; one worker
// leases up to 32 jobs at a time and completes each at once (no task runs). jobs/s and the
// process's CPU per job (clients and worker included: they are the same for every build).
func BenchmarkDispatchC32(b *testing.B) {
	e := newEnv(b, func(c *Config) { c.Now = time.Now; c.RecheckInterval = time.Second })
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	approval := fakeJWS("bench")
	go func() {
		for ctx.Err() == nil {
			jobs, err := e.worker.Lease(ctx, 32, 5)
			if err != nil {
				continue
			}
			for _, j := range jobs {
				go func() {
					_, _ = e.worker.Complete(ctx, j.JobID, api.CompleteRequest{LeaseToken: j.LeaseToken,
						Attempt: j.Attempt, Outcome: "ok", Output: json.RawMessage(`{}`)})
				}()
			}
		}
	}()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	b.ResetTimer()
	cpu0, start := cpuTime(), time.Now()
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				j, err := e.client.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{"n":1}`), Approval: approval})
				for err == nil && !j.State.Terminal() {
					j, err = e.client.WaitOnce(ctx, j.ID, 30*time.Second)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/job")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

package server

import (
	"encoding/json"
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

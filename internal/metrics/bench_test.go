package metrics_test

import (
	"context"
	"crypto/ed25519"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/metrics"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/outcome"
)

// BenchmarkPerJobObservability measures what audit logging and metrics add to one job on the
// worker: the five job steps and one host call, as the worker and the gateway report them.
// "none" is the bare cost of building the events; the other cases add each sink. Audit
// records are written to a real file (page cache; fsync only at checkpoints, every 100).
//
//	go test -run '^$' -bench PerJobObservability -benchmem ./internal/metrics
func BenchmarkPerJobObservability(b *testing.B) {
	_, key, _ := ed25519.GenerateKey(nil)
	for _, bc := range []struct {
		name           string
		audit, metrics bool
	}{{"none", false, false}, {"metrics", false, true}, {"audit", true, false}, {"audit+metrics", true, true}} {
		b.Run(bc.name, func(b *testing.B) {
			var log *audit.Log
			if bc.audit {
				var err error
				log, err = audit.Open(audit.Options{Path: filepath.Join(b.TempDir(), "audit.jsonl"), Key: key, MaxBytes: -1})
				if err != nil {
					b.Fatal(err)
				}
				defer log.Close()
			}
			var m *metrics.Worker
			if bc.metrics {
				var err error
				if m, err = metrics.NewWorker(prometheus.NewRegistry()); err != nil {
					b.Fatal(err)
				}
			}
			ctx := context.Background()
			output := []byte(`{"customer_id":"42","name":"Ada Lovelace","tier":"gold","open_tickets":2}`)
			call := egress.Event{Time: time.Now(), Task: "crm-lookup", Job: "job_0123456789ab", Endpoint: "crm", Method: "GET",
				Path: "/api/customers/42", Status: 200, ResponseBytes: 80, Duration: 2 * time.Millisecond, Decision: "allow"}
			b.ReportAllocs()
			for b.Loop() {
				ev := worker.Event{JobID: "job_0123456789ab", Task: "crm-lookup", TaskVersion: "1.0.0", Pool: "default", Attempt: 1}
				step := func(k worker.EventKind, rec audit.Event) {
					ev.Kind = k
					if m != nil {
						m.Observe(ctx, ev)
					}
					if log != nil {
						if err := log.Append(rec); err != nil {
							b.Fatal(err)
						}
					}
				}
				step(worker.JobReceived, audit.JobReceived{Job: ev.JobID, Task: ev.Task, TaskVersion: ev.TaskVersion, Pool: ev.Pool, Attempt: 1})
				step(worker.ApprovalVerified, audit.ApprovalVerified{Job: ev.JobID, Task: ev.Task, Attempt: 1})
				step(worker.JobStarted, audit.JobStarted{Job: ev.JobID, Task: ev.Task, Attempt: 1})
				if m != nil {
					m.HTTPCall(call)
				}
				if log != nil {
					if err := log.Append(audit.HTTPCall(call)); err != nil {
						b.Fatal(err)
					}
				}
				ev.Outcome, ev.Duration, ev.OutputBytes = outcome.OK, 5*time.Millisecond, len(output)
				step(worker.JobFinished, audit.JobFinished{Job: ev.JobID, Task: ev.Task, Attempt: 1, Outcome: "ok", Duration: ev.Duration, Output: output})
			}
		})
	}
}

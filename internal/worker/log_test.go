package worker_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/runtime"
)

// The worker's log says where a job's time went: "job finished" (info) carries the time to
// admission (the approval check and its durable record) and the task's run, "result
// reported" (debug) the time from receipt to the report and the report's round trip. At
// warn, a job that succeeds writes no line at all.
func TestJobTimingsLogged(t *testing.T) {
	t.Parallel()
	for _, level := range []zapcore.Level{zap.DebugLevel, zap.WarnLevel} {
		t.Run(level.String(), func(t *testing.T) {
			t.Parallel()
			core, logs := observer.New(level)
			s := newSigner(t)
			q := newFakeQueue("default")
			const run = 7 * time.Millisecond
			r := funcRunner(func(_ context.Context, _, _ string, in []byte) runtime.Result {
				return runtime.Result{Output: in, Duration: run}
			})
			startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Pool: "default", Verifier: s.verifier(), Log: zap.New(core)})
			q.push(s.job(t, "job-1", "echo", "1.0.0", "default"))
			q.waitUntil(t, "the report", func(q *fakeQueue) bool { return len(q.reports) == 1 })
			if level == zap.WarnLevel {
				if n := logs.Len(); n != 0 {
					t.Fatalf("%d lines at warn for a job that succeeded, want none: %v", n, logs.All())
				}
				return
			}
			poll(t, "the result reported line", func() bool { return logs.FilterMessage("result reported").Len() == 1 })
			fin := logs.FilterMessage("job finished").All()
			if len(fin) != 1 || fin[0].Level != zap.InfoLevel {
				t.Fatalf("job finished lines = %v, want one at info", fin)
			}
			f := fin[0].ContextMap()
			if f["job"] != "job-1" || f["task"] != "echo" || f["run"] != run {
				t.Errorf("job finished fields = %v, want job-1, echo and run %s", f, run)
			}
			admit, _ := f["admit"].(time.Duration)
			total, _ := f["duration"].(time.Duration)
			if admit <= 0 || admit > total {
				t.Errorf("job finished admit = %v, duration %v: want 0 < admit <= duration", f["admit"], total)
			}
			rep := logs.FilterMessage("result reported").All()[0]
			g := rep.ContextMap()
			since, _ := g["since_receipt"].(time.Duration)
			rtt, ok := g["report"].(time.Duration)
			if rep.Level != zap.DebugLevel || g["job"] != "job-1" || since < total || !ok || rtt < 0 {
				t.Errorf("result reported = %v %v, want debug, job-1, since_receipt >= %v and a report round trip", rep.Level, g, total)
			}
		})
	}
}

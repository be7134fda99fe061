package tracing_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/tracing"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/outcome"
)

func TestTraceParentRoundTrip(t *testing.T) {
	t.Parallel()
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if got := tracing.TraceParent(tracing.Extract(t.Context(), tp)); got != tp {
		t.Errorf("TraceParent(Extract(%q)) = %q, want it back", tp, got)
	}
	for _, bad := range []string{"", "garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"} {
		if got := tracing.TraceParent(tracing.Extract(t.Context(), bad)); got != "" {
			t.Errorf("TraceParent(Extract(%q)) = %q, want empty", bad, got)
		}
	}
}

// TestWorkerSpanTree: a job continues the control plane's trace; verify and run are its
// children; a host call is a child of run and carries no path or URL.
func TestWorkerSpanTree(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := tracing.NewSDKProvider(rec, "test")
	w := tracing.NewWorker(tp)

	// The control plane's submit span, as the worker receives it: a traceparent string.
	parentCtx, submit := tp.Tracer("cp").Start(context.Background(), "submit")
	submit.End()
	ev := worker.Event{JobID: "job_1", Task: "crm-lookup", Attempt: 1, TraceParent: tracing.TraceParent(parentCtx)}
	ctx := t.Context()
	for _, k := range []worker.EventKind{worker.JobReceived, worker.ApprovalVerified, worker.JobStarted} {
		ev.Kind = k
		ctx = w.Observe(ctx, ev)
	}
	w.HTTPCall(egress.Event{Time: time.Now(), Job: "job_1", Endpoint: "crm", Method: "GET", Path: "/api/customers/42",
		Status: 200, Duration: time.Millisecond, Decision: "allow"})
	ev.Kind, ev.Outcome = worker.JobFinished, outcome.OK
	w.Observe(ctx, ev)
	w.HTTPCall(egress.Event{Job: "job_1", Endpoint: "crm"}) // after the job: dropped, not orphaned

	spans := rec.Ended()
	name := map[trace.SpanID]string{}
	for _, s := range spans {
		name[s.SpanContext().SpanID()] = s.Name()
	}
	got := map[string]string{}
	for _, s := range spans {
		got[s.Name()] = name[s.Parent().SpanID()]
		if s.SpanContext().TraceID() != submit.SpanContext().TraceID() {
			t.Errorf("span %s is in trace %s, want the submit's %s", s.Name(), s.SpanContext().TraceID(), submit.SpanContext().TraceID())
		}
		for _, a := range s.Attributes() {
			if v := a.Value.Emit(); v == "/api/customers/42" {
				t.Errorf("span %s attribute %s holds the request path", s.Name(), a.Key)
			}
		}
	}
	want := map[string]string{"submit": "", "job crm-lookup": "submit", "verify": "job crm-lookup", "run": "job crm-lookup", "http crm": "run"}
	if len(got) != len(want) || len(spans) != len(want) {
		t.Fatalf("spans = %v (%d), want %v", got, len(spans), want)
	}
	for child, parent := range want {
		if got[child] != parent {
			t.Errorf("parent of %q = %q, want %q", child, got[child], parent)
		}
	}
}

func TestNewProviderOffByDefault(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	tp, shutdown, err := tracing.NewProvider(context.Background(), tracing.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer shutdown(context.Background())
	_, s := tp.Tracer("x").Start(context.Background(), "x")
	if s.IsRecording() {
		t.Errorf("NewProvider without an endpoint records spans, want a no-op provider")
	}
	tp2, shutdown2, err := tracing.NewProvider(context.Background(), tracing.Options{Endpoint: "http://127.0.0.1:1", Service: "t"})
	if err != nil {
		t.Fatal(err)
	}
	_, s2 := tp2.Tracer("x").Start(context.Background(), "x")
	if !s2.IsRecording() {
		t.Errorf("NewProvider with an endpoint does not record spans")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = shutdown2(ctx) // the collector is absent: the flush fails, which is fine here
}

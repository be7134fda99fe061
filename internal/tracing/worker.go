package tracing

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/outcome"
)

// Worker traces the worker's jobs. It implements worker.Observer; feed HTTPCall from
// tasks.Options.Audit. A job's span is a child of the traceparent the control plane
// handed out with the lease; its children are "verify", "run" and one "http <endpoint>" per
// host call (made a child of "run" by job id, since egress events carry no context).
type Worker struct {
	tracer trace.Tracer

	mu   sync.Mutex
	jobs map[string]*jobSpans // by job id
}

type jobSpans struct {
	job, verify, run trace.Span
	runCtx           context.Context
}

var _ worker.Observer = (*Worker)(nil)

// NewWorker returns a Worker tracing with tp.
func NewWorker(tp trace.TracerProvider) *Worker {
	return &Worker{tracer: tp.Tracer(ScopeName), jobs: map[string]*jobSpans{}}
}

// Observe implements worker.Observer.
func (w *Worker) Observe(ctx context.Context, ev worker.Event) context.Context {
	if w == nil {
		return ctx
	}
	switch ev.Kind {
	case worker.JobReceived:
		ctx, job := w.tracer.Start(Extract(ctx, ev.TraceParent), "job "+ev.Task, trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(attribute.String("castellan.job.id", ev.JobID), attribute.String("castellan.task", ev.Task),
				attribute.String("castellan.task.version", ev.TaskVersion), attribute.Int("castellan.job.attempt", ev.Attempt)))
		_, verify := w.tracer.Start(ctx, "verify")
		w.mu.Lock()
		w.jobs[key(ev)] = &jobSpans{job: job, verify: verify}
		w.mu.Unlock()
		return ctx
	case worker.ApprovalVerified, worker.ApprovalRejected:
		if s := w.get(ev); s != nil && s.verify != nil {
			if ev.Kind == worker.ApprovalRejected {
				s.verify.SetStatus(codes.Error, ev.Reason)
			}
			s.verify.End()
		}
	case worker.JobStarted:
		if s := w.get(ev); s != nil {
			runCtx, run := w.tracer.Start(ctx, "run")
			w.mu.Lock()
			s.run, s.runCtx = run, runCtx
			w.mu.Unlock()
			return runCtx
		}
	case worker.JobFinished:
		w.mu.Lock()
		s := w.jobs[key(ev)]
		delete(w.jobs, key(ev))
		w.mu.Unlock()
		if s == nil {
			return ctx
		}
		s.job.SetAttributes(attribute.String("castellan.outcome", string(ev.Outcome)),
			attribute.Int("castellan.http_calls", ev.HTTPCalls))
		if ev.Outcome != outcome.OK {
			s.job.SetStatus(codes.Error, string(ev.Outcome))
		}
		if s.run != nil {
			if ev.Outcome != outcome.OK {
				s.run.SetStatus(codes.Error, string(ev.Outcome))
			}
			s.run.End()
		}
		s.job.End()
	}
	return ctx
}

// key identifies a job's spans: one attempt of a job runs on a worker at a time (egress
// events carry the job id but not the attempt).
func key(ev worker.Event) string { return ev.JobID }

func (w *Worker) get(ev worker.Event) *jobSpans {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.jobs[key(ev)]
}

// HTTPCall records one host call as a child of its job's run span, timed from the event.
// Only the endpoint name, the method, the status and the decision are recorded.
func (w *Worker) HTTPCall(ev egress.Event) {
	if w == nil {
		return
	}
	w.mu.Lock()
	var parent context.Context
	if s := w.jobs[ev.Job]; s != nil {
		parent = s.runCtx
	}
	w.mu.Unlock()
	if parent == nil {
		return
	}
	_, span := w.tracer.Start(parent, "http "+ev.Endpoint, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithTimestamp(ev.Time), trace.WithAttributes(
			attribute.String("castellan.endpoint", ev.Endpoint),
			attribute.String("http.request.method", ev.Method),
			attribute.Int("http.response.status_code", ev.Status),
			attribute.String("castellan.decision", ev.Decision)))
	if ev.Decision != "allow" || ev.Status >= 500 || ev.Status == 0 {
		span.SetStatus(codes.Error, ev.Decision)
	}
	span.End(trace.WithTimestamp(ev.Time.Add(ev.Duration)))
}

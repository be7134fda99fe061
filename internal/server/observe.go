package server

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap"

	auditlog "github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/internal/tracing"
)

// record appends a job action to the tamper-evident audit log, after the database committed
// it. A failed write is logged, not returned: the action happened, and the database's audit
// table holds it.
func (s *Server) record(a auditlog.Action) {
	if err := s.cfg.Audit.Append(a); err != nil {
		s.log.Error("audit log write failed", zap.Error(err), zap.String("job_id", a.Job), zap.String("action", a.Type))
	}
}

// startSpan starts a span for a job action continuing traceparent (which may be empty).
func (s *Server) startSpan(ctx context.Context, name, traceparent, jobID, task string) (context.Context, trace.Span) {
	return s.cfg.Tracer.Tracer(tracing.ScopeName).Start(tracing.Extract(ctx, traceparent), name,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("castellan.job.id", jobID), attribute.String("castellan.task", task)))
}

// stepFrom records a finished job action as a span in the job's trace.
func (s *Server) stepFrom(ctx context.Context, name, traceparent, jobID, task string) {
	_, span := s.startSpan(ctx, name, traceparent, jobID, task)
	span.End()
}

// step is stepFrom with the job's stored trace context, read only when tracing is on.
func (s *Server) step(ctx context.Context, name, jobID, task string) {
	if !s.tracing() {
		return
	}
	var tp string
	_ = s.store.queryRow(ctx, `SELECT traceparent FROM jobs WHERE id = ?`, jobID).Scan(&tp)
	s.stepFrom(ctx, name, tp, jobID, task)
}

// tracing reports whether spans are recorded: not with the default no-op provider, so the
// extra read of the trace context is skipped.
func (s *Server) tracing() bool {
	_, off := s.cfg.Tracer.(noop.TracerProvider)
	return !off
}

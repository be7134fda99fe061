// Package tracing gives Castellan's jobs OpenTelemetry traces: one trace per job from the
// control plane's submit, through approval and lease, to the worker's run and the
// completion it reports.
//
// The trace context travels with the job as a W3C traceparent string: the server stores it
// at submit and hands it out with the lease, so the worker's spans join the submitter's
// trace even though the two never share a process or a connection.
//
// Spans say what happened and never carry a secret: a host call's span has the endpoint
// name, the method and the status, never the URL, path, query, headers or body (the path
// may embed identifiers; the audit log, which is local, records it). The sandbox does not
// report instantiation separately from the run, so the run span covers both.
//
// Export is opt-in: NewProvider returns a no-op provider unless an OTLP endpoint is
// configured, so tracing costs almost nothing when nobody collects it.
package tracing

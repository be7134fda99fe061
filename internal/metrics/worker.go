package metrics

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/worker"
)

// Worker holds the worker's metrics. It implements worker.Observer; feed HTTPCall from
// tasks.Options.Audit. A nil *Worker records nothing.
type Worker struct {
	jobs        *prometheus.CounterVec
	jobDuration *prometheus.HistogramVec
	instantiate prometheus.Histogram
	httpCalls   *prometheus.CounterVec
	denials     *prometheus.CounterVec
	inFlight    prometheus.Gauge
	freeSlots   prometheus.Gauge
	leaseErrors prometheus.Counter
	hbErrors    prometheus.Counter
	reloads     prometheus.Counter
	refusals    *prometheus.CounterVec
	approvals   *prometheus.CounterVec

	mu       sync.Mutex
	capacity int
	running  int
}

var _ worker.Observer = (*Worker)(nil)

// durationBuckets span a 1 ms echo to a 10 min task.
var durationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// NewWorker registers the worker metrics on reg.
func NewWorker(reg prometheus.Registerer) (*Worker, error) {
	m := &Worker{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "castellan_jobs_total",
			Help: "Jobs finished by this worker, by task and outcome code."}, []string{"task", "outcome"}),
		jobDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "castellan_job_duration_seconds",
			Help: "Time from lease to the end of the run, by task.", Buckets: durationBuckets}, []string{"task"}),
		instantiate: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "castellan_sandbox_instantiate_seconds",
			Help: "Time to instantiate a fresh sandbox instance.", Buckets: durationBuckets}),
		httpCalls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "castellan_http_calls_total",
			Help: "Host HTTP calls made for tasks, by endpoint and decision (allow, deny)."}, []string{"endpoint", "decision"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "castellan_denials_total",
			Help: "Refusals, by reason: a denied host call's category, or the approval check that failed."}, []string{"reason"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "castellan_jobs_in_flight",
			Help: "Jobs leased and not yet finished."}),
		freeSlots: prometheus.NewGauge(prometheus.GaugeOpts{Name: "castellan_free_slots",
			Help: "Run slots not holding a job."}),
		leaseErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "castellan_lease_errors_total",
			Help: "Failed lease calls to the control plane."}),
		hbErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "castellan_heartbeat_errors_total",
			Help: "Failed heartbeats."}),
		reloads: prometheus.NewCounter(prometheus.CounterOpts{Name: "castellan_plugin_reloads_total",
			Help: "Plugins loaded or replaced while running."}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "castellan_plugin_refusals_total",
			Help: "Plugins refused at load or reload, by reason."}, []string{"reason"}),
		approvals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "castellan_approvals_total",
			Help: "Approval checks, by result (verified, rejected)."}, []string{"result"}),
	}
	for _, c := range []prometheus.Collector{m.jobs, m.jobDuration, m.instantiate, m.httpCalls, m.denials,
		m.inFlight, m.freeSlots, m.leaseErrors, m.hbErrors, m.reloads, m.refusals, m.approvals} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Observe implements worker.Observer.
func (m *Worker) Observe(ctx context.Context, ev worker.Event) context.Context {
	if m == nil {
		return ctx
	}
	switch ev.Kind {
	case worker.WorkerReady:
		m.mu.Lock()
		m.capacity = ev.Capacity
		m.setSlots()
		m.mu.Unlock()
	case worker.JobReceived:
		m.mu.Lock()
		m.running++
		m.setSlots()
		m.mu.Unlock()
	case worker.ApprovalVerified:
		m.approvals.WithLabelValues("verified").Inc()
	case worker.ApprovalRejected:
		m.approvals.WithLabelValues("rejected").Inc()
		m.denials.WithLabelValues(approvalReason(ev.Reason)).Inc()
	case worker.JobFinished:
		m.mu.Lock()
		m.running--
		m.setSlots()
		m.mu.Unlock()
		m.jobs.WithLabelValues(ev.Task, string(ev.Outcome)).Inc()
		m.jobDuration.WithLabelValues(ev.Task).Observe(ev.Duration.Seconds())
		if ev.Instantiate > 0 { // zero when the job never ran (refused, audit failure)
			m.instantiate.Observe(ev.Instantiate.Seconds())
		}
	case worker.LeaseFailed:
		m.leaseErrors.Inc()
	case worker.HeartbeatFailed:
		m.hbErrors.Inc()
	}
	return ctx
}

func (m *Worker) setSlots() {
	m.inFlight.Set(float64(m.running))
	m.freeSlots.Set(float64(max(m.capacity-m.running, 0)))
}

// HTTPCall counts one host HTTP call; give it to tasks.Options.Audit (with the audit log's).
func (m *Worker) HTTPCall(ev egress.Event) {
	if m == nil {
		return
	}
	m.httpCalls.WithLabelValues(ev.Endpoint, ev.Decision).Inc()
	if ev.Decision == "deny" {
		m.denials.WithLabelValues(httpReason(ev.Reason)).Inc()
	}
}

// Instantiated records the time a sandbox instance took to start.
func (m *Worker) Instantiated(d time.Duration) {
	if m != nil {
		m.instantiate.Observe(d.Seconds())
	}
}

// PluginReloaded counts a plugin loaded or replaced at run time.
func (m *Worker) PluginReloaded() {
	if m != nil {
		m.reloads.Inc()
	}
}

// PluginRefused counts a plugin refused at load; reason is a short fixed category such as
// "signature" or "digest", never a path or message.
func (m *Worker) PluginRefused(reason string) {
	if m != nil {
		m.refusals.WithLabelValues(category(reason)).Inc()
	}
}

// approvalReason maps a refusal message to a fixed label: the approval.Reason the verifier
// names ("approval rejected (expired): …" gives "approval_expired"), or task_not_served.
func approvalReason(msg string) string {
	if rest, ok := strings.CutPrefix(msg, "approval rejected ("); ok {
		if i := strings.IndexByte(rest, ')'); i > 0 && i <= 32 {
			return "approval_" + category(rest[:i])
		}
	}
	if strings.Contains(msg, "not served") {
		return "task_not_served"
	}
	return "approval_other"
}

// httpDenials map the gateway's denial messages to fixed labels; the messages themselves
// hold guest-chosen text (a method, a path) that must not become a label value.
var httpDenials = []struct{ substr, label string }{
	{"not allowed by any rule", "http_no_rule"},
	{"redirect", "http_redirect"},
	{"header", "http_header"},
	{"query parameter", "http_query"},
	{"request body", "http_body_too_large"},
	{"method", "http_method"},
	{"budget", "http_budget"},
}

func httpReason(msg string) string {
	for _, d := range httpDenials {
		if strings.Contains(msg, d.substr) {
			return d.label
		}
	}
	return "http_other"
}

// category keeps a reason's leading word (up to a space or colon), lower-cased and at most
// 32 bytes, so a label stays a small fixed vocabulary whatever the message goes on to say.
func category(reason string) string {
	if i := strings.IndexAny(reason, " :,(\"'"); i >= 0 {
		reason = reason[:i]
	}
	if len(reason) > 32 {
		reason = reason[:32]
	}
	if reason == "" {
		return "unspecified"
	}
	return strings.ToLower(reason)
}

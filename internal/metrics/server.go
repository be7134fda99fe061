package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Server holds the control plane's metrics. A nil *Server records nothing.
type Server struct {
	submitted *prometheus.CounterVec
	approved  *prometheus.CounterVec
	leased    *prometheus.CounterVec
	completed *prometheus.CounterVec
	expired   prometheus.Counter
	queueWait prometheus.Histogram
}

// JobCounter reports the number of jobs in each state, read at scrape time (the server's
// Store.Count does it).
type JobCounter func(ctx context.Context) (map[string]int, error)

// NewServer registers the control-plane metrics on reg.
func NewServer(reg prometheus.Registerer) (*Server, error) {
	m := &Server{
		submitted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "castellan_server_jobs_submitted_total",
			Help: "Jobs accepted at submit, by task."}, []string{"task"}),
		approved: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "castellan_server_jobs_approved_total",
			Help: "Approvals attached to jobs (including auto-approvals), by task."}, []string{"task"}),
		leased: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "castellan_server_leases_total",
			Help: "Jobs leased to workers, by task."}, []string{"task"}),
		completed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "castellan_server_jobs_completed_total",
			Help: "Completions recorded, by task and the job's resulting state."}, []string{"task", "state"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Name: "castellan_server_leases_expired_total",
			Help: "Leases that expired without a heartbeat and were requeued or ended."}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "castellan_queue_wait_seconds",
			Help: "Time a job waited runnable (approved or requeued) before a worker leased it.", Buckets: durationBuckets}),
	}
	for _, c := range []prometheus.Collector{m.submitted, m.approved, m.leased, m.completed, m.expired, m.queueWait} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Submitted counts an accepted submit.
func (m *Server) Submitted(task string) {
	if m != nil {
		m.submitted.WithLabelValues(task).Inc()
	}
}

// Approved counts an approval attached to a job.
func (m *Server) Approved(task string) {
	if m != nil {
		m.approved.WithLabelValues(task).Inc()
	}
}

// Leased counts a lease; wait is how long the job was runnable before it.
func (m *Server) Leased(task string, wait time.Duration) {
	if m != nil {
		m.leased.WithLabelValues(task).Inc()
		m.queueWait.Observe(max(wait, 0).Seconds())
	}
}

// Completed counts a recorded completion and the state it moved the job to.
func (m *Server) Completed(task, state string) {
	if m != nil {
		m.completed.WithLabelValues(task, state).Inc()
	}
}

// LeaseExpired counts leases the reaper took back.
func (m *Server) LeaseExpired(n int) {
	if m != nil {
		m.expired.Add(float64(n))
	}
}

// RegisterJobGauge registers castellan_server_jobs{state}, read from count at each scrape
// (the server's database is the truth; counters kept in memory would restart at zero).
func RegisterJobGauge(reg prometheus.Registerer, count JobCounter) error {
	return reg.Register(&jobsCollector{count: count})
}

var jobsDesc = prometheus.NewDesc("castellan_server_jobs", "Jobs in the queue database, by state.", []string{"state"}, nil)

type jobsCollector struct{ count JobCounter }

func (c *jobsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- jobsDesc }

func (c *jobsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.count(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(jobsDesc, err)
		return
	}
	for st, n := range counts {
		ch <- prometheus.MustNewConstMetric(jobsDesc, prometheus.GaugeValue, float64(n), st)
	}
}

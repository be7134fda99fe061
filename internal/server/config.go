package server

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap"

	auditlog "github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/metrics"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// AutoApprover signs approvals on the control plane for tasks configured for
// auto-approval (the /v1 layer's, shared by both modes).
type AutoApprover = controlplane.AutoApprover

// ApprovalSubject is what an approval covers.
type ApprovalSubject = controlplane.ApprovalSubject

// Config configures a Server. Zero values take the documented defaults.
type Config struct {
	// Addr is the listen address used by ListenAndServe. Optional, default "127.0.0.1:8443".
	Addr string
	// TLSCert and TLSKey are PEM file paths. Optional: both or neither. Without them the
	// server speaks plain HTTP and warns loudly unless bound to loopback.
	TLSCert, TLSKey string
	// DBPath is the SQLite database file. Required.
	DBPath string
	// LeaseTTL is how long a lease lives without a heartbeat. Optional, default 60s.
	LeaseTTL time.Duration
	// MaxInputBytes caps a job's input. Optional, default 1 MiB. MaxOutputBytes, DefaultMaxAttempts
	// and the auto-approval fields below are the /v1 layer's (internal/controlplane.Config),
	// which checks them.
	MaxInputBytes int
	// MaxOutputBytes caps a job's output. Optional, default 4 MiB.
	MaxOutputBytes int
	// DefaultMaxAttempts applies when a submit omits max_attempts. Optional, default 3.
	DefaultMaxAttempts int
	// RetryBase and RetryCap shape the retry back-off: full jitter, uniform in
	// [0, min(RetryCap, RetryBase*2^(attempt-1))). Optional, defaults 1s and 5min.
	RetryBase, RetryCap time.Duration
	// ReapInterval is how often expired leases are requeued. Optional, default 1s.
	ReapInterval time.Duration
	// RecheckInterval is how often parked long-polls re-query even without a signal (for
	// retry back-offs coming due). Optional, default 1s.
	RecheckInterval time.Duration
	// AutoApprover and AutoApproveTasks: submits of these task names (or "*" for all)
	// without an approval get one from AutoApprover. Optional.
	AutoApprover     AutoApprover
	AutoApproveTasks []string
	// Logger receives the server's logs. Optional, default zap.NewNop().
	Logger *zap.Logger
	// Audit receives a tamper-evident record of each job action (submit, approve, lease,
	// complete, cancel, lease expiry), after the database committed it. Optional. A failed
	// write is logged; the database's own audit table still holds the action.
	Audit *auditlog.Log
	// Metrics counts job actions. Optional.
	Metrics *metrics.Server
	// Tracer traces job actions. The job's trace context (from the submit's traceparent
	// field or header, continued by the submit span) is stored with the job and handed to
	// the worker with the lease. Optional, default no spans (a submitter's traceparent is
	// still passed on).
	Tracer trace.TracerProvider
	// Now is the clock. Optional, default time.Now; tests inject a fake one.
	Now func() time.Time
	// Jitter picks the actual back-off in [0, max). Optional, default uniform random.
	Jitter func(max time.Duration) time.Duration
	// MCP is served at /mcp and at the RFC 9728 metadata paths (internal/mcp.Handler).
	// Optional, default none: those paths answer 404 like any unknown route.
	MCP http.Handler
}

func (c *Config) setDefaults() error {
	if c.DBPath == "" {
		return errors.New("server: Config.DBPath is required (the SQLite file holding the queue)")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("server: set both Config.TLSCert and Config.TLSKey, or neither")
	}
	if c.Addr == "" {
		c.Addr = "127.0.0.1:8443"
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.LeaseTTL, 60*time.Second)
	def(&c.RetryBase, api.RetryBase)
	def(&c.RetryCap, api.RetryCap)
	def(&c.ReapInterval, time.Second)
	def(&c.RecheckInterval, time.Second)
	if c.LeaseTTL < time.Second {
		return fmt.Errorf("server: Config.LeaseTTL is %s, at least 1s", c.LeaseTTL)
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Tracer == nil {
		c.Tracer = noop.NewTracerProvider()
	}
	if c.Jitter == nil {
		c.Jitter = api.FullJitter
	}
	return nil
}

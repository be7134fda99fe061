package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// Server is the control plane. Create it with New, run it with Serve, stop it by
// cancelling Serve's context, then Close it.
type Server struct {
	cfg      Config
	log      *zap.Logger
	store    *Store
	queued   notifier              // new leasable work: submit, approve, requeue, catalog
	finished controlplane.JobWakes // a job reached a terminal state, by job
	changed  notifier              // a job was created or changed state: list long-polls recheck
	plans    planHint              // whether a plan may be active, so that most job changes skip the plan read
	ended    endedJobs             // jobs a completion just ended, for the waits it wakes
	closing  chan struct{}
	closeMu  sync.Once
	cp       *controlplane.Server // the /v1 layer over this server's store (backend.go)
}

// New opens the database and builds the server.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	st, err := OpenStore(ctx, cfg.DBPath)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger.Named("server"), store: st, closing: make(chan struct{})}
	s.queued.init()
	s.changed.init()
	if s.cp, err = controlplane.New(sqlBackend{s}, controlplane.Config{
		Logger: s.log, MaxInputBytes: cfg.MaxInputBytes, MaxOutputBytes: cfg.MaxOutputBytes,
		DefaultMaxAttempts: cfg.DefaultMaxAttempts, RecheckInterval: cfg.RecheckInterval,
		AutoApprover: cfg.AutoApprover, AutoApproveTasks: cfg.AutoApproveTasks, MCP: cfg.MCP,
		Now: cfg.Now,
	}); err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

// Store returns the server's database, for token management in-process.
func (s *Server) Store() *Store { return s.store }

// Handler returns the HTTP handler, for embedding or httptest.
func (s *Server) Handler() http.Handler { return s.cp.Handler() }

// API is the /v1 layer this server serves, for in-process callers and tests.
func (s *Server) API() *controlplane.Server { return s.cp }

// Close stops parked long-polls and closes the database.
func (s *Server) Close() error {
	s.closeMu.Do(func() { close(s.closing) })
	s.cp.Shutdown()
	return s.store.Close()
}

// RunReaper requeues expired leases every Config.ReapInterval until ctx ends. Serve runs
// it; call it yourself only when using Handler directly.
func (s *Server) RunReaper(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.closing:
			return
		case <-t.C:
			if n, err := s.reap(ctx); err != nil && ctx.Err() == nil {
				s.log.Error("reaping expired leases failed", zap.Error(err))
			} else if n > 0 {
				s.log.Info("expired leases reaped", zap.Int("jobs", n))
			}
		}
	}
}

// ListenAndServe listens on Config.Addr and serves until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("server: listen on %s: %w", s.cfg.Addr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves the API on ln (TLS when Config.TLSCert is set) and runs the reaper, until
// ctx ends; then it shuts down gracefully, waiting up to 10s for requests in flight.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	tlsOn := s.cfg.TLSCert != ""
	if !tlsOn && !isLoopback(ln.Addr()) {
		s.log.Warn("!!! CONTROL PLANE LISTENING WITHOUT TLS ON A NON-LOOPBACK ADDRESS: bearer tokens, approvals and job data cross the network in clear text; set TLSCert and TLSKey !!!",
			zap.String("addr", ln.Addr().String()))
	}
	hs := &http.Server{
		Handler:           s.cp.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          zap.NewStdLog(s.log.Named("http")),
		// Requests do not inherit ctx's cancellation: shutdown would cancel the long-polls
		// it then waits for, and they would end with an empty 200. Parked long-polls are
		// answered through s.closing instead (below), and Shutdown waits for the rest.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	if tlsOn {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLSCert, s.cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("server: load TLS key pair (cert %s, key %s): %w", s.cfg.TLSCert, s.cfg.TLSKey, err)
		}
		hs.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
		ln = tls.NewListener(ln, hs.TLSConfig)
	}
	rctx, stopReaper := context.WithCancel(ctx)
	defer stopReaper()
	go s.RunReaper(rctx)

	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.log.Info("control plane serving", zap.String("addr", ln.Addr().String()), zap.Bool("tls", tlsOn))
	select {
	case err := <-errc:
		return fmt.Errorf("server: serve: %w", err)
	case <-ctx.Done():
	}
	s.closeMu.Do(func() { close(s.closing) })
	s.cp.Shutdown() // parked long-polls answer now
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := hs.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		hs.Close()
	}
	<-errc
	return nil
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// endedJobs holds the jobs completions ended lately, as the completion's UPDATE returned
// them, so that the waits a completion wakes answer without reading the job again. A job in
// a terminal state never changes again (no transition leaves one), so an entry cannot go
// stale; only jobs small enough are kept, and the whole map starts over when full, so it
// holds at most maxEndedJobs × maxEndedJobBytes.
type endedJobs struct {
	mu   sync.Mutex
	jobs map[string]api.Job
}

const (
	maxEndedJobs     = 1024
	maxEndedJobBytes = 16 << 10 // input and output together
)

func (e *endedJobs) put(j api.Job) {
	if !j.State.Terminal() || len(j.Input)+len(j.Output) > maxEndedJobBytes {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.jobs == nil || len(e.jobs) >= maxEndedJobs {
		e.jobs = make(map[string]api.Job, maxEndedJobs)
	}
	e.jobs[j.ID] = j
}

func (e *endedJobs) get(id string) (api.Job, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	j, ok := e.jobs[id]
	return j, ok
}

// planHint lets ActivePlans answer "none" without a read. The layer moves the active plans
// on at every job change (three per job); with no plan active that was a query per change.
// Only this process creates plans (CreatePlan), so once a read found none, none are active
// until the next CreatePlan. gen orders the two: a read that began before a plan was
// created may not record "none" after it.
type planHint struct {
	mu   sync.Mutex
	gen  uint64
	none bool // no plan is active (false at start: unknown)
}

func (h *planHint) noneActive() (none bool, gen uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.none, h.gen
}

// foundNone records a read, begun at gen, that found no active plan.
func (h *planHint) foundNone(gen uint64) {
	h.mu.Lock()
	if h.gen == gen {
		h.none = true
	}
	h.mu.Unlock()
}

// created records a new plan; call it after its transaction commits.
func (h *planHint) created() {
	h.mu.Lock()
	h.gen++
	h.none = false
	h.mu.Unlock()
}

// notifier is a broadcast: waiters take the current channel, broadcast closes it.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func (n *notifier) init() { n.ch = make(chan struct{}) }

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

func (n *notifier) broadcast() {
	n.mu.Lock()
	close(n.ch)
	n.ch = make(chan struct{})
	n.mu.Unlock()
}

var qWorkerExists = hot(`SELECT 1 FROM workers WHERE token_id = ?`)

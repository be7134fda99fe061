package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
)

const (
	maxWaitSeconds     = api.MaxWaitSeconds
	defaultWaitSeconds = api.DefaultWaitSeconds
	smallBody          = 64 << 10
	catalogBody        = 8 << 20
	bodySlack          = 64 << 10 // room for the envelope around an input or output
)

// Server is the control plane. Create it with New, run it with Serve, stop it by
// cancelling Serve's context, then Close it.
type Server struct {
	cfg      Config
	log      *zap.Logger
	store    *Store
	schemas  schema.Cache
	queued   notifier // new leasable work: submit, approve, requeue, catalog
	finished notifier // a job reached a terminal state
	closing  chan struct{}
	closeMu  sync.Once
	mux      http.Handler
	parked   atomic.Int64 // lease requests currently waiting; lets tests poll, not sleep
	waiters  atomic.Int64 // job waits currently parked, likewise
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
	s.finished.init()
	s.routes()
	return s, nil
}

// Store returns the server's database, for token management in-process.
func (s *Server) Store() *Store { return s.store }

// Handler returns the HTTP handler, for embedding or httptest.
func (s *Server) Handler() http.Handler { return s.mux }

// Close stops parked long-polls and closes the database.
func (s *Server) Close() error {
	s.closeMu.Do(func() { close(s.closing) })
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
		Handler:           s.mux,
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
	s.closeMu.Do(func() { close(s.closing) }) // parked long-polls answer now
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

type handler func(w http.ResponseWriter, r *http.Request, p Principal) error

func (s *Server) routes() {
	m := http.NewServeMux()
	worker := []api.Role{api.RoleWorker}
	readers := []api.Role{api.RoleClient, api.RoleApprover, api.RoleAdmin}
	submitters := []api.Role{api.RoleClient, api.RoleAdmin}
	approvers := []api.Role{api.RoleApprover, api.RoleAdmin}
	admin := []api.Role{api.RoleAdmin}
	all := []api.Role{api.RoleWorker, api.RoleClient, api.RoleApprover, api.RoleAdmin}

	m.Handle("POST /v1/workers/register", s.auth(worker, s.hRegister))
	m.Handle("PUT /v1/catalog", s.auth(worker, s.hPublishCatalog))
	m.Handle("GET /v1/catalog", s.auth(all, s.hGetCatalog))
	m.Handle("POST /v1/lease", s.auth(worker, s.hLease))
	m.Handle("POST /v1/leases/{token}/heartbeat", s.auth(worker, s.hHeartbeat))
	m.Handle("POST /v1/jobs/{id}/complete", s.auth(worker, s.hComplete))
	m.Handle("POST /v1/jobs", s.auth(submitters, s.hSubmit))
	m.Handle("GET /v1/jobs", s.auth(readers, s.hList))
	m.Handle("GET /v1/jobs/{id}", s.auth(readers, s.hGet))
	m.Handle("GET /v1/jobs/{id}/wait", s.auth(readers, s.hWait))
	m.Handle("POST /v1/jobs/{id}/cancel", s.auth(submitters, s.hCancel))
	m.Handle("POST /v1/jobs/{id}/approval", s.auth(approvers, s.hApprove))
	m.Handle("POST /v1/tokens", s.auth(admin, s.hTokenCreate))
	m.Handle("GET /v1/tokens", s.auth(admin, s.hTokenList))
	m.Handle("DELETE /v1/tokens/{id}", s.auth(admin, s.hTokenRevoke))
	m.Handle("GET /v1/audit", s.auth(admin, s.hAudit))
	m.Handle("GET /v1/whoami", s.auth(all, s.hWhoami))
	m.Handle("GET /v1/workers", s.auth(approvers, s.hWorkers))
	m.Handle("POST /v1/register/exchange", s.auth([]api.Role{api.RoleRegistration}, s.hRegisterExchange))
	m.Handle("GET /v1/workers/{id}/audit-head", s.auth(admin, s.hWorkerAuditHead))
	m.HandleFunc("GET /healthz", api.Healthz)
	m.HandleFunc("GET /readyz", s.hReady)
	if s.cfg.MCP != nil {
		for _, p := range []string{mcp.Path, mcp.MetadataPath, mcp.MetadataPath + mcp.Path} {
			m.Handle(p, s.cfg.MCP)
		}
	}
	s.mux = api.Routes(m, "see docs/api.md")
}

// hReady answers 200 when the database answers a query, for load balancers and probes.
func (s *Server) hReady(w http.ResponseWriter, r *http.Request) {
	var one int
	if err := s.store.rdb.QueryRowContext(r.Context(), "SELECT 1").Scan(&one); err != nil {
		s.log.Warn("readiness check: the database does not answer", zap.Error(err))
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "database unavailable"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// auth authenticates the bearer token, checks the role, and maps errors to responses.
// Logs name the route pattern, never the raw path (it may hold a lease token) nor headers.
func (s *Server) auth(roles []api.Role, h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := func() error {
			authz := r.Header.Get("Authorization")
			tok, ok := strings.CutPrefix(authz, "Bearer ")
			if !ok || tok == "" {
				return errf(http.StatusUnauthorized, api.CodeUnauthenticated, "missing Authorization: Bearer <token> header")
			}
			p, err := s.store.AuthenticateAt(r.Context(), strings.TrimSpace(tok), s.cfg.Now())
			if e := authRefusal(err); e != nil {
				return e
			}
			if err != nil {
				return err
			}
			if !slices.Contains(roles, p.Role) {
				return errf(http.StatusForbidden, api.CodeForbidden, "a %s token may not call %s", p.Role, r.Pattern)
			}
			return h(w, r, p)
		}()
		if err == nil {
			return
		}
		var ae *apiError
		if !errors.As(err, &ae) {
			if r.Context().Err() != nil {
				return // the client went away
			}
			s.log.Error("request failed", zap.String("route", r.Pattern), zap.Error(err))
			ae = errf(http.StatusInternalServerError, api.CodeInternal, "internal error; see the server log")
		} else {
			s.log.Debug("request refused", zap.String("route", r.Pattern), zap.Int("status", ae.status), zap.String("code", ae.code))
		}
		writeError(w, ae)
	})
}

func zapErr(err error) zap.Field { return zap.Error(err) }
func zapJob(id string) zap.Field { return zap.String("job_id", id) }

func (s *Server) hRegister(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.RegisterRequest
	if e := decode(w, r, smallBody, &req, false); e != nil {
		return e
	}
	resp, err := s.register(r.Context(), p, req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) hPublishCatalog(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.CatalogRequest
	if e := decode(w, r, catalogBody, &req, false); e != nil {
		return e
	}
	resp, err := s.publishCatalog(r.Context(), p, req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) hGetCatalog(w http.ResponseWriter, r *http.Request, p Principal) error {
	if e := onlyParams(r, "pool"); e != nil {
		return e
	}
	pool, err := resolvePool(p, r.URL.Query().Get("pool"))
	if err != nil {
		return err
	}
	resp, err := s.catalog(r.Context(), pool)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) hSubmit(w http.ResponseWriter, r *http.Request, p Principal) error {
	var body api.SubmitBody
	if e := decode(w, r, int64(s.cfg.MaxInputBytes)+bodySlack, &body, false); e != nil {
		return e
	}
	req, err := body.Request()
	if err != nil {
		return errf(http.StatusBadRequest, api.CodeInvalidField, "%v", err)
	}
	if req.TraceParent == "" {
		req.TraceParent = r.Header.Get("traceparent")
	}
	job, created, err := s.submit(r.Context(), p, req)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, job)
	return nil
}

func (s *Server) hGet(w http.ResponseWriter, r *http.Request, p Principal) error {
	if e := onlyParams(r); e != nil {
		return e
	}
	j, err := getJobRow(r.Context(), s.store, p, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, j.Job)
	return nil
}

func (s *Server) hList(w http.ResponseWriter, r *http.Request, p Principal) error {
	if e := onlyParams(r, "state", "task", "pool", "limit", "cursor"); e != nil {
		return e
	}
	q := r.URL.Query()
	f := jobFilter{state: q.Get("state"), task: q.Get("task"), limit: 50}
	if f.state != "" && !slices.Contains(api.States, api.State(f.state)) {
		return errf(http.StatusBadRequest, api.CodeInvalidField, "state %q is not a job state", f.state)
	}
	if f.task != "" && !api.ValidTaskName(f.task) {
		return errf(http.StatusBadRequest, api.CodeInvalidField, "task %q is not a valid task name", f.task)
	}
	if pool := q.Get("pool"); pool != "" {
		var err error
		if f.pool, err = resolvePool(p, pool); err != nil {
			return err
		}
	}
	var e *apiError
	if f.limit, e = intParam(q.Get("limit"), "limit", 50, 1, 500); e != nil {
		return e
	}
	if c := q.Get("cursor"); c != "" {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n < 1 {
			return errf(http.StatusBadRequest, api.CodeInvalidField, "cursor %q is not a cursor from a previous page's next_cursor", c)
		}
		f.cursor = n
	}
	list, err := s.listJobs(r.Context(), p, f)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

func (s *Server) hWait(w http.ResponseWriter, r *http.Request, p Principal) error {
	if e := onlyParams(r, "timeout"); e != nil {
		return e
	}
	timeout, e := intParam(r.URL.Query().Get("timeout"), "timeout", defaultWaitSeconds, 0, maxWaitSeconds)
	if e != nil {
		return e
	}
	ctx := r.Context()
	deadline := time.NewTimer(time.Duration(timeout) * time.Second)
	defer deadline.Stop()
	recheck := time.NewTicker(s.cfg.RecheckInterval)
	defer recheck.Stop()
	for {
		ch := s.finished.wait() // take the channel before reading, so no change is missed
		j, err := getJobRow(ctx, s.store, p, r.PathValue("id"))
		if err != nil {
			return err
		}
		if j.State.Terminal() {
			writeJSON(w, http.StatusOK, j.Job)
			return nil
		}
		s.waiters.Add(1)
		select {
		case <-ch:
		case <-recheck.C:
		case <-deadline.C:
			s.waiters.Add(-1)
			writeJSON(w, http.StatusOK, j.Job)
			return nil
		case <-s.closing:
			s.waiters.Add(-1)
			return errf(http.StatusServiceUnavailable, api.CodeUnavailable, "server is shutting down; retry")
		case <-ctx.Done():
			s.waiters.Add(-1)
			return ctx.Err()
		}
		s.waiters.Add(-1)
	}
}

func (s *Server) hCancel(w http.ResponseWriter, r *http.Request, p Principal) error {
	if e := decode(w, r, smallBody, &struct{}{}, true); e != nil {
		return e
	}
	j, err := s.cancel(r.Context(), p, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, j)
	return nil
}

func (s *Server) hApprove(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.ApproveRequest
	if e := decode(w, r, approval.MaxTokenBytes+1024, &req, false); e != nil {
		return e
	}
	j, err := s.approve(r.Context(), p, r.PathValue("id"), req.Token)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, j)
	return nil
}

func (s *Server) hLease(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.LeaseRequest
	if e := decode(w, r, smallBody, &req, false); e != nil {
		return e
	}
	if req.Max < 1 || req.Max > maxLeaseBatch {
		return errf(http.StatusBadRequest, api.CodeInvalidField, "max is %d, want 1..%d (how many jobs you have free slots for)", req.Max, maxLeaseBatch)
	}
	wait := defaultWaitSeconds
	if req.WaitSeconds != nil {
		wait = *req.WaitSeconds
	}
	if wait < 0 || wait > maxWaitSeconds {
		return errf(http.StatusBadRequest, api.CodeInvalidField, "wait_seconds is %d, want 0..%d", wait, maxWaitSeconds)
	}
	ctx := r.Context()
	var one int
	if err := s.store.queryRow(ctx, qWorkerExists, p.TokenID).Scan(&one); err != nil {
		return errf(http.StatusConflict, api.CodeNotRegistered, "register and publish a catalog first: POST /v1/workers/register, PUT /v1/catalog")
	}
	deadline := time.NewTimer(time.Duration(wait) * time.Second)
	defer deadline.Stop()
	recheck := time.NewTicker(s.cfg.RecheckInterval)
	defer recheck.Stop()
	for {
		ch := s.queued.wait()
		jobs, err := s.leaseOnce(ctx, p, req.Max)
		if err != nil {
			return err
		}
		if len(jobs) > 0 {
			writeJSON(w, http.StatusOK, api.LeaseResponse{Jobs: jobs})
			return nil
		}
		s.parked.Add(1)
		select {
		case <-ch:
		case <-recheck.C:
		case <-deadline.C:
			s.parked.Add(-1)
			writeJSON(w, http.StatusOK, api.LeaseResponse{Jobs: []api.LeasedJob{}})
			return nil
		case <-s.closing:
			s.parked.Add(-1)
			writeJSON(w, http.StatusOK, api.LeaseResponse{Jobs: []api.LeasedJob{}})
			return nil
		case <-ctx.Done():
			s.parked.Add(-1)
			return ctx.Err()
		}
		s.parked.Add(-1)
	}
}

func (s *Server) hHeartbeat(w http.ResponseWriter, r *http.Request, p Principal) error {
	if e := decode(w, r, smallBody, &struct{}{}, true); e != nil {
		return e
	}
	resp, err := s.heartbeat(r.Context(), p, r.PathValue("token"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) hComplete(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.CompleteRequest
	if e := decode(w, r, int64(s.cfg.MaxOutputBytes)+bodySlack+maxErrorMessage, &req, false); e != nil {
		return e
	}
	resp, err := s.complete(r.Context(), p, r.PathValue("id"), req)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) hTokenCreate(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.TokenCreateRequest
	if e := decode(w, r, smallBody, &req, false); e != nil {
		return e
	}
	now := s.cfg.Now()
	t, err := s.store.CreateTokenFor(r.Context(), req, now)
	if err != nil {
		return errf(http.StatusBadRequest, api.CodeInvalidField, "%v", err)
	}
	if err := s.store.tx(r.Context(), func(tx *sqlTx) error {
		return audit(r.Context(), tx, now, p.TokenID, string(p.Role), "token.create", "", tokenAuditDetail(t))
	}); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, t)
	return nil
}

func (s *Server) hTokenList(w http.ResponseWriter, r *http.Request, p Principal) error {
	if e := onlyParams(r); e != nil {
		return e
	}
	list, err := s.store.ListTokens(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.TokenList{Tokens: list})
	return nil
}

func (s *Server) hTokenRevoke(w http.ResponseWriter, r *http.Request, p Principal) error {
	if e := onlyParams(r); e != nil {
		return e
	}
	id := r.PathValue("id")
	now := s.cfg.Now()
	ok, err := s.store.RevokeToken(r.Context(), id, now)
	if err != nil {
		return err
	}
	if !ok {
		return errf(http.StatusNotFound, api.CodeNotFound, "no active token %q", id)
	}
	if err := s.store.tx(r.Context(), func(tx *sqlTx) error {
		return audit(r.Context(), tx, now, p.TokenID, string(p.Role), "token.revoke", "", fmt.Sprintf(`{"id":%q}`, id))
	}); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) hAudit(w http.ResponseWriter, r *http.Request, p Principal) error {
	if e := onlyParams(r, "job_id", "action", "limit", "cursor"); e != nil {
		return e
	}
	q := r.URL.Query()
	limit, e := intParam(q.Get("limit"), "limit", 100, 1, 1000)
	if e != nil {
		return e
	}
	var cursor int64
	if c := q.Get("cursor"); c != "" {
		n, err := strconv.ParseInt(c, 10, 64)
		if err != nil || n < 1 {
			return errf(http.StatusBadRequest, api.CodeInvalidField, "cursor %q is not a cursor from a previous page's next_cursor", c)
		}
		cursor = n
	}
	list, err := s.store.listAudit(r.Context(), q.Get("job_id"), q.Get("action"), limit, cursor)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

// onlyParams rejects query parameters the endpoint does not define, so a typo is an
// error rather than a silently ignored filter.
func onlyParams(r *http.Request, allowed ...string) *apiError {
	for k := range r.URL.Query() {
		if !slices.Contains(allowed, k) {
			return errf(http.StatusBadRequest, api.CodeUnknownField, "query parameter %q is not defined for this endpoint", k)
		}
	}
	return nil
}

func intParam(v, name string, def, lo, hi int) (int, *apiError) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, errf(http.StatusBadRequest, api.CodeInvalidField, "%s %q must be an integer in %d..%d", name, v, lo, hi)
	}
	return n, nil
}

var qWorkerExists = hot(`SELECT 1 FROM workers WHERE token_id = ?`)

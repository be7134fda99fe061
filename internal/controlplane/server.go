package controlplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// Body limits: a request's body may be at most this much larger than the input or output
// it carries, for the envelope around it.
const (
	smallBody   = 64 << 10
	catalogBody = 8 << 20
	bodySlack   = 64 << 10
)

// AutoApprover signs approvals on the control plane for tasks configured for
// auto-approval. It is an interface so that the control plane never needs a private key
// of its own; the daemon wires an implementation in.
type AutoApprover interface {
	Approve(ctx context.Context, j ApprovalSubject) (token string, err error)
}

// ApprovalSubject is what an approval covers.
type ApprovalSubject struct {
	JobID, Task, TaskVersion, Pool string
	Input                          []byte
}

// Config configures the layer. Zero values take the documented defaults.
type Config struct {
	// Logger receives the layer's logs. Optional, default none.
	Logger *zap.Logger
	// MaxInputBytes and MaxOutputBytes cap a job's input and output, compacted.
	// Optional, defaults api.DefaultMaxInput and api.DefaultMaxOutput.
	MaxInputBytes, MaxOutputBytes int
	// DefaultMaxAttempts applies when a submit omits max_attempts. Optional, default 3.
	DefaultMaxAttempts int
	// RecheckInterval is how often parked long-polls read again without a signal (for
	// retry back-offs coming due, and a backend's late signal). Optional, default 1s.
	RecheckInterval time.Duration
	// AutoApprover and AutoApproveTasks: submits of these task names (or "*" for all)
	// without an approval get one from AutoApprover. Optional.
	AutoApprover     AutoApprover
	AutoApproveTasks []string
	// MCP is served at /mcp and at the RFC 9728 metadata paths (internal/mcp.Handler).
	// Optional, default none: those paths answer 404 like any unknown route.
	MCP http.Handler
	// NotFoundHint ends the message of a 404 for an unknown route. Optional.
	NotFoundHint string
	// Now is the layer's clock: token expiry, worker presence, audit times. Optional,
	// default time.Now; tests move it forward instead of sleeping.
	Now func() time.Time
	// Observe, when set, is called after each /v1 request with its route pattern, status
	// and duration (a metrics hook). Optional.
	Observe func(route string, status int, d time.Duration)
}

// Server is the /v1 HTTP layer over a Backend.
type Server struct {
	b       Backend
	cfg     Config
	log     *zap.Logger
	schemas schema.Cache
	mux     http.Handler
	routing *http.ServeMux

	closing   chan struct{} // closed by Shutdown: parked long-polls answer
	closeOnce sync.Once
	parked    atomic.Int64 // lease requests parked
	waiters   atomic.Int64 // job waits and list long-polls parked
}

// New returns the layer over b, with the routes b's optional interfaces allow.
func New(b Backend, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.MaxInputBytes == 0 {
		cfg.MaxInputBytes = api.DefaultMaxInput
	}
	if cfg.MaxOutputBytes == 0 {
		cfg.MaxOutputBytes = api.DefaultMaxOutput
	}
	if cfg.DefaultMaxAttempts == 0 {
		cfg.DefaultMaxAttempts = api.DefaultMaxAttempts
	}
	if cfg.RecheckInterval == 0 {
		cfg.RecheckInterval = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxInputBytes < 0 || cfg.MaxOutputBytes < 0 || cfg.DefaultMaxAttempts < 1 || cfg.DefaultMaxAttempts > api.MaxAttemptsLimit {
		return nil, errors.New("controlplane: MaxInputBytes/MaxOutputBytes must be positive and DefaultMaxAttempts in 1..100")
	}
	if len(cfg.AutoApproveTasks) > 0 && cfg.AutoApprover == nil {
		return nil, errors.New("controlplane: AutoApproveTasks is set but AutoApprover is nil")
	}
	s := &Server{b: b, cfg: cfg, log: cfg.Logger, closing: make(chan struct{})}
	s.routes()
	if pb, ok := b.(Plans); ok {
		go s.runPlans(pb)
	}
	return s, nil
}

// Handler is the HTTP handler of the API.
func (s *Server) Handler() http.Handler { return s.mux }

// Mount serves h at pattern beside the API (before serving).
func (s *Server) Mount(pattern string, h http.Handler) { s.routing.Handle(pattern, h) }

// Shutdown answers parked long-polls now (a wait with 503 unavailable, a lease or list
// with its page), so that a graceful shutdown need not wait them out. Call it when the
// HTTP server begins to shut down.
func (s *Server) Shutdown() { s.closeOnce.Do(func() { close(s.closing) }) }

// Parked is how many lease requests are parked; Waiters how many job waits and list
// long-polls. Tests poll them instead of sleeping.
func (s *Server) Parked() int64  { return s.parked.Load() }
func (s *Server) Waiters() int64 { return s.waiters.Load() }

type handler func(w http.ResponseWriter, r *http.Request, p Principal) error

var (
	workerRole = []api.Role{api.RoleWorker}
	readers    = []api.Role{api.RoleClient, api.RoleApprover, api.RoleAdmin}
	submitters = []api.Role{api.RoleClient, api.RoleAdmin}
	approvers  = []api.Role{api.RoleApprover, api.RoleAdmin}
	adminRole  = []api.Role{api.RoleAdmin}
	anyRole    = []api.Role{api.RoleWorker, api.RoleClient, api.RoleApprover, api.RoleAdmin}
)

func (s *Server) routes() {
	m := http.NewServeMux()
	catalogReaders := readers
	if wb, ok := s.b.(Workers); ok {
		w := workerRoutes{s, wb}
		m.Handle("POST /v1/workers/register", s.auth(workerRole, w.register))
		m.Handle("PUT /v1/catalog", s.auth(workerRole, w.publishCatalog))
		m.Handle("POST /v1/lease", s.auth(workerRole, w.lease))
		m.Handle("POST /v1/leases/{token}/heartbeat", s.auth(workerRole, w.heartbeat))
		m.Handle("POST /v1/jobs/{id}/complete", s.auth(workerRole, w.complete))
		catalogReaders = anyRole
	}
	m.Handle("GET /v1/catalog", s.auth(catalogReaders, s.hCatalog))
	m.Handle("POST /v1/jobs", s.auth(submitters, s.hSubmit))
	m.Handle("GET /v1/jobs", s.auth(readers, s.hList))
	m.Handle("GET /v1/jobs/{id}", s.auth(readers, s.hGet))
	m.Handle("GET /v1/jobs/{id}/wait", s.auth(readers, s.hWait))
	m.Handle("POST /v1/jobs/{id}/cancel", s.auth(submitters, s.hCancel))
	m.Handle("POST /v1/jobs/{id}/approval", s.auth(approvers, s.hApprove))
	m.Handle("POST /v1/jobs/{id}/deny", s.auth(approvers, s.hDeny))
	if pb, ok := s.b.(Plans); ok {
		s.planRoutes(m, pb)
	}
	m.Handle("GET /v1/tokens", s.auth(adminRole, s.hTokenList))
	m.Handle("DELETE /v1/tokens/{id}", s.auth(adminRole, s.hTokenRevoke))
	if tc, ok := s.b.(TokenCreator); ok {
		m.Handle("POST /v1/tokens", s.auth(adminRole, func(w http.ResponseWriter, r *http.Request, p Principal) error {
			var req api.TokenCreateRequest
			if err := Decode(w, r, smallBody, &req, false); err != nil {
				return err
			}
			req, err := api.CheckTokenRequest(req)
			if err != nil {
				return Refuse(http.StatusBadRequest, api.CodeInvalidField, "%v", err)
			}
			t, err := tc.CreateToken(r.Context(), p, req)
			if err != nil {
				return err
			}
			s.record(r.Context(), p, "token.create", "", TokenAuditDetail(t))
			api.WriteJSON(w, http.StatusCreated, t)
			return nil
		}))
	}
	if a, ok := s.b.(Auditor); ok {
		m.Handle("GET /v1/audit", s.auth(adminRole, func(w http.ResponseWriter, r *http.Request, p Principal) error {
			return s.hAudit(w, r, a)
		}))
	}
	if h, ok := s.b.(AuditHeads); ok {
		m.Handle("GET /v1/workers/{id}/audit-head", s.auth(adminRole, func(w http.ResponseWriter, r *http.Request, p Principal) error {
			if err := OnlyParams(r); err != nil {
				return err
			}
			head, err := h.WorkerAuditHead(r.Context(), r.PathValue("id"))
			if err != nil {
				return err
			}
			api.WriteJSON(w, http.StatusOK, head)
			return nil
		}))
	}
	s.opsRoutes(m)
	m.HandleFunc("GET /healthz", api.Healthz)
	m.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := s.b.Ready(ctx); err != nil {
			s.log.Warn("readiness check: the store does not answer", zap.Error(err))
			api.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "store unavailable"})
			return
		}
		api.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	if s.cfg.MCP != nil {
		for _, p := range []string{mcp.Path, mcp.MetadataPath, mcp.MetadataPath + mcp.Path} {
			m.Handle(p, s.cfg.MCP)
		}
	}
	s.routing = m
	hint := s.cfg.NotFoundHint
	if hint == "" {
		hint = "see docs/api.md"
	}
	s.mux = api.Routes(m, hint)
}

// statusWriter remembers the status written, for Config.Observe.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// auth authenticates the bearer token, checks the role, and maps errors to responses.
// Logs name the route pattern, never the raw path (it may hold a lease token) nor headers.
func (s *Server) auth(roles []api.Role, h handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w := rw
		var sw *statusWriter
		if s.cfg.Observe != nil {
			start := time.Now()
			sw = &statusWriter{ResponseWriter: rw}
			w = sw
			defer func() { s.cfg.Observe(r.Pattern, sw.status, time.Since(start)) }()
		}
		err := func() error {
			tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || tok == "" {
				return Refuse(http.StatusUnauthorized, api.CodeUnauthenticated, "missing Authorization: Bearer <token> header")
			}
			p, err := s.b.Authenticate(r.Context(), strings.TrimSpace(tok))
			if errors.Is(err, ErrTokenInvalid) {
				return Refuse(http.StatusUnauthorized, api.CodeUnauthenticated, "the bearer token is malformed, unknown or revoked")
			}
			if err != nil {
				return err
			}
			if p.Expired(s.cfg.Now()) {
				return expiredRefusal(p)
			}
			if !slices.Contains(roles, p.Role) {
				return Refuse(http.StatusForbidden, api.CodeForbidden, "a %s token may not call %s", p.Role, r.Pattern)
			}
			return h(w, r, p)
		}()
		if err == nil {
			return
		}
		ae, ok := asRefusal(err)
		if !ok {
			if r.Context().Err() != nil {
				return // the client went away
			}
			s.log.Error("request failed", zap.String("route", r.Pattern), zap.Error(err))
			ae = Refuse(http.StatusInternalServerError, api.CodeInternal, "internal error; see the server log")
		} else {
			s.log.Debug("request refused", zap.String("route", r.Pattern), zap.Int("status", ae.Status), zap.String("code", ae.Code))
		}
		api.WriteError(w, ae.Status, api.ErrorDetail{Code: ae.Code, Message: ae.Message, Details: ae.Details})
	})
}

func (s *Server) hCatalog(w http.ResponseWriter, r *http.Request, p Principal) error {
	if err := OnlyParams(r, "pool"); err != nil {
		return err
	}
	pool, err := ResolvePool(p, r.URL.Query().Get("pool"))
	if err != nil {
		return err
	}
	tasks, err := s.b.Catalog(r.Context(), pool)
	if err != nil {
		return err
	}
	if tasks == nil {
		tasks = []api.TaskDef{}
	}
	api.WriteJSON(w, http.StatusOK, api.CatalogResponse{Pool: pool, Tasks: tasks})
	return nil
}

func (s *Server) hSubmit(w http.ResponseWriter, r *http.Request, p Principal) error {
	var body api.SubmitBody
	if err := Decode(w, r, int64(s.cfg.MaxInputBytes)+bodySlack, &body, false); err != nil {
		return err
	}
	req, err := body.Request()
	if err != nil {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "%v", err)
	}
	if req.TraceParent == "" {
		req.TraceParent = r.Header.Get("traceparent")
	}
	j, created, err := s.submit(r.Context(), p, req)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	api.WriteJSON(w, status, j)
	return nil
}

// Submit validates req as POST /v1/jobs does and records the job: the entry point for
// in-process callers (a plan's steps, tests).
func (s *Server) Submit(ctx context.Context, p Principal, req api.SubmitRequest) (api.Job, bool, error) {
	return s.submit(ctx, p, req)
}

func (s *Server) submit(ctx context.Context, p Principal, req api.SubmitRequest) (api.Job, bool, error) {
	sub, err := s.prepare(ctx, p, req, true)
	if err != nil {
		return api.Job{}, false, err
	}
	return s.recordSubmission(ctx, p, sub)
}

// recordSubmission records a prepared submission and, when it made a new job, its audit
// entries (a plan's steps go through here too, so each step is audited as a job).
func (s *Server) recordSubmission(ctx context.Context, p Principal, sub Submission) (api.Job, bool, error) {
	j, created, err := s.b.Submit(ctx, p, sub)
	if err == nil && created {
		s.record(ctx, p, "job.submit", j.ID, map[string]any{"task": j.Task, "task_version": j.TaskVersion, "pool": j.Pool, "state": j.State})
		if sub.Auto {
			s.record(ctx, Principal{TokenID: "server", Role: "server"}, "job.auto_approve", j.ID, nil)
		}
	}
	return j, created, err
}

// prepare validates req as POST /v1/jobs does and returns the submission to record, with
// its id made; auto says whether auto-approval applies (a plan's steps are approved with
// the plan, never on their own).
func (s *Server) prepare(ctx context.Context, p Principal, req api.SubmitRequest, auto bool) (Submission, error) {
	bad := func(format string, args ...any) (Submission, error) {
		return Submission{}, Refuse(http.StatusBadRequest, api.CodeInvalidField, format, args...)
	}
	if !api.ValidTaskName(req.Task) {
		return bad("task %q is invalid: a task name is 1-64 of a-z 0-9 _ . - starting with a letter", req.Task)
	}
	if req.TaskVersion != "" && !api.ValidTaskVersion(req.TaskVersion) {
		return bad("task_version %q is invalid", req.TaskVersion)
	}
	pool, err := ResolvePool(p, req.Pool)
	if err != nil {
		return Submission{}, err
	}
	if len(bytes.TrimSpace(req.Input)) == 0 || !json.Valid(req.Input) {
		return bad("input is required: the task's JSON input (use {} for none)")
	}
	if err := approval.CheckIJSON(req.Input); err != nil {
		return bad("input is not I-JSON (RFC 7493), so it cannot be approved: %v", err)
	}
	input := CompactJSON(req.Input)
	if len(input) > s.cfg.MaxInputBytes {
		return Submission{}, Refuse(http.StatusRequestEntityTooLarge, api.CodeInputTooLarge, "input is %d bytes, the cap is %d", len(input), s.cfg.MaxInputBytes)
	}
	if req.MaxAttempts == 0 {
		req.MaxAttempts = s.cfg.DefaultMaxAttempts
	}
	if req.MaxAttempts < 1 || req.MaxAttempts > api.MaxAttemptsLimit {
		return bad("max_attempts is %d, want 1..%d", req.MaxAttempts, api.MaxAttemptsLimit)
	}
	if req.IdempotencyKey != "" && !api.ValidIdempotencyKey(req.IdempotencyKey) {
		return bad("idempotency_key must be 1-200 printable ASCII characters without spaces")
	}
	if req.Approval != "" {
		if err := approval.CheckShape(req.Approval); err != nil {
			return bad("approval: %v", err)
		}
	}
	def, found, err := s.b.FindTask(ctx, pool, req.Task, req.TaskVersion)
	if err != nil {
		return Submission{}, err
	}
	if !found {
		v := ""
		if req.TaskVersion != "" {
			v = " version " + req.TaskVersion
		}
		return Submission{}, Refuse(http.StatusBadRequest, api.CodeUnknownTask,
			"task %q%s is not published in pool %q: a worker must publish it first (GET /v1/catalog)", req.Task, v, pool)
	}
	sch, err := s.schemas.Get(def.InputSchema)
	if err != nil {
		return Submission{}, fmt.Errorf("compile the published schema of %s@%s: %w", def.Name, def.Version, err)
	}
	issues, err := schema.Validate(sch, input)
	if err != nil {
		return bad("input: %v", err)
	}
	if len(issues) > 0 {
		e := Refuse(http.StatusBadRequest, api.CodeInputInvalid, "%s", schema.Message(issues))
		e.Details = issues
		return Submission{}, e
	}
	sub := Submission{ID: api.NewJobID(), Task: req.Task, TaskVersion: def.Version, Pool: pool, Input: input,
		MaxAttempts: req.MaxAttempts, IdempotencyKey: req.IdempotencyKey, Approval: req.Approval, TraceParent: req.TraceParent,
		SubmittedByName: p.Name, RequestHash: RequestHash(req.Task, req.TaskVersion, pool, input, req.MaxAttempts, req.Approval)}
	if sub.Approval == "" && auto && s.autoApproves(req.Task) {
		tok, err := s.cfg.AutoApprover.Approve(ctx, ApprovalSubject{JobID: sub.ID, Task: sub.Task, TaskVersion: sub.TaskVersion, Pool: pool, Input: input})
		if err != nil {
			s.log.Error("auto-approve failed", zap.Error(err), zap.String("job_id", sub.ID))
			return Submission{}, Refuse(http.StatusBadGateway, api.CodeAutoApproveFailed, "the server's auto-approver failed; see the server log")
		}
		sub.Approval, sub.Auto = tok, true
	}
	return sub, nil
}

func (s *Server) autoApproves(task string) bool {
	return s.cfg.AutoApprover != nil && (slices.Contains(s.cfg.AutoApproveTasks, task) || slices.Contains(s.cfg.AutoApproveTasks, "*"))
}

// RequestHash is what an idempotent replay must match: the request as asked (the version
// as given, "" for the newest), with the input compacted.
func RequestHash(task, version, pool string, input []byte, maxAttempts int, approval string) []byte {
	hashed, _ := json.Marshal(struct {
		Task, Version, Pool string
		Input               json.RawMessage
		Max                 int
		Approval            string
	}{task, version, pool, input, maxAttempts, approval})
	sum := sha256.Sum256(hashed)
	return sum[:]
}

// IdempotencyConflict is the refusal of an idempotency key used for another request.
func IdempotencyConflict(key, pool, jobID string) *client.APIError {
	return Refuse(http.StatusConflict, api.CodeIdempotency, "idempotency_key %q was already used in pool %q for a different request (job %s)", key, pool, jobID)
}

// job reads a job the principal may see; one in another pool is "not found", so that ids
// in other pools cannot be probed.
func (s *Server) job(ctx context.Context, p Principal, id string) (api.Job, error) {
	if !api.ValidJobID(id) {
		return api.Job{}, Refuse(http.StatusNotFound, api.CodeNotFound, "no job %q (job ids look like job_ and 24 hex digits)", id)
	}
	j, err := s.b.Job(ctx, id)
	if errors.Is(err, ErrNoJob) || (err == nil && !p.CanPool(j.Pool)) {
		return api.Job{}, NoJob(id)
	}
	return j, err
}

func (s *Server) hGet(w http.ResponseWriter, r *http.Request, p Principal) error {
	if err := OnlyParams(r); err != nil {
		return err
	}
	j, err := s.job(r.Context(), p, r.PathValue("id"))
	if err != nil {
		return err
	}
	if pb, ok := s.b.(Plans); ok {
		if j.PlanID, err = pb.PlanOfJob(r.Context(), j.ID); err != nil {
			return err
		}
	}
	api.WriteJSON(w, http.StatusOK, j)
	return nil
}

// park waits for ch, a recheck, the deadline, shutdown or the caller going away, counted
// in n. It reports whether to read again (false: the deadline passed or shutdown began).
func (s *Server) park(ctx context.Context, n *atomic.Int64, ch <-chan struct{}, recheck <-chan time.Time, deadline <-chan time.Time) (again bool, err error) {
	n.Add(1)
	defer n.Add(-1)
	select {
	case <-ch:
		return true, nil
	case <-recheck:
		return true, nil
	case <-deadline:
		return false, nil
	case <-s.closing:
		return false, errShutdown
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

var errShutdown = errors.New("shutting down")

func (s *Server) hWait(w http.ResponseWriter, r *http.Request, p Principal) error {
	if err := OnlyParams(r, "timeout"); err != nil {
		return err
	}
	timeout, err := IntParam(r.URL.Query().Get("timeout"), "timeout", api.DefaultWaitSeconds, 0, api.MaxWaitSeconds)
	if err != nil {
		return err
	}
	ctx := r.Context()
	id := r.PathValue("id")
	deadline := time.NewTimer(time.Duration(timeout) * time.Second)
	defer deadline.Stop()
	recheck := time.NewTicker(s.cfg.RecheckInterval)
	defer recheck.Stop()
	for {
		ch := s.b.Next(JobEnded, id) // taken before reading, so that no change is missed
		j, err := s.job(ctx, p, id)
		if err != nil {
			return err
		}
		if j.State.Terminal() || timeout == 0 {
			api.WriteJSON(w, http.StatusOK, j)
			return nil
		}
		again, err := s.park(ctx, &s.waiters, ch, recheck.C, deadline.C)
		if errors.Is(err, errShutdown) {
			return Refuse(http.StatusServiceUnavailable, api.CodeUnavailable, "server is shutting down; retry")
		}
		if err != nil {
			return err
		}
		if !again {
			api.WriteJSON(w, http.StatusOK, j)
			return nil
		}
	}
}

func (s *Server) hList(w http.ResponseWriter, r *http.Request, p Principal) error {
	if err := OnlyParams(r, "state", "task", "pool", "limit", "cursor", "wait_seconds"); err != nil {
		return err
	}
	q := r.URL.Query()
	lq := ListQuery{State: api.State(q.Get("state")), Task: q.Get("task"), Cursor: q.Get("cursor")}
	if lq.State != "" && !slices.Contains(api.States, lq.State) {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "state %q is not a job state (one of %s)", lq.State, joinStates())
	}
	if lq.Task != "" && !api.ValidTaskName(lq.Task) {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "task %q is not a valid task name (1-64 of a-z 0-9 _ . - starting with a letter)", lq.Task)
	}
	if pool := q.Get("pool"); pool != "" {
		var err error
		if lq.Pool, err = ResolvePool(p, pool); err != nil {
			return err
		}
	} else if p.Role != api.RoleAdmin && p.Pool != api.AllPools {
		lq.Pool = p.Pool
	}
	var err error
	if lq.Limit, err = IntParam(q.Get("limit"), "limit", 50, 1, 500); err != nil {
		return err
	}
	wait, err := IntParam(q.Get("wait_seconds"), "wait_seconds", 0, 0, api.MaxWaitSeconds)
	if err != nil {
		return err
	}
	ctx := r.Context()
	deadline := time.NewTimer(time.Duration(wait) * time.Second)
	defer deadline.Stop()
	recheck := time.NewTicker(s.cfg.RecheckInterval)
	defer recheck.Stop()
	lw, _ := s.b.(ListWaker)
	for {
		ch, stop := s.b.Next(JobsChanged, ""), func() {}
		if lw != nil && wait > 0 {
			ch, stop = lw.NextMatch(lq)
		}
		list, err := s.b.ListJobs(ctx, lq)
		if err != nil {
			stop()
			return err
		}
		if len(list.Jobs) > 0 || wait == 0 {
			stop()
			api.WriteJSON(w, http.StatusOK, list)
			return nil
		}
		again, err := s.park(ctx, &s.waiters, ch, recheck.C, deadline.C)
		stop()
		if err != nil && !errors.Is(err, errShutdown) {
			return err
		}
		if !again {
			wait = 0 // answer the page after one more read
		}
	}
}

// BadCursor is the refusal of a cursor the backend did not make.
func BadCursor(c string) *client.APIError {
	return Refuse(http.StatusBadRequest, api.CodeInvalidField, "cursor %q is not a cursor from a previous page's next_cursor", c)
}

func joinStates() string {
	names := make([]string, len(api.States))
	for i, st := range api.States {
		names[i] = string(st)
	}
	return strings.Join(names, ", ")
}

func (s *Server) hCancel(w http.ResponseWriter, r *http.Request, p Principal) error {
	if err := Decode(w, r, smallBody, &struct{}{}, true); err != nil {
		return err
	}
	id := r.PathValue("id")
	before, err := s.job(r.Context(), p, id)
	if err != nil {
		return err
	}
	j, err := s.b.Cancel(r.Context(), p, id)
	if err != nil {
		return err
	}
	s.record(r.Context(), p, "job.cancel", id, map[string]any{"from": before.State})
	api.WriteJSON(w, http.StatusOK, j)
	return nil
}

func (s *Server) hApprove(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.ApproveRequest
	if err := Decode(w, r, approval.MaxTokenBytes+1024, &req, false); err != nil {
		return err
	}
	if err := approval.CheckShape(req.Token); err != nil {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "token: %v", err)
	}
	id := r.PathValue("id")
	if _, err := s.job(r.Context(), p, id); err != nil {
		return err
	}
	if err := s.refuseStepApproval(r.Context(), id); err != nil {
		return err
	}
	j, err := s.b.Approve(r.Context(), p, id, req.Token)
	if err != nil {
		return err
	}
	s.record(r.Context(), p, "job.approve", id, ApprovalAuditDetail(req.Token))
	api.WriteJSON(w, http.StatusOK, j)
	return nil
}

func (s *Server) hDeny(w http.ResponseWriter, r *http.Request, p Principal) error {
	var body api.DenyBody
	if err := Decode(w, r, smallBody, &body, false); err != nil {
		return err
	}
	reason, code, err := body.Check()
	if err != nil {
		return Refuse(http.StatusBadRequest, code, "%v", err)
	}
	id := r.PathValue("id")
	if _, err := s.job(r.Context(), p, id); err != nil {
		return err
	}
	j, err := s.b.Deny(r.Context(), p, id, reason)
	if err != nil {
		return err
	}
	s.record(r.Context(), p, "job.deny", id, map[string]string{"reason": reason, "denied_by": p.Who()})
	s.log.Info("job denied", zap.String("job_id", id), zap.String("by", p.TokenID))
	api.WriteJSON(w, http.StatusOK, j)
	return nil
}

func (s *Server) hTokenList(w http.ResponseWriter, r *http.Request, _ Principal) error {
	if err := OnlyParams(r); err != nil {
		return err
	}
	list, err := s.b.ListTokens(r.Context())
	if err != nil {
		return err
	}
	if list == nil {
		list = []api.Token{}
	}
	api.WriteJSON(w, http.StatusOK, api.TokenList{Tokens: list})
	return nil
}

func (s *Server) hTokenRevoke(w http.ResponseWriter, r *http.Request, p Principal) error {
	if err := OnlyParams(r); err != nil {
		return err
	}
	id := r.PathValue("id")
	ok, err := s.b.RevokeToken(r.Context(), p, id)
	if err != nil {
		return err
	}
	if !ok {
		return Refuse(http.StatusNotFound, api.CodeNotFound, "no active token %q (ids look like tok_ and 12 hex digits; GET /v1/tokens lists them)", id)
	}
	s.record(r.Context(), p, "token.revoke", "", map[string]string{"id": id})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) hAudit(w http.ResponseWriter, r *http.Request, a Auditor) error {
	if err := OnlyParams(r, "job_id", "action", "limit", "cursor"); err != nil {
		return err
	}
	q := r.URL.Query()
	limit, err := IntParam(q.Get("limit"), "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	var cursor int64
	if c := q.Get("cursor"); c != "" {
		n, err := IntParam(c, "cursor", 0, 1, 1<<62)
		if err != nil {
			return BadCursor(c)
		}
		cursor = int64(n)
	}
	list, err := a.ListAudit(r.Context(), q.Get("job_id"), q.Get("action"), limit, cursor)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, list)
	return nil
}

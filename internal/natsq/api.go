package natsq

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// IdempotencyBucket maps (pool, idempotency key) to the job it created.
const IdempotencyBucket = "castellan_idempotency"

const (
	maxInputBytes      = api.DefaultMaxInput
	bodySlack          = 64 << 10
	smallBody          = 64 << 10
	defaultMaxAttempts = api.DefaultMaxAttempts
	defaultWaitSeconds = api.DefaultWaitSeconds
	maxWaitSeconds     = api.MaxWaitSeconds
)

// jobIDRE is what a job id may be as a KV key (no '.', which would nest, nor wildcards):
// the transport's rule, for jobs dispatched directly. Ids the API makes and looks up are
// api.NewJobID's (api.ValidJobID).
var jobIDRE = regexp.MustCompile(`^[-_=a-zA-Z0-9]{1,128}$`)

// APIServer serves the client-facing subset of the /v1 API (submit, approve, get, list,
// wait, cancel, catalog, and token list and revoke) with its state in JetStream instead of SQLite, so that any number of
// replicas can serve it at once: every replica reads and writes the same KV buckets with
// compare-and-set, and every replica runs the Dispatcher's shared results consumer. The wire
// types and error codes are internal/server's, so internal/client and the CLI work unchanged.
// Worker routes are not served: workers talk to NATS directly (WorkerQueue). Nor are
// POST /v1/tokens (tokens are created with direct NATS access, CreateToken) and the audit
// log (there is none in this mode).
type APIServer struct {
	d       *Dispatcher
	log     *zap.Logger
	tokens  jetstream.KeyValue
	workers jetstream.KeyValue // presence (workers.go)
	audit   *auditLog          // the hash-chained audit stream (audit.go)
	idem    jetstream.KeyValue
	catalog jetstream.KeyValue
	schemas schema.Cache
	mux     http.Handler
	routing *http.ServeMux // the routes behind mux, for HandleMCP

	cmu  sync.Mutex
	cat  map[string]map[string]catalogEntry // pool -> worker key -> catalog
	catN int                                // catalog updates seen, so tests can poll

	closing   chan struct{} // closed when Serve begins to shut down: parked waits answer
	closeOnce sync.Once
	waiters   atomic.Int64 // parked waits
}

type catalogEntry struct {
	tasks []api.TaskDef
	at    time.Time
}

// NewAPIServer returns an API server on d's connection, creating the token and idempotency
// buckets (with d's replica count) if they are missing.
func NewAPIServer(ctx context.Context, d *Dispatcher) (*APIServer, error) {
	s := &APIServer{d: d, log: d.log.Named("api"), cat: map[string]map[string]catalogEntry{}, closing: make(chan struct{})}
	var err error
	if s.tokens, err = tokensKV(ctx, d.js, d.o.Replicas); err != nil {
		return nil, err
	}
	if s.idem, err = ensureKV(ctx, d.js, jetstream.KeyValueConfig{Bucket: IdempotencyBucket,
		Description: "Castellan idempotency keys", History: 1, TTL: 30 * 24 * time.Hour, Replicas: d.o.Replicas}); err != nil {
		return nil, fmt.Errorf("natsq: create bucket %s: %w", IdempotencyBucket, err)
	}
	if s.audit, err = newAuditLog(ctx, d.js, d.o.Replicas); err != nil {
		return nil, err
	}
	d.audit = s.audit
	if s.workers, err = EnsureWorkersBucket(ctx, d.js, d.o.Replicas); err != nil {
		return nil, err
	}
	if s.catalog, err = d.js.KeyValue(ctx, CatalogBucket); err != nil {
		return nil, fmt.Errorf("natsq: bucket %s: %w", CatalogBucket, err)
	}
	s.routes()
	return s, nil
}

// HandleMCP serves h (internal/mcp.Handler) at /mcp and at the RFC 9728 metadata paths.
// Call it before Serve.
func (s *APIServer) HandleMCP(h http.Handler) {
	for _, p := range []string{mcp.Path, mcp.MetadataPath, mcp.MetadataPath + mcp.Path} {
		s.routing.Handle(p, h)
	}
}

// Handler returns the HTTP handler of the API.
func (s *APIServer) Handler() http.Handler { return s.mux }

// Serve serves the API on ln, watches the catalog bucket and runs the Dispatcher's result
// consumer, until ctx ends; then it shuts down gracefully, giving requests up to 10s.
func (s *APIServer) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Requests do not inherit ctx's cancellation: shutdown would cancel the waits it then
	// waits for, and they would end with an empty 200. Parked waits answer through
	// s.closing instead.
	hs := &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) }}
	errs := make(chan error, 3)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); errs <- s.watchCatalog(ctx) }()
	go func() { defer wg.Done(); errs <- s.d.Run(ctx, 0) }()
	go func() {
		<-ctx.Done()
		s.closeOnce.Do(func() { close(s.closing) })
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		_ = hs.Shutdown(sctx)
	}()
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	cancel()
	wg.Wait()
	close(errs)
	for e := range errs {
		if err == nil && e != nil && !errors.Is(e, context.Canceled) {
			err = e
		}
	}
	return err
}

// watchCatalog keeps the workers' published catalogs in memory: a submit validates against
// them without a round trip.
func (s *APIServer) watchCatalog(ctx context.Context) error {
	w, err := s.catalog.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("natsq: watch %s: %w", CatalogBucket, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil {
				continue // the initial values are all in
			}
			s.applyCatalog(e)
		}
	}
}

func (s *APIServer) applyCatalog(e jetstream.KeyValueEntry) {
	var c api.CatalogResponse
	key := e.Key()
	s.cmu.Lock()
	defer s.cmu.Unlock()
	s.catN++
	for _, m := range s.cat {
		delete(m, key)
	}
	if e.Operation() != jetstream.KeyValuePut {
		return
	}
	if err := json.Unmarshal(e.Value(), &c); err != nil || checkName("pool", c.Pool) != nil ||
		!strings.HasPrefix(key, token(c.Pool)+".") {
		s.log.Warn("ignoring an unreadable catalog entry", zap.String("key", key))
		return
	}
	if _, err := schema.CheckCatalog(c.Tasks); err != nil {
		// Written past WorkerQueue.PublishCatalog's checks: a submit could not validate
		// against it.
		s.log.Warn("ignoring an invalid catalog entry", zap.String("key", key), zap.Error(err))
		return
	}
	if s.cat[c.Pool] == nil {
		s.cat[c.Pool] = map[string]catalogEntry{}
	}
	s.cat[c.Pool][key] = catalogEntry{tasks: c.Tasks, at: e.Created()}
}

// CatalogUpdates reports how many catalog changes this server has seen (tests poll it).
func (s *APIServer) CatalogUpdates() int {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	return s.catN
}

// poolCatalog merges the pool's published tasks: one definition per name and version, the
// most recently published winning.
func (s *APIServer) poolCatalog(pool string) []api.TaskDef {
	s.cmu.Lock()
	entries := make([]catalogEntry, 0, len(s.cat[pool]))
	for _, e := range s.cat[pool] {
		entries = append(entries, e)
	}
	s.cmu.Unlock()
	slices.SortFunc(entries, func(a, b catalogEntry) int { return a.at.Compare(b.at) })
	idx := map[string]int{}
	var out []api.TaskDef
	for _, e := range entries {
		for _, t := range e.tasks {
			k := t.Name + "@" + t.Version
			if i, ok := idx[k]; ok {
				out[i] = t
				continue
			}
			idx[k] = len(out)
			out = append(out, t)
		}
	}
	slices.SortStableFunc(out, func(a, b api.TaskDef) int { return strings.Compare(a.Name, b.Name) })
	return out
}

type apiHandler func(w http.ResponseWriter, r *http.Request, p principal) error

func (s *APIServer) routes() {
	m := http.NewServeMux()
	readers := []api.Role{api.RoleClient, api.RoleApprover, api.RoleAdmin}
	submitters := []api.Role{api.RoleClient, api.RoleAdmin}
	approvers := []api.Role{api.RoleApprover, api.RoleAdmin}
	admin := []api.Role{api.RoleAdmin}
	m.Handle("GET /v1/catalog", s.auth(readers, s.hCatalog))
	m.Handle("POST /v1/jobs", s.auth(submitters, s.hSubmit))
	m.Handle("GET /v1/jobs", s.auth(readers, s.hList))
	m.Handle("GET /v1/jobs/{id}", s.auth(readers, s.hGet))
	m.Handle("GET /v1/jobs/{id}/wait", s.auth(readers, s.hWait))
	m.Handle("POST /v1/jobs/{id}/cancel", s.auth(submitters, s.hCancel))
	m.Handle("POST /v1/jobs/{id}/approval", s.auth(approvers, s.hApprove))
	m.Handle("GET /v1/tokens", s.auth(admin, s.hTokenList))
	m.Handle("DELETE /v1/tokens/{id}", s.auth(admin, s.hTokenRevoke))
	m.Handle("GET /v1/workers/{id}/audit-head", s.auth(admin, s.hWorkerAuditHead))
	m.Handle("GET /v1/whoami", s.auth(readers, s.hWhoami))
	m.Handle("GET /v1/workers", s.auth(approvers, s.hWorkers))
	m.Handle("GET /v1/audit", s.auth(admin, s.hAudit))
	m.HandleFunc("GET /healthz", api.Healthz)
	m.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		// Ready when JetStream answers: the job bucket's status is one round trip to it.
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if _, err := s.d.jobs.Status(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "jetstream unavailable"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	s.routing = m
	s.mux = api.Routes(m, "not on the NATS control plane: workers talk to NATS, tokens are created with `castellan token create --nats`; see docs/api.md")
}

// auth authenticates the bearer token and checks the role. Logs name the route pattern,
// never the path or headers.
func (s *APIServer) auth(roles []api.Role, h apiHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := func() error {
			tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || tok == "" {
				return refusal(http.StatusUnauthorized, api.CodeUnauthenticated, "missing Authorization: Bearer <token> header")
			}
			p, err := authenticate(r.Context(), s.d.nc, strings.TrimSpace(tok), s.d.o.Now())
			if e := authRefusal(err); e != nil {
				return e
			}
			if err != nil {
				return err
			}
			if !slices.Contains(roles, p.role) {
				return refusal(http.StatusForbidden, api.CodeForbidden, "a %s token may not call %s", p.role, r.Pattern)
			}
			return h(w, r, p)
		}()
		if err == nil {
			return
		}
		var ae *client.APIError
		if !errors.As(err, &ae) {
			if r.Context().Err() != nil {
				return
			}
			s.log.Error("request failed", zap.String("route", r.Pattern), zap.Error(err))
			ae = &client.APIError{Status: http.StatusInternalServerError, Code: api.CodeInternal, Message: "internal error; see the server log"}
		}
		writeAPIError(w, ae)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeAPIError(w http.ResponseWriter, e *client.APIError) {
	writeJSON(w, e.Status, api.ErrorBody{Error: api.ErrorDetail{Code: e.Code, Message: e.Message, Details: e.Details}})
}

// decode reads one JSON object into dst, at most limit bytes, refusing unknown fields and
// trailing data, with internal/server's error codes.
func decode(w http.ResponseWriter, r *http.Request, limit int64, dst any, allowEmpty bool) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return refusal(http.StatusRequestEntityTooLarge, api.CodeBodyTooLarge, "request body is over %d bytes", limit)
		}
		return refusal(http.StatusBadRequest, api.CodeInvalidJSON, "reading request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if allowEmpty {
			return nil
		}
		return refusal(http.StatusBadRequest, api.CodeInvalidJSON, "request body is empty: send a JSON object")
	}
	if bytes.TrimSpace(body)[0] != '{' {
		// null, arrays, strings, numbers: encoding/json would take null as an empty object.
		return refusal(http.StatusBadRequest, api.CodeInvalidJSON, "request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		if msg, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return refusal(http.StatusBadRequest, api.CodeUnknownField, "unknown field %s is not part of this request (see docs/api.md)", msg)
		}
		return refusal(http.StatusBadRequest, api.CodeInvalidJSON, "malformed JSON: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return refusal(http.StatusBadRequest, api.CodeInvalidJSON, "request body has data after the JSON object")
	}
	return nil
}

func resolvePool(p principal, pool string) (string, error) {
	if pool == "" {
		if p.pool == api.AllPools {
			return "", refusal(http.StatusBadRequest, api.CodeInvalidField, "pool is required: your token is not bound to one pool")
		}
		return p.pool, nil
	}
	if !api.ValidPoolName(pool) {
		return "", refusal(http.StatusBadRequest, api.CodeInvalidField, "pool %q is invalid: use 1-63 of a-z 0-9 _ . -", pool)
	}
	if !p.canPool(pool) {
		return "", refusal(http.StatusForbidden, api.CodeForbidden, "your token is for pool %q, not %q", p.pool, pool)
	}
	return pool, nil
}

func (s *APIServer) hCatalog(w http.ResponseWriter, r *http.Request, p principal) error {
	if err := onlyParams(r, "pool"); err != nil {
		return err
	}
	pool, err := resolvePool(p, r.URL.Query().Get("pool"))
	if err != nil {
		return err
	}
	tasks := s.poolCatalog(pool)
	if tasks == nil {
		tasks = []api.TaskDef{}
	}
	writeJSON(w, http.StatusOK, api.CatalogResponse{Pool: pool, Tasks: tasks})
	return nil
}

func (s *APIServer) hTokenList(w http.ResponseWriter, r *http.Request, _ principal) error {
	if err := onlyParams(r); err != nil {
		return err
	}
	list, err := listTokens(r.Context(), s.tokens)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.TokenList{Tokens: list})
	return nil
}

func (s *APIServer) hTokenRevoke(w http.ResponseWriter, r *http.Request, p principal) error {
	if err := onlyParams(r); err != nil {
		return err
	}
	id := r.PathValue("id")
	ok, err := revokeToken(r.Context(), s.tokens, id, time.Now())
	if err != nil {
		return err
	}
	if !ok {
		return refusal(http.StatusNotFound, api.CodeNotFound, "no active token %q (ids look like tok_ and 12 hex digits; GET /v1/tokens lists them)", id)
	}
	s.log.Info("token revoked", zap.String("token_id", id), zap.String("by", p.tokenID))
	s.record(r.Context(), p, "token.revoke", "", map[string]string{"id": id})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// idemEntry is what the IdempotencyBucket holds for a key.
type idemEntry struct {
	JobID string `json:"job_id"`
	Hash  string `json:"hash"`
}

func (s *APIServer) hSubmit(w http.ResponseWriter, r *http.Request, p principal) error {
	var body api.SubmitBody
	if err := decode(w, r, maxInputBytes+bodySlack, &body, false); err != nil {
		return err
	}
	req, err := body.Request()
	if err != nil {
		return refusal(http.StatusBadRequest, api.CodeInvalidField, "%v", err)
	}
	j, created, err := s.submit(r.Context(), p, req)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
		s.record(r.Context(), p, "job.submit", j.ID, map[string]any{"task": j.Task, "task_version": j.TaskVersion, "pool": j.Pool, "state": j.State})
	}
	writeJSON(w, status, j)
	return nil
}

func (s *APIServer) submit(ctx context.Context, p principal, req api.SubmitRequest) (api.Job, bool, error) {
	bad := func(format string, args ...any) (api.Job, bool, error) {
		return api.Job{}, false, refusal(http.StatusBadRequest, api.CodeInvalidField, format, args...)
	}
	if !api.ValidTaskName(req.Task) {
		return bad("task %q is invalid: a task name is 1-64 of a-z 0-9 _ . - starting with a letter", req.Task)
	}
	if req.TaskVersion != "" && !api.ValidTaskVersion(req.TaskVersion) {
		return bad("task_version %q is invalid", req.TaskVersion)
	}
	pool, err := resolvePool(p, req.Pool)
	if err != nil {
		return api.Job{}, false, err
	}
	if len(bytes.TrimSpace(req.Input)) == 0 || !json.Valid(req.Input) {
		return bad("input is required: the task's JSON input (use {} for none)")
	}
	if err := approval.CheckIJSON(req.Input); err != nil {
		return bad("input is not I-JSON (RFC 7493), so it cannot be approved: %v", err)
	}
	var buf bytes.Buffer
	_ = json.Compact(&buf, req.Input)
	input := buf.Bytes()
	if len(input) > maxInputBytes {
		return api.Job{}, false, refusal(http.StatusRequestEntityTooLarge, api.CodeInputTooLarge, "input is %d bytes, the cap is %d", len(input), maxInputBytes)
	}
	if req.MaxAttempts == 0 {
		req.MaxAttempts = defaultMaxAttempts
	}
	if req.MaxAttempts < 1 || req.MaxAttempts > maxAttemptsCap {
		return bad("max_attempts is %d, want 1..%d", req.MaxAttempts, maxAttemptsCap)
	}
	if req.IdempotencyKey != "" && !api.ValidIdempotencyKey(req.IdempotencyKey) {
		return bad("idempotency_key must be 1-200 printable ASCII characters without spaces")
	}
	if req.Approval != "" {
		if err := approval.CheckShape(req.Approval); err != nil {
			return bad("approval: %v", err)
		}
	}
	var def *api.TaskDef
	for _, t := range s.poolCatalog(pool) {
		if t.Name == req.Task && (req.TaskVersion == "" || t.Version == req.TaskVersion) {
			def = &t // the newest published wins when no version is asked for
		}
	}
	if def == nil {
		v := ""
		if req.TaskVersion != "" {
			v = " version " + req.TaskVersion
		}
		return api.Job{}, false, refusal(http.StatusBadRequest, api.CodeUnknownTask,
			"task %q%s is not published in pool %q: a worker must publish it first (GET /v1/catalog)", req.Task, v, pool)
	}
	sch, err := s.schemas.Get(def.InputSchema)
	if err != nil {
		return api.Job{}, false, fmt.Errorf("compile the published schema of %s@%s: %w", def.Name, def.Version, err)
	}
	issues, err := schema.Validate(sch, input)
	if err != nil {
		return bad("input: %v", err)
	}
	if len(issues) > 0 {
		return api.Job{}, false, &client.APIError{Status: http.StatusBadRequest, Code: api.CodeInputInvalid,
			Message: schema.Message(issues), Details: issues}
	}

	id := api.NewJobID()
	if req.IdempotencyKey != "" {
		hashed, _ := json.Marshal(struct {
			Task, Version, Pool string
			Input               json.RawMessage
			Max                 int
			Approval            string
		}{req.Task, req.TaskVersion, pool, input, req.MaxAttempts, req.Approval})
		sum := sha256.Sum256(hashed)
		ksum := sha256.Sum256([]byte(req.IdempotencyKey))
		key := token(pool) + "." + hex.EncodeToString(ksum[:])
		ent, _ := json.Marshal(idemEntry{JobID: id, Hash: hex.EncodeToString(sum[:])})
		if _, err := s.idem.Create(ctx, key, ent); err != nil {
			if !errors.Is(err, jetstream.ErrKeyExists) {
				return api.Job{}, false, fmt.Errorf("natsq: record the idempotency key: %w", err)
			}
			e, gerr := s.idem.Get(ctx, key)
			if gerr != nil {
				return api.Job{}, false, fmt.Errorf("natsq: read the idempotency key: %w", gerr)
			}
			var prev idemEntry
			if err := json.Unmarshal(e.Value(), &prev); err != nil {
				return api.Job{}, false, fmt.Errorf("natsq: idempotency entry unreadable: %w", err)
			}
			if prev.Hash != hex.EncodeToString(sum[:]) {
				return api.Job{}, false, refusal(http.StatusConflict, api.CodeIdempotency,
					"idempotency_key %q was already used in pool %q for a different request (job %s)", req.IdempotencyKey, pool, prev.JobID)
			}
			// The same request again: the job it created, once it is recorded (the first
			// request may still be writing it).
			var j api.Job
			for try := 0; ; try++ {
				j, err = s.d.Get(ctx, prev.JobID)
				if err == nil || try == 50 || !client.IsCode(err, api.CodeNotFound) {
					return j, false, err
				}
				select {
				case <-ctx.Done():
					return j, false, ctx.Err()
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}
	now := time.Now().UTC()
	base := api.Job{SubmittedBy: p.tokenID, IdempotencyKey: req.IdempotencyKey, CreatedAt: now}
	if req.Approval != "" {
		j, err := s.d.dispatch(ctx, Envelope{JobID: id, Task: req.Task, TaskVersion: def.Version, Pool: pool,
			Input: input, Approval: req.Approval, MaxAttempts: req.MaxAttempts}, base)
		return j, err == nil, err
	}
	base.ID, base.Task, base.TaskVersion, base.Pool, base.State = id, req.Task, def.Version, pool, api.StatePendingApproval
	base.Input, base.MaxAttempts, base.UpdatedAt = input, req.MaxAttempts, now
	data, err := (&Record{Job: base}).appendJSON(nil)
	if err != nil {
		return api.Job{}, false, err
	}
	if _, err := s.d.jobs.Create(ctx, id, data); err != nil {
		return api.Job{}, false, fmt.Errorf("natsq: record job %s: %w", id, err)
	}
	return base, true, nil
}

// job reads a job the principal may see: one in another pool is "not found", as over SQLite.
func (s *APIServer) job(ctx context.Context, p principal, id string) (Record, error) {
	if !api.ValidJobID(id) {
		return Record{}, refusal(http.StatusNotFound, api.CodeNotFound, "no job %q (job ids look like job_ and 24 hex digits)", id)
	}
	r, _, err := s.d.record(ctx, id)
	if err == nil && !p.canPool(r.Job.Pool) {
		return Record{}, refusal(http.StatusNotFound, api.CodeNotFound, "no job %q in the pools your token may see", id)
	}
	return r, err
}

func (s *APIServer) hGet(w http.ResponseWriter, r *http.Request, p principal) error {
	if err := onlyParams(r); err != nil {
		return err
	}
	rec, err := s.job(r.Context(), p, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, rec.Job)
	return nil
}

// hWait long-polls by watching the job's key: every replica sees every write.
func (s *APIServer) hWait(w http.ResponseWriter, r *http.Request, p principal) error {
	if err := onlyParams(r, "timeout"); err != nil {
		return err
	}
	timeout := defaultWaitSeconds
	if v := r.URL.Query().Get("timeout"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxWaitSeconds {
			return refusal(http.StatusBadRequest, api.CodeInvalidField, "timeout %q is not a number of seconds in 0..%d", v, maxWaitSeconds)
		}
		timeout = n
	}
	id := r.PathValue("id")
	rec, err := s.job(r.Context(), p, id)
	if err != nil {
		return err
	}
	if rec.Job.State.Terminal() || timeout == 0 {
		writeJSON(w, http.StatusOK, rec.Job)
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(timeout)*time.Second)
	defer cancel()
	watch, err := s.d.jobs.Watch(ctx, id)
	if err != nil {
		return fmt.Errorf("natsq: watch job %s: %w", id, err)
	}
	defer func() { _ = watch.Stop() }()
	last := rec.Job
	s.waiters.Add(1)
	defer s.waiters.Add(-1)
	for {
		select {
		case <-s.closing:
			return refusal(http.StatusServiceUnavailable, api.CodeUnavailable, "server is shutting down; retry")
		case e, ok := <-watch.Updates():
			if !ok {
				writeJSON(w, http.StatusOK, last)
				return nil
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			cur, err := decodeRecord(e.Value())
			if err != nil {
				continue
			}
			last = cur.Job
			if last.State.Terminal() {
				writeJSON(w, http.StatusOK, last)
				return nil
			}
		case <-ctx.Done():
			if r.Context().Err() != nil {
				return r.Context().Err()
			}
			writeJSON(w, http.StatusOK, last)
			return nil
		}
	}
}

func (s *APIServer) hCancel(w http.ResponseWriter, r *http.Request, p principal) error {
	if err := decode(w, r, smallBody, &struct{}{}, true); err != nil {
		return err
	}
	id := r.PathValue("id")
	rec, err := s.job(r.Context(), p, id)
	if err != nil {
		return err
	}
	if rec.Job.State.Terminal() {
		return refusal(http.StatusConflict, api.CodeInvalidState, "job %s is already %s", id, rec.Job.State)
	}
	j, err := s.d.Cancel(r.Context(), id)
	if err != nil {
		return err
	}
	s.record(r.Context(), p, "job.cancel", id, map[string]any{"from": rec.Job.State})
	writeJSON(w, http.StatusOK, j)
	return nil
}

func (s *APIServer) hApprove(w http.ResponseWriter, r *http.Request, p principal) error {
	var req api.ApproveRequest
	if err := decode(w, r, approval.MaxTokenBytes+1024, &req, false); err != nil {
		return err
	}
	if err := approval.CheckShape(req.Token); err != nil {
		return refusal(http.StatusBadRequest, api.CodeInvalidField, "token: %v", err)
	}
	id := r.PathValue("id")
	if _, err := s.job(r.Context(), p, id); err != nil {
		return err
	}
	j, err := s.d.approve(r.Context(), id, req.Token)
	if err != nil {
		return err
	}
	s.record(r.Context(), p, "job.approve", id, nil)
	writeJSON(w, http.StatusOK, j)
	return nil
}

// approve moves a pending_approval job to queued with its approval (compare-and-set, so
// two replicas approving at once queue it once) and publishes its envelope. A job already
// queued with the same approval but never published (a crash in between) is published again.
func (d *Dispatcher) approve(ctx context.Context, id, tok string) (api.Job, error) {
	republish := false
	rec, err := d.update(ctx, id, func(r *Record) (bool, error) {
		if r.Job.State == api.StateQueued && r.Approval == tok && r.JobsSeq == 0 && r.Job.Attempt == 0 {
			republish = true
			return false, nil
		}
		if r.Job.State != api.StatePendingApproval {
			return false, refusal(http.StatusConflict, api.CodeInvalidState, "job %s is %s; only a pending_approval job takes an approval", id, r.Job.State)
		}
		r.Approval, r.Job.HasApproval, r.Job.State = tok, true, api.StateQueued
		r.ClaimKey = randomHex(16)
		return true, nil
	})
	if err != nil {
		return rec.Job, err
	}
	env := Envelope{JobID: id, Task: rec.Job.Task, TaskVersion: rec.Job.TaskVersion, Pool: rec.Job.Pool,
		Input: rec.Job.Input, Approval: tok, MaxAttempts: rec.Job.MaxAttempts, ClaimKey: rec.ClaimKey}
	if err := env.check(); err != nil {
		return rec.Job, refusal(http.StatusBadRequest, api.CodeInvalidField, "job %s: %v", id, err)
	}
	if err := d.ensure(ctx, env.Pool, env.Task); err != nil {
		return rec.Job, err
	}
	body, err := env.appendJSON(nil)
	if err != nil {
		return rec.Job, err
	}
	ack, err := d.js.Publish(ctx, JobSubject(env.Pool, env.Task), body, jetstream.WithMsgID(id))
	if err != nil {
		return rec.Job, fmt.Errorf("natsq: publish job %s: %w", id, err)
	}
	if republish {
		// Published again in case the first approval crashed before its publish (the
		// stream drops the duplicate); to the caller this is a second approval.
		return rec.Job, refusal(http.StatusConflict, api.CodeInvalidState, "job %s is %s; only a pending_approval job takes an approval", id, rec.Job.State)
	}
	// Remember the sequence so that Cancel can delete the job before anyone pulls it.
	// Best effort, as in Dispatch.
	if _, err := d.update(ctx, id, func(r *Record) (bool, error) {
		if r.JobsSeq != 0 || r.Job.State != api.StateQueued || r.Job.Attempt != 0 {
			return false, nil
		}
		r.JobsSeq = ack.Sequence
		return true, nil
	}); err != nil {
		d.log.Warn("recording the job's stream sequence failed; a cancel will wait for the worker", zap.String("job", id), zap.Error(err))
	}
	return rec.Job, nil
}

// DialAPIServer connects to NATS and returns an API server with its own Dispatcher; Close
// closes the connection.
func DialAPIServer(ctx context.Context, serverURL string, o Options) (*APIServer, error) {
	d, err := DialDispatcher(ctx, serverURL, o)
	if err != nil {
		return nil, err
	}
	s, err := NewAPIServer(ctx, d)
	if err != nil {
		_ = d.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the Dispatcher (and its connection if DialAPIServer opened it).
func (s *APIServer) Close() error { return s.d.Close() }

// Conn is the server's NATS connection.
func (s *APIServer) Conn() *nats.Conn { return s.d.nc }

package natsq

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// IdempotencyBucket maps (pool, idempotency key) to the job it created.
const IdempotencyBucket = "castellan_idempotency"

// jobIDRE is what a job id may be as a KV key (no '.', which would nest, nor wildcards):
// the transport's rule, for jobs dispatched directly. Ids the API makes and looks up are
// api.NewJobID's (api.ValidJobID).
var jobIDRE = regexp.MustCompile(`^[-_=a-zA-Z0-9]{1,128}$`)

// APIServer serves the /v1 API (internal/controlplane, the layer both modes share) with
// its state in JetStream instead of SQLite, so that any number of replicas can serve it at
// once: every replica reads and writes the same KV buckets with compare-and-set, and every
// replica runs the Dispatcher's shared results consumer. The worker routes are not served:
// workers talk to NATS directly (WorkerQueue). The audit log is a stream (audit.go).
type APIServer struct {
	d       *Dispatcher
	log     *zap.Logger
	tokens  jetstream.KeyValue
	workers jetstream.KeyValue // presence (workers.go)
	audit   *auditLog          // the hash-chained audit stream (audit.go)
	idem    jetstream.KeyValue
	catalog jetstream.KeyValue
	plans   jetstream.KeyValue // plans.go
	active  activeCache        // the plans not ended, as last seen (plans.go)
	cp      *controlplane.Server
	feed    changeFeed

	cmu  sync.Mutex
	cat  map[string]map[string]catalogEntry // pool -> worker key -> catalog
	catN int                                // catalog updates seen, so tests can poll
}

type catalogEntry struct {
	tasks []api.TaskDef
	at    time.Time
}

// NewAPIServer returns an API server on d's connection, creating the token and idempotency
// buckets (with d's replica count) if they are missing. d's Options.API configures the
// /v1 layer.
func NewAPIServer(ctx context.Context, d *Dispatcher) (*APIServer, error) {
	s := &APIServer{d: d, log: d.log.Named("api"), cat: map[string]map[string]catalogEntry{}}
	s.feed.init()
	d.final.setNotify(s.feed.fireJob)
	var err error
	if s.tokens, err = tokensKV(ctx, d.js, d.o.Replicas); err != nil {
		return nil, err
	}
	if s.idem, err = ensureKV(ctx, d.js, jetstream.KeyValueConfig{Bucket: IdempotencyBucket,
		Description: "Castellan idempotency keys", History: 1, TTL: 30 * 24 * time.Hour, Replicas: d.o.Replicas}); err != nil {
		return nil, fmt.Errorf("natsq: create bucket %s: %w", IdempotencyBucket, err)
	}
	if s.plans, err = plansKV(ctx, d.js, d.o.Replicas); err != nil {
		return nil, err
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
	cfg := d.o.API
	if cfg.Logger == nil {
		cfg.Logger = s.log
	}
	if cfg.Now == nil {
		cfg.Now = d.o.Now
	}
	if cfg.NotFoundHint == "" {
		cfg.NotFoundHint = "not on the NATS control plane: workers talk to NATS; see docs/api.md"
	}
	if s.cp, err = controlplane.New(natsBackend{s}, cfg); err != nil {
		return nil, err
	}
	return s, nil
}

// HandleMCP serves h (internal/mcp.Handler) at /mcp and at the RFC 9728 metadata paths.
// Call it before Serve.
func (s *APIServer) HandleMCP(h http.Handler) {
	for _, p := range []string{mcp.Path, mcp.MetadataPath, mcp.MetadataPath + mcp.Path} {
		s.cp.Mount(p, h)
	}
}

// Handler returns the HTTP handler of the API.
func (s *APIServer) Handler() http.Handler { return s.cp.Handler() }

// API is the /v1 layer this server serves, for in-process callers and tests.
func (s *APIServer) API() *controlplane.Server { return s.cp }

// Serve serves the API on ln, watches the catalog and job buckets and runs the
// Dispatcher's result consumer, until ctx ends; then it shuts down gracefully, giving
// requests up to 10s.
func (s *APIServer) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Requests do not inherit ctx's cancellation: shutdown would cancel the waits it then
	// waits for, and they would end with an empty 200. Parked waits answer through the
	// layer's Shutdown instead.
	hs := &http.Server{Handler: s.cp.Handler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) }}
	errs := make(chan error, 5)
	var wg sync.WaitGroup
	wg.Add(4)
	go func() { defer wg.Done(); errs <- s.watchCatalog(ctx) }()
	go func() { defer wg.Done(); errs <- s.watchActive(ctx) }()
	go func() { defer wg.Done(); errs <- s.watchJobs(ctx) }()
	go func() { defer wg.Done(); errs <- s.d.Run(ctx, 0) }()
	go func() {
		<-ctx.Done()
		s.cp.Shutdown()
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
	return follow(ctx, w, s.applyCatalog)
}

// follow calls apply with each entry w delivers until ctx ends or w stops, then stops w.
// The nil that marks the initial values all in calls caughtUp, if there is one.
func follow(ctx context.Context, w jetstream.KeyWatcher, apply func(jetstream.KeyValueEntry), caughtUp ...func()) error {
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e != nil {
				apply(e)
				continue
			}
			for _, f := range caughtUp {
				f()
			}
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
		// Written past the checks of a publication (handleCatalog): a submit could not
		// validate against it.
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

// idemEntry is what the IdempotencyBucket holds for a key.
type idemEntry struct {
	JobID string `json:"job_id"`
	Hash  string `json:"hash"`
}

// submit records a job the layer validated: its idempotency key first (create-only, so
// that two replicas given the same key make one job), then its record, and for an
// approved job its envelope.
func (s *APIServer) submit(ctx context.Context, p controlplane.Principal, sub controlplane.Submission) (api.Job, bool, error) {
	id, pool, input := sub.ID, sub.Pool, sub.Input
	if sub.IdempotencyKey != "" {
		hash := hex.EncodeToString(sub.RequestHash)
		ksum := sha256.Sum256([]byte(sub.IdempotencyKey))
		key := token(pool) + "." + hex.EncodeToString(ksum[:])
		ent, _ := json.Marshal(idemEntry{JobID: id, Hash: hash})
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
			if prev.Hash != hash {
				return api.Job{}, false, controlplane.IdempotencyConflict(sub.IdempotencyKey, pool, prev.JobID)
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
	base := api.Job{SubmittedBy: p.TokenID, SubmittedByName: sub.SubmittedByName, IdempotencyKey: sub.IdempotencyKey, CreatedAt: now}
	if sub.Approval != "" {
		j, err := s.d.dispatch(ctx, Envelope{JobID: id, Task: sub.Task, TaskVersion: sub.TaskVersion, Pool: pool,
			Input: input, Approval: sub.Approval, MaxAttempts: sub.MaxAttempts}, base)
		return j, err == nil, err
	}
	base.ID, base.Task, base.TaskVersion, base.Pool, base.State = id, sub.Task, sub.TaskVersion, pool, api.StatePendingApproval
	base.Input, base.MaxAttempts, base.UpdatedAt = input, sub.MaxAttempts, now
	data, err := (&Record{Job: base}).appendJSON(nil)
	if err != nil {
		return api.Job{}, false, err
	}
	if _, err := s.d.jobs.Create(ctx, id, data); err != nil {
		return api.Job{}, false, fmt.Errorf("natsq: record job %s: %w", id, err)
	}
	return base, true, nil
}

// deny ends a pending_approval job as denied (compare-and-set, so a concurrent approval on
// another replica wins or loses whole). A pending job was never published, so nothing
// reaches a worker and there is no message to drop.
func (d *Dispatcher) deny(ctx context.Context, id, by, reason string) (api.Job, error) {
	rec, err := d.update(ctx, id, func(r *Record) (bool, error) {
		return true, controlplane.Deny(&r.Job, by, reason, time.Now().UTC())
	})
	return rec.Job, err
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
		if err := controlplane.Approve(&r.Job); err != nil {
			return false, err
		}
		r.Approval = tok
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

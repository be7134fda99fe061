package natsq

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
)

// Dispatcher is the control plane's side of the JetStream transport: it publishes approved
// jobs, consumes results and keeps job state in the JobsBucket. Any number of dispatchers
// (control-plane replicas) may run at once: they share the results consumer, and every state
// change is a compare-and-set on the job's KV revision, so each job and attempt is recorded
// once whichever replica sees the result, and every replica serves reads.
type Dispatcher struct {
	nc       *nats.Conn
	ownsConn bool
	js       jetstream.JetStream
	o        Options
	log      *zap.Logger
	jobs     jetstream.KeyValue
	cancels  jetstream.KeyValue
	heads    jetstream.KeyValue // workers' audit-log heads (audithead.go)
	audit    *auditLog          // the API server's audit stream, when it runs one (audit.go)
	catalog  jetstream.KeyValue // workers' catalogs, written for them (handleCatalog)

	mu    sync.Mutex
	ready map[string]bool // "pool" and "pool\x00task" whose stream / consumer exist

	// recent holds records this dispatcher wrote, with their revisions, so that recording a
	// result can compare-and-set without reading the record first (half the round trips).
	// It is only ever a guess: the write is checked against the KV revision, and a stale
	// entry costs one failed write and a fresh read. Reads never use it.
	cmu    sync.Mutex
	recent map[string]cachedRecord

	sweeper   atomic.Pointer[sweeper] // the running lease sweep, told of this replica's writes (sweep.go)
	final     finalJobs               // terminal records this dispatcher wrote (final.go)
	headsSeen headsSeen               // the workers' audit heads this dispatcher wrote (audithead.go)
}

type cachedRecord struct {
	rec Record
	rev uint64
}

const maxRecent = 1 << 16

func (d *Dispatcher) remember(id string, r Record, rev uint64) {
	d.noteWrite(id, r, rev)
	if r.Job.State.Terminal() {
		d.final.put(id, r.Job, rev)
	}
	d.cmu.Lock()
	defer d.cmu.Unlock()
	if r.Job.State.Terminal() {
		delete(d.recent, id)
		return
	}
	if len(d.recent) >= maxRecent {
		clear(d.recent) // a cache miss is only a read
	}
	d.recent[id] = cachedRecord{rec: r, rev: rev}
}

// take removes and returns the remembered record of id: the caller owns it.
func (d *Dispatcher) take(id string) (Record, uint64, bool) {
	d.cmu.Lock()
	defer d.cmu.Unlock()
	c, ok := d.recent[id]
	delete(d.recent, id)
	return c.rec, c.rev, ok
}

// DialDispatcher connects to NATS at serverURL and returns a Dispatcher.
func DialDispatcher(ctx context.Context, serverURL string, o Options) (*Dispatcher, error) {
	nc, err := Connect(serverURL, o)
	if err != nil {
		return nil, err
	}
	d, err := NewDispatcher(ctx, nc, o)
	if err != nil {
		nc.Close()
		return nil, err
	}
	d.ownsConn = true
	return d, nil
}

// NewDispatcher creates (or updates) the shared streams and buckets with o.Replicas replicas
// and returns a Dispatcher on nc.
func NewDispatcher(ctx context.Context, nc *nats.Conn, o Options) (*Dispatcher, error) {
	o = o.withDefaults()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsq: %w", err)
	}
	if err := ensureShared(ctx, js, o.Replicas); err != nil {
		return nil, err
	}
	d := &Dispatcher{nc: nc, js: js, o: o, log: o.Log, ready: map[string]bool{}, recent: map[string]cachedRecord{}}
	if d.jobs, err = js.KeyValue(ctx, JobsBucket); err != nil {
		return nil, fmt.Errorf("natsq: bucket %s: %w", JobsBucket, err)
	}
	if d.cancels, err = js.KeyValue(ctx, CancelBucket); err != nil {
		return nil, fmt.Errorf("natsq: bucket %s: %w", CancelBucket, err)
	}
	if d.heads, err = js.KeyValue(ctx, AuditHeadsBucket); err != nil {
		return nil, fmt.Errorf("natsq: bucket %s: %w", AuditHeadsBucket, err)
	}
	if d.catalog, err = js.KeyValue(ctx, CatalogBucket); err != nil {
		return nil, fmt.Errorf("natsq: bucket %s: %w", CatalogBucket, err)
	}
	return d, nil
}

// Close closes the connection if DialDispatcher opened it.
func (d *Dispatcher) Close() error {
	if d.ownsConn {
		d.nc.Close()
	}
	return nil
}

func (d *Dispatcher) ensure(ctx context.Context, pool, task string) error {
	key := pool + "\x00" + task
	d.mu.Lock()
	poolReady, taskReady := d.ready[pool], d.ready[key]
	d.mu.Unlock()
	if taskReady {
		return nil
	}
	if !poolReady {
		if err := ensurePoolStream(ctx, d.js, pool, d.o.Replicas); err != nil {
			return err
		}
	}
	if _, err := ensureConsumer(ctx, d.js, pool, task, d.o.AckWait); err != nil {
		return err
	}
	d.mu.Lock()
	d.ready[pool], d.ready[key] = true, true
	d.mu.Unlock()
	return nil
}

// Dispatch records an approved job as queued and publishes its envelope to the pool's
// work-queue stream (Nats-Msg-Id = job id, so a retried Dispatch is not queued twice). The
// approval is not checked here: workers verify it. Dispatching a job id that exists returns
// the recorded job unchanged.
func (d *Dispatcher) Dispatch(ctx context.Context, env Envelope) (api.Job, error) {
	return d.dispatch(ctx, env, api.Job{})
}

// dispatch is Dispatch with the API's extra job fields (submitter, idempotency key) in base.
func (d *Dispatcher) dispatch(ctx context.Context, env Envelope, base api.Job) (api.Job, error) {
	if err := env.check(); err != nil {
		return api.Job{}, refusal(http.StatusBadRequest, api.CodeInvalidField, "job %q: %v", env.JobID, err)
	}
	if err := d.ensure(ctx, env.Pool, env.Task); err != nil {
		return api.Job{}, err
	}
	now := time.Now().UTC()
	j := base
	j.ID, j.Task, j.TaskVersion, j.Pool, j.State, j.Input = env.JobID, env.Task, env.TaskVersion, env.Pool, api.StateQueued, env.Input
	j.HasApproval, j.MaxAttempts, j.UpdatedAt = true, env.MaxAttempts, now
	if j.CreatedAt.IsZero() {
		j.CreatedAt = now
	}
	env.ClaimKey = randomHex(16)
	rec := Record{Approval: env.Approval, Job: j, ClaimKey: env.ClaimKey}
	data, err := rec.appendJSON(nil)
	if err != nil {
		return api.Job{}, err
	}
	rev, err := d.jobs.Create(ctx, env.JobID, data)
	if err == nil {
		d.remember(env.JobID, rec, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		existing, _, gerr := d.record(ctx, env.JobID)
		if gerr != nil {
			return api.Job{}, gerr
		}
		if existing.JobsSeq != 0 || existing.Job.State != api.StateQueued || existing.ClaimKey == "" {
			return existing.Job, nil
		}
		env.ClaimKey = existing.ClaimKey
		// Recorded but perhaps never published (a crash in between): publish again; the
		// stream drops it if the first publish got through.
	} else if err != nil {
		return api.Job{}, fmt.Errorf("natsq: record job %s: %w", env.JobID, err)
	}
	body, err := env.appendJSON(nil)
	if err != nil {
		return api.Job{}, err
	}
	// The stream sequence is not written back to the record: that second write was a third
	// of a dispatch's cost. Cancel finds an unpulled job's message by its id instead.
	if _, err := d.js.Publish(ctx, JobSubject(env.Pool, env.Task), body, jetstream.WithMsgID(env.JobID)); err != nil {
		return api.Job{}, fmt.Errorf("natsq: publish job %s: %w", env.JobID, err)
	}
	return rec.Job, nil
}

// DispatchBatch is Dispatch for many jobs at once, pipelined: every record is written and
// every envelope published without waiting for each acknowledgement in turn, which is what
// bounds a sequential Dispatch (two round trips per job). The guarantees are Dispatch's: a
// record is written before its envelope is published, and a job id that exists is
// dispatched as Dispatch would (returning the recorded job). Jobs are returned in order;
// the first error stops nothing already published, and the batch may be retried whole.
func (d *Dispatcher) DispatchBatch(ctx context.Context, envs []Envelope) ([]api.Job, error) {
	out := make([]api.Job, len(envs))
	envs = slices.Clone(envs) // each gets its claim key below; the caller's stay as they are
	for i, env := range envs {
		envs[i].ClaimKey = randomHex(16)
		if err := env.check(); err != nil {
			return nil, refusal(http.StatusBadRequest, api.CodeInvalidField, "job %q: %v", env.JobID, err)
		}
		if err := d.ensure(ctx, env.Pool, env.Task); err != nil {
			return nil, err
		}
	}
	now := time.Now().UTC()
	// 1. Create every record: a KV create is a publish on the key's subject expecting no
	//    earlier revision, so it can be sent asynchronously.
	futures := make([]jetstream.PubAckFuture, len(envs))
	for i, env := range envs {
		rec := Record{Approval: env.Approval, ClaimKey: env.ClaimKey, Job: api.Job{ID: env.JobID, Task: env.Task, TaskVersion: env.TaskVersion,
			Pool: env.Pool, State: api.StateQueued, Input: env.Input, HasApproval: true, MaxAttempts: env.MaxAttempts,
			CreatedAt: now, UpdatedAt: now}}
		out[i] = rec.Job
		data, err := rec.appendJSON(nil)
		if err != nil {
			return nil, err
		}
		m := nats.NewMsg("$KV." + JobsBucket + "." + env.JobID)
		m.Data = data
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
		if futures[i], err = d.js.PublishMsgAsync(m); err != nil {
			return nil, fmt.Errorf("natsq: record job %s: %w", env.JobID, err)
		}
	}
	created := make([]bool, len(envs))
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			created[i] = true
			d.remember(envs[i].JobID, Record{Approval: envs[i].Approval, ClaimKey: envs[i].ClaimKey, Job: out[i]}, ack.Sequence)
		case err := <-f.Err():
			if !casConflict(err) {
				return nil, fmt.Errorf("natsq: record job %s: %w", envs[i].JobID, err)
			}
			// The id exists (a retried batch, or a deleted key): Dispatch decides.
			e := envs[i]
			e.ClaimKey = ""
			j, err := d.Dispatch(ctx, e)
			if err != nil {
				return nil, err
			}
			out[i] = j
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// 2. Publish the envelopes of the jobs recorded above.
	for i, env := range envs {
		futures[i] = nil
		if !created[i] {
			continue
		}
		body, err := env.appendJSON(nil)
		if err != nil {
			return nil, err
		}
		m := nats.NewMsg(JobSubject(env.Pool, env.Task))
		m.Data = body
		if futures[i], err = d.js.PublishMsgAsync(m, jetstream.WithMsgID(env.JobID)); err != nil {
			return nil, fmt.Errorf("natsq: publish job %s: %w", env.JobID, err)
		}
	}
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return nil, fmt.Errorf("natsq: publish job %s: %w", envs[i].JobID, err)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return out, nil
}

// jobSeq finds the stream sequence of an unpulled job's message by its Nats-Msg-Id, walking
// the task's subject with direct gets (a work-queue stream allows no second consumer on it).
// Cancel is rare and a backlog is short-lived; dispatch stays one write cheaper. 0 means
// the message is not in the stream (pulled and settled, or never published).
func (d *Dispatcher) jobSeq(ctx context.Context, pool, task, id string) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := d.js.Stream(ctx, JobsStream(pool))
	if err != nil {
		return 0, err
	}
	subj := JobSubject(pool, task)
	for seq := uint64(1); ; {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		if m.Header.Get(jetstream.MsgIDHeader) == id {
			return m.Sequence, nil
		}
		seq = m.Sequence + 1
	}
}

func (d *Dispatcher) record(ctx context.Context, id string) (Record, uint64, error) {
	e, err := d.jobs.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Record{}, 0, refusal(http.StatusNotFound, api.CodeNotFound, "no job %s", id)
	}
	if err != nil {
		return Record{}, 0, fmt.Errorf("natsq: read job %s: %w", id, err)
	}
	r, err := decodeRecord(e.Value())
	if err != nil {
		return Record{}, 0, fmt.Errorf("natsq: job %s: the record in %s is unreadable: %w", id, JobsBucket, err)
	}
	return r, e.Revision(), nil
}

// Get returns a job as recorded in the JobsBucket. Any replica answers the same.
func (d *Dispatcher) Get(ctx context.Context, id string) (api.Job, error) {
	r, _, err := d.record(ctx, id)
	return r.Job, err
}

// Record returns a job's full record, with one Completion per recorded attempt.
func (d *Dispatcher) Record(ctx context.Context, id string) (Record, error) {
	r, _, err := d.record(ctx, id)
	return r, err
}

// update applies change to the job's record with compare-and-set, retrying on a concurrent
// write. change returns false to leave the record as it is.
func (d *Dispatcher) update(ctx context.Context, id string, change func(*Record) (bool, error)) (Record, error) {
	for try := 0; ; try++ {
		r, rev, cached := Record{}, uint64(0), false
		if try == 0 {
			r, rev, cached = d.take(id)
		}
		if !cached {
			var err error
			if r, rev, err = d.record(ctx, id); err != nil {
				return r, err
			}
		}
		ok, err := change(&r)
		if cached && (err != nil || !ok) {
			continue // decided on a remembered record: decide again on the stored one
		}
		if err != nil || !ok {
			return r, err
		}
		r.Job.UpdatedAt = time.Now().UTC()
		data, err := r.appendJSON(nil)
		if err != nil {
			return r, err
		}
		newRev, err := d.jobs.Update(ctx, id, data, rev)
		if err == nil {
			d.remember(id, r, newRev)
			return r, nil
		}
		if !casConflict(err) {
			return r, fmt.Errorf("natsq: update job %s: %w", id, err)
		}
		// Another replica wrote first: read again and decide again.
	}
}

// Cancel cancels a job: a job nobody has pulled is deleted from the stream and cancelled at
// once; a running job is marked cancel_requested and its worker stops at its next
// heartbeat (the cancel bucket). A finished job is returned unchanged.
func (d *Dispatcher) Cancel(ctx context.Context, id string) (api.Job, error) {
	return d.cancel(ctx, id, false)
}

// cancel is Cancel; refuseTerminal makes a finished job a refusal (invalid_state), as the
// API answers, instead of returned unchanged.
func (d *Dispatcher) cancel(ctx context.Context, id string, refuseTerminal bool) (api.Job, error) {
	unpulled := false
	r, err := d.update(ctx, id, func(r *Record) (bool, error) {
		if r.Job.State.Terminal() && !refuseTerminal {
			return false, nil
		}
		// Never published, or published and not claimed (first delivery or a retry):
		// nothing runs it, and a claim of its message from now on is refused (the job is
		// terminal), which terminates the message.
		unpulled = r.Job.State == api.StateQueued && r.Job.Attempt == 0
		return controlplane.Cancel(&r.Job, time.Now().UTC())
	})
	if err != nil {
		return r.Job, err
	}
	if unpulled {
		d.dropMessage(ctx, r)
	}
	if r.Job.State != api.StateCancelRequested {
		return r.Job, nil
	}
	if _, err := d.cancels.Put(ctx, token(r.Job.Pool)+"."+id, []byte("1")); err != nil {
		return r.Job, fmt.Errorf("natsq: record the cancellation of %s: %w", id, err)
	}
	return r.Job, nil // running: the worker stops at its next heartbeat
}

// dropMessage deletes a cancelled job's message from the stream if nobody pulled it yet, so
// that it does not wait there for a claim that would be refused. Best effort: a message
// pulled meanwhile is terminated at its claim.
func (d *Dispatcher) dropMessage(ctx context.Context, r Record) {
	id := r.Job.ID
	seq := r.JobsSeq
	if seq == 0 {
		var err error
		if seq, err = d.jobSeq(ctx, r.Job.Pool, r.Job.Task, id); err != nil {
			d.log.Warn("looking for a cancelled job's message failed; its claim will be refused", zap.String("job", id), zap.Error(err))
			return
		}
	}
	if seq == 0 {
		return // pulled already: its claim is refused
	}
	if st, err := d.js.Stream(ctx, JobsStream(r.Job.Pool)); err == nil {
		_ = st.DeleteMsg(ctx, seq) // pulled meanwhile: its claim is refused
	}
}

// drainSubscriptions ends subs and returns once every message the server sent them has
// arrived (Drain's flush): after Unsubscribe, messages already on their way are dropped,
// and a claim among them would go unanswered.
func drainSubscriptions(subs ...*nats.Subscription) {
	var closed []<-chan nats.SubStatus
	for _, s := range subs {
		ch := s.StatusChanged(nats.SubscriptionClosed)
		if err := s.Drain(); err != nil {
			_ = s.Unsubscribe()
			continue
		}
		closed = append(closed, ch)
	}
	// The drain ends after a round trip to the server; the bound is for a connection that
	// never gives one (handlers that stopped waiting before the last message arrived would
	// leave its claim unanswered).
	timeout := time.After(drainTimeout)
	for _, ch := range closed {
		select {
		case <-ch:
		case <-timeout:
			return
		}
	}
}

const (
	// shutdownGrace bounds how long Run, once its subscriptions are drained, finishes the
	// claims and results its handlers hold.
	shutdownGrace = 5 * time.Second
	// drainTimeout bounds the wait for the subscriptions' drain.
	drainTimeout = 30 * time.Second
)

// Run consumes results until ctx ends, recording each at most once per job and attempt.
// Several handlers run at once (workers is their number; default 32).
func (d *Dispatcher) Run(ctx context.Context, workers int) error {
	if workers <= 0 {
		// Recording is two round trips of waiting per result; enough handlers keep the
		// results stream drained at thousands of jobs a second.
		workers = 32
	}
	cons, err := d.js.CreateOrUpdateConsumer(ctx, ResultsStream, jetstream.ConsumerConfig{
		Durable: ResultsConsumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
		MaxAckPending: 10_000, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("natsq: create consumer %s on %s: %w", ResultsConsumer, ResultsStream, err)
	}
	// A claim the channel has no room for is dropped by the client library (a slow consumer)
	// and its worker waits out ClaimTimeout: room for many workers' bursts at once.
	claims := make(chan *nats.Msg, 16384)
	sub, err := d.nc.ChanQueueSubscribe("castellan.claims.*", ResultsConsumer, claims)
	if err != nil {
		return fmt.Errorf("natsq: subscribe to claims: %w", err)
	}
	catalogs := make(chan *nats.Msg, 64)
	csub, err := d.nc.ChanQueueSubscribe("castellan.catalog.*", ResultsConsumer, catalogs)
	if err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("natsq: subscribe to catalog publications: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1000))
	if err != nil {
		_ = sub.Unsubscribe()
		_ = csub.Unsubscribe()
		return fmt.Errorf("natsq: consume %s: %w", ResultsStream, err)
	}
	// When ctx ends, intake stops first: the iterator is drained, not stopped, and the
	// subscriptions end. Handlers then finish what they hold on their own context, for up to
	// shutdownGrace: a claim or result half recorded is completed, a claim already received is
	// answered (unanswered, its worker would wait out ClaimTimeout), and results the iterator
	// had pulled ahead are handed back for another replica to record at once (kept, they
	// would wait out the consumer's AckWait, unrecorded, although their jobs had finished).
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	stopped := make(chan struct{})
	go func() {
		<-ctx.Done()
		it.Drain()
		drainSubscriptions(sub, csub)
		close(stopped)
		t := time.AfterFunc(shutdownGrace, stopWork)
		<-work.Done()
		t.Stop()
	}()
	var wg sync.WaitGroup
	serve := func(ch <-chan *nats.Msg, handle func(context.Context, *nats.Msg)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case m := <-ch:
					handle(work, m)
				case <-stopped:
					for { // nothing more arrives: answer what has
						select {
						case m := <-ch:
							handle(work, m)
						default:
							return
						}
					}
				}
			}
		}()
	}
	serve(catalogs, d.handleCatalog) // publications are rare: one handler
	wg.Add(1)
	go func() { defer wg.Done(); d.sweep(ctx) }() // running jobs no redelivery will end (sweep.go)
	for range workers {
		serve(claims, d.handleClaim)
	}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				msg, err := it.Next()
				if err != nil {
					return // drained
				}
				if ctx.Err() != nil {
					_ = msg.Nak() // pulled ahead, not handled: another replica's now
					continue
				}
				d.handleResult(work, msg)
			}
		}()
	}
	wg.Wait()
	// Answers and hand-backs are publications: sent before Run returns and the connection
	// may close.
	_ = d.nc.FlushTimeout(5 * time.Second)
	return nil
}

func (d *Dispatcher) handleResult(ctx context.Context, msg jetstream.Msg) {
	r, err := decodeResult(msg.Data())
	if err != nil || r.JobID == "" || r.Attempt < 1 ||
		!outcome.Code(r.Outcome).Known() {
		d.log.Warn("dropping an unreadable result", zap.String("subject", msg.Subject()), zap.NamedError("cause", err))
		_ = msg.TermWithReason("unreadable result")
		return
	}
	pool := poolOfResultSubject(msg.Subject())
	// Built only when something is logged: With encodes its fields at once, and most
	// results log nothing.
	log := func() *zap.Logger {
		return d.log.With(zap.String("job", r.JobID), zap.Int("attempt", r.Attempt), zap.String("outcome", r.Outcome))
	}
	retryable := outcome.Code(r.Outcome).Retryable()
	if r.Retryable != nil {
		retryable = *r.Retryable
	}
	var refused string
	recorded := false
	var after Record
	after, err = d.update(ctx, r.JobID, func(rec *Record) (bool, error) {
		refused, recorded = "", false
		l := rec.Lease
		switch {
		case rec.Job.Pool != pool:
			// The subject is what the worker's account may publish on: a worker of another
			// pool cannot complete this job.
			refused = "published on another pool's subject (" + pool + ")"
			return false, nil
		case l == nil || !rec.Job.HasApproval:
			refused = "no attempt of this job was granted (never approved, delivered or claimed)"
			return false, nil
		case r.Attempt != l.Attempt || r.Attempt > rec.Job.MaxAttempts:
			refused = fmt.Sprintf("attempt %d is not the granted attempt %d of max_attempts %d", r.Attempt, l.Attempt, rec.Job.MaxAttempts)
			return false, nil
		case subtle.ConstantTimeCompare([]byte(r.Fence), []byte(l.Fence)) != 1 || r.WorkerID != l.WorkerID:
			refused = "the fence or worker is not the one the attempt was granted to"
			return false, nil
		case rec.completed(r.Attempt):
			return false, nil // a duplicate: this attempt is recorded
		}
		rec.Completions = append(rec.Completions, Completion{Attempt: r.Attempt, Outcome: r.Outcome, WorkerID: r.WorkerID, At: time.Now().UTC()})
		recorded = true
		if rec.Job.State.Terminal() || r.Attempt < rec.Job.Attempt {
			return true, nil // recorded for the audit trail; a later or final state stands
		}
		j := &rec.Job
		j.State = nextState(j.State, r.Outcome, retryable, r.Attempt, j.MaxAttempts)
		j.Attempt = r.Attempt
		j.Outcome = r.Outcome
		j.Output = r.Output
		j.ErrorMessage = r.ErrorMessage
		j.DurationMS = r.DurationMS
		j.ModuleDigest = r.ModuleDigest
		j.NotBefore = nil
		if j.State == api.StateQueued && r.NotBefore != nil {
			nb := r.NotBefore.UTC()
			j.NotBefore = &nb
		}
		if j.State.Terminal() {
			now := time.Now().UTC()
			j.FinishedAt = &now
		}
		return true, nil
	})
	var ae *client.APIError
	switch {
	case err == nil && refused != "":
		// Not from the delivery it names: a forgery, or a late report of a superseded
		// attempt. Nothing is recorded; the log says who tried.
		log().Warn("refused a result: "+refused, zap.String("subject", msg.Subject()), zap.String("worker_id", r.WorkerID))
		_ = msg.TermWithReason("refused")
	case errors.As(err, &ae):
		log().Warn("result for an unknown job; dropped", zap.Error(err))
		_ = msg.TermWithReason("unknown job")
	case err != nil:
		log().Warn("recording a result failed; it will be redelivered", zap.Error(err))
		_ = msg.NakWithDelay(time.Second)
	default:
		d.recordAuditHead(ctx, pool, r, msg.Headers())
		if recorded {
			d.auditCompletion(ctx, r, after.Job)
		}
		_ = msg.Ack()
	}
}

// handleClaim answers a worker's claim of a delivered job. The claim key proves that the
// claimant was handed the job's message; the grant is a new attempt with a random fence,
// recorded with compare-and-set, so that only the worker holding the current grant can
// report a result (handleResult) and a claim for an earlier delivery or a superseded
// attempt gets nothing. The fence travels only in this reply, to the claimant's inbox.
func (d *Dispatcher) handleClaim(ctx context.Context, m *nats.Msg) {
	respond := func(r ClaimReply) {
		data, err := marshal(r)
		if err == nil {
			err = m.Respond(data)
		}
		if err != nil {
			d.log.Warn("answering a claim failed; the worker hands the job back", zap.Error(err))
		}
	}
	req, err := decodeClaim(m.Data)
	if err != nil || !jobIDRE.MatchString(req.JobID) || req.ClaimKey == "" ||
		req.WorkerID == "" || len(req.WorkerID) > 128 || len(req.Delivery) > 64 {
		d.log.Warn("refused an unreadable claim", zap.String("subject", m.Subject))
		respond(ClaimReply{Refused: "unreadable claim", Final: true})
		return
	}
	pool := poolOfClaimSubject(m.Subject)
	log := func() *zap.Logger {
		return d.log.With(zap.String("job", req.JobID), zap.String("worker_id", req.WorkerID), zap.String("subject", m.Subject))
	}
	var reply ClaimReply
	_, err = d.update(ctx, req.JobID, func(rec *Record) (bool, error) {
		j := &rec.Job
		now := time.Now().UTC()
		switch {
		case j.Pool != pool || rec.ClaimKey == "" || !j.HasApproval ||
			subtle.ConstantTimeCompare([]byte(req.ClaimKey), []byte(rec.ClaimKey)) != 1:
			reply = ClaimReply{Refused: "this job was not delivered to this pool's workers with this key", Final: true}
			return false, nil
		case rec.Lease != nil && rec.Lease.Delivery == req.Delivery && rec.Lease.WorkerID == req.WorkerID &&
			j.State == api.StateRunning && j.Attempt == rec.Lease.Attempt:
			// The same claim again (its reply was lost): the same grant.
			reply = ClaimReply{Attempt: rec.Lease.Attempt, Fence: rec.Lease.Fence}
			return false, nil
		case j.State == api.StateCancelRequested:
			j.State, j.FinishedAt = api.StateCancelled, &now
			reply = ClaimReply{Refused: "the job was cancelled", Final: true}
			return true, nil
		case j.State == api.StateRunning && rec.Lease != nil && now.Sub(rec.Lease.At) < d.o.AckWait:
			// Delivered again before the attempt's lease could expire: its worker handed it
			// back after publishing a result that is not recorded yet. The next attempt is
			// granted once it is, so that no result is refused as superseded: with full
			// jitter a retry can come due before the result is recorded.
			reply = ClaimReply{Refused: "the previous attempt's result is not recorded yet"}
			return false, nil
		case j.State.Terminal() || j.State == api.StatePendingApproval:
			reply = ClaimReply{Refused: "the job is " + string(j.State), Final: true}
			return false, nil
		case j.Attempt >= j.MaxAttempts:
			j.State, j.FinishedAt = api.StateDead, &now
			// As over SQLite, where the lease expiry that ends the last attempt is a timeout.
			j.Outcome = string(outcome.Timeout)
			j.ErrorMessage = fmt.Sprintf("lease expired: delivered again after %d of max_attempts %d, the earlier attempts ended without a result (worker stopped or lost its connection)", j.Attempt, j.MaxAttempts)
			reply = ClaimReply{Refused: j.ErrorMessage, Final: true, Dead: true}
			return true, nil
		}
		attempt := j.Attempt + 1
		rec.Lease = &Lease{Attempt: attempt, Fence: randomHex(16), WorkerID: req.WorkerID, Delivery: req.Delivery, At: now}
		j.Attempt, j.State, j.NotBefore = attempt, api.StateRunning, nil
		reply = ClaimReply{Attempt: attempt, Fence: rec.Lease.Fence}
		return true, nil
	})
	var ae *client.APIError
	switch {
	case errors.As(err, &ae):
		reply = ClaimReply{Refused: "no such job", Final: true}
	case err != nil:
		log().Warn("recording a claim failed; the worker hands the job back", zap.Error(err))
		reply = ClaimReply{Refused: "the control plane could not record the claim; try later"}
	}
	if reply.Refused != "" {
		log().Warn("refused a claim: " + reply.Refused)
	}
	respond(reply)
}

// handleCatalog answers a worker's catalog publication: the catalog is checked with the
// rules of PUT /v1/catalog (internal/schema), then against every catalog published in the
// pool (a version keeps its definition, controlplane.CatalogConflicts), and only then
// written to the catalog bucket under the worker's key. Two conflicting publications at the
// same instant may both pass; the API servers then serve the older definition.
func (d *Dispatcher) handleCatalog(ctx context.Context, m *nats.Msg) {
	respond := func(r CatalogReply) {
		data, err := marshal(r)
		if err == nil {
			err = m.Respond(data)
		}
		if err != nil {
			d.log.Warn("answering a catalog publication failed; the worker publishes again", zap.Error(err))
		}
	}
	pool := poolOfCatalogSubject(m.Subject)
	var req CatalogPublish
	if err := decodeCatalogPublish(m.Data, &req); err != nil || !plainKey(req.WorkerID) || !api.ValidPoolName(pool) {
		respond(CatalogReply{Code: api.CodeInvalidField, Message: "unreadable catalog publication"})
		return
	}
	tasks, err := schema.CheckCatalog(req.Tasks)
	if err != nil {
		respond(CatalogReply{Code: api.CodeInvalidField, Message: err.Error()})
		return
	}
	var published []api.TaskDef
	keys, err := d.catalog.ListKeysFiltered(ctx, token(pool)+".*")
	if err == nil {
		for k := range keys.Keys() {
			e, gerr := d.catalog.Get(ctx, k)
			if gerr != nil {
				continue // deleted meanwhile
			}
			var c api.CatalogResponse
			if json.Unmarshal(e.Value(), &c) == nil {
				published = append(published, c.Tasks...)
			}
		}
	}
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		d.log.Warn("reading the pool's catalogs failed; the worker publishes again", zap.String("pool", pool), zap.Error(err))
		respond(CatalogReply{Code: api.CodeUnavailable, Message: "the control plane could not read the pool's catalogs; try later"})
		return
	}
	if conflicts := controlplane.CatalogConflicts(pool, published, tasks); len(conflicts) > 0 {
		e := controlplane.CatalogConflict(conflicts)
		respond(CatalogReply{Code: e.Code, Message: e.Message, Details: e.Details})
		return
	}
	data, err := json.Marshal(api.CatalogResponse{Pool: pool, Tasks: tasks})
	if err == nil {
		_, err = d.catalog.Put(ctx, token(pool)+"."+req.WorkerID, data)
	}
	if err != nil {
		d.log.Warn("writing a catalog failed; the worker publishes again", zap.String("pool", pool), zap.Error(err))
		respond(CatalogReply{Code: api.CodeUnavailable, Message: "the control plane could not record the catalog; try later"})
		return
	}
	respond(CatalogReply{})
}

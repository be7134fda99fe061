package natsq

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
)

// WorkerQueue is the worker's side of the JetStream transport. It implements worker.Queue:
// the worker loop, approval verification, the sandbox and drain are the same as over HTTP.
// Safe for concurrent use.
type WorkerQueue struct {
	nc       *nats.Conn
	ownsConn bool
	js       jetstream.JetStream
	o        Options
	log      *zap.Logger
	workerID string

	mu        sync.Mutex
	tasks     []string                      // served task names, in catalog order
	consumers map[string]jetstream.Consumer // bound consumers by task
	lastBind  time.Time
	next      int // rotation over tasks, so that one busy task cannot starve the others
	inflight  map[string]*inflight
	cancelKV  jetstream.KeyValue

	pres presence // what GET /v1/workers shows (workers.go)
}

type inflight struct {
	msg     jetstream.Msg
	env     Envelope
	attempt int       // granted by the dispatcher at the claim
	fence   string    // granted with it; the result carries it
	seen    time.Time // admitted or last heartbeat: the delivery expires AckWait later
	// notBefore is when a retryable failure's redelivery is due, once Complete chose it.
	notBefore time.Time
}

// forgetAfter is how long past its last heartbeat an unsettled delivery is kept. JetStream
// redelivers it one AckWait after the last heartbeat, so by then it can no longer be
// settled: a worker that gave up reporting it leaves nothing behind for longer than this.
func (q *WorkerQueue) forgetAfter() time.Duration { return 2 * q.o.AckWait }

// forget drops in-flight deliveries whose lease expired long ago: reports a worker
// abandoned would otherwise stay in the table for the life of the process.
func (q *WorkerQueue) forget(now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for tok, l := range q.inflight {
		if now.Sub(l.seen) > q.forgetAfter() {
			delete(q.inflight, tok)
			q.log.Warn("forgetting a leased job that was neither heartbeated nor reported; JetStream has redelivered it",
				zap.String("job", l.env.JobID), zap.Int("attempt", l.attempt))
		}
	}
}

// DialWorker connects to NATS at serverURL and returns the worker's queue for o.Pool. Close
// closes the connection. Its replies use the inbox prefix WorkerInboxPrefix(o.Pool) unless
// o.InboxPrefix is set, so that the worker's NATS user need not be allowed "_INBOX.>".
func DialWorker(ctx context.Context, serverURL string, o Options) (*WorkerQueue, error) {
	if o.InboxPrefix == "" && o.Pool != "" {
		o.InboxPrefix = WorkerInboxPrefix(o.Pool)
	}
	nc, err := Connect(serverURL, o)
	if err != nil {
		return nil, err
	}
	q, err := NewWorkerQueue(ctx, nc, o)
	if err != nil {
		nc.Close()
		return nil, err
	}
	q.ownsConn = true
	return q, nil
}

// NewWorkerQueue returns the worker's queue on an existing connection. The streams, buckets
// and consumers need not exist yet: they are bound when they appear (the control plane
// creates them; a worker whose account may create them does so itself).
func NewWorkerQueue(ctx context.Context, nc *nats.Conn, o Options) (*WorkerQueue, error) {
	o = o.withDefaults()
	if err := checkName("pool", o.Pool); err != nil {
		return nil, fmt.Errorf("%w: set Options.Pool to the worker's pool", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsq: %w", err)
	}
	id := o.Name + "-" + randomHex(6)
	return &WorkerQueue{nc: nc, js: js, o: o, workerID: id,
		log:       o.Log.With(zap.String("pool", o.Pool), zap.String("worker_id", id)),
		consumers: map[string]jetstream.Consumer{}, inflight: map[string]*inflight{}}, nil
}

// Close closes the connection if DialWorker opened it. Unacknowledged jobs are redelivered
// to other workers after AckWait.
func (q *WorkerQueue) Close() error {
	if q.ownsConn {
		q.nc.Close()
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func refusal(status int, code, format string, args ...any) error {
	return &client.APIError{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Register binds the buckets the worker uses and returns the lease parameters: the lease is
// the consumers' AckWait.
func (q *WorkerQueue) Register(ctx context.Context, req api.RegisterRequest) (api.RegisterResponse, error) {
	if err := q.bindBuckets(ctx); err != nil {
		return api.RegisterResponse{}, err
	}
	q.log.Info("registered on NATS JetStream", zap.String("name", req.Name), zap.String("version", req.AgentVersion))
	q.presenceRegistered(req)
	q.announce(ctx, true)
	return api.RegisterResponse{WorkerID: q.workerID, Pool: q.o.Pool,
		LeaseTTLSeconds: max(1, int(q.o.AckWait/time.Second)), MaxWaitSeconds: 30}, nil
}

func (q *WorkerQueue) bindBuckets(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.cancelKV != nil {
		return nil
	}
	c, err := q.js.KeyValue(ctx, CancelBucket)
	if err != nil {
		return fmt.Errorf("natsq: bucket %s (created by the control plane): %w", CancelBucket, err)
	}
	q.cancelKV = c
	return nil
}

// PublishCatalog records the worker's catalog in the catalog bucket and binds one consumer
// per served task, so that Lease pulls only those tasks.
func (q *WorkerQueue) PublishCatalog(ctx context.Context, tasks []api.TaskDef) (api.CatalogResponse, error) {
	// The rules of PUT /v1/catalog over SQLite (internal/schema), so that a catalog valid in
	// one mode is valid in the other.
	tasks, err := schema.CheckCatalog(tasks)
	if err != nil {
		return api.CatalogResponse{}, refusal(http.StatusBadRequest, api.CodeInvalidField, "%v", err)
	}
	names := make([]string, 0, len(tasks))
	for _, t := range tasks {
		if !slices.Contains(names, t.Name) {
			names = append(names, t.Name)
		}
	}
	if err := q.bindBuckets(ctx); err != nil {
		return api.CatalogResponse{}, err
	}
	// The control plane writes the catalog bucket for the worker, after checking that no
	// version already published in the pool is redefined (handleCatalog).
	data, err := json.Marshal(CatalogPublish{WorkerID: q.workerID, Tasks: tasks})
	if err != nil {
		return api.CatalogResponse{}, err
	}
	// No responder yet: the control plane is starting (or between replicas); ask again for
	// a while rather than fail the worker's start.
	var m *nats.Msg
	wait := 50 * time.Millisecond
	for give := time.Now().Add(3 * q.o.ClaimTimeout); ; wait = min(2*wait, time.Second) {
		rctx, cancel := context.WithTimeout(ctx, q.o.ClaimTimeout)
		m, err = q.nc.RequestWithContext(rctx, CatalogSubject(q.o.Pool), data)
		cancel()
		if !errors.Is(err, nats.ErrNoResponders) || time.Now().After(give) {
			break
		}
		select {
		case <-ctx.Done():
			return api.CatalogResponse{}, ctx.Err()
		case <-time.After(wait):
		}
	}
	if err != nil {
		return api.CatalogResponse{}, fmt.Errorf("natsq: publish the catalog (no answer from the control plane): %w", err)
	}
	var reply CatalogReply
	if err := json.Unmarshal(m.Data, &reply); err != nil {
		return api.CatalogResponse{}, fmt.Errorf("natsq: publish the catalog: unreadable answer: %w", err)
	}
	switch reply.Code {
	case "":
	case api.CodeUnavailable:
		return api.CatalogResponse{}, fmt.Errorf("natsq: publish the catalog: %s", reply.Message)
	default:
		status := http.StatusBadRequest
		if reply.Code == api.CodeCatalogConflict {
			status = http.StatusConflict
		}
		return api.CatalogResponse{}, &client.APIError{Status: status, Code: reply.Code, Message: reply.Message, Details: reply.Details}
	}
	q.mu.Lock()
	q.tasks = names
	old := q.consumers
	q.consumers = map[string]jetstream.Consumer{}
	for _, n := range names {
		if c, ok := old[n]; ok {
			q.consumers[n] = c
		}
	}
	q.lastBind = time.Time{}
	q.mu.Unlock()
	q.bind(ctx)
	q.presenceTasks(tasks)
	q.announce(ctx, true)
	return api.CatalogResponse{Pool: q.o.Pool, Tasks: tasks}, nil
}

// bind looks up (or, if allowed, creates) the consumers of served tasks not bound yet. It
// runs at most once a second: a consumer the control plane has not created yet is looked
// for again at the next lease.
func (q *WorkerQueue) bind(ctx context.Context) {
	q.mu.Lock()
	var missing []string
	for _, t := range q.tasks {
		if q.consumers[t] == nil {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 || time.Since(q.lastBind) < time.Second {
		q.mu.Unlock()
		return
	}
	q.lastBind = time.Now()
	q.mu.Unlock()
	for _, t := range missing {
		c, err := q.js.Consumer(ctx, JobsStream(q.o.Pool), token(t))
		if err != nil {
			// Not there yet: create it if this account may (the stream too).
			c, err = ensureConsumer(ctx, q.js, q.o.Pool, t, q.o.AckWait)
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				if err = ensurePoolStream(ctx, q.js, q.o.Pool, q.o.Replicas); err == nil {
					c, err = ensureConsumer(ctx, q.js, q.o.Pool, t, q.o.AckWait)
				}
			}
		}
		if err != nil {
			q.log.Warn("the consumer of a served task is not available yet; retrying", zap.String("task", t), zap.Error(err))
			continue
		}
		q.mu.Lock()
		q.consumers[t] = c
		q.mu.Unlock()
	}
}

func (q *WorkerQueue) rotation() []jetstream.Consumer {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []jetstream.Consumer
	n := len(q.tasks)
	for i := range n {
		if c := q.consumers[q.tasks[(q.next+i)%n]]; c != nil {
			out = append(out, c)
		}
	}
	if n > 0 {
		q.next = (q.next + 1) % n
	}
	return out
}

// Lease pulls up to max jobs of the served tasks, waiting up to wait for the first. It first
// takes what is available without waiting from each task in turn, then waits on one task at
// a time (MultiTaskPoll each) so that it never holds a pull request open that could deliver
// more than max jobs: a job delivered and not run would use up one of its attempts.
func (q *WorkerQueue) Lease(ctx context.Context, max int, wait time.Duration) ([]api.LeasedJob, error) {
	if max < 1 {
		return nil, refusal(http.StatusBadRequest, api.CodeInvalidField, "max is %d, want at least 1", max)
	}
	q.bind(ctx)
	q.forget(time.Now())
	q.announce(ctx, false)
	deadline := time.Now().Add(wait)
	for {
		cons := q.rotation()
		if len(cons) == 0 {
			// Nothing to pull from yet; come back soon so that binding is retried.
			t := time.NewTimer(min(wait, time.Second))
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
			return nil, nil
		}
		var jobs []api.LeasedJob
		for _, c := range cons {
			if len(jobs) >= max {
				break
			}
			b, err := c.FetchNoWait(max - len(jobs))
			if err != nil {
				return jobs, q.fetchErr(err)
			}
			jobs = q.take(ctx, b, jobs)
		}
		if len(jobs) > 0 {
			return jobs, nil
		}
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return nil, nil
		}
		if len(cons) > 1 {
			remaining = min(remaining, q.o.MultiTaskPoll)
		}
		fctx, cancel := context.WithTimeout(ctx, max64(remaining, 100*time.Millisecond))
		b, err := cons[0].Fetch(1, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, q.fetchErr(err)
		}
		jobs = q.take(ctx, b, jobs)
		cancel()
		if ctx.Err() != nil && len(jobs) == 0 {
			return nil, ctx.Err()
		}
		if len(jobs) > 0 {
			return jobs, nil
		}
	}
}

func max64(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

func (q *WorkerQueue) fetchErr(err error) error {
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		// Deleted under us: look it up again at the next lease.
		q.mu.Lock()
		q.consumers = map[string]jetstream.Consumer{}
		q.lastBind = time.Time{}
		q.mu.Unlock()
	}
	return fmt.Errorf("natsq: pull jobs: %w", err)
}

// take turns delivered messages into leased jobs, terminating those that cannot be run.
// The messages of a batch are admitted at once: each admission waits for a claim's round
// trip to the dispatchers, and the claims are independent.
func (q *WorkerQueue) take(ctx context.Context, b jetstream.MessageBatch, jobs []api.LeasedJob) []api.LeasedJob {
	var msgs []jetstream.Msg
	for msg := range b.Messages() {
		msgs = append(msgs, msg)
	}
	admitted := make([]api.LeasedJob, len(msgs))
	ok := make([]bool, len(msgs))
	var wg sync.WaitGroup
	for i, msg := range msgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			admitted[i], ok[i] = q.admit(ctx, msg)
		}()
	}
	wg.Wait()
	for i := range msgs {
		if ok[i] {
			jobs = append(jobs, admitted[i])
		}
	}
	if err := b.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) &&
		!errors.Is(err, nats.ErrTimeout) {
		q.log.Warn("pull ended with an error", zap.Error(err))
	}
	return jobs
}

func (q *WorkerQueue) admit(ctx context.Context, msg jetstream.Msg) (api.LeasedJob, bool) {
	meta, err := msg.Metadata()
	if err != nil {
		q.poison(ctx, msg, "", "the message has no JetStream metadata")
		return api.LeasedJob{}, false
	}
	if n := len(msg.Data()); n > q.o.MaxJobBytes {
		q.poison(ctx, msg, "", fmt.Sprintf("the message is %d bytes, over the worker's limit of %d", n, q.o.MaxJobBytes))
		return api.LeasedJob{}, false
	}
	env, err := decodeEnvelope(msg.Data())
	if err != nil {
		q.poison(ctx, msg, "", "the message is not one job envelope: "+err.Error())
		return api.LeasedJob{}, false
	}
	if err := env.check(); err != nil {
		q.poison(ctx, msg, env.JobID, "invalid job envelope: "+err.Error())
		return api.LeasedJob{}, false
	}
	if env.Pool != q.o.Pool || msg.Subject() != JobSubject(env.Pool, env.Task) {
		q.poison(ctx, msg, env.JobID, fmt.Sprintf("the envelope names pool %q task %q but arrived on %s", env.Pool, env.Task, msg.Subject()))
		return api.LeasedJob{}, false
	}
	if env.ClaimKey == "" {
		q.poison(ctx, msg, env.JobID, "the envelope has no claim key: it was not published by a dispatcher of this version")
		return api.LeasedJob{}, false
	}
	grant, ok := q.claim(ctx, msg, env, meta)
	if !ok {
		return api.LeasedJob{}, false
	}
	attempt := grant.Attempt
	tok := randomHex(16)
	q.mu.Lock()
	// A new delivery of a job supersedes any older one this worker still holds: JetStream
	// settles a message by its stream sequence whatever delivery the ack came through, so
	// settling the old delivery would ack (or nak, or term) the new one too and leave its
	// attempt without a redelivery if this worker then stopped.
	for old, l := range q.inflight {
		if l.env.JobID == env.JobID {
			delete(q.inflight, old)
		}
	}
	q.inflight[tok] = &inflight{msg: msg, env: env, attempt: attempt, fence: grant.Fence, seen: time.Now()}
	q.mu.Unlock()
	return api.LeasedJob{JobID: env.JobID, Task: env.Task, TaskVersion: env.TaskVersion, Pool: env.Pool,
		Input: env.Input, Approval: env.Approval, Attempt: attempt, MaxAttempts: env.MaxAttempts,
		LeaseToken: tok, LeaseExpiresAt: time.Now().Add(q.o.AckWait)}, true
}

// poison dead-letters and terminates a message no worker could ever run. It never fails:
// a poison message must not block the consumer.
func (q *WorkerQueue) poison(ctx context.Context, msg jetstream.Msg, jobID, reason string) {
	q.log.Warn("terminating an unprocessable job message", zap.String("subject", msg.Subject()),
		zap.String("job", jobID), zap.String("reason", reason))
	data := msg.Data()
	if len(data) > q.o.MaxJobBytes {
		data = nil // keep the evidence small; the headers say what it was
	}
	q.deadLetter(ctx, msg, data, reason)
	if err := msg.TermWithReason(truncate(reason, 200)); err != nil {
		q.log.Warn("terminating the message failed; it will be redelivered and terminated again", zap.Error(err))
	}
}

func (q *WorkerQueue) deadLetter(ctx context.Context, msg jetstream.Msg, data []byte, reason string) {
	task := "unknown"
	if tail, ok := strings.CutPrefix(msg.Subject(), "castellan.jobs."+token(q.o.Pool)+"."); ok && tail != "" {
		task = tail
	}
	dm := nats.NewMsg("castellan.dead." + token(q.o.Pool) + "." + task)
	dm.Data = data
	dm.Header.Set(HeaderReason, truncate(reason, 500))
	dm.Header.Set("Castellan-Subject", msg.Subject())
	dm.Header.Set("Castellan-Size", strconv.Itoa(len(msg.Data())))
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := q.js.PublishMsg(pctx, dm); err != nil {
		q.log.Warn("dead-lettering failed", zap.Error(err))
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// claim asks the dispatcher for an attempt of a job just pulled, proving the delivery with
// the envelope's claim key. Only a granted job runs: its attempt number and fence come from
// the grant. A final refusal (cancelled, finished, attempts used up, or not a job of this
// pool) terminates the message; a refusal for now, or an answer that is neither, hands it
// back for a later delivery, unrun. A claim nobody answers is asked again, the delivery
// kept, until one does or ctx ends.
func (q *WorkerQueue) claim(ctx context.Context, msg jetstream.Msg, env Envelope, meta *jetstream.MsgMetadata) (ClaimReply, bool) {
	data, err := marshal(ClaimRequest{JobID: env.JobID, ClaimKey: env.ClaimKey, WorkerID: q.workerID,
		Delivery: fmt.Sprintf("%d/%d", meta.Sequence.Stream, meta.NumDelivered)})
	if err != nil {
		return ClaimReply{}, false
	}
	var reply ClaimReply
	wait, warned := 50*time.Millisecond, false
	for bad := 0; ; {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), q.o.ClaimTimeout)
		m, rerr := q.nc.RequestWithContext(rctx, ClaimSubject(q.o.Pool), data)
		cancel()
		unanswered := rerr != nil
		if rerr == nil {
			if reply, rerr = decodeClaimReply(m.Data); rerr == nil && reply.Refused == "" && (reply.Fence == "" || reply.Attempt < 1) {
				rerr = errors.New("the claim reply has neither a grant nor a refusal")
			}
		}
		if rerr == nil {
			break
		}
		if !unanswered {
			bad++
		}
		// Unanswered (no control plane, or none in time), the claim is asked again for as long
		// as it takes, the delivery kept: handed back, the job would only circle through
		// redeliveries until a control plane answers, and would then wait for its next one.
		// (The job consumers set no MaxDeliver for the same outage: past it, JetStream keeps a
		// message and never delivers it again.) An answer that is no grant and no refusal is
		// handed back after three.
		if bad == 3 || ctx.Err() != nil {
			q.log.Warn("claiming a job failed; handing it back", zap.String("job", env.JobID), zap.Error(rerr))
			_ = msg.NakWithDelay(q.o.RetryBase)
			return ClaimReply{}, false
		}
		if unanswered && !warned {
			warned = true
			q.log.Warn("no control plane answers claims; keeping the job until one does", zap.String("job", env.JobID), zap.Error(rerr))
		}
		_ = msg.InProgress() // keep the delivery meanwhile
		if unanswered {
			// At most a quarter of AckWait between a try's InProgress and the next try's, with
			// a try itself at most ClaimTimeout.
			wait = min(wait, q.o.ClaimTimeout, q.o.AckWait/4)
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			wait *= 2
		}
	}
	switch {
	case reply.Refused == "":
		return reply, true
	case reply.Dead:
		q.log.Warn("job out of attempts", zap.String("job", env.JobID), zap.String("reason", reply.Refused))
		q.deadLetter(ctx, msg, msg.Data(), reply.Refused)
		_ = msg.TermWithReason("attempts exhausted")
	case reply.Final:
		q.log.Info("the control plane refused the claim of a job; terminating it", zap.String("job", env.JobID), zap.String("reason", reply.Refused))
		_ = msg.TermWithReason(truncate("claim refused: "+reply.Refused, 200))
	default:
		q.log.Warn("the control plane refused the claim of a job for now; handing it back", zap.String("job", env.JobID), zap.String("reason", reply.Refused))
		_ = msg.NakWithDelay(q.o.RetryBase)
	}
	return ClaimReply{}, false
}

func (q *WorkerQueue) publishResult(ctx context.Context, r Result, head ...*api.AuditHead) error {
	data, err := r.appendJSON(nil)
	if err != nil {
		return err
	}
	var h *api.AuditHead
	if len(head) > 0 {
		h = head[0]
	}
	_, err = q.js.PublishMsg(ctx, auditHeadMsg(ResultSubject(q.o.Pool), data, h), jetstream.WithMsgID(resultMsgID(r.JobID, r.Attempt, r.Fence)))
	if errors.Is(err, nats.ErrMaxPayload) && r.Output != nil {
		r.Output = nil
		r.Outcome = string(outcome.OutputTooLarge)
		r.ErrorMessage = fmt.Sprintf("the result is %d bytes, over the NATS server's max_payload of %d", len(data), q.nc.MaxPayload())
		r.Retryable = nil
		return q.publishResult(ctx, r, h)
	}
	if err != nil {
		return fmt.Errorf("natsq: publish the result of %s attempt %d: %w", r.JobID, r.Attempt, err)
	}
	return nil
}

// lease returns the live lease under tok, or nil. A lease not heartbeated for AckWait has
// expired: JetStream redelivers the job, and settling the old delivery now would settle the
// new one (an ack names the message, not the delivery), so it is dropped, as SQLite's lease
// is. The local clock starts after the claim, so this errs towards keeping a lease the
// stream may already have expired; the dispatcher refuses that attempt's result then.
func (q *WorkerQueue) lease(tok string) *inflight {
	q.mu.Lock()
	defer q.mu.Unlock()
	l := q.inflight[tok]
	if l != nil && time.Since(l.seen) > q.o.AckWait {
		delete(q.inflight, tok)
		return nil
	}
	return l
}

// Heartbeat extends the lease (InProgress resets the AckWait timer) and reports a
// cancellation request found in the cancel bucket.
func (q *WorkerQueue) Heartbeat(ctx context.Context, leaseToken string) (api.HeartbeatResponse, error) {
	l := q.lease(leaseToken)
	if l == nil {
		return api.HeartbeatResponse{}, refusal(http.StatusConflict, api.CodeLeaseLost, "no job is leased under this token on this worker")
	}
	if err := l.msg.InProgress(); err != nil {
		if errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			return api.HeartbeatResponse{}, refusal(http.StatusConflict, api.CodeLeaseLost, "job %s was already acknowledged", l.env.JobID)
		}
		return api.HeartbeatResponse{}, fmt.Errorf("natsq: heartbeat for %s: %w", l.env.JobID, err)
	}
	resp := api.HeartbeatResponse{JobID: l.env.JobID, LeaseExpiresAt: time.Now().Add(q.o.AckWait)}
	q.mu.Lock()
	l.seen = time.Now()
	q.mu.Unlock()
	resp.CancelRequested = q.cancelRequested(ctx, l.env.JobID)
	q.announce(ctx, false)
	return resp, nil
}

// cancelRequested reports whether the cancel bucket asks to stop the job. A failed read
// is logged and answered false: the next heartbeat reads again.
func (q *WorkerQueue) cancelRequested(ctx context.Context, jobID string) bool {
	q.mu.Lock()
	kv := q.cancelKV
	q.mu.Unlock()
	if kv == nil {
		return false
	}
	_, err := kv.Get(ctx, token(q.o.Pool)+"."+jobID)
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		q.log.Warn("reading cancellation requests failed", zap.String("job", jobID), zap.Error(err))
	}
	return err == nil
}

// Complete publishes the result (deduplicated by job id and attempt), waits for the stream
// to store it, and only then settles the job message: Ack when the job is finished, Term
// when it was refused or will never succeed, NakWithDelay for a retryable failure with
// attempts left. If settling fails the worker retries Complete: the result is republished
// under the same message id (dropped as a duplicate) and the settle is tried again.
func (q *WorkerQueue) Complete(ctx context.Context, jobID string, req api.CompleteRequest) (api.CompleteResponse, error) {
	l := q.lease(req.LeaseToken)
	if l == nil || l.env.JobID != jobID || l.attempt != req.Attempt {
		return api.CompleteResponse{}, refusal(http.StatusConflict, api.CodeLeaseConflict,
			"job %s attempt %d is not leased under this token on this worker; nothing was recorded", jobID, req.Attempt)
	}
	code := outcome.Code(req.Outcome)
	retryable := code.Retryable()
	if req.Retryable != nil {
		retryable = *req.Retryable
	}
	// A job asked to stop ends cancelled whatever its outcome, as the dispatcher records it.
	// The request is a read of the cancel bucket; it decides how the message is settled only
	// when the outcome would otherwise reject, retry or dead-letter the job (a cancelled
	// job's message is acknowledged). For the others (succeeded, failed: acknowledged
	// either way) it changes only the state answered here, so it is read while the result
	// is published instead of before: the result reaches the dispatcher a round trip
	// sooner.
	current := api.StateRunning
	state := nextState(current, req.Outcome, retryable, l.attempt, l.env.MaxAttempts)
	var cancelled <-chan bool
	if state == api.StateSucceeded || state == api.StateFailed {
		ch := make(chan bool, 1)
		go func() { ch <- q.cancelRequested(ctx, jobID) }()
		cancelled = ch
	} else if q.cancelRequested(ctx, jobID) {
		current = api.StateCancelRequested
		state = nextState(current, req.Outcome, retryable, l.attempt, l.env.MaxAttempts)
	}
	r := Result{JobID: jobID, Task: l.env.Task, Attempt: l.attempt, WorkerID: q.workerID, Outcome: req.Outcome,
		Output: req.Output, ErrorMessage: req.ErrorMessage, DurationMS: req.DurationMS, ModuleDigest: req.ModuleDigest,
		Retryable: req.Retryable, Fence: l.fence}
	var notBefore time.Time
	if state == api.StateQueued {
		// Chosen once per attempt: a retried Complete republishes the same result (the
		// stream drops the duplicate) and must settle with the same delay.
		q.mu.Lock()
		if l.notBefore.IsZero() {
			l.notBefore = time.Now().Add(q.retryDelay(l.attempt)).UTC()
		}
		notBefore = l.notBefore
		q.mu.Unlock()
		r.NotBefore = &notBefore
	}
	err := q.publishResult(ctx, r, req.AuditHead)
	if cancelled != nil && <-cancelled {
		state = api.StateCancelled // acknowledged below, as succeeded and failed are
	}
	if err != nil {
		return api.CompleteResponse{}, err
	}
	switch state {
	case api.StateQueued:
		err = l.msg.NakWithDelay(max(time.Until(notBefore), 0))
	case api.StateRejected:
		err = l.msg.TermWithReason("rejected by the worker")
	case api.StateDead:
		q.deadLetter(ctx, l.msg, l.msg.Data(), "retryable failures used up max_attempts: "+truncate(req.ErrorMessage, 300))
		err = l.msg.TermWithReason("attempts exhausted")
	default:
		err = l.msg.DoubleAck(ctx)
	}
	if err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		return api.CompleteResponse{}, fmt.Errorf("natsq: settle %s attempt %d after publishing its result: %w", jobID, l.attempt, err)
	}
	q.mu.Lock()
	delete(q.inflight, req.LeaseToken)
	q.mu.Unlock()
	resp := api.CompleteResponse{JobID: jobID, State: state, Attempt: l.attempt}
	if state == api.StateQueued {
		resp.NotBefore = &notBefore
	}
	return resp, nil
}

// retryDelay is the API's back-off (full jitter), as over SQLite.
func (q *WorkerQueue) retryDelay(attempt int) time.Duration {
	return api.RetryDelay(attempt, q.o.RetryBase, q.o.RetryCap)
}

// InFlight returns how many leased jobs are not settled yet.
func (q *WorkerQueue) InFlight() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.inflight)
}

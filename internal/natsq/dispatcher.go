package natsq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/client"
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

	mu    sync.Mutex
	ready map[string]bool // "pool" and "pool\x00task" whose stream / consumer exist
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
	d := &Dispatcher{nc: nc, js: js, o: o, log: o.Log, ready: map[string]bool{}}
	if d.jobs, err = js.KeyValue(ctx, JobsBucket); err != nil {
		return nil, fmt.Errorf("natsq: bucket %s: %w", JobsBucket, err)
	}
	if d.cancels, err = js.KeyValue(ctx, CancelBucket); err != nil {
		return nil, fmt.Errorf("natsq: bucket %s: %w", CancelBucket, err)
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
	if err := env.check(); err != nil {
		return api.Job{}, refusal(http.StatusBadRequest, api.CodeInvalidField, "job %q: %v", env.JobID, err)
	}
	if err := d.ensure(ctx, env.Pool, env.Task); err != nil {
		return api.Job{}, err
	}
	now := time.Now().UTC()
	rec := Record{Approval: env.Approval, Job: api.Job{ID: env.JobID, Task: env.Task, TaskVersion: env.TaskVersion,
		Pool: env.Pool, State: api.StateQueued, Input: env.Input, HasApproval: true, MaxAttempts: env.MaxAttempts,
		CreatedAt: now, UpdatedAt: now}}
	data, err := json.Marshal(rec)
	if err != nil {
		return api.Job{}, err
	}
	rev, err := d.jobs.Create(ctx, env.JobID, data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		existing, _, gerr := d.record(ctx, env.JobID)
		if gerr != nil {
			return api.Job{}, gerr
		}
		if existing.JobsSeq != 0 || existing.Job.State != api.StateQueued {
			return existing.Job, nil
		}
		// Recorded but perhaps never published (a crash in between): publish again; the
		// stream drops it if the first publish got through.
	} else if err != nil {
		return api.Job{}, fmt.Errorf("natsq: record job %s: %w", env.JobID, err)
	}
	body, err := json.Marshal(env)
	if err != nil {
		return api.Job{}, err
	}
	ack, err := d.js.Publish(ctx, JobSubject(env.Pool, env.Task), body, jetstream.WithMsgID(env.JobID))
	if err != nil {
		return api.Job{}, fmt.Errorf("natsq: publish job %s: %w", env.JobID, err)
	}
	if rev != 0 {
		// Remember the sequence so that Cancel can delete a job nobody has pulled yet. Best
		// effort: a result may already have changed the record.
		rec.JobsSeq = ack.Sequence
		if data, err := json.Marshal(rec); err == nil {
			_, _ = d.jobs.Update(ctx, env.JobID, data, rev)
		}
	}
	return rec.Job, nil
}

func (d *Dispatcher) record(ctx context.Context, id string) (Record, uint64, error) {
	e, err := d.jobs.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Record{}, 0, refusal(http.StatusNotFound, api.CodeNotFound, "no job %s", id)
	}
	if err != nil {
		return Record{}, 0, fmt.Errorf("natsq: read job %s: %w", id, err)
	}
	var r Record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
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
	for {
		r, rev, err := d.record(ctx, id)
		if err != nil {
			return r, err
		}
		ok, err := change(&r)
		if err != nil || !ok {
			return r, err
		}
		r.Job.UpdatedAt = time.Now().UTC()
		data, err := json.Marshal(r)
		if err != nil {
			return r, err
		}
		_, err = d.jobs.Update(ctx, id, data, rev)
		if err == nil {
			return r, nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
			return r, fmt.Errorf("natsq: update job %s: %w", id, err)
		}
		// Another replica wrote first: read again and decide again.
	}
}

// Cancel cancels a job: a job nobody has pulled is deleted from the stream and cancelled at
// once; a running job is marked cancel_requested and its worker stops at its next
// heartbeat (the cancel bucket). A finished job is returned unchanged.
func (d *Dispatcher) Cancel(ctx context.Context, id string) (api.Job, error) {
	r, err := d.update(ctx, id, func(r *Record) (bool, error) {
		if r.Job.State.Terminal() || r.Job.State == api.StateCancelRequested {
			return false, nil
		}
		r.Job.State = api.StateCancelRequested
		return true, nil
	})
	if err != nil || r.Job.State != api.StateCancelRequested {
		return r.Job, err
	}
	if _, err := d.cancels.Put(ctx, token(r.Job.Pool)+"."+id, []byte("1")); err != nil {
		return r.Job, fmt.Errorf("natsq: record the cancellation of %s: %w", id, err)
	}
	if r.JobsSeq != 0 && r.Job.Attempt == 0 {
		st, err := d.js.Stream(ctx, JobsStream(r.Job.Pool))
		if err == nil {
			err = st.DeleteMsg(ctx, r.JobsSeq)
		}
		if err == nil {
			r, err = d.update(ctx, id, func(r *Record) (bool, error) {
				if r.Job.State != api.StateCancelRequested {
					return false, nil
				}
				r.Job.State = api.StateCancelled
				now := time.Now().UTC()
				r.Job.FinishedAt = &now
				return true, nil
			})
			return r.Job, err
		}
	}
	return r.Job, nil
}

// Run consumes results until ctx ends, recording each at most once per job and attempt.
// Several handlers run at once (workers is their number; default 8).
func (d *Dispatcher) Run(ctx context.Context, workers int) error {
	if workers <= 0 {
		workers = 8
	}
	cons, err := d.js.CreateOrUpdateConsumer(ctx, ResultsStream, jetstream.ConsumerConfig{
		Durable: ResultsConsumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
		MaxAckPending: 10_000, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("natsq: create consumer %s on %s: %w", ResultsConsumer, ResultsStream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1000))
	if err != nil {
		return fmt.Errorf("natsq: consume %s: %w", ResultsStream, err)
	}
	go func() { <-ctx.Done(); it.Stop() }()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				msg, err := it.Next()
				if err != nil {
					return // stopped
				}
				d.handleResult(ctx, msg)
			}
		}()
	}
	wg.Wait()
	return nil
}

func (d *Dispatcher) handleResult(ctx context.Context, msg jetstream.Msg) {
	var r Result
	if err := json.Unmarshal(msg.Data(), &r); err != nil || r.JobID == "" || r.Attempt < 1 ||
		!slices.Contains(outcome.Codes, outcome.Code(r.Outcome)) {
		d.log.Warn("dropping an unreadable result", zap.String("subject", msg.Subject()), zap.NamedError("cause", err))
		_ = msg.TermWithReason("unreadable result")
		return
	}
	pool := poolOfResultSubject(msg.Subject())
	log := d.log.With(zap.String("job", r.JobID), zap.Int("attempt", r.Attempt), zap.String("outcome", r.Outcome))
	retryable := outcome.Code(r.Outcome).Retryable()
	if r.Retryable != nil {
		retryable = *r.Retryable
	}
	_, err := d.update(ctx, r.JobID, func(rec *Record) (bool, error) {
		switch {
		case rec.Job.Pool != pool:
			// The subject is what the worker's account may publish on: a worker of another
			// pool cannot complete this job.
			log.Warn("result published on another pool's subject; ignored", zap.String("subject_pool", pool))
			return false, nil
		case rec.completed(r.Attempt):
			return false, nil // a duplicate: this attempt is recorded
		}
		rec.Completions = append(rec.Completions, Completion{Attempt: r.Attempt, Outcome: r.Outcome, WorkerID: r.WorkerID, At: time.Now().UTC()})
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
		if j.State.Terminal() {
			now := time.Now().UTC()
			j.FinishedAt = &now
		}
		return true, nil
	})
	var ae *client.APIError
	switch {
	case errors.As(err, &ae):
		log.Warn("result for an unknown job; dropped", zap.Error(err))
		_ = msg.TermWithReason("unknown job")
	case err != nil:
		log.Warn("recording a result failed; it will be redelivered", zap.Error(err))
		_ = msg.NakWithDelay(time.Second)
	default:
		_ = msg.Ack()
	}
}

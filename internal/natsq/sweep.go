package natsq

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
)

// The sweep expires attempts that JetStream will never redeliver.
//
// Over JetStream an attempt whose worker went away is normally noticed through redelivery:
// the next claim of the message ends the old attempt (handleClaim). That fails when the
// message is settled while its job is still running, because JetStream settles a message by
// its stream sequence whichever delivery the ack came through: worker A, slow enough that
// the job was redelivered to worker B, acks its old delivery (its result is refused, its
// fence being stale) and so settles B's; if B then dies before reporting, nothing is left
// to redeliver. Any other settle without a recorded result (a worker that acked and
// crashed, an operator's purge) ends the same way.
//
// So every dispatcher keeps the running jobs and when their lease (granted at the claim,
// for AckWait) is over: from one read of the job bucket when it starts, then from its own
// writes, which it knows, and from a watch of the bucket's writes (headers only, as the
// change feed's): a job another replica wrote is read once, an AckWait after that write,
// to learn whether it is running. When a lease is over the sweep reads the job again and
// looks up the message of its delivery by stream sequence (the claim names it): a message
// still in the work-queue stream is one JetStream will redeliver (or one a worker still
// heartbeats), so it is left alone and looked at again an AckWait later. A message that is
// gone may belong to a worker that has just published its result and acked: the job is
// looked at again SweepGrace later, and only if the same attempt is still running with its
// message gone is it expired, as SQLite's reaper expires a lease
// (controlplane.ExpireState): a requested cancel ends cancelled, the last attempt ends dead
// with outcome timeout, any other is queued again at once and its envelope republished.
// The write is a compare-and-set on the record that also drops the lease, so of two
// replicas sweeping at once one expires the attempt, and a late result under the old
// fence is refused (handleResult finds no granted attempt). The envelope is published
// before that write under a message id naming the expired attempt: a crash in between
// leaves a message whose claim ends the attempt as a redelivery would, and two replicas
// publishing it store it once.

// leaseExpiredMessage is the dead job's error message, as over SQLite.
const leaseExpiredMessage = "lease expired: no completion or heartbeat from the worker in time"

type sweepResult int

const (
	sweepNotRunning sweepResult = iota // not running (or gone): nothing to expire
	sweepNotDue                        // its lease is not over yet
	sweepLive                          // JetStream still holds its message
	sweepGone                          // its message is gone; expired if still so after the grace
	sweepExpired                       // this sweep ended the attempt
	sweepSuperseded                    // the record changed while the sweep decided
)

func (r sweepResult) String() string {
	return [...]string{"not running", "not due", "live", "gone", "expired", "superseded"}[r]
}

// sweeper is one dispatcher's sweep: the running jobs it knows of and when to look at them.
type sweeper struct {
	d *Dispatcher

	mu      sync.Mutex
	due     map[string]sweepDue
	mine    map[string]uint64           // revisions this replica wrote that the watch has not shown yet
	gone    map[string]goneMark         // jobs seen running with no message, by id
	streams map[string]jetstream.Stream // by pool

	// beforeWrite runs between the republish and the write (tests interleave there).
	beforeWrite func()
}

type sweepDue struct {
	at  time.Time
	rev uint64 // the revision of the write the entry was made from
}

// goneMark is when the sweep first saw an attempt (named by its fence) running with its
// message gone.
type goneMark struct {
	fence string
	at    time.Time
}

func newSweeper(d *Dispatcher) *sweeper {
	return &sweeper{d: d, due: map[string]sweepDue{}, mine: map[string]uint64{}, gone: map[string]goneMark{},
		streams: map[string]jetstream.Stream{}}
}

// sweep runs the sweep every SweepInterval until ctx ends (not at all if it is negative).
func (d *Dispatcher) sweep(ctx context.Context) {
	if d.o.SweepInterval < 0 {
		return
	}
	sw := newSweeper(d)
	d.sweeper.Store(sw)
	defer d.sweeper.Store(nil)
	done := make(chan struct{})
	go func() { defer close(done); sw.watch(ctx) }()
	defer func() { <-done }()
	t := time.NewTicker(d.o.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			sw.tick(ctx, time.Now())
		}
	}
}

// sweepView is the part of a record the sweep needs; the rest is not decoded.
type sweepView struct {
	Job struct {
		State api.State `json:"state"`
	} `json:"job"`
	Lease *Lease `json:"lease"`
}

func expirable(s api.State) bool { return s == api.StateRunning || s == api.StateCancelRequested }

// noteWrite tells the running sweep (if any) of a record this replica has just written.
func (d *Dispatcher) noteWrite(id string, r Record, rev uint64) {
	if sw := d.sweeper.Load(); sw != nil {
		sw.note(id, r.Job.State, r.Lease, rev, true)
	}
}

// note schedules job id from its record at revision rev: at the end of its lease if it is
// running, else not at all. mine says this replica wrote it, so that the watch skips it.
func (sw *sweeper) note(id string, state api.State, l *Lease, rev uint64, mine bool) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if mine {
		if len(sw.mine) >= maxRecent {
			clear(sw.mine) // a revision forgotten here costs one read
		}
		sw.mine[id] = rev
	}
	if e, ok := sw.due[id]; ok && e.rev > rev {
		return // a later write is known
	}
	if expirable(state) && l != nil {
		sw.due[id] = sweepDue{at: l.At.Add(sw.d.o.AckWait), rev: rev}
		return
	}
	delete(sw.due, id)
	delete(sw.gone, id)
}

// watch follows the job bucket's writes, headers only, until ctx ends. A write this
// replica did not make is looked at (read) an AckWait later: before that, a lease it may
// have granted is not over. Each time the watch starts, the bucket is read once, so that
// the leases granted before (by any replica, one since stopped included) are known.
func (sw *sweeper) watch(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := sw.d.jobs.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.MetaOnly())
		if err == nil {
			done := make(chan struct{})
			go func() { defer close(done); _ = follow(ctx, w, sw.written) }()
			err = scanKV(ctx, sw.d.jobs, JobsBucket, ">", func(e jetstream.KeyValueEntry) {
				var v sweepView
				if json.Unmarshal(e.Value(), &v) == nil {
					sw.note(e.Key(), v.Job.State, v.Lease, e.Revision(), false)
				}
			})
			if err != nil && ctx.Err() == nil {
				_ = w.Stop() // read it all again with a new watch
			}
			<-done
		}
		if err != nil && ctx.Err() == nil {
			sw.d.log.Warn("reading the job bucket for the lease sweep failed; retrying", zap.Error(err))
		}
		select {
		case <-ctx.Done():
		case <-time.After(sw.d.o.SweepInterval):
		}
	}
}

// written takes one write from the watch.
func (sw *sweeper) written(e jetstream.KeyValueEntry) {
	id, rev := e.Key(), e.Revision()
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.mine[id] == rev {
		delete(sw.mine, id) // this replica's own write: noted already
		return
	}
	if d, ok := sw.due[id]; ok && d.rev >= rev {
		return
	}
	if e.Operation() != jetstream.KeyValuePut {
		delete(sw.due, id)
		delete(sw.gone, id)
		return
	}
	sw.due[id] = sweepDue{at: time.Now().Add(sw.d.o.AckWait), rev: rev}
}

// tick looks at every job whose time has come.
func (sw *sweeper) tick(ctx context.Context, now time.Time) {
	type item struct {
		id  string
		rev uint64
	}
	var items []item
	sw.mu.Lock()
	for id, e := range sw.due {
		if !e.at.After(now) {
			items = append(items, item{id, e.rev})
		}
	}
	sw.mu.Unlock()
	for _, it := range items {
		if ctx.Err() != nil {
			return
		}
		r, over, err := sw.job(ctx, it.id, now)
		next := time.Time{} // forget it: a later write brings it back
		switch {
		case err != nil:
			sw.d.log.Warn("sweeping a running job failed; trying again", zap.String("job", it.id), zap.Error(err))
			next = now.Add(sw.d.o.SweepInterval)
		case r == sweepLive:
			next = now.Add(sw.d.o.AckWait)
		case r == sweepGone:
			next = now.Add(sw.d.o.SweepGrace)
		case r == sweepNotDue:
			next = over
		case r == sweepSuperseded:
			next = now.Add(sw.d.o.SweepInterval)
		}
		sw.mu.Lock()
		if r != sweepGone {
			delete(sw.gone, it.id)
		}
		if e, ok := sw.due[it.id]; ok && e.rev == it.rev { // else a later write is known
			if next.IsZero() {
				delete(sw.due, it.id)
			} else {
				sw.due[it.id] = sweepDue{at: next, rev: it.rev}
			}
		}
		sw.mu.Unlock()
	}
}

// job expires job id's attempt if it is running past its lease and its message has been
// gone from the stream for SweepGrace. A job whose lease is not over yet is sweepNotDue
// until the time returned.
func (sw *sweeper) job(ctx context.Context, id string, now time.Time) (sweepResult, time.Time, error) {
	d := sw.d
	r, _, err := d.record(ctx, id)
	if client.IsCode(err, api.CodeNotFound) {
		return sweepNotRunning, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, err
	}
	l := r.Lease
	if !expirable(r.Job.State) || l == nil {
		return sweepNotRunning, time.Time{}, nil
	}
	if over := l.At.Add(d.o.AckWait); now.Before(over) {
		return sweepNotDue, over, nil
	}
	res, err := sw.expire(ctx, r, now)
	return res, time.Time{}, err
}

// expire is job for a running job r whose lease is over.
func (sw *sweeper) expire(ctx context.Context, r Record, now time.Time) (sweepResult, error) {
	d, id, l := sw.d, r.Job.ID, r.Lease
	live, err := sw.live(ctx, r)
	if err != nil || live {
		return sweepLive, err
	}
	sw.mu.Lock()
	mark, seen := sw.gone[id]
	if !seen || mark.fence != l.Fence {
		mark = goneMark{fence: l.Fence, at: now}
		sw.gone[id] = mark
	}
	sw.mu.Unlock()
	if now.Before(mark.at.Add(d.o.SweepGrace)) {
		return sweepGone, nil // a result published just before the ack may be on its way
	}
	requeue := controlplane.ExpireState(r.Job.State, r.Job.Attempt, r.Job.MaxAttempts) == api.StateQueued
	if requeue {
		if err := sw.republish(ctx, r); err != nil {
			return 0, err
		}
	}
	if sw.beforeWrite != nil {
		sw.beforeWrite()
	}
	var expired bool
	after, err := d.update(ctx, id, func(rec *Record) (bool, error) {
		expired = false
		cur, j := rec.Lease, &rec.Job
		if !expirable(j.State) || cur == nil || cur.Attempt != l.Attempt || cur.Fence != l.Fence {
			return false, nil // reported, cancelled, claimed again or expired by another replica
		}
		at := time.Now().UTC()
		switch controlplane.ExpireState(j.State, j.Attempt, j.MaxAttempts) {
		case api.StateCancelled:
			j.State, j.FinishedAt = api.StateCancelled, &at
		case api.StateDead:
			j.State, j.Outcome, j.ErrorMessage, j.FinishedAt = api.StateDead, string(outcome.Timeout), leaseExpiredMessage, &at
		default:
			if !requeue {
				return false, nil // decided on an older record; no message was published
			}
			j.State, j.NotBefore = api.StateQueued, nil // as over SQLite: due at once
		}
		// No attempt is granted now: a result under the old fence is refused.
		rec.Lease = nil
		expired = true
		return true, nil
	})
	if client.IsCode(err, api.CodeNotFound) {
		return sweepNotRunning, nil
	}
	if err != nil {
		return 0, err
	}
	if !expired {
		return sweepSuperseded, nil
	}
	d.log.Warn("expired a running job whose message JetStream no longer holds (settled without a recorded result)",
		zap.String("job", id), zap.Int("attempt", l.Attempt), zap.String("worker_id", l.WorkerID),
		zap.String("state", string(after.Job.State)))
	d.auditExpiry(ctx, id, l.Attempt, after.Job.State)
	return sweepExpired, nil
}

// live reports whether the work-queue stream still holds the message of the job's current
// delivery, which the claim named as "<stream sequence>/<delivery count>". A message that
// is there is one JetStream will redeliver or a worker still heartbeats. One that is gone
// was settled. A claim naming a sequence that is not this job's message (only a lying
// worker sends one) counts as gone: that worker can only lose its own attempt.
func (sw *sweeper) live(ctx context.Context, r Record) (bool, error) {
	seqText, _, _ := strings.Cut(r.Lease.Delivery, "/")
	seq, err := strconv.ParseUint(seqText, 10, 64)
	if err != nil || seq == 0 {
		return false, nil
	}
	st, err := sw.stream(ctx, r.Job.Pool)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	m, err := st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	msgID := m.Header.Get(jetstream.MsgIDHeader)
	return m.Subject == JobSubject(r.Job.Pool, r.Job.Task) && (msgID == r.Job.ID || strings.HasPrefix(msgID, r.Job.ID+"/")), nil
}

func (sw *sweeper) stream(ctx context.Context, pool string) (jetstream.Stream, error) {
	sw.mu.Lock()
	st := sw.streams[pool]
	sw.mu.Unlock()
	if st != nil {
		return st, nil
	}
	st, err := sw.d.js.Stream(ctx, JobsStream(pool))
	if err != nil {
		return nil, err
	}
	sw.mu.Lock()
	sw.streams[pool] = st
	sw.mu.Unlock()
	return st, nil
}

// republish publishes the job's envelope again, as Dispatch did (creating the pool's
// stream and the task's consumer if they were removed), under a message id that names the
// expired attempt: the stream drops a second publication of the same expiry (another
// replica's, or this one's retried), while Dispatch's id (the job id alone) would be
// dropped for the stream's whole duplicate window.
func (sw *sweeper) republish(ctx context.Context, r Record) error {
	if err := sw.d.ensure(ctx, r.Job.Pool, r.Job.Task); err != nil {
		return err
	}
	env := Envelope{JobID: r.Job.ID, Task: r.Job.Task, TaskVersion: r.Job.TaskVersion, Pool: r.Job.Pool,
		Input: r.Job.Input, Approval: r.Approval, MaxAttempts: r.Job.MaxAttempts, ClaimKey: r.ClaimKey}
	body, err := env.appendJSON(nil)
	if err != nil {
		return err
	}
	_, err = sw.d.js.Publish(ctx, JobSubject(env.Pool, env.Task), body,
		jetstream.WithMsgID(env.JobID+"/expired/"+strconv.Itoa(r.Job.Attempt)))
	return err
}

// auditExpiry records an expiry in the API server's audit stream, as SQLite's reaper does.
func (d *Dispatcher) auditExpiry(ctx context.Context, id string, attempt int, state api.State) {
	if d.audit == nil {
		return
	}
	detail, _ := marshal(map[string]any{"attempt": attempt, "state": state})
	e := api.AuditEntry{At: d.o.Now(), Actor: "server", Role: "server", Action: "lease.expire", JobID: id, Detail: detail}
	if err := d.audit.append(context.WithoutCancel(ctx), e); err != nil {
		d.log.Error("audit log append failed", zap.String("action", e.Action), zap.String("job", id), zap.Error(err))
	}
}

package natsq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
)

// newQueue is a registered WorkerQueue serving the test catalog.
func newQueue(t testing.TB, url string, ackWait time.Duration) *natsq.WorkerQueue {
	t.Helper()
	q, err := natsq.DialWorker(t.Context(), url, natsq.Options{Pool: pool, AckWait: ackWait})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	if _, err := q.Register(t.Context(), api.RegisterRequest{Name: "w", AgentVersion: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.PublishCatalog(t.Context(), catalog); err != nil {
		t.Fatal(err)
	}
	return q
}

// leaseOne polls q until it leases one job.
func leaseOne(t testing.TB, q *natsq.WorkerQueue, within time.Duration, what string) api.LeasedJob {
	t.Helper()
	var jobs []api.LeasedJob
	poll(t, within, what, func() bool {
		var err error
		jobs, err = q.Lease(t.Context(), 1, 100*time.Millisecond)
		return err == nil && len(jobs) == 1
	})
	return jobs[0]
}

// jobMessages is how many job messages the pool's work-queue stream holds.
func jobMessages(t testing.TB, js jetstream.JetStream) uint64 {
	t.Helper()
	st, err := js.Stream(t.Context(), natsq.JobsStream(pool))
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestStaleAckThenRedeliveredWorkerDies is the attack on JetStream's settle-by-sequence:
// worker A is slow, JetStream redelivers its job to worker B, A (whose own clock still
// counts its lease live) reports and acks its old delivery. The dispatcher refuses A's
// result (its fence is stale), but A's ack has settled the message, B's delivery with it.
// B then dies without a report. No redelivery will ever come: the job must still leave
// `running` once B's lease is over, and run again on another worker, once although two
// control-plane replicas sweep (with their default interval and grace).
func TestStaleAckThenRedeliveredWorkerDies(t *testing.T) {
	t.Parallel()
	const ackWait = time.Second
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	d, nc, _ := startDispatcher(t, url, natsq.Options{AckWait: ackWait})
	startDispatcher(t, url, natsq.Options{AckWait: ackWait})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	const id = "job-stale-ack"
	if _, err := d.Dispatch(t.Context(), s.envelope(t, id, `{"n":1}`, 3)); err != nil {
		t.Fatal(err)
	}
	qa := newQueue(t, url, ackWait)
	qb := newQueue(t, url, ackWait)
	a := leaseOne(t, qa, 20*time.Second, "worker A's delivery")
	b := leaseOne(t, qb, 20*time.Second, "the redelivery to worker B after AckWait")
	if b.Attempt != a.Attempt+1 {
		t.Fatalf("B's attempt %d, want %d", b.Attempt, a.Attempt+1)
	}
	qa.TouchLease(a.LeaseToken) // A's clock: the lease is live
	if _, err := qa.Complete(t.Context(), id, api.CompleteRequest{LeaseToken: a.LeaseToken, Attempt: a.Attempt,
		Outcome: "ok", Output: []byte(`{"n":1}`)}); err != nil {
		t.Fatalf("A's Complete(stale delivery) = %v; A cannot tell its delivery is stale", err)
	}
	// The premise: A's ack settled the message (B's delivery included) and its result was
	// not recorded.
	poll(t, 10*time.Second, "A's ack to remove the job message", func() bool { return jobMessages(t, js) == 0 })
	if j, err := d.Get(t.Context(), id); err != nil || j.State != api.StateRunning || j.Attempt != b.Attempt {
		t.Fatalf("after A's stale report: %s attempt %d, %v; want running attempt %d", j.State, j.Attempt, err, b.Attempt)
	}
	_ = qb.Close() // B dies without reporting
	qc := newQueue(t, url, ackWait)
	c := leaseOne(t, qc, 30*time.Second, "the job to run again after B's lease expired")
	if c.JobID != id || c.Attempt != b.Attempt+1 {
		t.Fatalf("worker C leased %s attempt %d, want %s attempt %d", c.JobID, c.Attempt, id, b.Attempt+1)
	}
	if _, err := qc.Complete(t.Context(), id, api.CompleteRequest{LeaseToken: c.LeaseToken, Attempt: c.Attempt,
		Outcome: "ok", Output: []byte(`{"n":1}`)}); err != nil {
		t.Fatalf("C's Complete = %v", err)
	}
	if j := waitState(t, d, id, 20*time.Second, api.StateSucceeded); j.Attempt != c.Attempt {
		t.Fatalf("succeeded at attempt %d, want %d", j.Attempt, c.Attempt)
	}
	if n := jobMessages(t, js); n != 0 {
		t.Fatalf("the stream still holds %d job messages: the job was requeued more than once", n)
	}
}

const (
	sweepAckWait = time.Second
	sweepGrace   = 100 * time.Millisecond
)

// staleAck is the state the attack leaves: worker A's stale report has settled the job's
// message, worker B holds the current attempt, and nothing will redeliver the job.
type staleAck struct {
	id           string
	url          string
	ds           []*natsq.Dispatcher // the replicas; none sweeps unless the test says so
	sweepers     []*natsq.Sweeper    // one per replica
	hook         func()              // runs between a sweep's republish and its write
	js           jetstream.JetStream
	logs         *observer.ObservedLogs
	qa, qb       *natsq.WorkerQueue
	a, b         api.LeasedJob
	leaseA       natsq.Lease
	leaseB       natsq.Lease
	refusedFirst int // refusals of attempt a.Attempt logged so far
}

// newStaleAck plays the attack on its own server with replicas control-plane replicas.
func newStaleAck(t *testing.T, replicas, maxAttempts int) *staleAck {
	t.Helper()
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	core, logs := observer.New(zap.WarnLevel)
	f := &staleAck{id: "job-interleaved", url: url, logs: logs}
	for range replicas {
		d, nc, _ := startDispatcher(t, url, natsq.Options{AckWait: sweepAckWait, SweepInterval: -1, SweepGrace: sweepGrace, Log: zap.New(core)})
		f.ds = append(f.ds, d)
		f.sweepers = append(f.sweepers, d.NewSweeper(func() {
			if f.hook != nil {
				f.hook()
			}
		}))
		if f.js == nil {
			var err error
			if f.js, err = jetstream.New(nc); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := f.ds[0].Dispatch(t.Context(), s.envelope(t, f.id, `{"n":1}`, maxAttempts)); err != nil {
		t.Fatal(err)
	}
	f.qa, f.qb = newQueue(t, url, sweepAckWait), newQueue(t, url, sweepAckWait)
	f.a = leaseOne(t, f.qa, 20*time.Second, "worker A's delivery")
	f.leaseA = f.lease(t)
	f.b = leaseOne(t, f.qb, 20*time.Second, "the redelivery to worker B")
	f.leaseB = f.lease(t)
	if f.b.Attempt != f.a.Attempt+1 || f.leaseB.WorkerID == f.leaseA.WorkerID {
		t.Fatalf("B holds attempt %d (worker %s), want %d on another worker than A's %s", f.b.Attempt, f.leaseB.WorkerID,
			f.a.Attempt+1, f.leaseA.WorkerID)
	}
	f.qa.TouchLease(f.a.LeaseToken)
	if _, err := f.qa.Complete(t.Context(), f.id, api.CompleteRequest{LeaseToken: f.a.LeaseToken, Attempt: f.a.Attempt,
		Outcome: "ok", Output: []byte(`{"n":1}`)}); err != nil {
		t.Fatalf("A's stale Complete = %v", err)
	}
	f.refusedFirst = f.waitRefused(t, f.a.Attempt, 1)
	poll(t, 10*time.Second, "A's ack to settle the job message", func() bool { return jobMessages(t, f.js) == 0 })
	return f
}

func (f *staleAck) lease(t *testing.T) natsq.Lease {
	t.Helper()
	r, err := f.ds[0].Record(t.Context(), f.id)
	if err != nil || r.Lease == nil {
		t.Fatalf("Record(%s) = lease %v, %v; want a granted lease", f.id, r.Lease, err)
	}
	return *r.Lease
}

// refused counts the dispatchers' refusals of a result for attempt.
func (f *staleAck) refused(attempt int) int {
	n := 0
	for _, e := range f.logs.FilterMessageSnippet("refused a result").All() {
		if m := e.ContextMap(); m["job"] == f.id && m["attempt"] == int64(attempt) {
			n++
		}
	}
	return n
}

// waitRefused waits until attempt's results have been refused at least n times.
func (f *staleAck) waitRefused(t *testing.T, attempt, n int) int {
	t.Helper()
	poll(t, 10*time.Second, fmt.Sprintf("%d refusals of attempt %d's result", n, attempt), func() bool { return f.refused(attempt) >= n })
	return f.refused(attempt)
}

// waitLeaseOver waits until B's lease is over.
func (f *staleAck) waitLeaseOver(t *testing.T) {
	t.Helper()
	over := f.leaseB.At.Add(sweepAckWait)
	poll(t, 10*time.Second, "B's lease to be over", func() bool { return time.Now().After(over) })
}

// reportB is B's report (B's clock counts its lease live).
func (f *staleAck) reportB(t *testing.T) {
	t.Helper()
	f.qb.TouchLease(f.b.LeaseToken)
	if _, err := f.qb.Complete(t.Context(), f.id, api.CompleteRequest{LeaseToken: f.b.LeaseToken, Attempt: f.b.Attempt,
		Outcome: "ok", Output: []byte(`{"b":true}`)}); err != nil {
		t.Fatalf("B's Complete = %v", err)
	}
}

// lateA publishes worker A's result again, as a late copy would arrive (a new message id:
// the stream would drop the same one as a duplicate), under A's real fence.
func (f *staleAck) lateA(t *testing.T) {
	t.Helper()
	data, err := json.Marshal(natsq.Result{JobID: f.id, Task: "echo", Attempt: f.leaseA.Attempt, WorkerID: f.leaseA.WorkerID,
		Outcome: "ok", Output: json.RawMessage(`{"late":true}`), Fence: f.leaseA.Fence})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.js.Publish(t.Context(), natsq.ResultSubject(pool), data, jetstream.WithMsgID(fmt.Sprintf("late-%s-%d", f.leaseA.Fence, f.refusedFirst))); err != nil {
		t.Fatal(err)
	}
	f.refusedFirst = f.waitRefused(t, f.a.Attempt, f.refusedFirst+1)
}

// sweep runs every replica's sweep on the job at once and returns what each found. A
// sweep that finds the job's message gone expires it only when it finds it gone again
// after the grace: then every replica sweeps again, at once, and that is returned.
func (f *staleAck) sweep(t *testing.T) []string {
	t.Helper()
	round := func() []string {
		out := make([]string, len(f.sweepers))
		errs := make([]error, len(f.sweepers))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, sw := range f.sweepers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				out[i], errs[i] = sw.Job(context.Background(), f.id)
			}()
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("replica %d's sweep = %v", i, err)
			}
		}
		return out
	}
	first := round()
	if slices.ContainsFunc(first, func(r string) bool { return r != "gone" }) {
		return first
	}
	later := time.Now().Add(sweepGrace)
	poll(t, 10*time.Second, "the grace to be over", func() bool { return time.Now().After(later) })
	return round()
}

type bReport int

const (
	bNever       bReport = iota // B dies without reporting
	bBeforeSweep                // B's result is recorded before the sweep reads the job
	bDuringSweep                // ... after the sweep republished and before it writes
	bAfterSweep                 // B reports after the sweep expired its attempt
)

func (b bReport) String() string {
	return [...]string{"never", "before_sweep", "during_sweep", "after_sweep"}[b]
}

// TestSweepInterleavings generates the interleavings of the stale-ack attack with the
// sweep: worker A acks before its job is redelivered or after; when worker B reports
// (never, just before the sweep, between the sweep's republish and its write, just after);
// one or two replicas sweeping at once; and worker A's result arriving again after the
// sweep. Whatever the order: the attempt is expired
// at most once (one republished message), a result under an expired or stale fence is
// refused, a result recorded before the sweep's write stands, and the job ends succeeded
// (on B's attempt if its result was recorded, else on a third worker's).
func TestSweepInterleavings(t *testing.T) {
	t.Parallel()
	for _, replicas := range []int{1, 2} {
		for _, b := range []bReport{bNever, bBeforeSweep, bDuringSweep, bAfterSweep} {
			t.Run(fmt.Sprintf("A_acks_after_redelivery/B_%s/replicas_%d", b, replicas), func(t *testing.T) {
				t.Parallel()
				testInterleaving(t, b, replicas)
			})
		}
		t.Run(fmt.Sprintf("A_acks_before_redelivery/replicas_%d", replicas), func(t *testing.T) {
			t.Parallel()
			testAckInTime(t, replicas)
		})
	}
}

// testAckInTime: A reports within its lease, so nothing is redelivered; sweeping after the
// lease is over finds the job finished and changes nothing.
func testAckInTime(t *testing.T, replicas int) {
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	var sweepers []*natsq.Sweeper
	var d *natsq.Dispatcher
	for range replicas {
		d, _, _ = startDispatcher(t, url, natsq.Options{AckWait: sweepAckWait, SweepInterval: -1, SweepGrace: sweepGrace})
		sweepers = append(sweepers, d.NewSweeper(nil))
	}
	const id = "job-in-time"
	if _, err := d.Dispatch(t.Context(), s.envelope(t, id, `{"n":1}`, 3)); err != nil {
		t.Fatal(err)
	}
	q := newQueue(t, url, sweepAckWait)
	a := leaseOne(t, q, 20*time.Second, "worker A's delivery")
	rec, err := d.Record(t.Context(), id)
	if err != nil || rec.Lease == nil {
		t.Fatalf("Record = %v, %v", rec.Lease, err)
	}
	if _, err := q.Complete(t.Context(), id, api.CompleteRequest{LeaseToken: a.LeaseToken, Attempt: a.Attempt,
		Outcome: "ok", Output: []byte(`{"a":true}`)}); err != nil {
		t.Fatalf("A's Complete = %v", err)
	}
	waitState(t, d, id, 10*time.Second, api.StateSucceeded)
	over := rec.Lease.At.Add(sweepAckWait + sweepGrace)
	poll(t, 10*time.Second, "A's lease and the grace to be over", func() bool { return time.Now().After(over) })
	for i, sw := range sweepers {
		if found, err := sw.Job(t.Context(), id); err != nil || found != "not running" {
			t.Fatalf("replica %d's sweep = %q, %v; want not running", i, found, err)
		}
	}
	j, err := d.Get(t.Context(), id)
	if err != nil || j.State != api.StateSucceeded || j.Attempt != a.Attempt || string(j.Output) != `{"a":true}` {
		t.Fatalf("after the sweep: %s attempt %d output %s, %v; want A's result", j.State, j.Attempt, j.Output, err)
	}
}

func testInterleaving(t *testing.T, b bReport, replicas int) {
	f := newStaleAck(t, replicas, 3)
	d := f.ds[0]
	f.waitLeaseOver(t)
	if b == bBeforeSweep {
		f.reportB(t)
		waitState(t, d, f.id, 10*time.Second, api.StateSucceeded)
	}
	var once sync.Once
	if b == bDuringSweep {
		f.hook = func() {
			once.Do(func() {
				f.reportB(t)
				waitState(t, d, f.id, 10*time.Second, api.StateSucceeded)
			})
		}
	}
	found := f.sweep(t)
	bRecorded := b == bBeforeSweep || b == bDuringSweep
	expired := 0
	for _, r := range found {
		switch r {
		case "expired":
			expired++
		case "not running", "superseded":
		default:
			t.Fatalf("a sweep found %q, want expired, not running or superseded (all: %q)", r, found)
		}
	}
	if want := map[bool]int{false: 1, true: 0}[bRecorded]; expired != want {
		t.Fatalf("sweeps found %q: %d expiries, want %d", found, expired, want)
	}
	if b == bAfterSweep {
		f.reportB(t)
		f.waitRefused(t, f.b.Attempt, 1)
	}
	f.lateA(t)
	rec, err := d.Record(t.Context(), f.id)
	if err != nil {
		t.Fatal(err)
	}
	if bRecorded {
		if rec.Job.State != api.StateSucceeded || rec.Job.Attempt != f.b.Attempt || string(rec.Job.Output) != `{"b":true}` {
			t.Fatalf("after the sweep: %s attempt %d output %s; want B's result (succeeded, attempt %d) to stand",
				rec.Job.State, rec.Job.Attempt, rec.Job.Output, f.b.Attempt)
		}
	} else {
		if rec.Job.State != api.StateQueued || rec.Job.Attempt != f.b.Attempt || rec.Lease != nil || rec.Job.NotBefore != nil {
			t.Fatalf("after the sweep: %s attempt %d lease %v not_before %v; want queued at attempt %d, no lease, due at once",
				rec.Job.State, rec.Job.Attempt, rec.Lease, rec.Job.NotBefore, f.b.Attempt)
		}
		for _, c := range rec.Completions {
			t.Fatalf("a result was recorded for the expired or stale attempt %d (%s by %s)", c.Attempt, c.Outcome, c.WorkerID)
		}
	}
	// Exactly one message is there to run again (none if B's result was recorded first).
	if n, want := jobMessages(t, f.js), map[bool]uint64{false: 1, true: 0}[b == bBeforeSweep]; n != want {
		t.Fatalf("the stream holds %d job messages after the sweep, want %d", n, want)
	}
	qc := newQueue(t, f.url, sweepAckWait)
	if bRecorded {
		// A message published during the sweep is terminated at its claim; nothing runs.
		poll(t, 10*time.Second, "the stream to be empty", func() bool {
			jobs, err := qc.Lease(t.Context(), 1, 50*time.Millisecond)
			if err != nil || len(jobs) != 0 {
				t.Fatalf("worker C leased %v, %v; want nothing, the job is finished", jobs, err)
			}
			return jobMessages(t, f.js) == 0
		})
		if j, err := d.Get(t.Context(), f.id); err != nil || j.State != api.StateSucceeded || j.Attempt != f.b.Attempt {
			t.Fatalf("finally %s attempt %d, %v; want succeeded at B's attempt %d", j.State, j.Attempt, err, f.b.Attempt)
		}
		return
	}
	c := leaseOne(t, qc, 10*time.Second, "the job to run again")
	if c.Attempt != f.b.Attempt+1 {
		t.Fatalf("worker C leased attempt %d, want %d", c.Attempt, f.b.Attempt+1)
	}
	f.lateA(t) // still refused with another attempt granted
	if _, err := qc.Complete(t.Context(), f.id, api.CompleteRequest{LeaseToken: c.LeaseToken, Attempt: c.Attempt,
		Outcome: "ok", Output: []byte(`{"c":true}`)}); err != nil {
		t.Fatalf("C's Complete = %v", err)
	}
	if j := waitState(t, d, f.id, 10*time.Second, api.StateSucceeded); j.Attempt != c.Attempt || string(j.Output) != `{"c":true}` {
		t.Fatalf("succeeded at attempt %d with %s, want attempt %d with C's output", j.Attempt, j.Output, c.Attempt)
	}
}

// TestSweepEndsAttemptsAsSQLite: the sweep ends an attempt as SQLite's reaper does when
// no attempt is left (dead, outcome timeout) or a cancel was requested (cancelled), with
// no message republished; and it leaves alone a job whose worker still heartbeats it past
// the lease granted at its claim (JetStream still holds its message), and a job reported in
// time.
func TestSweepEndsAttemptsAsSQLite(t *testing.T) {
	t.Parallel()
	t.Run("last_attempt", func(t *testing.T) {
		t.Parallel()
		f := newStaleAck(t, 1, 2) // B holds attempt 2 of 2
		f.waitLeaseOver(t)
		if found := f.sweep(t); found[0] != "expired" {
			t.Fatalf("sweep found %q, want expired", found[0])
		}
		j, err := f.ds[0].Get(t.Context(), f.id)
		if err != nil || j.State != api.StateDead || j.Outcome != string(outcome.Timeout) || j.FinishedAt == nil ||
			!strings.HasPrefix(j.ErrorMessage, "lease expired") {
			t.Fatalf("after the sweep: %s outcome %q %q finished %v, %v; want dead, timeout, lease expired", j.State, j.Outcome,
				j.ErrorMessage, j.FinishedAt, err)
		}
		if n := jobMessages(t, f.js); n != 0 {
			t.Fatalf("the stream holds %d job messages, want none", n)
		}
		f.reportB(t)
		f.waitRefused(t, f.b.Attempt, 1)
		if j, err := f.ds[0].Get(t.Context(), f.id); err != nil || j.State != api.StateDead {
			t.Fatalf("after B's late result: %s, %v; want dead", j.State, err)
		}
	})
	t.Run("cancel_requested", func(t *testing.T) {
		t.Parallel()
		f := newStaleAck(t, 1, 3)
		if j, err := f.ds[0].Cancel(t.Context(), f.id); err != nil || j.State != api.StateCancelRequested {
			t.Fatalf("Cancel = %s, %v; want cancel_requested", j.State, err)
		}
		f.waitLeaseOver(t)
		if found := f.sweep(t); found[0] != "expired" {
			t.Fatalf("sweep found %q, want expired", found[0])
		}
		if j, err := f.ds[0].Get(t.Context(), f.id); err != nil || j.State != api.StateCancelled || j.FinishedAt == nil {
			t.Fatalf("after the sweep: %s finished %v, %v; want cancelled", j.State, j.FinishedAt, err)
		}
		if n := jobMessages(t, f.js); n != 0 {
			t.Fatalf("the stream holds %d job messages, want none", n)
		}
	})
	t.Run("heartbeated_past_its_lease", func(t *testing.T) {
		t.Parallel()
		url := startNATS(t).ClientURL()
		s := newSigner(t)
		d, _, _ := startDispatcher(t, url, natsq.Options{AckWait: sweepAckWait, SweepInterval: -1, SweepGrace: sweepGrace})
		const id = "job-long"
		if _, err := d.Dispatch(t.Context(), s.envelope(t, id, `{"n":1}`, 3)); err != nil {
			t.Fatal(err)
		}
		q := newQueue(t, url, sweepAckWait)
		l := leaseOne(t, q, 20*time.Second, "the delivery")
		rec, err := d.Record(t.Context(), id)
		if err != nil || rec.Lease == nil {
			t.Fatalf("Record = %v, %v", rec.Lease, err)
		}
		over := rec.Lease.At.Add(2 * (sweepAckWait + sweepGrace))
		poll(t, 20*time.Second, "twice the lease and grace, heartbeating", func() bool {
			if _, err := q.Heartbeat(t.Context(), l.LeaseToken); err != nil {
				t.Fatalf("Heartbeat = %v", err)
			}
			return time.Now().After(over)
		})
		sw := d.NewSweeper(nil)
		if found, err := sw.Job(t.Context(), id); err != nil || found != "live" {
			t.Fatalf("sweep of a heartbeated job = %q, %v; want live", found, err)
		}
		if _, err := q.Complete(t.Context(), id, api.CompleteRequest{LeaseToken: l.LeaseToken, Attempt: l.Attempt,
			Outcome: "ok", Output: []byte(`{"n":1}`)}); err != nil {
			t.Fatalf("Complete = %v", err)
		}
		if j := waitState(t, d, id, 10*time.Second, api.StateSucceeded); j.Attempt != l.Attempt {
			t.Fatalf("succeeded at attempt %d, want %d", j.Attempt, l.Attempt)
		}
		if found, err := sw.Job(t.Context(), id); err != nil || found != "not running" {
			t.Fatalf("sweep of a finished job = %q, %v; want not running", found, err)
		}
	})
}

// TestSweepWaitsForAResultInFlight: a worker that heartbeated its job past the lease
// granted at the claim publishes its result and acks while no replica consumes results
// yet. The sweep then finds the job running with its message gone, and must not expire it
// at once: once the result is recorded the job ends on that attempt and is not run again.
func TestSweepWaitsForAResultInFlight(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	o := natsq.Options{AckWait: sweepAckWait, SweepInterval: -1, SweepGrace: sweepGrace}
	d, dnc, stop := startDispatcher(t, url, o)
	const id = "job-in-flight"
	if _, err := d.Dispatch(t.Context(), s.envelope(t, id, `{"n":1}`, 3)); err != nil {
		t.Fatal(err)
	}
	q := newQueue(t, url, sweepAckWait)
	l := leaseOne(t, q, 20*time.Second, "the delivery")
	rec, err := d.Record(t.Context(), id)
	if err != nil || rec.Lease == nil {
		t.Fatalf("Record = %v, %v", rec.Lease, err)
	}
	over := rec.Lease.At.Add(sweepAckWait + sweepGrace)
	poll(t, 20*time.Second, "the lease to be over, heartbeating", func() bool {
		if _, err := q.Heartbeat(t.Context(), l.LeaseToken); err != nil {
			t.Fatalf("Heartbeat = %v", err)
		}
		return time.Now().After(over)
	})
	stop() // no replica records results now
	// The stopped replica's pull must be gone before the result is published, or the
	// server could hand the result to it and wait the results consumer's AckWait for an ack.
	djs, err := jetstream.New(dnc)
	if err != nil {
		t.Fatal(err)
	}
	poll(t, 40*time.Second, "the stopped replica's pull request to go", func() bool {
		c, err := djs.Consumer(t.Context(), natsq.ResultsStream, natsq.ResultsConsumer)
		if err != nil {
			return false
		}
		info, err := c.Info(t.Context())
		return err == nil && info.NumWaiting == 0
	})
	if _, err := q.Complete(t.Context(), id, api.CompleteRequest{LeaseToken: l.LeaseToken, Attempt: l.Attempt,
		Outcome: "ok", Output: []byte(`{"n":1}`)}); err != nil {
		t.Fatalf("Complete = %v", err)
	}
	sw := d.NewSweeper(nil)
	if found, err := sw.Job(t.Context(), id); err != nil || found != "gone" {
		t.Fatalf("sweep with the result in flight = %q, %v; want gone (not expired yet)", found, err)
	}
	startDispatcher(t, url, o) // a replica records the result
	if j := waitState(t, d, id, 10*time.Second, api.StateSucceeded); j.Attempt != l.Attempt {
		t.Fatalf("succeeded at attempt %d, want %d", j.Attempt, l.Attempt)
	}
	later := time.Now().Add(sweepGrace)
	poll(t, 10*time.Second, "the grace to be over", func() bool { return time.Now().After(later) })
	if found, err := sw.Job(t.Context(), id); err != nil || found != "not running" {
		t.Fatalf("sweep after the result = %q, %v; want not running", found, err)
	}
}

// TestSweepByAReplicaStartedLater: the replica that granted B's lease does not sweep (as if
// it had stopped); a replica started after the attack, with its own sweep running, finds the
// job in its first read of the bucket and expires it once.
func TestSweepByAReplicaStartedLater(t *testing.T) {
	t.Parallel()
	f := newStaleAck(t, 1, 3)
	d, _, _ := startDispatcher(t, f.url, natsq.Options{AckWait: sweepAckWait, SweepGrace: sweepGrace, SweepInterval: 20 * time.Millisecond})
	j := waitState(t, d, f.id, 10*time.Second, api.StateQueued)
	if j.Attempt != f.b.Attempt {
		t.Fatalf("queued at attempt %d, want %d", j.Attempt, f.b.Attempt)
	}
	if n := jobMessages(t, f.js); n != 1 {
		t.Fatalf("the stream holds %d job messages, want the one republished", n)
	}
	c := leaseOne(t, newQueue(t, f.url, sweepAckWait), 10*time.Second, "the job to run again")
	if c.Attempt != f.b.Attempt+1 {
		t.Fatalf("leased attempt %d, want %d", c.Attempt, f.b.Attempt+1)
	}
}

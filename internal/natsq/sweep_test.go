package natsq_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
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
// `running` once B's lease is over, and run again on another worker.
func TestStaleAckThenRedeliveredWorkerDies(t *testing.T) {
	t.Parallel()
	const ackWait = time.Second
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	d, nc, _ := startDispatcher(t, url, natsq.Options{AckWait: ackWait})
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
	// B's late report (its fence is the superseded one) is refused; C's is recorded.
	if _, err := qc.Complete(t.Context(), id, api.CompleteRequest{LeaseToken: c.LeaseToken, Attempt: c.Attempt,
		Outcome: "ok", Output: []byte(`{"n":1}`)}); err != nil {
		t.Fatalf("C's Complete = %v", err)
	}
	if j := waitState(t, d, id, 20*time.Second, api.StateSucceeded); j.Attempt != c.Attempt {
		t.Fatalf("succeeded at attempt %d, want %d", j.Attempt, c.Attempt)
	}
}

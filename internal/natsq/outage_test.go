package natsq_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestStoppedReplicaHandsBackResults: a replica's results iterator pulls ahead of its
// handlers, so when the replica stops it holds results it has not recorded. They must go
// back to the shared consumer at once, for another replica to record; kept, they would wait
// out the consumer's AckWait (30 s, longer than the wait below) while clients wait on
// finished jobs.
func TestStoppedReplicaHandsBackResults(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	nc := dial(t, url)
	a, err := natsq.NewDispatcher(context.Background(), nc, natsq.Options{})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	// Results for jobs that do not exist: each costs a handler one bucket read and is then
	// dropped, and there are many more than the handlers settle between two polls below.
	const n = 10_000
	for i := range n {
		body, _ := json.Marshal(natsq.Result{JobID: fmt.Sprintf("gone-%d", i), Task: "echo", Attempt: 1,
			WorkerID: "w", Outcome: "success", Fence: "f"})
		if _, err := js.PublishAsync(natsq.ResultSubject(pool), body); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishing the results did not complete")
	}
	consumer := func() *jetstream.ConsumerInfo {
		c, err := js.Consumer(context.Background(), natsq.ResultsStream, natsq.ResultsConsumer)
		if err != nil {
			return nil
		}
		info, err := c.Info(context.Background())
		if err != nil {
			return nil
		}
		return info
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, 0) }()
	// Stopped as soon as it has pulled results: the ack floor would be a late signal, since
	// handlers settle out of order and the first result may be among the last settled.
	poll(t, 20*time.Second, "replica A to pull results", func() bool {
		info := consumer()
		return info != nil && info.Delivered.Stream > 0
	})
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run() = %v", err)
	}
	info := consumer()
	if info == nil {
		t.Fatal("no results consumer")
	}
	if info.AckFloor.Stream >= n {
		t.Fatalf("replica A settled all %d results before it stopped: the test needs more", n)
	}
	// Replica B takes over; every result must be settled well inside the AckWait.
	startDispatcher(t, url, natsq.Options{})
	poll(t, 25*time.Second, "replica B to settle every result", func() bool {
		info := consumer()
		return info != nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream >= n
	})
}

// TestStoppedReplicaAnswersItsClaims: claims a replica has received when it stops are
// answered, not dropped; a dropped claim leaves its worker waiting out ClaimTimeout before it
// tries another replica. Every claim here must end in an answer or, once the replica's
// subscription is gone, at once in "no responders"; none may time out.
func TestStoppedReplicaAnswersItsClaims(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	a, err := natsq.NewDispatcher(context.Background(), dial(t, url), natsq.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, 0) }()
	claimant := dial(t, url)
	// The replica is up when a claim gets an answer (for a job that does not exist).
	claim := func(i int) (*nats.Msg, error) {
		body, _ := json.Marshal(natsq.ClaimRequest{JobID: fmt.Sprintf("gone-%d", i), ClaimKey: "k", WorkerID: "w", Delivery: "1/1"})
		return claimant.Request(natsq.ClaimSubject(pool), body, 60*time.Second)
	}
	poll(t, 20*time.Second, "replica A to answer a claim", func() bool { _, err := claim(-1); return err == nil })
	// Many claims at once, and the replica stops after the first answer.
	const n = 3000 // more than the claims channel held before it was enlarged
	var answered, noResponders, answeredBeforeStop atomic.Int64
	var stopOnce sync.Once
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := claim(i)
			switch {
			case err == nil:
				if ctx.Err() == nil {
					answeredBeforeStop.Add(1)
				}
				answered.Add(1)
				stopOnce.Do(stop)
			case errors.Is(err, nats.ErrNoResponders):
				noResponders.Add(1)
			default:
				errs <- err
			}
		}()
	}
	wg.Wait()
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run() = %v", err)
	}
	close(errs)
	for err := range errs {
		t.Fatalf("a claim sent while the replica stopped = %v, want an answer or no responders", err)
	}
	if answeredBeforeStop.Load() >= n {
		t.Fatalf("all %d claims were answered before the replica stopped: the test needs more", n)
	}
	t.Logf("%d answered (%d before the stop), %d found no responders", answered.Load(), answeredBeforeStop.Load(), noResponders.Load())
}

// TestControlPlaneOutageKeepsQueuedJobs: while no control plane answers claims (down, or hung
// here: a subscriber that never replies), a worker that pulled a job keeps asking and keeps
// the delivery. Handing it back after each failed claim spent one of the consumer's
// MaxDeliver deliveries per try; after about 20 the stream kept the message and never
// delivered it again, and the job stayed queued for good once the control plane was back.
func TestControlPlaneOutageKeepsQueuedJobs(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	// The worker starts with a control plane up (it publishes its catalog), which then goes.
	d, _, stopRun := startDispatcher(t, url, natsq.Options{})
	c := newCounter()
	startWorker(t, url, s, c.echo(), natsq.Options{ClaimTimeout: 5 * time.Millisecond, RetryBase: 10 * time.Millisecond}, 1)
	if _, err := d.Dispatch(t.Context(), s.envelope(t, "before", `{"n":1}`, 3)); err != nil {
		t.Fatal(err)
	}
	waitState(t, d, "before", 20*time.Second, api.StateSucceeded) // registered and pulling
	stopRun()
	var claims atomic.Int64
	hung, err := dial(t, url).Subscribe(natsq.ClaimSubject(pool), func(*nats.Msg) { claims.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Dispatch(t.Context(), s.envelope(t, "outage-1", `{"n":1}`, 3)); err != nil {
		t.Fatal(err)
	}
	// Three tries per delivery used to end in a hand-back, and MaxDeliver is the limit + 1:
	// past that many the old worker never claimed again.
	const tries = 3*(api.MaxAttemptsLimit+1) + 30
	poll(t, 60*time.Second, fmt.Sprintf("%d claims of the job", tries), func() bool { return claims.Load() >= tries })
	if err := hung.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	d2, _, _ := startDispatcher(t, url, natsq.Options{})
	j := waitState(t, d2, "outage-1", 20*time.Second, api.StateSucceeded)
	if j.Attempt != 1 || c.get("outage-1") != 1 {
		t.Fatalf("outage-1 = attempt %d, %d runs; want one attempt, run once", j.Attempt, c.get("outage-1"))
	}
}

// TestHandBacksDoNotStrandAJob: deliveries handed back unclaimed are not attempts, however
// many there are. A consumer bounded by MaxDeliver kept the message past its last delivery
// and never delivered it again, so the job stayed queued for good. The consumer is first
// made as an older control plane made it (MaxDeliver 101): dispatching updates it.
func TestHandBacksDoNotStrandAJob(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	nc := dial(t, url)
	js, _ := jetstream.New(nc)
	ctx := t.Context()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: natsq.JobsStream(pool), Subjects: []string{"castellan.jobs." + pool + ".>"},
		Retention: jetstream.WorkQueuePolicy, Duplicates: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, natsq.JobsStream(pool), jetstream.ConsumerConfig{Durable: "echo",
		FilterSubject: natsq.JobSubject(pool, "echo"), AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
		MaxDeliver: api.MaxAttemptsLimit + 1, MaxAckPending: 100_000, MaxWaiting: 4096}); err != nil {
		t.Fatal(err)
	}
	d, _, _ := startDispatcher(t, url, natsq.Options{})
	if _, err := d.Dispatch(ctx, s.envelope(t, "handed-back", `{"n":1}`, 3)); err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(ctx, natsq.JobsStream(pool), "echo")
	if err != nil {
		t.Fatal(err)
	}
	// A worker that pulls the job and hands it back at once, many times over.
	const handBacks = 2 * (api.MaxAttemptsLimit + 1)
	for i := 1; i <= handBacks; i++ {
		b, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var got jetstream.Msg
		for m := range b.Messages() {
			got = m
		}
		if got == nil {
			t.Fatalf("delivery %d of the handed-back job never came (%v)", i, b.Error())
		}
		if md, err := got.Metadata(); err != nil || md.NumDelivered != uint64(i) {
			t.Fatalf("delivery %d: metadata %+v, %v", i, md, err)
		}
		if err := got.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	c := newCounter()
	startWorker(t, url, s, c.echo(), natsq.Options{}, 1)
	j := waitState(t, d, "handed-back", 20*time.Second, api.StateSucceeded)
	if j.Attempt != 1 || c.get("handed-back") != 1 {
		t.Fatalf("handed-back = attempt %d, %d runs; want one attempt, run once", j.Attempt, c.get("handed-back"))
	}
}

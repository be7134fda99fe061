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
)

// TestStoppedReplicaHandsBackResults: a replica's results iterator pulls ahead of its
// handlers, so when the replica stops it holds results it has not recorded. They must go
// back to the shared consumer at once, for another replica to record; kept, they would wait
// out the consumer's AckWait (30 s) while clients wait on finished jobs.
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
	const n = 20_000
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
	poll(t, 20*time.Second, "replica A to settle its first result", func() bool {
		info := consumer()
		return info != nil && info.AckFloor.Stream > 0
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
	poll(t, 15*time.Second, "replica B to settle every result", func() bool {
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
		return claimant.Request(natsq.ClaimSubject(pool), body, 20*time.Second)
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

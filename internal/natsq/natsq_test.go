package natsq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

// TestHappyPathAndReplicaRestart: a real worker runs an approved job; the dispatcher that
// published it goes away before the result arrives, and another replica records the result
// and answers reads.
func TestHappyPathAndReplicaRestart(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	a, _, stopA := startDispatcher(t, url, natsq.Options{})
	b, _, _ := startDispatcher(t, url, natsq.Options{})
	in := `{"n":42}`
	if _, err := a.Dispatch(t.Context(), s.envelope(t, "job-happy", in, 2)); err != nil {
		t.Fatalf("Dispatch() = %v", err)
	}
	stopA() // replica A stops consuming results; B carries on
	c := newCounter()
	startWorker(t, url, s, c.echo(), natsq.Options{}, 2)
	j := waitState(t, b, "job-happy", 20*time.Second, api.StateSucceeded)
	if string(j.Output) != in || j.Attempt != 1 || j.ModuleDigest != "sha256:test" {
		t.Fatalf("Get(job-happy) = output %s attempt %d digest %q, want %s, 1, sha256:test", j.Output, j.Attempt, j.ModuleDigest, in)
	}
	if ja, err := a.Get(t.Context(), "job-happy"); err != nil || ja.State != api.StateSucceeded {
		t.Fatalf("replica A Get(job-happy) = %s, %v, want succeeded", ja.State, err)
	}
	if n := c.get("job-happy"); n != 1 {
		t.Fatalf("runs of job-happy = %d, want 1", n)
	}
	// Dispatching the same job again changes nothing and runs nothing.
	if j, err := b.Dispatch(t.Context(), s.envelope(t, "job-happy", in, 2)); err != nil || j.State != api.StateSucceeded {
		t.Fatalf("Dispatch(again) = %s, %v, want the recorded succeeded job", j.State, err)
	}
}

// TestOutcomes: how each result settles the message and the job.
func TestOutcomes(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	d, _, _ := startDispatcher(t, url, natsq.Options{})
	var firstTry sync.Map
	r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		switch {
		case strings.HasPrefix(id, "flaky"):
			if _, again := firstTry.LoadOrStore(id, true); !again {
				return runtime.Result{Err: outcome.New(outcome.Internal, "transient")}
			}
		case strings.HasPrefix(id, "broken"):
			return runtime.Result{Err: outcome.New(outcome.Internal, "always")}
		case strings.HasPrefix(id, "bug"):
			return runtime.Result{Err: outcome.New(outcome.TaskError, "task says no")}
		}
		return runtime.Result{Output: in}
	})
	startWorker(t, url, s, r, natsq.Options{RetryBase: 10 * time.Millisecond, RetryCap: 50 * time.Millisecond}, 4)
	forged := s.envelope(t, "forged", `{"n":1}`, 1)
	forged.Input = json.RawMessage(`{"n":2}`) // the approval no longer matches
	tests := []struct {
		env         natsq.Envelope
		state       api.State
		completions int
	}{
		{s.envelope(t, "flaky", `{"n":1}`, 3), api.StateSucceeded, 2},
		{s.envelope(t, "broken", `{"n":1}`, 2), api.StateDead, 2},
		{s.envelope(t, "bug", `{"n":1}`, 3), api.StateFailed, 1},
		{forged, api.StateRejected, 1},
	}
	for _, tt := range tests {
		if _, err := d.Dispatch(t.Context(), tt.env); err != nil {
			t.Fatalf("Dispatch(%s) = %v", tt.env.JobID, err)
		}
	}
	for _, tt := range tests {
		t.Run(tt.env.JobID, func(t *testing.T) {
			waitState(t, d, tt.env.JobID, 20*time.Second, tt.state)
			rec, err := d.Record(t.Context(), tt.env.JobID)
			if err != nil || len(rec.Completions) != tt.completions {
				t.Fatalf("Record(%s) = %d completions, %v, want %d", tt.env.JobID, len(rec.Completions), err, tt.completions)
			}
		})
	}
	st := jobsStream(t, url)
	poll(t, 10*time.Second, "the jobs stream to be empty", func() bool {
		info, err := st.Info(context.Background())
		return err == nil && info.State.Msgs == 0
	})
	dead := deadMessages(t, url)
	if len(dead) != 1 || !strings.Contains(dead[0].Header.Get(natsq.HeaderReason), "max_attempts") {
		t.Fatalf("dead letters = %d, want 1 (the broken job) with a max_attempts reason", len(dead))
	}
}

func jobsStream(t testing.TB, url string) jetstream.Stream {
	t.Helper()
	js, _ := jetstream.New(dial(t, url))
	st, err := js.Stream(context.Background(), natsq.JobsStream(pool))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func deadMessages(t testing.TB, url string) []*jetstream.RawStreamMsg {
	t.Helper()
	js, _ := jetstream.New(dial(t, url))
	st, err := js.Stream(context.Background(), natsq.DeadStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err == nil {
			out = append(out, m)
		}
	}
	return out
}

// TestPoisonMessages: garbage on the job subjects is terminated and dead-lettered with a
// reason; the consumer keeps going and a good job behind it still runs.
func TestPoisonMessages(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	d, nc, _ := startDispatcher(t, url, natsq.Options{})
	// Dispatch one job first so that the stream and consumer exist, with the worker not yet
	// running, then put the poison in front of the next good job.
	if _, err := d.Dispatch(t.Context(), s.envelope(t, "good-1", `{"n":1}`, 1)); err != nil {
		t.Fatal(err)
	}
	wrongTask := s.envelope(t, "wrong-subject", `{"n":1}`, 1)
	wrongTask.Task = "other"
	wt, _ := json.Marshal(wrongTask)
	otherPool := s.envelope(t, "other-pool", `{"n":1}`, 1)
	otherPool.Pool = "elsewhere"
	op, _ := json.Marshal(otherPool)
	unknown := strings.Replace(string(mustJSON(t, s.envelope(t, "unknown-field", `{"n":1}`, 1))), `{`, `{"lease_token":"x",`, 1)
	poison := []struct{ name, body, reason string }{
		{"not json", "this is not json", "not one job envelope"},
		{"oversized", `{"job_id":"` + strings.Repeat("x", 8<<10) + `"}`, "over the worker's limit"},
		{"unknown field", unknown, "not one job envelope"},
		{"two documents", string(mustJSON(t, s.envelope(t, "two", `{"n":1}`, 1))) + "{}", "not one job envelope"},
		{"missing fields", `{"job_id":"x"}`, "invalid job envelope"},
		{"wrong task subject", string(wt), "arrived on"},
		{"wrong pool", string(op), "arrived on"},
	}
	js, _ := jetstream.New(nc)
	for _, p := range poison {
		if _, err := js.Publish(t.Context(), natsq.JobSubject(pool, "echo"), []byte(p.body)); err != nil {
			t.Fatalf("Publish(%s) = %v", p.name, err)
		}
	}
	if _, err := d.Dispatch(t.Context(), s.envelope(t, "good-2", `{"n":2}`, 1)); err != nil {
		t.Fatal(err)
	}
	c := newCounter()
	startWorker(t, url, s, c.echo(), natsq.Options{MaxJobBytes: 4 << 10}, 1)
	waitState(t, d, "good-1", 20*time.Second, api.StateSucceeded)
	waitState(t, d, "good-2", 20*time.Second, api.StateSucceeded)
	var dead []*jetstream.RawStreamMsg
	poll(t, 10*time.Second, "every poison message dead-lettered", func() bool {
		dead = deadMessages(t, url)
		return len(dead) >= len(poison)
	})
	if len(dead) != len(poison) {
		t.Fatalf("dead letters = %d, want %d", len(dead), len(poison))
	}
	for i, p := range poison {
		if got := dead[i].Header.Get(natsq.HeaderReason); !strings.Contains(got, p.reason) {
			t.Errorf("dead letter %d (%s) reason = %q, want it to contain %q", i, p.name, got, p.reason)
		}
	}
	st := jobsStream(t, url)
	poll(t, 10*time.Second, "the jobs stream to be empty", func() bool {
		info, err := st.Info(context.Background())
		return err == nil && info.State.Msgs == 0
	})
	if c.get("wrong-subject")+c.get("other-pool")+c.get("unknown-field") != 0 {
		t.Fatal("a poison message was run")
	}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWorkerKilledMidJob: a worker leases a job and dies without acking; after AckWait the
// job is redelivered (attempt 2) to another worker and recorded exactly once.
func TestWorkerKilledMidJob(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	o := natsq.Options{AckWait: time.Second}
	d, _, _ := startDispatcher(t, url, o)
	if _, err := d.Dispatch(t.Context(), s.envelope(t, "job-killed", `{"n":7}`, 3)); err != nil {
		t.Fatal(err)
	}
	// The doomed worker: leases through the same transport, then its process "dies" (the
	// connection drops with the job unacknowledged).
	o.Pool = pool
	doomed, err := natsq.DialWorker(t.Context(), url, o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := doomed.Register(t.Context(), api.RegisterRequest{Name: "doomed"}); err != nil {
		t.Fatal(err)
	}
	if _, err := doomed.PublishCatalog(t.Context(), catalog); err != nil {
		t.Fatal(err)
	}
	jobs, err := doomed.Lease(t.Context(), 1, 5*time.Second)
	if err != nil || len(jobs) != 1 || jobs[0].Attempt != 1 {
		t.Fatalf("Lease() = %d jobs, %v, want job-killed attempt 1", len(jobs), err)
	}
	_ = doomed.Close()

	c := newCounter()
	startWorker(t, url, s, c.echo(), o, 2)
	j := waitState(t, d, "job-killed", 20*time.Second, api.StateSucceeded)
	rec, err := d.Record(t.Context(), "job-killed")
	if err != nil || j.Attempt != 2 || len(rec.Completions) != 1 || c.get("job-killed") != 1 {
		t.Fatalf("job-killed: attempt %d, %d completions, %d runs, %v; want attempt 2, 1 completion, 1 run",
			j.Attempt, len(rec.Completions), c.get("job-killed"), err)
	}
}

// TestManyJobsExactlyOnce: 10,000 jobs across 4 workers, each run and recorded exactly once
// (2,000 under -race, 1,000 with -short).
func TestManyJobsExactlyOnce(t *testing.T) {
	t.Parallel()
	n := 10_000
	switch {
	case testing.Short():
		n = 1_000
	case raceEnabled:
		n = 2_000
	}
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	d, _, _ := startDispatcher(t, url, natsq.Options{})
	c := newCounter()
	for range 4 {
		startWorker(t, url, s, c.echo(), natsq.Options{}, 8)
	}
	ids, err := dispatchMany(t, d, s, "many", n)
	if err != nil {
		t.Fatal(err)
	}
	waitAll(t, d, ids, 60*time.Second)
	for _, id := range ids {
		if r := c.get(id); r != 1 {
			t.Fatalf("runs of %s = %d, want 1", id, r)
		}
	}
	if got := resultsPerJob(t, url); len(got) != n {
		t.Fatalf("results stream holds results for %d jobs, want %d", len(got), n)
	} else {
		for id, k := range got {
			if k != 1 {
				t.Fatalf("results stream holds %d results for %s, want 1", k, id)
			}
		}
	}
}

// dispatchMany signs n jobs and dispatches them in batches of 128 (DispatchBatch) from 8
// goroutines. It may run off the test's goroutine, so it returns its error.
func dispatchMany(t testing.TB, d *natsq.Dispatcher, s signer, prefix string, n int) ([]string, error) {
	ids, envs := signMany(t, s, prefix, n)
	return ids, dispatchAll(d, envs)
}

// signMany signs n approvals, as approvers would on their own machines.
func signMany(t testing.TB, s signer, prefix string, n int) ([]string, []natsq.Envelope) {
	ids := make([]string, n)
	envs := make([]natsq.Envelope, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%05d", prefix, i)
		envs[i] = s.envelope(t, ids[i], fmt.Sprintf(`{"n":%d}`, i), 3)
	}
	return ids, envs
}

// dispatchAll dispatches envs in batches from 8 goroutines.
func dispatchAll(d *natsq.Dispatcher, envs []natsq.Envelope) error {
	const batch = 128
	n := len(envs)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lo := int(next.Add(batch)) - batch; lo < n; lo = int(next.Add(batch)) - batch {
				chunk := envs[lo:min(lo+batch, n)]
				var err error
				for try := 0; try < 50; try++ { // a cluster node may be going away: retry, it is idempotent
					if _, err = d.DispatchBatch(context.Background(), chunk); err == nil {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if err != nil {
					errs <- fmt.Errorf("DispatchBatch(%s...) = %w", chunk[0].JobID, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// waitAll polls until every job succeeded. It checks jobs in dispatch order and waits on
// the first one not done yet, so that it reads each record about once instead of every
// pending record every round (which, as load, competed with the system it measured).
func waitAll(t testing.TB, d *natsq.Dispatcher, ids []string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for i := 0; i < len(ids); {
		j, err := d.Get(context.Background(), ids[i])
		if err == nil && j.State == api.StateSucceeded {
			i++
			continue
		}
		if err == nil && j.State.Terminal() {
			t.Fatalf("job %s ended %s (%s: %s), want succeeded", ids[i], j.State, j.Outcome, j.ErrorMessage)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d jobs not succeeded after %s (first: %s)", len(ids)-i, len(ids), within, ids[i])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func resultsPerJob(t testing.TB, url string) map[string]int {
	t.Helper()
	js, _ := jetstream.New(dial(t, url))
	cons, err := js.OrderedConsumer(context.Background(), natsq.ResultsStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), natsq.ResultsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for seen := uint64(0); seen < info.State.Msgs; {
		b, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for m := range b.Messages() {
			var r natsq.Result
			if err := json.Unmarshal(m.Data(), &r); err != nil {
				t.Fatal(err)
			}
			got[r.JobID]++
			seen++
			k++
		}
		if k == 0 {
			t.Fatalf("read %d of %d results, then nothing", seen, info.State.Msgs)
		}
	}
	return got
}

// TestClusterNodeLoss: a 3-node cluster with R3 streams loses a node under load; every job
// still succeeds.
func TestClusterNodeLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster under load: skipped with -short")
	}
	t.Parallel()
	servers, url := startCluster(t, 3)
	s := newSigner(t)
	o := natsq.Options{Replicas: 3, AckWait: 5 * time.Second}
	d, _, _ := startDispatcher(t, url, o)
	c := newCounter()
	for range 2 {
		startWorker(t, url, s, c.echo(), o, 8)
	}
	n := 1500
	if raceEnabled {
		n = 400
	}
	var ids []string
	var dispatchErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		ids, dispatchErr = dispatchMany(t, d, s, "ha", n)
	}()
	// Kill a node once some jobs have gone through.
	poll(t, 60*time.Second, "some jobs to complete", func() bool {
		j, err := d.Get(context.Background(), "ha-00020")
		return err == nil && j.State == api.StateSucceeded
	})
	servers[1].Shutdown()
	<-done
	if dispatchErr != nil {
		t.Fatal(dispatchErr)
	}
	waitAll(t, d, ids, 90*time.Second)
	for _, id := range ids {
		if c.get(id) < 1 {
			t.Fatalf("runs of %s = 0, want at least 1", id)
		}
	}
}

func TestConnectRefusesBadInboxPrefix(t *testing.T) {
	t.Parallel()
	for _, p := range []string{"_INBOX.>", "a b", "x.*", ".x", "x."} {
		_, err := natsq.Connect("nats://127.0.0.1:1", natsq.Options{InboxPrefix: p})
		if err == nil || !strings.Contains(err.Error(), "inbox prefix") {
			t.Errorf("Connect(InboxPrefix %q) = %v, want an inbox prefix error", p, err)
		}
	}
	if got := natsq.WorkerInboxPrefix("eu.payments"); got != "_INBOX_eu~payments" {
		t.Errorf("WorkerInboxPrefix(eu.payments) = %q, want _INBOX_eu~payments", got)
	}
}

// TestAbandonedLeaseForgotten: a job leased through WorkerQueue and never reported (its
// worker gave up on the report) does not stay in the queue's in-flight table forever:
// once its delivery has expired (no heartbeat for well over AckWait) it is dropped.
func TestAbandonedLeaseForgotten(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	d, _, _ := startDispatcher(t, url, natsq.Options{})
	q, err := natsq.DialWorker(t.Context(), url, natsq.Options{Pool: pool, AckWait: time.Second})
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
	if _, err := d.Dispatch(t.Context(), s.envelope(t, "job-abandoned", `{"n":1}`, 3)); err != nil {
		t.Fatal(err)
	}
	var jobs []api.LeasedJob
	poll(t, 20*time.Second, "the job to be leased", func() bool {
		jobs, err = q.Lease(t.Context(), 1, 100*time.Millisecond)
		return err == nil && len(jobs) == 1
	})
	if q.InFlight() != 1 {
		t.Fatalf("InFlight() = %d, want 1", q.InFlight())
	}
	// Cancelled, so that its redelivery is refused rather than leased again.
	if _, err := d.Cancel(t.Context(), "job-abandoned"); err != nil {
		t.Fatal(err)
	}
	poll(t, 20*time.Second, "the abandoned lease to be forgotten", func() bool {
		if _, err := q.Lease(t.Context(), 1, 100*time.Millisecond); err != nil {
			t.Fatalf("Lease() = %v", err)
		}
		return q.InFlight() == 0
	})
	if _, err := q.Complete(t.Context(), "job-abandoned", api.CompleteRequest{LeaseToken: jobs[0].LeaseToken,
		Attempt: jobs[0].Attempt, Outcome: "ok"}); !client.IsCode(err, api.CodeLeaseConflict) {
		t.Fatalf("Complete(forgotten lease) = %v, want %s", err, api.CodeLeaseConflict)
	}
}

// TestRedeliverySupersedesOlderLease: JetStream settles a message by its stream sequence,
// whichever delivery the ack comes through. A worker that still holds an older delivery of a
// job it has been handed again (its local clock says the old lease is alive: it received it
// late) must not settle the old one, which would ack the new delivery and leave the job's
// current attempt without a redelivery. The old lease is refused; the new one completes.
func TestRedeliverySupersedesOlderLease(t *testing.T) {
	t.Parallel()
	url := startNATS(t).ClientURL()
	s := newSigner(t)
	d, _, _ := startDispatcher(t, url, natsq.Options{AckWait: time.Second})
	q, err := natsq.DialWorker(t.Context(), url, natsq.Options{Pool: pool, AckWait: time.Second})
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
	if _, err := d.Dispatch(t.Context(), s.envelope(t, "job-redelivered", `{"n":1}`, 3)); err != nil {
		t.Fatal(err)
	}
	lease := func(what string) api.LeasedJob {
		var jobs []api.LeasedJob
		poll(t, 20*time.Second, what, func() bool {
			jobs, err = q.Lease(t.Context(), 1, 100*time.Millisecond)
			return err == nil && len(jobs) == 1
		})
		return jobs[0]
	}
	first := lease("the first delivery")
	second := lease("the redelivery after AckWait")
	if second.Attempt != first.Attempt+1 {
		t.Fatalf("redelivery attempt %d, want %d", second.Attempt, first.Attempt+1)
	}
	q.TouchLease(first.LeaseToken)
	if _, err := q.Complete(t.Context(), "job-redelivered", api.CompleteRequest{LeaseToken: first.LeaseToken,
		Attempt: first.Attempt, Outcome: "ok"}); !client.IsCode(err, api.CodeLeaseConflict) {
		t.Fatalf("Complete(superseded delivery) = %v, want %s", err, api.CodeLeaseConflict)
	}
	if _, err := q.Complete(t.Context(), "job-redelivered", api.CompleteRequest{LeaseToken: second.LeaseToken,
		Attempt: second.Attempt, Outcome: "ok", Output: []byte(`{"n":1}`)}); err != nil {
		t.Fatalf("Complete(current delivery) = %v", err)
	}
	if j := waitState(t, d, "job-redelivered", 20*time.Second, api.StateSucceeded); j.Attempt != second.Attempt {
		t.Fatalf("succeeded at attempt %d, want %d", j.Attempt, second.Attempt)
	}
}

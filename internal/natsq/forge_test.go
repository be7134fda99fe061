package natsq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/runtime"
)

// TestForgedResultsRefused: a holder of pool acme's worker credential, with exactly the
// documented permissions (perms_test.go), publishes results on acme's results subject
// and claims on acme's claims subject for jobs it was never handed: a job no worker has
// pulled, a job nobody approved, and a job running on a real worker (with no fence, a
// guessed fence, that job's real fence under another attempt, an attempt over
// max_attempts, or another worker's id). The dispatcher records none of them: every job's
// record is byte for byte what it was. The real worker's result is then recorded.
func TestForgedResultsRefused(t *testing.T) {
	t.Parallel()
	url, d := startAccountsControlPlane(t)
	ctx := t.Context()
	s := newSigner(t)
	sign := func(id, task string, maxAttempts int) natsq.Envelope {
		tok, _, err := approval.Sign(s.key, approval.Request{JobID: id, Task: task, TaskVersion: "1.0.0", Pool: "acme",
			Input: []byte(`{"n":1}`), MaxAttempts: maxAttempts, Approver: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		return natsq.Envelope{JobID: id, Task: task, TaskVersion: "1.0.0", Pool: "acme", Input: json.RawMessage(`{"n":1}`),
			Approval: tok, MaxAttempts: maxAttempts}
	}
	// No worker serves task "idle": this job stays in the stream, never delivered.
	if _, err := d.Dispatch(ctx, sign("acme-undelivered", "idle", 3)); err != nil {
		t.Fatal(err)
	}
	// A job submitted without an approval, as the API records it.
	cp := connectAs(t, url, cpUser, cpPassword)
	cpJS, err := jetstream.New(cp.nc)
	if err != nil {
		t.Fatal(err)
	}
	jobsKV, err := cpJS.KeyValue(ctx, natsq.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	pending, _ := json.Marshal(natsq.Record{Job: api.Job{ID: "acme-unapproved", Task: "echo", TaskVersion: "1.0.0",
		Pool: "acme", State: api.StatePendingApproval, Input: json.RawMessage(`{"n":1}`), MaxAttempts: 3,
		CreatedAt: now, UpdatedAt: now}})
	if _, err := jobsKV.Create(ctx, "acme-unapproved", pending); err != nil {
		t.Fatal(err)
	}

	// A real worker of acme runs acme-running until released.
	q, err := natsq.DialWorker(ctx, url, natsq.Options{Pool: "acme", User: acmeUser, Password: acmePassword})
	if err != nil {
		t.Fatal(err)
	}
	started, release := make(chan struct{}), make(chan struct{})
	runner := funcRunner(func(ctx context.Context, _, id string, in []byte) runtime.Result {
		close(started)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return runtime.Result{Output: json.RawMessage(`{"real":true}`), Digest: "sha256:test"}
	})
	w, err := worker.New(worker.Config{Client: q, Runner: runner, Catalog: catalog,
		Verifier:    approval.NewVerifier(s.trusted, approval.NewMemoryReplayStore()),
		Concurrency: 1, LeaseWait: time.Second, Heartbeat: 100 * time.Millisecond,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lease, stopLease := context.WithCancel(context.Background())
	jobs, cancelJobs := context.WithCancel(context.Background())
	workerDone := make(chan error, 1)
	go func() { workerDone <- w.Run(lease, jobs) }()
	t.Cleanup(func() { stopLease(); cancelJobs(); <-workerDone; _ = q.Close() })
	if _, err := d.Dispatch(ctx, sign("acme-running", "echo", 2)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("acme-running did not start")
	}

	ids := []string{"acme-undelivered", "acme-unapproved", "acme-running"}
	type snap struct {
		rev  uint64
		data string
	}
	snapshot := func() map[string]snap {
		out := map[string]snap{}
		for _, id := range ids {
			e, err := jobsKV.Get(ctx, id)
			if err != nil {
				t.Fatalf("read %s: %v", id, err)
			}
			out[id] = snap{e.Revision(), string(e.Value())}
		}
		return out
	}
	before := snapshot()
	// The running job's real fence, as if it had leaked: alone it is still not enough.
	var rec struct {
		Lease struct {
			Fence    string `json:"fence"`
			WorkerID string `json:"worker_id"`
		} `json:"lease"`
	}
	_ = json.Unmarshal([]byte(before["acme-running"].data), &rec)

	forger := connectAs(t, url, acmeUser, acmePassword)
	fjs, err := jetstream.New(forger.nc)
	if err != nil {
		t.Fatal(err)
	}
	forgeries := []struct {
		name, job, task string
		attempt         int
		fence, workerID string
	}{
		{"undelivered job, no fence", "acme-undelivered", "idle", 1, "", "forger"},
		{"undelivered job, guessed fence", "acme-undelivered", "idle", 1, "00112233445566778899aabbccddeeff", "forger"},
		{"unapproved job", "acme-unapproved", "echo", 1, "", "forger"},
		{"unapproved job, guessed fence", "acme-unapproved", "echo", 1, "00112233445566778899aabbccddeeff", "forger"},
		{"delivered to another worker, no fence", "acme-running", "echo", 1, "", "forger"},
		{"delivered to another worker, guessed fence", "acme-running", "echo", 1, "00112233445566778899aabbccddeeff", "forger"},
		{"delivered to another worker, its fence, forger's id", "acme-running", "echo", 1, rec.Lease.Fence, "forger"},
		{"wrong attempt", "acme-running", "echo", 2, rec.Lease.Fence, rec.Lease.WorkerID},
		{"attempt over max_attempts", "acme-running", "echo", 3, rec.Lease.Fence, rec.Lease.WorkerID},
		{"attempt 0", "acme-running", "echo", 0, rec.Lease.Fence, rec.Lease.WorkerID},
	}
	for i, f := range forgeries {
		body, _ := json.Marshal(map[string]any{"job_id": f.job, "task": f.task, "attempt": f.attempt, "worker_id": f.workerID,
			"outcome": "ok", "output": map[string]bool{"forged": true}, "duration_ms": 1, "fence": f.fence})
		if _, err := fjs.Publish(ctx, natsq.ResultSubject("acme"), body, jetstream.WithMsgID(fmt.Sprintf("forged-%d", i))); err != nil {
			t.Fatalf("%s: publish = %v", f.name, err)
		}
	}
	// Message ids the real worker's result could use: taking one first must not make the
	// stream drop the real result as a duplicate.
	for _, id := range []string{"acme-running/1", "acme-running/1/", "acme-running"} {
		body, _ := json.Marshal(map[string]any{"job_id": "acme-running", "task": "echo", "attempt": 1, "worker_id": "forger",
			"outcome": "task_error", "duration_ms": 1})
		if _, err := fjs.Publish(ctx, natsq.ResultSubject("acme"), body, jetstream.WithMsgID(id)); err != nil {
			t.Fatalf("publish with message id %s = %v", id, err)
		}
	}
	// Claims for jobs the forger never received: no fence may come back.
	for _, c := range []struct{ name, job, key string }{
		{"claim an undelivered job", "acme-undelivered", ""},
		{"claim an undelivered job, guessed key", "acme-undelivered", "00112233445566778899aabbccddeeff"},
		{"claim an unapproved job", "acme-unapproved", ""},
		{"claim a running job", "acme-running", ""},
	} {
		body, _ := json.Marshal(map[string]any{"job_id": c.job, "delivered": 1, "claim_key": c.key, "worker_id": "forger"})
		m, err := forger.nc.Request(natsq.ClaimSubject("acme"), body, 10*time.Second)
		if err == nil {
			var reply map[string]any
			_ = json.Unmarshal(m.Data, &reply)
			if reply["fence"] != nil && reply["fence"] != "" {
				t.Errorf("%s: granted %s", c.name, m.Data)
			}
		}
	}
	// Every forged result has been read and settled by the dispatcher.
	poll(t, 30*time.Second, "the dispatcher to settle every forged result", func() bool {
		c, err := cpJS.Consumer(ctx, natsq.ResultsStream, natsq.ResultsConsumer)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Stream >= uint64(len(forgeries)+3)
	})
	after := snapshot()
	for _, id := range ids {
		if after[id] != before[id] {
			t.Errorf("%s changed after forged results:\nbefore (rev %d) %s\nafter  (rev %d) %s", id,
				before[id].rev, before[id].data, after[id].rev, after[id].data)
		}
	}

	if errs := forger.errors(); len(errs) > 0 {
		t.Fatalf("the forger's publishes were refused by the server (%v): the test must use allowed subjects", errs)
	}
	close(release)
	j := waitState(t, d, "acme-running", 30*time.Second, api.StateSucceeded)
	if string(j.Output) != `{"real":true}` || j.Attempt != 1 {
		t.Fatalf("acme-running = output %s attempt %d, want the real worker's output at attempt 1", j.Output, j.Attempt)
	}
	for _, id := range []string{"acme-undelivered", "acme-unapproved"} {
		if j, err := d.Get(ctx, id); err != nil || j.State.Terminal() || j.Output != nil {
			t.Errorf("%s = %s output %s, %v; want it unfinished, with no output", id, j.State, j.Output, err)
		}
	}
}

package natsq_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestWaitAnswersFromItsOwnWrite: a wait parked on a job is woken once, when the job ends,
// not at each step before, and returns the record it was woken with, without reading it
// back from the job bucket; what it returns is what the bucket holds.
func TestWaitAnswersFromItsOwnWrite(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	s := newSigner(t)
	rep := startAPI(t, natsURL)
	// The worker's side by hand, so that the job runs only once its approval is recorded
	// (the approval's two writes and the claim would otherwise race for the dispatcher's
	// copy of the record, and the loser reads it).
	q := publishStrict(t, natsURL)
	submitter := apiClient(t, natsURL, rep.url, api.RoleClient, pool)
	approver := apiClient(t, natsURL, rep.url, api.RoleApprover, pool)
	waitCatalog(t, submitter)

	in := `{"n":7}`
	j, err := submitter.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(in), MaxAttempts: 2})
	if err != nil {
		t.Fatal(err)
	}
	// Every write of the job's record and every read of the job bucket, in the order the
	// NATS server routes them.
	obs := dial(t, natsURL)
	var mu sync.Mutex
	var seen []string
	for _, subj := range []string{"$KV." + natsq.JobsBucket + "." + j.ID, "$JS.API.DIRECT.GET.KV_" + natsq.JobsBucket + ".>",
		"$JS.API.STREAM.MSG.GET.KV_" + natsq.JobsBucket} {
		if _, err := obs.Subscribe(subj, func(m *nats.Msg) {
			mu.Lock()
			defer mu.Unlock()
			if strings.HasPrefix(m.Subject, "$KV.") {
				seen = append(seen, "write")
			} else {
				seen = append(seen, "read")
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := obs.Flush(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan api.Job, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		got, err := submitter.Wait(ctx, j.ID)
		if err != nil {
			t.Error(err)
		}
		waited <- got
	}()
	// The wait has parked once it read the job (its first read).
	poll(t, 10*time.Second, "the wait to read the job", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) > 0
	})
	tok, _, err := approval.Sign(s.key, approval.Request{JobID: j.ID, Task: "echo", TaskVersion: j.TaskVersion, Pool: pool,
		Input: []byte(in), MaxAttempts: 2, Approver: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := approver.Approve(t.Context(), j.ID, tok); err != nil {
		t.Fatal(err)
	}
	var leased []api.LeasedJob
	poll(t, 20*time.Second, "the job leased", func() bool {
		leased, err = q.Lease(t.Context(), 1, 100*time.Millisecond)
		return err == nil && len(leased) == 1
	})
	if _, err := q.Complete(t.Context(), j.ID, api.CompleteRequest{LeaseToken: leased[0].LeaseToken, Attempt: leased[0].Attempt,
		Outcome: "ok", Output: json.RawMessage(in)}); err != nil {
		t.Fatal(err)
	}
	got := <-waited
	if got.State != api.StateSucceeded || string(got.Output) != in || got.FinishedAt == nil {
		t.Fatalf("Wait = %s output %s, want succeeded with %s", got.State, got.Output, in)
	}
	if err := obs.Flush(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	events := strings.Join(seen, ",")
	mu.Unlock()
	// Before the approval's first write: the wait's first read and the approval's. After
	// it nothing reads the record: the dispatcher writes from its copy, and the wait is
	// woken once, by the terminal write, and answers with that record.
	first := strings.Index(events, "write")
	if first < 0 || strings.Count(events, "write") < 4 || strings.Contains(events[first:], "read") {
		t.Fatalf("job bucket traffic = %s: the wait read the record again after the approval", events)
	}
	// The same job as the bucket holds it.
	d, _, _ := startDispatcher(t, natsURL, natsq.Options{})
	stored, err := d.Get(t.Context(), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(stored)
	b, _ := json.Marshal(got)
	if string(a) != string(b) {
		t.Fatalf("Wait returned\n%s\nthe bucket holds\n%s", b, a)
	}
}

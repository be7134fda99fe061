package server

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
)

// TestEveryEndWakesItsWait: a wait on a job is woken by that job's end, whichever way it
// ends, with the periodic recheck out of the way (an hour): a path that ended a job without
// waking its waits would leave the wait parked until its timeout. A wait on another job,
// which does not end, stays parked.
func TestEveryEndWakesItsWait(t *testing.T) {
	t.Parallel()
	leased := func(t *testing.T, e *env, maxAttempts int) (api.Job, api.LeasedJob) {
		j, err := e.client.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{"n":1}`),
			MaxAttempts: maxAttempts, Approval: fakeJWS("x")})
		if err != nil {
			t.Fatal(err)
		}
		return j, e.leaseOne(t.Context(), e.worker)
	}
	cases := []struct {
		name  string
		setup func(t *testing.T, e *env) (id string, end func())
		want  api.State
	}{
		{"complete", func(t *testing.T, e *env) (string, func()) {
			j, lj := leased(t, e, 3)
			return j.ID, func() {
				if _, err := e.worker.Complete(t.Context(), j.ID, api.CompleteRequest{LeaseToken: lj.LeaseToken, Attempt: 1, Outcome: "ok", Output: json.RawMessage(`{}`)}); err != nil {
					t.Error(err)
				}
			}
		}, api.StateSucceeded},
		{"deny", func(t *testing.T, e *env) (string, func()) {
			j := e.submit(t.Context(), 1, false)
			return j.ID, func() {
				if _, err := e.approver.Deny(t.Context(), j.ID, "no"); err != nil {
					t.Error(err)
				}
			}
		}, api.StateDenied},
		{"cancel", func(t *testing.T, e *env) (string, func()) {
			j := e.submit(t.Context(), 1, false)
			return j.ID, func() {
				if _, err := e.client.Cancel(t.Context(), j.ID); err != nil {
					t.Error(err)
				}
			}
		}, api.StateCancelled},
		{"lease expiry, attempts exhausted", func(t *testing.T, e *env) (string, func()) {
			j, _ := leased(t, e, 1)
			return j.ID, func() {
				e.clock.Advance(2 * time.Minute)
				if _, err := e.s.reap(t.Context()); err != nil {
					t.Error(err)
				}
			}
		}, api.StateDead},
		{"lease expiry after a cancel request", func(t *testing.T, e *env) (string, func()) {
			j, _ := leased(t, e, 3)
			if _, err := e.client.Cancel(t.Context(), j.ID); err != nil {
				t.Fatal(err)
			}
			return j.ID, func() {
				e.clock.Advance(2 * time.Minute)
				if _, err := e.s.reap(t.Context()); err != nil {
					t.Error(err)
				}
			}
		}, api.StateCancelled},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, func(cfg *Config) { cfg.RecheckInterval = time.Hour })
			bystander := e.submit(t.Context(), 9, false)
			id, end := c.setup(t, e)
			type result struct {
				j   api.Job
				err error
			}
			wait := func(id string) chan result {
				ch := make(chan result, 1)
				go func() {
					j, err := e.client.WaitOnce(context.Background(), id, 10*time.Second)
					ch <- result{j, err}
				}()
				return ch
			}
			other, got := wait(bystander.ID), wait(id)
			eventually(t, "both waits to park", func() bool { return e.s.cp.Waiters() == 2 })
			end()
			r := <-got
			if r.err != nil || r.j.State != c.want {
				t.Fatalf("wait = %s, %v; want %s", r.j.State, r.err, c.want)
			}
			select {
			case r := <-other:
				t.Fatalf("the wait on another job returned %s, %v; want it still parked", r.j.State, r.err)
			default:
			}
			if _, err := e.client.Cancel(t.Context(), bystander.ID); err != nil {
				t.Fatal(err)
			}
			if r := <-other; r.err != nil || r.j.State != api.StateCancelled {
				t.Fatalf("bystander's wait = %s, %v; want cancelled", r.j.State, r.err)
			}
		})
	}
}

// TestPlanHintOrdersAReadAgainstACreate: a read of the active plans that began before a
// plan was created, and found none, may not record "none" after the creation: the plan
// would never be moved on.
func TestPlanHintOrdersAReadAgainstACreate(t *testing.T) {
	var h planHint
	if none, _ := h.noneActive(); none {
		t.Fatal("a fresh hint claims no plan is active before any read")
	}
	_, gen := h.noneActive() // a read begins, and finds none...
	h.created()              // ...a plan is created meanwhile...
	h.foundNone(gen)
	if none, _ := h.noneActive(); none {
		t.Fatal("a read begun before a plan was created recorded none active after it")
	}
	_, gen = h.noneActive()
	h.foundNone(gen)
	if none, _ := h.noneActive(); !none {
		t.Fatal("a read begun after the last creation that found none was not recorded")
	}
}

// TestSubmitAnswersTheStoredJob: the job a submit answers with (built from what it stored,
// not read back) is the job a read of it returns, field for field, for each shape of
// submit.
func TestSubmitAnswersTheStoredJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	named := e.newClient("named-client", api.RoleClient, "alpha")
	for name, c := range map[string]struct {
		req   api.SubmitRequest
		named bool
	}{
		"pending":          {req: api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{"n":1}`)}},
		"approved":         {req: api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{ "n" : 2 }`), Approval: fakeJWS("x"), MaxAttempts: 7}},
		"idempotency key":  {req: api.SubmitRequest{Task: "echo", Input: json.RawMessage(`{"n":3}`), IdempotencyKey: "k-1", TaskVersion: "1"}},
		"by a named token": {req: api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{"n":4}`)}, named: true},
	} {
		cl := e.client
		if c.named {
			cl = named
		}
		got, err := cl.Submit(t.Context(), c.req)
		if err != nil {
			t.Fatalf("%s: Submit = %v", name, err)
		}
		stored, err := e.admin.Get(t.Context(), got.ID)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := json.Marshal(got)
		b, _ := json.Marshal(stored)
		if string(a) != string(b) {
			t.Errorf("%s: submit answered\n%s\nthe stored job is\n%s", name, a, b)
		}
	}
}

// TestEndedJobIsTheStoredJob: the job a wait or a read answers after a completion (kept
// from the completion's own UPDATE, not read again) is the stored job, field for field,
// for every way a completion leaves a job; one queued again for a retry is read afresh.
func TestEndedJobIsTheStoredJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	yes, no := true, false
	for _, c := range []struct {
		name   string
		req    api.CompleteRequest
		cancel bool
		want   api.State
	}{
		{"succeeded", api.CompleteRequest{Outcome: "ok", Output: json.RawMessage(`{"x": [1, 2]}`), DurationMS: 7, ModuleDigest: "sha256:ab"}, false, api.StateSucceeded},
		{"failed", api.CompleteRequest{Outcome: string(outcome.Timeout), ErrorMessage: "slow", Retryable: &no}, false, api.StateFailed},
		{"retry", api.CompleteRequest{Outcome: string(outcome.Timeout), ErrorMessage: "slow", Retryable: &yes}, false, api.StateQueued},
		{"cancelled", api.CompleteRequest{Outcome: "cancelled"}, true, api.StateCancelled},
	} {
		j, err := e.client.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{"n":1}`), Approval: fakeJWS("x")})
		if err != nil {
			t.Fatal(err)
		}
		lj := e.leaseOne(ctx, e.worker)
		if c.cancel {
			if _, err := e.client.Cancel(ctx, j.ID); err != nil {
				t.Fatal(err)
			}
		}
		c.req.LeaseToken, c.req.Attempt = lj.LeaseToken, lj.Attempt
		if _, err := e.worker.Complete(ctx, j.ID, c.req); err != nil {
			t.Fatalf("%s: Complete = %v", c.name, err)
		}
		_, kept := e.s.ended.get(j.ID)
		if kept != c.want.Terminal() {
			t.Errorf("%s: kept for the waits = %v, want %v", c.name, kept, c.want.Terminal())
		}
		got, err := e.client.WaitOnce(ctx, j.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		stored, err := readJob(ctx, e.s.store, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := json.Marshal(got)
		b, _ := json.Marshal(stored.Job)
		if got.State != c.want || string(a) != string(b) {
			t.Errorf("%s: the wait answered\n%s\nthe stored job is\n%s", c.name, a, b)
		}
	}
}

package process

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/approver/approvertest"
	"github.com/castellan-dev/castellan/internal/approver/rules"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

const testRules = `rules:
  - name: read-only-lookups
    when: 'task == "crm-lookup" && input.customer_id.startsWith("c-")'
    approve: { ttl: 10m, max_attempts: 2 }
  - name: no-big-refunds
    when: 'task == "refund" && input.amount > 1000'
    deny: { reason: "refunds over 1000 need finance" }
  - name: strict
    when: 'task == "refund" && input.currency == "EUR"'
    approve: { ttl: 1m }
`

func mustRules(t testing.TB) *rules.RuleSet {
	t.Helper()
	rs, err := rules.Parse("rules.yaml", []byte(testRules))
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func newApprover(t testing.TB, e *approvertest.Env, ctl Control) (*Approver, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	a, err := New(Config{Control: ctl, Key: e.Key, Rules: mustRules(t), Pools: []string{approvertest.Pool}, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	return a, logs
}

// bothModes runs f against a SQLite and a JetStream control plane.
func bothModes(t *testing.T, f func(t *testing.T, e *approvertest.Env)) {
	for mode, start := range map[string]func(testing.TB) *approvertest.Env{"sqlite": approvertest.New, "nats": approvertest.NewNATS} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			f(t, start(t))
		})
	}
}

func poll(t testing.TB, a *Approver) {
	t.Helper()
	if _, err := a.Poll(t.Context()); err != nil {
		t.Fatalf("Poll() = %v", err)
	}
}

// TestRuleApproves: a job a rule approves gets an approval a worker verifies, bound to the
// job, with the rule's TTL and attempts and approved_by naming the rule.
func TestRuleApproves(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, e *approvertest.Env) {
		a, logs := newApprover(t, e, e.Approver)
		j := e.Submit(e.Client, "crm-lookup", approvertest.Pool, `{"customer_id":"c-secret-42"}`)
		poll(t, a)
		if got := e.Get(j.ID); got.State != api.StateQueued || !got.HasApproval {
			t.Fatalf("after Poll the job is %s (approval %v), want queued with an approval", got.State, got.HasApproval)
		}
		lj := e.Lease(approvertest.Pool, j.ID)
		c, err := e.Verify(lj)
		if err != nil {
			t.Fatalf("worker Verify(the approver's approval) = %v", err)
		}
		if c.ApprovedBy == nil || c.ApprovedBy.Rule != "read-only-lookups" || c.MaxAttempts != 2 || c.Expiry-c.IssuedAt != 600 {
			t.Fatalf("claims = %+v (approved_by %+v), want rule read-only-lookups, 2 attempts, 10m", c, c.ApprovedBy)
		}
		for _, l := range logs.All() {
			if b, _ := json.Marshal(l); strings.Contains(string(b), "c-secret-42") {
				t.Fatalf("log line %q quotes the job input", b)
			}
		}
		if logs.FilterMessage("approved by rule").Len() != 1 {
			t.Fatalf("logs %v: want one 'approved by rule' line", logs.All())
		}
	})
}

// TestNoRuleAsks: a job no rule decides, and one whose rule cannot be evaluated, stay
// pending with no approval and are offered to a person.
func TestNoRuleAsks(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, e *approvertest.Env) {
		a, _ := newApprover(t, e, e.Admin) // admin: may read token names
		none := e.Submit(e.Client, "refund", approvertest.Pool, `{"amount":5,"currency":"USD"}`)
		broken := e.Submit(e.Client, "refund", approvertest.Pool, `{"amount":5}`) // rule strict reads input.currency
		poll(t, a)
		poll(t, a) // a second poll asks nothing twice
		for _, id := range []string{none.ID, broken.ID} {
			if got := e.Get(id); got.State != api.StatePendingApproval || got.HasApproval {
				t.Fatalf("job %s is %s (approval %v), want pending without approval", id, got.State, got.HasApproval)
			}
		}
		p := a.Pending()
		if len(p) != 2 || p[0].Job.ID != none.ID || p[0].Rule != "" || p[1].Job.ID != broken.ID || p[1].Rule != "strict" {
			t.Fatalf("Pending() = %+v, want [%s (default), %s (rule strict)]", p, none.ID, broken.ID)
		}
		if p[0].Requester != "agent" {
			t.Fatalf("Pending()[0].Requester = %q, want the submitting token's name agent", p[0].Requester)
		}
	})
}

// TestRuleDenies: a deny rule ends the job denied with the rule's reason; nothing is
// signed.
func TestRuleDenies(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, e *approvertest.Env) {
		a, _ := newApprover(t, e, e.Approver)
		j := e.Submit(e.Client, "refund", approvertest.Pool, `{"amount":5000,"currency":"EUR"}`)
		poll(t, a)
		got := e.Get(j.ID)
		if got.State != api.StateDenied || got.Outcome != api.OutcomeDeniedByApprover || got.HasApproval ||
			got.ErrorMessage != "refunds over 1000 need finance" || got.DeniedBy != "approver" {
			t.Fatalf("denied job = %+v, want state denied by approver, outcome denied_by_approver, the rule's reason", got)
		}
		if p := a.Pending(); len(p) != 0 {
			t.Fatalf("Pending() = %+v, want nothing asked", p)
		}
	})
}

// TestDenyUnsupported: a control plane without deny gets a deny decision left for a person,
// never approved.
func TestDenyUnsupported(t *testing.T) {
	t.Parallel()
	e := approvertest.New(t)
	a, _ := newApprover(t, e, struct{ Control }{e.Approver}) // hides Deny
	j := e.Submit(e.Client, "refund", approvertest.Pool, `{"amount":5000,"currency":"EUR"}`)
	poll(t, a)
	if got := e.Get(j.ID); got.State != api.StatePendingApproval || got.HasApproval {
		t.Fatalf("job is %s (approval %v), want pending without approval", got.State, got.HasApproval)
	}
	if p := a.Pending(); len(p) != 1 || p[0].Rule != "no-big-refunds" {
		t.Fatalf("Pending() = %+v, want the job asked by rule no-big-refunds", p)
	}
	if err := a.DenyAsPerson(t.Context(), j.ID, "alice", "no"); err != ErrCannotDeny {
		t.Fatalf("DenyAsPerson() = %v, want ErrCannotDeny", err)
	}
}

// TestRequesterFromJob: requester is the submitting token's name the control plane
// recorded with the job, so an approver token (which may not list token names) matches a
// rule on it in both modes; a job from an unnamed token leaves requester unknown unless an
// admin token can look it up, so a rule reading it asks rather than matching "" or the
// token id.
func TestRequesterFromJob(t *testing.T) {
	t.Parallel()
	rs, err := rules.Parse("r.yaml", []byte("rules:\n  - name: agent-lookups\n    when: 'requester == \"agent\" || requester.startsWith(\"tok\")'\n    approve: {ttl: 1m}\n"))
	if err != nil {
		t.Fatal(err)
	}
	bothModes(t, func(t *testing.T, e *approvertest.Env) {
		unnamed := e.NewClient("", api.RoleClient, approvertest.Pool)
		for _, tt := range []struct {
			name  string
			ctl   *client.Client
			sub   *client.Client
			state api.State
		}{
			{"approver token, named submitter", e.Approver, e.Client, api.StateQueued},
			{"admin token, named submitter", e.Admin, e.Client, api.StateQueued},
			{"approver token, unnamed submitter", e.Approver, unnamed, api.StatePendingApproval},
		} {
			a, err := New(Config{Control: tt.ctl, Key: e.Key, Rules: rs, Pools: []string{approvertest.Pool}})
			if err != nil {
				t.Fatal(err)
			}
			j := e.Submit(tt.sub, "crm-lookup", approvertest.Pool, `{"customer_id":"x"}`)
			if tt.sub == e.Client && j.SubmittedByName != "agent" {
				t.Fatalf("%s: submitted job's submitted_by_name = %q, want agent", tt.name, j.SubmittedByName)
			}
			poll(t, a)
			if got := e.Get(j.ID); got.State != tt.state {
				t.Fatalf("%s: job is %s, want %s", tt.name, got.State, tt.state)
			}
			if tt.state == api.StatePendingApproval {
				if p := a.Pending(); len(p) != 1 || p[0].Rule != "agent-lookups" {
					t.Fatalf("%s: Pending() = %+v, want the job asked by rule agent-lookups", tt.name, p)
				}
			}
		}
	})
}

// TestTwoApprovers: two approvers polling the same control plane at once, and one started
// again afterwards, approve each job exactly once; the loser's 409 is not an error.
func TestTwoApprovers(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, e *approvertest.Env) {
		ctl := &countingControl{Control: e.Approver}
		a1, logs1 := newApprover(t, e, ctl)
		a2, logs2 := newApprover(t, e, ctl)
		var ids []string
		for i := range 5 {
			ids = append(ids, e.Submit(e.Client, "crm-lookup", approvertest.Pool, `{"customer_id":"c-`+string(rune('a'+i))+`"}`).ID)
		}
		var wg sync.WaitGroup
		for _, a := range []*Approver{a1, a2} {
			wg.Go(func() {
				if _, err := a.Poll(t.Context()); err != nil {
					t.Errorf("Poll() = %v", err)
				}
			})
		}
		wg.Wait()
		a3, _ := newApprover(t, e, ctl)
		poll(t, a3)
		for _, id := range ids {
			if got := e.Get(id); got.State != api.StateQueued {
				t.Fatalf("job %s is %s, want queued", id, got.State)
			}
		}
		if n := ctl.approved.Load(); n != int64(len(ids)) {
			t.Fatalf("%d approvals accepted for %d jobs, want one each", n, len(ids))
		}
		for _, l := range append(logs1.All(), logs2.All()...) {
			if l.Level >= zapcore.WarnLevel && !strings.Contains(l.Message, "token names") {
				t.Fatalf("log %s %q %v: a lost race must not warn", l.Level, l.Message, l.ContextMap())
			}
		}
	})
}

type countingControl struct {
	Control
	approved atomic.Int64
}

func (c *countingControl) Approve(ctx context.Context, id, tok string) (api.Job, error) {
	j, err := c.Control.Approve(ctx, id, tok)
	if err == nil {
		c.approved.Add(1)
	}
	return j, err
}

// lyingControl is a compromised control plane: it passes calls to the real one, with
// listings and jobs rewritten by its hooks.
type lyingControl struct {
	Control
	list func(api.JobList) api.JobList
	get  func(api.Job) api.Job
	seen atomic.Int64 // approve calls
}

func (l *lyingControl) List(ctx context.Context, o client.ListOptions) (api.JobList, error) {
	jl, err := l.Control.List(ctx, o)
	if err == nil && l.list != nil {
		jl = l.list(jl)
	}
	return jl, err
}

func (l *lyingControl) Get(ctx context.Context, id string) (api.Job, error) {
	j, err := l.Control.Get(ctx, id)
	if err == nil && l.get != nil {
		j = l.get(j)
	}
	return j, err
}

func (l *lyingControl) Approve(ctx context.Context, id, tok string) (api.Job, error) {
	l.seen.Add(1)
	return l.Control.Approve(ctx, id, tok)
}

// TestLyingControlPlane: attacks by a compromised control plane. None gets an approval a
// worker would accept for a job the rules did not see as it runs; malformed jobs are
// refused with a log line naming the problem, and the approver keeps going.
func TestLyingControlPlane(t *testing.T) {
	t.Parallel()
	e := approvertest.New(t)
	const seen = `{"customer_id":"c-1"}` // what the rule is shown, and approves
	for _, tt := range []struct {
		name   string
		pool   string // where the real job is
		input  string // its real input
		list   func(api.Job) func(api.JobList) api.JobList
		get    func(api.Job) api.Job
		refuse string // the log line's problem; "" when the approval is signed and must fail at the worker
		reason approval.Reason
	}{
		{name: "input swapped after evaluation", pool: approvertest.Pool, input: `{"customer_id":"c-1","note":"and delete everything"}`,
			get: func(j api.Job) api.Job { j.Input = json.RawMessage(seen); return j }, reason: approval.InputMismatch},
		{name: "job in another pool listed as ours", pool: approvertest.Other, input: seen,
			list: func(other api.Job) func(api.JobList) api.JobList {
				return func(l api.JobList) api.JobList {
					other.Pool = approvertest.Pool
					l.Jobs = append(l.Jobs, other)
					return l
				}
			},
			refuse: `which this approver does not serve`},
		{name: "job in another pool listed with its pool", pool: approvertest.Other, input: seen,
			list: func(other api.Job) func(api.JobList) api.JobList {
				return func(l api.JobList) api.JobList { l.Jobs = append(l.Jobs, other); return l }
			}},
		{name: "another job's id", pool: approvertest.Pool, input: seen,
			get: func(j api.Job) api.Job { j.ID += "x"; return j }, refuse: "asked for job"},
		{name: "pool rewritten on fetch", pool: approvertest.Pool, input: seen,
			get: func(j api.Job) api.Job { j.Pool = approvertest.Other; return j }, refuse: "does not serve"},
		{name: "not pending", pool: approvertest.Pool, input: seen,
			get: func(j api.Job) api.Job { j.State = api.StateQueued; return j }}, // as after a lost race: skipped quietly
		{name: "no task", pool: approvertest.Pool, input: seen,
			get: func(j api.Job) api.Job { j.Task = ""; return j }, refuse: "names no task"},
		{name: "no version", pool: approvertest.Pool, input: seen,
			get: func(j api.Job) api.Job { j.TaskVersion = ""; return j }, refuse: "names no task"},
		{name: "zero attempts", pool: approvertest.Pool, input: seen,
			get: func(j api.Job) api.Job { j.MaxAttempts = 0; return j }, refuse: "outside 1..100"},
		{name: "duplicate member names", pool: approvertest.Pool, input: seen,
			get: func(j api.Job) api.Job {
				j.Input = json.RawMessage(`{"customer_id":"c-1","customer_id":"x"}`)
				return j
			}, refuse: "not I-JSON"},
		{name: "input not JSON", pool: approvertest.Pool, input: seen,
			get: func(j api.Job) api.Job { j.Input = json.RawMessage(`{"customer_id":`); return j }, refuse: "not I-JSON"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := e.Client
			if tt.pool == approvertest.Other {
				c = e.OtherClient
			}
			j := e.Submit(c, "crm-lookup", tt.pool, tt.input)
			// The listing is not filtered by the real control plane's pool either.
			ctl := &lyingControl{Control: e.Approver, get: tt.get}
			if tt.list != nil {
				ctl.list = tt.list(j)
			}
			a, logs := newApprover(t, e, ctl)
			poll(t, a)
			got := e.Get(j.ID)
			if tt.reason != "" {
				if got.State != api.StateQueued {
					t.Fatalf("job is %s, want queued with the approval of what the rule saw", got.State)
				}
				_, err := e.Verify(e.Lease(tt.pool, j.ID))
				if approval.ReasonOf(err) != tt.reason {
					t.Fatalf("worker Verify = %v, want %s: the approval must not stretch to the real job", err, tt.reason)
				}
				return
			}
			if got.State != api.StatePendingApproval || ctl.seen.Load() != 0 || len(a.Pending()) != 0 {
				t.Fatalf("job is %s after %d approve calls, pending for a person %v; want untouched", got.State, ctl.seen.Load(), a.Pending())
			}
			if tt.refuse != "" {
				if ls := logs.FilterLevelExact(zapcore.ErrorLevel).All(); len(ls) != 1 || !strings.Contains(ls[0].Message, tt.refuse) ||
					ls[0].ContextMap()["job"] != j.ID {
					t.Fatalf("error logs %v, want one naming job %s and %q", ls, j.ID, tt.refuse)
				}
				poll(t, a) // refused once, not again at every poll
				if n := logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 1 {
					t.Fatalf("%d error lines after a second poll, want the refusal logged once", n)
				}
			}
			// Leave the job decided so the next case's listing does not hold it.
			if _, err := e.Admin.Cancel(t.Context(), j.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRunBacksOff: Run keeps going through an unreachable control plane and decides jobs
// once it answers.
func TestRunBacksOff(t *testing.T) {
	t.Parallel()
	e := approvertest.New(t)
	ctl := &flakyControl{Control: e.Approver}
	ctl.fail.Store(3)
	core, _ := observer.New(zapcore.DebugLevel)
	a, err := New(Config{Control: ctl, Key: e.Key, Rules: mustRules(t), Pools: []string{approvertest.Pool},
		Logger: zap.New(core), PollMin: time.Millisecond, PollMax: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	j := e.Submit(e.Client, "crm-lookup", approvertest.Pool, `{"customer_id":"c-9"}`)
	e.WaitState(j.ID, api.StateQueued)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run() = %v, want nil after cancel", err)
	}
	if ctl.fail.Load() > 0 {
		t.Fatalf("the job was approved before the control plane answered")
	}
}

type flakyControl struct {
	Control
	fail atomic.Int64
}

func (f *flakyControl) List(ctx context.Context, o client.ListOptions) (api.JobList, error) {
	if f.fail.Add(-1) >= 0 {
		return api.JobList{}, context.DeadlineExceeded
	}
	return f.Control.List(ctx, o)
}

// parkingControl counts the list long-polls in flight, and can refuse them as a control
// plane older than the long-poll does.
type parkingControl struct {
	Control
	parked atomic.Int64
	refuse bool
}

func (p *parkingControl) List(ctx context.Context, o client.ListOptions) (api.JobList, error) {
	if o.Wait > 0 {
		if p.refuse {
			return api.JobList{}, &client.APIError{Status: 400, Code: api.CodeUnknownField, Message: "unknown parameter wait_seconds"}
		}
		p.parked.Add(1)
		defer p.parked.Add(-1)
	}
	return p.Control.List(ctx, o)
}

// TestRunLongPolls: with nothing pending, Run parks on the list long-poll, and a submit
// wakes it: the job, and the next one, are approved although the back-off poll would not
// come for an hour. A
// control plane that refuses the long-poll (400) is polled instead.
func TestRunLongPolls(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, e *approvertest.Env) { runLongPolls(t, e, false) })
	runLongPolls(t, approvertest.New(t), true)
}

func runLongPolls(t *testing.T, e *approvertest.Env, refuse bool) {
	ctl := &parkingControl{Control: e.Approver, refuse: refuse}
	poll := time.Hour
	if refuse {
		poll = 5 * time.Millisecond
	}
	a, err := New(Config{Control: ctl, Key: e.Key, Rules: mustRules(t), Pools: []string{approvertest.Pool, approvertest.Other},
		PollMin: poll, PollMax: poll, LongPoll: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !refuse && ctl.parked.Load() < 2 { // one long-poll per pool
		if time.Now().After(deadline) {
			t.Fatal("Run never parked a long-poll on each pool")
		}
		time.Sleep(time.Millisecond) // polling for the parked requests
	}
	j := e.Submit(e.Client, "crm-lookup", approvertest.Pool, `{"customer_id":"c-5"}`)
	e.WaitState(j.ID, api.StateQueued)
	// After a decision the approver looks again at once and parks again: a second job
	// is not left waiting for the back-off.
	j = e.Submit(e.Client, "crm-lookup", approvertest.Pool, `{"customer_id":"c-6"}`)
	e.WaitState(j.ID, api.StateQueued)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run() = %v", err)
	}
}

// refusingDeny is a control plane that refuses every deny as a bad request.
type refusingDeny struct {
	Control
	denies atomic.Int64
}

func (r *refusingDeny) Deny(ctx context.Context, id, reason string) (api.Job, error) {
	r.denies.Add(1)
	return api.Job{}, &client.APIError{Status: 400, Code: api.CodeInvalidField, Message: "reason has a control character"}
}

// TestDenyRefusedAsks: a deny the control plane refuses as invalid leaves the job for a
// person, once, instead of retrying the same deny at every poll; nothing is signed.
func TestDenyRefusedAsks(t *testing.T) {
	t.Parallel()
	e := approvertest.New(t)
	ctl := &refusingDeny{Control: e.Approver}
	a, _ := newApprover(t, e, ctl)
	j := e.Submit(e.Client, "refund", approvertest.Pool, `{"amount":5000}`)
	poll(t, a)
	poll(t, a)
	if p := a.Pending(); len(p) != 1 || p[0].Job.ID != j.ID || !strings.Contains(p[0].Reason, "refused the deny") || ctl.denies.Load() != 1 {
		t.Fatalf("Pending() = %+v after %d denies, want the job asked once with the refusal", p, ctl.denies.Load())
	}
	if got := e.Get(j.ID); got.State != api.StatePendingApproval || got.HasApproval {
		t.Fatalf("job is %s (approval %v), want pending without approval", got.State, got.HasApproval)
	}
}

// TestPlanAskedAndApprovedAsOne: a plan's steps are offered to a person as one plan (never
// as single jobs, never decided by a rule), and approving it signs one plan approval that
// the control plane takes and a worker verifies for the first step; denying it denies every
// step with the reason.
func TestPlanAskedAndApprovedAsOne(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, e *approvertest.Env) {
		a, _ := newApprover(t, e, e.Approver)
		submit := func() api.Plan {
			pl, err := e.Client.SubmitPlan(t.Context(), api.PlanRequest{Steps: []api.PlanStepRequest{
				{Task: "crm-lookup", Pool: approvertest.Pool, Input: json.RawMessage(`{"customer_id":"c-1"}`)}, // a rule would approve it alone
				{Task: "refund", Pool: approvertest.Pool, Input: json.RawMessage(`{"amount":5,"currency":"USD"}`)},
			}})
			if err != nil {
				t.Fatalf("SubmitPlan() = %v", err)
			}
			return pl
		}
		ok, no := submit(), submit()
		poll(t, a)
		poll(t, a)
		if p := a.Pending(); len(p) != 0 {
			t.Fatalf("Pending() = %+v, want no single job: plan steps are asked with their plan", p)
		}
		pp := a.PendingPlans()
		if len(pp) != 2 || pp[0].Plan.ID != ok.ID || pp[1].Plan.ID != no.ID || len(pp[0].Plan.Steps) != 2 || pp[0].Requester != "agent" {
			t.Fatalf("PendingPlans() = %+v, want plans %s and %s of 2 steps each, requester agent", pp, ok.ID, no.ID)
		}
		if err := a.ApprovePlanAsPerson(t.Context(), ok.ID, "alice"); err != nil {
			t.Fatalf("ApprovePlanAsPerson() = %v", err)
		}
		if err := a.ApprovePlanAsPerson(t.Context(), ok.ID, "alice"); err != ErrNotPending {
			t.Fatalf("second ApprovePlanAsPerson() = %v, want ErrNotPending", err)
		}
		lj := e.Lease(approvertest.Pool, ok.Steps[0].ID)
		c, err := e.Verify(lj)
		if err != nil {
			t.Fatalf("worker Verify(the plan approval, step 1) = %v", err)
		}
		if c.Plan != ok.ID || c.ApprovedBy == nil || c.ApprovedBy.Person != "alice" || len(c.Steps) != 2 {
			t.Fatalf("claims = %+v, want one plan approval of plan %s over 2 steps by person alice", c, ok.ID)
		}
		if err := a.DenyPlanAsPerson(t.Context(), no.ID, "alice", "one at a time"); err != nil {
			t.Fatalf("DenyPlanAsPerson() = %v", err)
		}
		for _, st := range no.Steps {
			if got := e.Get(st.ID); got.State != api.StateDenied || got.ErrorMessage != "one at a time" {
				t.Fatalf("step %s of the denied plan = %s %q, want denied with the reason", st.ID, got.State, got.ErrorMessage)
			}
		}
		poll(t, a)
		if pp := a.PendingPlans(); len(pp) != 0 {
			t.Fatalf("PendingPlans() after both decided = %+v, want none", pp)
		}
	})
}

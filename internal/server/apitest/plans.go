package apitest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// The plan scenarios (POST /v1/plans, docs/api.md "Plans") run in both modes like the rest.
func init() {
	scenarios = append(scenarios, planScenarios...)
	needs["plans/not_auto_approved"] = Options{AutoApprove: true}
}

func planBody(inputs ...string) string {
	var steps []string
	for _, in := range inputs {
		steps = append(steps, `{"task":"echo","pool":"`+Pool+`","input":`+in+`,"max_attempts":1}`)
	}
	return `{"steps":[` + strings.Join(steps, ",") + `]}`
}

func (s *suite) submitPlan(t testing.TB, body string) api.Plan {
	t.Helper()
	var p api.Plan
	s.ok(t, http.StatusCreated, s.client, "POST", "/v1/plans", body, &p)
	return p
}

func (s *suite) getPlan(t testing.TB, id string) api.Plan {
	t.Helper()
	var p api.Plan
	s.ok(t, http.StatusOK, s.client, "GET", "/v1/plans/"+id, "", &p)
	return p
}

// eventuallyPlan polls the plan until cond holds: steps move on asynchronously.
func (s *suite) eventuallyPlan(t testing.TB, id, what string, cond func(api.Plan) bool) api.Plan {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		p := s.getPlan(t, id)
		if cond(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("plan %s: timed out waiting for %s; it is %s at step %d", id, what, p.State, p.Current)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// signPlan signs a plan approval for p's steps as they are (no worker verifies it here).
func signPlan(t testing.TB, p api.Plan, inputs []string) string {
	t.Helper()
	key, _, err := approval.GenerateKey("planner")
	if err != nil {
		t.Fatal(err)
	}
	return signPlanWith(t, key, p.ID, p.Steps, inputs)
}

func signPlanWith(t testing.TB, key jose.JSONWebKey, id string, jobs []api.Job, inputs []string) string {
	t.Helper()
	var steps []approval.PlanStep
	for i, j := range jobs {
		steps = append(steps, approval.PlanStep{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Input: []byte(inputs[i])})
	}
	tok, _, err := approval.SignPlan(key, approval.PlanRequest{PlanID: id, Steps: steps})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func states(p api.Plan) string {
	var st []string
	for _, j := range p.Steps {
		st = append(st, string(j.State))
	}
	return strings.Join(st, ",")
}

// noLease checks that nothing else is leasable now.
func (s *suite) noLease(t testing.TB, why string) {
	t.Helper()
	jobs, err := s.Worker.Lease(context.Background(), 1, 300*time.Millisecond)
	if err != nil || len(jobs) != 0 {
		t.Fatalf("Lease() = %d jobs, %v, want none: %s", len(jobs), err, why)
	}
}

var planScenarios = []scenario{
	{"plans/step_plan_id", func(t *testing.T, s *suite) {
		// A step names its plan on GET /v1/jobs/{id}, so an approver can ask about the plan
		// rather than the job alone; a job of no plan names none.
		p := s.submitPlan(t, planBody(`{"n":1}`, `{"n":2}`))
		alone := s.submit(t, "")
		for _, st := range p.Steps {
			var j api.Job
			s.ok(t, 200, s.approver, "GET", "/v1/jobs/"+st.ID, "", &j)
			if j.PlanID != p.ID {
				t.Fatalf("GET /v1/jobs/%s: plan_id %q, want %s", st.ID, j.PlanID, p.ID)
			}
		}
		if a := s.do(t, s.approver, "GET", "/v1/jobs/"+alone.ID, ""); strings.Contains(string(a.raw), "plan_id") {
			t.Fatalf("a job of no plan shows plan_id: %s", a.raw)
		}
	}},
	{"audit/approved_by", func(t *testing.T, s *suite) {
		// Who approved, by the approval's approved_by claim as presented (the control plane
		// verifies nothing; the worker does), is in the audit entry of the attach: a job's,
		// a plan's, and each plan step's queued by the plan approval.
		key, _, err := approval.GenerateKey("k")
		if err != nil {
			t.Fatal(err)
		}
		j := s.submit(t, "")
		tok, _, err := approval.Sign(key, approval.Request{JobID: j.ID, Task: "echo", TaskVersion: "1.0.0", Pool: Pool,
			Input: []byte(`{"n":1}`), ApprovedBy: &approval.ApprovedBy{Person: "alice"}})
		if err != nil {
			t.Fatal(err)
		}
		s.ok(t, 200, s.approver, "POST", "/v1/jobs/"+j.ID+"/approval", `{"token":"`+tok+`"}`, nil)
		inputs := []string{`{"n":1}`, `{"n":2}`}
		p := s.submitPlan(t, planBody(inputs...))
		var steps []approval.PlanStep
		for i, st := range p.Steps {
			steps = append(steps, approval.PlanStep{JobID: st.ID, Task: st.Task, TaskVersion: st.TaskVersion, Pool: st.Pool, Input: []byte(inputs[i])})
		}
		ptok, _, err := approval.SignPlan(key, approval.PlanRequest{PlanID: p.ID, Steps: steps, ApprovedBy: &approval.ApprovedBy{Rule: "two-echoes"}})
		if err != nil {
			t.Fatal(err)
		}
		s.ok(t, 200, s.approver, "POST", "/v1/plans/"+p.ID+"/approval", `{"token":"`+ptok+`"}`, nil)
		s.eventually(t, p.Steps[0].ID, "queued by the plan approval", func(j api.Job) bool { return j.HasApproval })

		type detail struct {
			Plan       string               `json:"plan"`
			ApprovedBy *approval.ApprovedBy `json:"approved_by"`
			Note       string               `json:"approved_by_note"`
		}
		find := func(action, jobID string) (api.AuditEntry, detail) {
			t.Helper()
			var l api.AuditList
			s.ok(t, 200, s.admin, "GET", "/v1/audit?action="+action, "", &l)
			for _, e := range l.Entries {
				if jobID != "" && e.JobID != jobID {
					continue
				}
				var d detail
				if err := json.Unmarshal(e.Detail, &d); err != nil {
					t.Fatalf("%s entry %+v: detail %s: %v", action, e, e.Detail, err)
				}
				if jobID != "" || d.Plan == p.ID {
					return e, d
				}
			}
			t.Fatalf("GET /v1/audit?action=%s = %+v: no entry for job %q plan %s", action, l.Entries, jobID, p.ID)
			return api.AuditEntry{}, detail{}
		}
		e, d := find("job.approve", j.ID)
		if d.ApprovedBy == nil || *d.ApprovedBy != (approval.ApprovedBy{Person: "alice"}) || d.Plan != "" ||
			!strings.Contains(d.Note, "as presented") || !strings.Contains(d.Note, "worker verifies") || e.Role != string(api.RoleApprover) {
			t.Fatalf("job.approve entry %+v (detail %s), want approved_by person alice, said to be unverified, by the approver", e, e.Detail)
		}
		e, d = find("plan.approve", "")
		if d.ApprovedBy == nil || *d.ApprovedBy != (approval.ApprovedBy{Rule: "two-echoes"}) || !strings.Contains(d.Note, "as presented") || e.Role != string(api.RoleApprover) || e.Actor == "" {
			t.Fatalf("plan.approve entry %+v (detail %s), want approved_by rule two-echoes by the approver", e, e.Detail)
		}
		_, d = find("job.approve", p.Steps[0].ID)
		if d.Plan != p.ID || d.ApprovedBy == nil || d.ApprovedBy.Rule != "two-echoes" {
			t.Fatalf("step 1's job.approve detail = %+v, want plan %s approved by rule two-echoes", d, p.ID)
		}
		var sub api.AuditList
		s.ok(t, 200, s.admin, "GET", "/v1/audit?action=plan.submit", "", &sub)
		for _, e := range sub.Entries {
			if !json.Valid(e.Detail) && len(e.Detail) > 0 {
				t.Fatalf("plan.submit detail %q is not JSON", e.Detail)
			}
		}
	}},
	{"plans/in_order", func(t *testing.T, s *suite) {
		inputs := []string{`{"n":1}`, `{"n":2}`, `{"n":3}`}
		p := s.submitPlan(t, planBody(inputs...))
		if !api.ValidPlanID(p.ID) || p.State != api.PlanPendingApproval || p.Approved || len(p.Steps) != 3 || states(p) != "pending_approval,pending_approval,pending_approval" {
			t.Fatalf("POST /v1/plans = %+v, want a pending_approval plan of 3 pending steps", p)
		}
		for i, j := range p.Steps {
			if string(j.Input) != inputs[i] || j.Task != "echo" || j.MaxAttempts != 1 {
				t.Fatalf("step %d = %+v, want task echo with input %s", i+1, j, inputs[i])
			}
		}
		// A step is not approved on its own, not even with a real token.
		s.refused(t, http.StatusConflict, api.CodeInvalidState, s.approver, "POST", "/v1/jobs/"+p.Steps[1].ID+"/approval", `{"token":"`+FakeApproval("x")+`"}`)
		tok := signPlan(t, p, inputs)
		var got api.Plan
		s.ok(t, http.StatusOK, s.approver, "POST", "/v1/plans/"+p.ID+"/approval", `{"token":"`+tok+`"}`, &got)
		if got.State != api.PlanRunning || !got.Approved || got.Current != 1 || states(got) != "queued,pending_approval,pending_approval" {
			t.Fatalf("approved plan = %s at %d (%s), want running with only step 1 queued", got.State, got.Current, states(got))
		}
		s.refused(t, http.StatusConflict, api.CodeInvalidState, s.approver, "POST", "/v1/plans/"+p.ID+"/approval", `{"token":"`+tok+`"}`)
		for i := range inputs {
			lj := s.lease(t)
			if lj.JobID != p.Steps[i].ID || lj.Approval != tok {
				t.Fatalf("lease %d = job %s, want step %d (%s) with the plan approval", i+1, lj.JobID, i+1, p.Steps[i].ID)
			}
			s.noLease(t, fmt.Sprintf("step %d is running; the next waits for it", i+1))
			if _, err := s.Worker.Complete(t.Context(), lj.JobID, complete(lj, "ok", nil)); err != nil {
				t.Fatalf("Complete(step %d) = %v", i+1, err)
			}
		}
		got = s.eventuallyPlan(t, p.ID, "succeeded", func(p api.Plan) bool { return p.State == api.PlanSucceeded })
		if states(got) != "succeeded,succeeded,succeeded" || got.Current != 0 {
			t.Fatalf("plan = %s (%s), want every step succeeded", got.State, states(got))
		}
	}},
	{"plans/failure_cancels_later_steps", func(t *testing.T, s *suite) {
		inputs := []string{`{"n":1}`, `{"n":2}`, `{"n":3}`}
		p := s.submitPlan(t, planBody(inputs...))
		s.ok(t, http.StatusOK, s.approver, "POST", "/v1/plans/"+p.ID+"/approval", `{"token":"`+signPlan(t, p, inputs)+`"}`, nil)
		lj := s.lease(t)
		if _, err := s.Worker.Complete(t.Context(), lj.JobID, complete(lj, "ok", nil)); err != nil {
			t.Fatal(err)
		}
		lj = s.lease(t)
		if lj.JobID != p.Steps[1].ID {
			t.Fatalf("second lease = %s, want step 2", lj.JobID)
		}
		if _, err := s.Worker.Complete(t.Context(), lj.JobID, complete(lj, "task_error", nil)); err != nil {
			t.Fatal(err)
		}
		got := s.eventuallyPlan(t, p.ID, "failed with step 3 cancelled", func(p api.Plan) bool {
			return p.State == api.PlanFailed && p.Steps[2].State == api.StateCancelled
		})
		if got.Current != 2 || states(got) != "succeeded,failed,cancelled" {
			t.Fatalf("plan = %s at %d (%s), want failed at step 2, step 3 cancelled", got.State, got.Current, states(got))
		}
		s.noLease(t, "the plan failed")
	}},
	{"plans/deny", func(t *testing.T, s *suite) {
		inputs := []string{`{"n":1}`, `{"n":2}`}
		p := s.submitPlan(t, planBody(inputs...))
		s.refused(t, http.StatusNotFound, api.CodeNotFound, s.otherApprover, "POST", "/v1/plans/"+p.ID+"/deny", `{"reason":"no"}`)
		var got api.Plan
		s.ok(t, http.StatusOK, s.approver, "POST", "/v1/plans/"+p.ID+"/deny", `{"reason":"not this week"}`, &got)
		if got.State != api.PlanDenied || states(got) != "denied,denied" || got.Steps[1].ErrorMessage != "not this week" {
			t.Fatalf("denied plan = %s (%s), want every step denied with the reason", got.State, states(got))
		}
		s.refused(t, http.StatusConflict, api.CodeInvalidState, s.approver, "POST", "/v1/plans/"+p.ID+"/approval", `{"token":"`+signPlan(t, p, inputs)+`"}`)
		s.refused(t, http.StatusConflict, api.CodeInvalidState, s.approver, "POST", "/v1/plans/"+p.ID+"/deny", `{"reason":"again"}`)
	}},
	{"plans/not_auto_approved", func(t *testing.T, s *suite) {
		// The control plane auto-approves echo jobs here, but never a plan's step: a plan is
		// approved with one decision over all its steps.
		if j := s.submit(t, ""); j.State != api.StateQueued {
			t.Fatalf("a lone echo job is %s, want queued (auto-approved)", j.State)
		}
		p := s.submitPlan(t, planBody(`{"n":1}`, `{"n":2}`))
		if p.State != api.PlanPendingApproval || states(p) != "pending_approval,pending_approval" {
			t.Fatalf("plan = %s (%s), want every step pending approval", p.State, states(p))
		}
	}},
	{"plans/cancel_a_step", func(t *testing.T, s *suite) {
		inputs := []string{`{"n":1}`, `{"n":2}`}
		p := s.submitPlan(t, planBody(inputs...))
		s.ok(t, http.StatusOK, s.client, "POST", "/v1/jobs/"+p.Steps[1].ID+"/cancel", "", nil)
		s.eventuallyPlan(t, p.ID, "cancelled with every step", func(p api.Plan) bool {
			return p.State == api.PlanCancelled && states(p) == "cancelled,cancelled"
		})
		s.refused(t, http.StatusConflict, api.CodeInvalidState, s.approver, "POST", "/v1/plans/"+p.ID+"/approval", `{"token":"`+signPlan(t, p, inputs)+`"}`)
		s.noLease(t, "the plan was cancelled")
	}},
	{"plans/refusals", func(t *testing.T, s *suite) {
		var before api.JobList
		s.ok(t, http.StatusOK, s.admin, "GET", "/v1/jobs?limit=500", "", &before)
		for _, c := range []struct {
			name, body string
			status     int
			code       string
			mention    string
		}{
			{"no steps", `{"steps":[]}`, 400, api.CodeInvalidField, "0 steps"},
			{"too many steps", planBody(strings.Split(strings.Repeat(`{"n":1};`, api.MaxPlanSteps+1), ";")[:api.MaxPlanSteps+1]...), 400, api.CodeInvalidField, "101 steps"},
			{"unknown task in step 2", `{"steps":[{"task":"echo","pool":"` + Pool + `","input":{"n":1}},{"task":"nope","pool":"` + Pool + `","input":{}}]}`, 400, api.CodeUnknownTask, "steps[1]"},
			{"invalid input in step 1", `{"steps":[{"task":"echo","pool":"` + Pool + `","input":{"n":"x"}}]}`, 400, api.CodeInputInvalid, "steps[0]"},
			{"step with an approval", `{"steps":[{"task":"echo","pool":"` + Pool + `","input":{"n":1},"approval":"x"}]}`, 400, api.CodeUnknownField, ""},
			{"step in a pool not the token's", `{"steps":[{"task":"echo","pool":"` + Other + `","input":{"n":1}}]}`, 403, api.CodeForbidden, "steps[0]"},
		} {
			e := s.refused(t, c.status, c.code, s.client, "POST", "/v1/plans", c.body)
			if !strings.Contains(e.Message, c.mention) {
				t.Errorf("%s: %q, want it to mention %q", c.name, e.Message, c.mention)
			}
		}
		// Each input is within the cap; together they are not: a plan's steps share one cap.
		half := `{"n":1,"pad":"` + strings.Repeat("x", api.DefaultMaxInput*6/10) + `"}`
		s.refused(t, http.StatusRequestEntityTooLarge, api.CodeBodyTooLarge, s.client, "POST", "/v1/plans", planBody(half, half))
		var after api.JobList
		s.ok(t, http.StatusOK, s.admin, "GET", "/v1/jobs?limit=500", "", &after)
		if len(after.Jobs) != len(before.Jobs) {
			t.Errorf("refused plans left %d jobs behind", len(after.Jobs)-len(before.Jobs))
		}

		inputs := []string{`{"n":1}`, `{"n":2}`}
		p := s.submitPlan(t, planBody(inputs...))
		other := s.submitPlan(t, planBody(inputs...))
		s.refused(t, http.StatusNotFound, api.CodeNotFound, s.otherClient, "GET", "/v1/plans/"+p.ID, "")
		s.refused(t, http.StatusNotFound, api.CodeNotFound, s.client, "GET", "/v1/plans/plan_000000000000000000000000", "")
		s.refused(t, http.StatusNotFound, api.CodeNotFound, s.client, "GET", "/v1/plans/nope", "")
		s.refused(t, http.StatusForbidden, api.CodeForbidden, s.client, "POST", "/v1/plans/"+p.ID+"/approval", `{"token":"`+signPlan(t, p, inputs)+`"}`)
		key, _, _ := approval.GenerateKey("k")
		single, _, _ := approval.Sign(key, approval.Request{JobID: p.Steps[0].ID, Task: "echo", TaskVersion: "1.0.0", Pool: Pool, Input: []byte(inputs[0])})
		for name, tok := range map[string]string{
			"another plan's approval":       signPlan(t, other, inputs),
			"a single job's approval":       single,
			"steps reordered":               signPlanWith(t, key, p.ID, []api.Job{p.Steps[1], p.Steps[0]}, inputs),
			"a step missing":                signPlanWith(t, key, p.ID, p.Steps[:1], inputs),
			"only the shape of an approval": FakeApproval("x"),
		} {
			e := s.refused(t, http.StatusBadRequest, api.CodeInvalidField, s.approver, "POST", "/v1/plans/"+p.ID+"/approval", `{"token":"`+tok+`"}`)
			if !strings.Contains(e.Message, "token") {
				t.Errorf("%s: %q, want it to name the token", name, e.Message)
			}
		}
		if got := s.getPlan(t, p.ID); got.State != api.PlanPendingApproval || got.Approved {
			t.Fatalf("after refused approvals the plan is %s (approved %v), want pending_approval", got.State, got.Approved)
		}
	}},
	{"plans/idempotency", func(t *testing.T, s *suite) {
		body := strings.TrimSuffix(planBody(`{"n":1}`, `{"n":2}`), "}") + `,"idempotency_key":"plan-k1"}`
		p := s.submitPlan(t, body)
		var again api.Plan
		s.ok(t, http.StatusOK, s.client, "POST", "/v1/plans", body, &again)
		if again.ID != p.ID || again.Steps[0].ID != p.Steps[0].ID || again.Steps[1].ID != p.Steps[1].ID {
			t.Fatalf("repeated POST /v1/plans = %s %s %s, want plan %s with the same steps", again.ID, again.Steps[0].ID, again.Steps[1].ID, p.ID)
		}
		other := strings.Replace(body, `{"n":2}`, `{"n":3}`, 1)
		s.refused(t, http.StatusConflict, api.CodeIdempotency, s.client, "POST", "/v1/plans", other)
	}},
}

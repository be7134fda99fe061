package process

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/internal/approver/approvertest"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestPlanStepsNotAllCreated: the approver meets a plan before every step's job exists on
// the control plane (its submit is under way). It must not offer a person, or sign, a plan
// of fewer steps than the control plane will run, nor give the plan up: it asks again at a
// later poll and shows, and signs, the whole plan once its steps exist. A click on a row
// shown before the last steps were created signs nothing and shows the plan again.
func TestPlanStepsNotAllCreated(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		omit bool // the plan leaves missing steps out, rather than showing placeholders
		// click: the person approves the row shown before the steps exist, after they were
		// created but before the approver polled again.
		click bool
	}{
		{name: "placeholders"},
		{name: "omitted", omit: true},
		{name: "omitted clicked before the next poll", omit: true, click: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			bothModes(t, func(t *testing.T, e *approvertest.Env) {
				pl, err := e.Client.SubmitPlan(t.Context(), api.PlanRequest{Steps: []api.PlanStepRequest{
					{Task: "crm-lookup", Pool: approvertest.Pool, Input: json.RawMessage(`{"customer_id":"c-1"}`)},
					{Task: "refund", Pool: approvertest.Pool, Input: json.RawMessage(`{"amount":5,"currency":"USD"}`)},
					{Task: "crm-lookup", Pool: approvertest.Pool, Input: json.RawMessage(`{"customer_id":"c-2"}`)},
				}})
				if err != nil {
					t.Fatalf("SubmitPlan() = %v", err)
				}
				var all []string
				for _, st := range pl.Steps {
					all = append(all, st.ID)
				}
				ctl := &approvertest.StagedPlans{Client: e.Approver, Omit: tt.omit, Missing: map[string]bool{all[1]: true, all[2]: true}}
				a, logs := newApprover(t, e, ctl)
				shown := func() []string {
					var ids []string
					for _, p := range a.PendingPlans() {
						for _, st := range p.Plan.Steps {
							ids = append(ids, st.ID)
						}
					}
					return ids
				}

				poll(t, a)
				poll(t, a)
				if !tt.omit && len(a.PendingPlans()) != 0 {
					t.Fatalf("PendingPlans() = %+v while steps 2 and 3 have no job, want none shown", a.PendingPlans())
				}
				if p := a.Pending(); len(p) != 0 {
					t.Fatalf("Pending() = %+v, want no step asked alone", p)
				}
				if !tt.omit && ctl.Fetches() < 2 {
					t.Fatalf("the plan was fetched %d times in two polls, want it asked about again at the second", ctl.Fetches())
				}

				ctl.Open() // the submit created the other steps' jobs
				if tt.click {
					err := a.ApprovePlanAsPerson(t.Context(), pl.ID, "alice")
					if !errors.Is(err, ErrPlanChanged) {
						t.Fatalf("ApprovePlanAsPerson(the row shown before steps 2 and 3 existed) = %v, want ErrPlanChanged", err)
					}
				} else {
					poll(t, a)
				}
				if got := shown(); !slices.Equal(got, all) {
					t.Fatalf("PendingPlans() shows the steps %v once they all exist, want %v", got, all)
				}
				if err := a.ApprovePlanAsPerson(t.Context(), pl.ID, "alice"); err != nil {
					t.Fatalf("ApprovePlanAsPerson() = %v", err)
				}
				attached := ctl.Sent()
				if len(attached) != 1 || !slices.Equal(attached[0], all) {
					t.Fatalf("plan approvals sent over the steps %v, want one, over %v", attached, all)
				}
				c, err := e.Verify(e.Lease(approvertest.Pool, all[0]))
				if err != nil || c.Plan != pl.ID || len(c.Steps) != 3 {
					t.Fatalf("worker Verify(step 1) = %+v, %v; want the plan approval over 3 steps", c, err)
				}
				if l := logs.Filter(func(l observer.LoggedEntry) bool { return l.Level >= zapcore.ErrorLevel }); l.Len() != 0 {
					t.Fatalf("error lines %v: a plan whose submit is under way is not a lying control plane", l.All())
				}
			})
		})
	}
}

// TestPlanRunningLeftQuietly: once a plan is approved, an approver that showed it drops its
// row at its next poll, and the plan's later steps, which stay pending_approval until their
// turn and so are listed, are left alone by every approver (one started afterwards too)
// without calling the control plane a liar, asking anybody or signing anything.
func TestPlanRunningLeftQuietly(t *testing.T) {
	t.Parallel()
	bothModes(t, func(t *testing.T, e *approvertest.Env) {
		pl, err := e.Client.SubmitPlan(t.Context(), api.PlanRequest{Steps: []api.PlanStepRequest{
			{Task: "crm-lookup", Pool: approvertest.Pool, Input: json.RawMessage(`{"customer_id":"c-1"}`)},
			{Task: "refund", Pool: approvertest.Pool, Input: json.RawMessage(`{"amount":5,"currency":"USD"}`)},
		}})
		if err != nil {
			t.Fatalf("SubmitPlan() = %v", err)
		}
		approver, _ := newApprover(t, e, e.Approver)
		other, otherLogs := newApprover(t, e, e.Approver)
		poll(t, approver)
		poll(t, other)
		if len(other.PendingPlans()) != 1 {
			t.Fatalf("PendingPlans() = %+v, want the plan", other.PendingPlans())
		}
		if err := approver.ApprovePlanAsPerson(t.Context(), pl.ID, "alice"); err != nil {
			t.Fatalf("ApprovePlanAsPerson() = %v", err)
		}
		e.WaitState(pl.Steps[0].ID, api.StateQueued)
		if got := e.Get(pl.Steps[1].ID); got.State != api.StatePendingApproval {
			t.Fatalf("step 2 of the approved plan is %s, want pending_approval until step 1 succeeds", got.State)
		}
		later, laterLogs := newApprover(t, e, e.Approver)
		for _, a := range []*Approver{approver, other, later, other, later} {
			poll(t, a)
		}
		for name, a := range map[string]*Approver{"the approver that approved": approver, "another that showed the plan": other, "one started later": later} {
			if len(a.PendingPlans()) != 0 || len(a.Pending()) != 0 {
				t.Fatalf("%s shows plans %+v, jobs %+v; want nothing", name, a.PendingPlans(), a.Pending())
			}
		}
		if err := other.ApprovePlanAsPerson(t.Context(), pl.ID, "bob"); !errors.Is(err, ErrNotPending) {
			t.Fatalf("another approver's ApprovePlanAsPerson() of the approved plan = %v, want ErrNotPending", err)
		}
		if got := e.Get(pl.Steps[1].ID); got.State != api.StatePendingApproval || got.HasApproval {
			t.Fatalf("step 2 is %s (approval %v) after the other approvers polled, want pending_approval without one", got.State, got.HasApproval)
		}
		for _, logs := range []*observer.ObservedLogs{otherLogs, laterLogs} {
			if l := logs.Filter(func(l observer.LoggedEntry) bool { return l.Level >= zapcore.WarnLevel }); l.Len() != 0 {
				t.Fatalf("warning lines %v: an approved plan's waiting steps are normal", l.All())
			}
		}
	})
}

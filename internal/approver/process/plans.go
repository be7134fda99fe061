package process

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// Planner is a control plane with plans (POST /v1/plans and friends); *client.Client is
// one. A step of a plan is approved only with its plan: the approver asks a person about
// the whole plan, one row, and signs one plan approval (approval.SignPlan). Rules decide
// single jobs only; a plan always waits for a person.
type Planner interface {
	GetPlan(ctx context.Context, id string) (api.Plan, error)
	ApprovePlan(ctx context.Context, id, token string) (api.Plan, error)
	DenyPlan(ctx context.Context, id, reason string) (api.Plan, error)
}

// PendingPlan is a plan waiting for a person, exactly as it was checked and shown: the plan
// approval a person gives is signed over these steps and inputs.
type PendingPlan struct {
	Plan      api.Plan
	Requester string // the first step's submitter's name, or its token id when unknown
	Since     time.Time
}

// ErrCannotPlan: the control plane has no plans (a Control that is not a Planner).
var ErrCannotPlan = errors.New("this control plane has no plans")

// askPlan offers plan id (of which a listed job is a step) to a person, once: every step
// must be pending approval in a pool this approver serves, and each input hashable.
func (a *Approver) askPlan(ctx context.Context, stepID, id string) bool {
	a.mu.Lock()
	_, asked := a.plans[id]
	if asked {
		a.stepPlan[stepID] = id
	}
	a.mu.Unlock()
	if asked {
		return false
	}
	pc, ok := a.cfg.Control.(Planner)
	if !ok {
		a.log.Warn("a listed job is a plan step but this control plane client has no plans", zap.String("job", stepID), zap.String("plan", id))
		return false
	}
	pl, err := pc.GetPlan(ctx, id)
	if err != nil {
		a.log.Warn("cannot fetch a pending plan", zap.String("plan", id), zap.Error(err))
		return false
	}
	for _, st := range pl.Steps {
		if st.Task == "" && st.CreatedAt.IsZero() {
			// The plan is recorded before its steps' jobs: one is not created yet. Ask at a
			// later poll, once they all exist.
			a.log.Debug("a plan's steps are not all created yet", zap.String("plan", id))
			return false
		}
	}
	if problem := a.checkPlan(pl, id, stepID); problem != "" {
		a.log.Error("refused a plan from the control plane: "+problem, zap.String("plan", id))
		a.mu.Lock()
		a.skip[stepID] = true
		a.mu.Unlock()
		return false
	}
	requester, _ := a.requester(ctx, pl.Steps[0])
	a.mu.Lock()
	defer a.mu.Unlock()
	a.plans[id] = PendingPlan{Plan: pl, Requester: requester, Since: pl.CreatedAt}
	for _, st := range pl.Steps {
		a.stepPlan[st.ID] = id
	}
	a.notifyLocked()
	a.log.Info("asking a person about a plan", zap.String("plan", id), zap.Int("steps", len(pl.Steps)))
	return true
}

func (a *Approver) checkPlan(pl api.Plan, id, stepID string) string {
	if pl.ID != id {
		return fmt.Sprintf("asked for plan %q, got %q", id, pl.ID)
	}
	if pl.State != api.PlanPendingApproval || pl.Approved {
		return fmt.Sprintf("the plan is %q, not pending_approval", pl.State)
	}
	if err := api.CheckPlanSize(len(pl.Steps)); err != nil {
		return err.Error()
	}
	found := false
	for i, st := range pl.Steps {
		if problem := a.check(st, st.ID, st.Pool); problem != "" {
			return fmt.Sprintf("step %d: %s", i+1, problem)
		}
		found = found || st.ID == stepID
	}
	if !found {
		return fmt.Sprintf("the plan does not hold job %s, which named it", stepID)
	}
	return ""
}

// PendingPlans lists the plans waiting for a person, oldest first.
func (a *Approver) PendingPlans() []PendingPlan {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]PendingPlan, 0, len(a.plans))
	for _, p := range a.plans {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Since.Equal(out[j].Since) {
			return out[i].Since.Before(out[j].Since)
		}
		return out[i].Plan.ID < out[j].Plan.ID
	})
	return out
}

// takePlan removes plan id from the asked set, so that two clicks cannot both act on it.
func (a *Approver) takePlan(id string) (PendingPlan, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.plans[id]
	if !ok {
		return PendingPlan{}, ErrNotPending
	}
	delete(a.plans, id)
	for _, st := range p.Plan.Steps {
		a.skip[st.ID] = true
	}
	a.notifyLocked()
	return p, nil
}

func (a *Approver) putBackPlan(p PendingPlan) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, st := range p.Plan.Steps {
		delete(a.skip, st.ID)
	}
	a.plans[p.Plan.ID] = p
	a.notifyLocked()
}

// ApprovePlanAsPerson signs ONE plan approval for the asked plan id on behalf of person,
// over its steps exactly as they were shown, and attaches it.
func (a *Approver) ApprovePlanAsPerson(ctx context.Context, id, person string) error {
	pc, ok := a.cfg.Control.(Planner)
	if !ok {
		return ErrCannotPlan
	}
	p, err := a.takePlan(id)
	if err != nil {
		return err
	}
	steps := make([]approval.PlanStep, len(p.Plan.Steps))
	attempts := 1
	for i, j := range p.Plan.Steps {
		steps[i] = approval.PlanStep{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Input: j.Input}
		attempts = max(attempts, j.MaxAttempts)
	}
	by := approval.ApprovedBy{Person: person}
	tok, _, err := approval.SignPlan(a.cfg.Key, approval.PlanRequest{PlanID: id, Steps: steps, TTL: a.cfg.PersonTTL,
		MaxAttempts: attempts, Approver: subject(by), ApprovedBy: &by})
	if err != nil {
		a.putBackPlan(p)
		return fmt.Errorf("sign the plan approval: %w", err)
	}
	fields := []zap.Field{zap.String("plan", id), zap.Int("steps", len(steps)), zap.String("person", person)}
	if _, err := pc.ApprovePlan(ctx, id, tok); err != nil {
		a.logAttach(err, "approve", fields)
		if isGone(err) {
			return ErrNotPending
		}
		a.putBackPlan(p)
		return err
	}
	a.log.Info("plan approved by a person", fields...)
	return nil
}

// DenyPlanAsPerson refuses the asked plan id with reason: every step ends denied.
func (a *Approver) DenyPlanAsPerson(ctx context.Context, id, person, reason string) error {
	pc, ok := a.cfg.Control.(Planner)
	if !ok {
		return ErrCannotPlan
	}
	p, err := a.takePlan(id)
	if err != nil {
		return err
	}
	fields := []zap.Field{zap.String("plan", id), zap.String("person", person)}
	if _, err := pc.DenyPlan(ctx, id, reason); err != nil {
		a.logAttach(err, "deny", fields)
		if isGone(err) {
			return ErrNotPending
		}
		a.putBackPlan(p)
		return err
	}
	a.log.Info("plan denied by a person", fields...)
	return nil
}

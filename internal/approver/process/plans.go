package process

import (
	"context"
	"errors"
	"fmt"
	"slices"
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

// ErrPlanChanged: the plan's steps are no longer the ones shown (a step's job was created
// since, as while the plan's submit is under way); nothing was signed, and the plan is
// shown again as it now is.
var ErrPlanChanged = errors.New("the plan changed since it was shown; review it again")

// planVerdict is what to do with a fetched plan.
type planVerdict int

const (
	planAsk     planVerdict = iota // every step checked: ask a person
	planWait                       // a step's job is not created yet: ask at a later poll
	planDecided                    // approved or ended: nothing to ask
	planRefused                    // the control plane is lying or broken
)

// settled reports whether plan pl no longer waits for an approval: it has one, or it is
// running or ended.
func settled(pl api.Plan) bool {
	switch pl.State {
	case api.PlanRunning, api.PlanSucceeded, api.PlanFailed, api.PlanCancelled, api.PlanDenied:
		return true
	}
	return pl.Approved
}

// judgePlan says what to do with plan pl, fetched as id for its step stepID, and for a
// refusal what is wrong.
func (a *Approver) judgePlan(pl api.Plan, id, stepID string) (planVerdict, string) {
	for _, st := range pl.Steps {
		if st.Task == "" && st.CreatedAt.IsZero() {
			// The plan is recorded before its steps' jobs: one is not created yet.
			return planWait, ""
		}
	}
	if pl.ID == id && settled(pl) {
		// An approved plan's later steps stay pending_approval until their turn, so they
		// are listed: there is nothing to ask, and nothing wrong.
		return planDecided, ""
	}
	if problem := a.checkPlan(pl, id, stepID); problem != "" {
		return planRefused, problem
	}
	return planAsk, ""
}

// askPlan offers plan id (of which a listed job is a step) to a person: every step must be
// pending approval in a pool this approver serves, and each input hashable. A plan already
// asked about is fetched again only when a listed step is not among the steps shown: the
// plan was shown before that step's job existed (or the control plane changed it), and is
// shown again as it now is.
func (a *Approver) askPlan(ctx context.Context, stepID, id string) bool {
	a.mu.Lock()
	shown, asked := a.plans[id]
	holds := asked && holdsJob(shown.Plan, stepID)
	if holds {
		a.stepPlan[stepID] = id
	}
	a.mu.Unlock()
	if holds {
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
	switch verdict, problem := a.judgePlan(pl, id, stepID); verdict {
	case planWait:
		a.log.Debug("a plan's steps are not all created yet; asking at a later poll", zap.String("plan", id))
		return false
	case planDecided:
		a.log.Debug("plan already decided", zap.String("plan", id), zap.String("state", string(pl.State)))
		a.mu.Lock()
		a.skip[stepID] = true
		a.mu.Unlock()
		return false
	case planRefused:
		a.log.Error("refused a plan from the control plane: "+problem, zap.String("plan", id))
		a.mu.Lock()
		a.skip[stepID] = true
		a.mu.Unlock()
		return false
	}
	requester, _ := a.requester(ctx, pl.Steps[0])
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, still := a.plans[id]; asked && !still {
		return false // a person took the plan shown meanwhile
	}
	a.plans[id] = PendingPlan{Plan: pl, Requester: requester, Since: pl.CreatedAt}
	for _, st := range pl.Steps {
		a.stepPlan[st.ID] = id
	}
	a.notifyLocked()
	if asked {
		a.log.Info("a plan changed since it was shown; showing it again", zap.String("plan", id), zap.Int("steps", len(pl.Steps)))
		return false
	}
	a.log.Info("asking a person about a plan", zap.String("plan", id), zap.Int("steps", len(pl.Steps)))
	return true
}

func holdsJob(pl api.Plan, id string) bool {
	return slices.ContainsFunc(pl.Steps, func(j api.Job) bool { return j.ID == id })
}

// sameSteps reports whether two views of a plan have the same steps in the same order:
// the same job ids, tasks, versions, pools, attempts and input hashes, everything a plan
// approval binds.
func sameSteps(x, y api.Plan) bool {
	if len(x.Steps) != len(y.Steps) {
		return false
	}
	for i, a := range x.Steps {
		b := y.Steps[i]
		if a.ID != b.ID || a.Task != b.Task || a.TaskVersion != b.TaskVersion || a.Pool != b.Pool || a.MaxAttempts != b.MaxAttempts {
			return false
		}
		ha, errA := approval.InputHash(a.Input)
		hb, errB := approval.InputHash(b.Input)
		if errA != nil || errB != nil || ha != hb {
			return false
		}
	}
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
	// What is signed is the plan as shown; the control plane's current view only decides
	// whether to sign it. A plan shown before all its steps' jobs existed would otherwise be
	// signed over fewer steps than the plan has, and the person would have approved a plan
	// they never saw whole.
	switch err := a.confirmPlan(ctx, pc, p); {
	case errors.Is(err, ErrPlanChanged), errors.Is(err, ErrNotPending):
		return err
	case err != nil:
		a.putBackPlan(p)
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

// confirmPlan fetches plan p (taken by takePlan) again and returns nil if its steps are
// still the ones shown. Otherwise the plan is shown again as it now is, or left to a later
// poll, and the error is ErrPlanChanged; ErrNotPending if it was decided meanwhile.
func (a *Approver) confirmPlan(ctx context.Context, pc Planner, p PendingPlan) error {
	id := p.Plan.ID
	fresh, err := pc.GetPlan(ctx, id)
	if isGone(err) {
		return ErrNotPending
	}
	if err != nil {
		return fmt.Errorf("fetch the plan to confirm its steps: %w", err)
	}
	if fresh.ID == id && settled(fresh) {
		return ErrNotPending
	}
	if sameSteps(p.Plan, fresh) {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, st := range p.Plan.Steps {
		delete(a.skip, st.ID)
		delete(a.stepPlan, st.ID)
	}
	if verdict, _ := a.judgePlan(fresh, id, p.Plan.Steps[0].ID); verdict == planAsk {
		a.plans[id] = PendingPlan{Plan: fresh, Requester: p.Requester, Since: fresh.CreatedAt}
		for _, st := range fresh.Steps {
			a.stepPlan[st.ID] = id
		}
	}
	// Otherwise the next poll asks about the plan afresh, with the checks and log lines of
	// a plan seen for the first time.
	a.notifyLocked()
	a.log.Info("a plan changed since it was shown; nothing signed, showing it again", zap.String("plan", id),
		zap.Int("steps_shown", len(p.Plan.Steps)), zap.Int("steps", len(fresh.Steps)))
	return ErrPlanChanged
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

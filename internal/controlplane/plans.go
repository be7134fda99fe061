package controlplane

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// Plans is what a backend stores for plans (POST /v1/plans and friends): the plan record
// only. A plan's steps are ordinary jobs, and its state is derived from theirs by the
// layer, which also moves it on (PlanState, advance): the backends know nothing of the
// order of steps.
type Plans interface {
	// CreatePlan records pl and, for each step, which plan it belongs to. When
	// pl.IdempotencyKey is set and a plan of pl.Pool already has it, CreatePlan returns that
	// plan (created false), or IdempotencyConflict if its RequestHash differs.
	CreatePlan(ctx context.Context, pl PlanRecord) (PlanRecord, bool, error)
	// Plan returns a plan, or ErrNoPlan.
	Plan(ctx context.Context, id string) (PlanRecord, error)
	// PlanOfJob returns the id of the plan job id is a step of, or "".
	PlanOfJob(ctx context.Context, jobID string) (string, error)
	// AttachPlanApproval stores token as plan id's approval for p, once: a plan that has one
	// is refused with invalid_state. A backend that audits its own writes records
	// plan.approve with ApprovalAuditDetail.
	AttachPlanApproval(ctx context.Context, p Principal, id, token string) (PlanRecord, error)
	// ActivePlans lists the plans not ended (EndPlan).
	ActivePlans(ctx context.Context) ([]string, error)
	// EndPlan marks a plan ended: every step is terminal, nothing is left to move on.
	EndPlan(ctx context.Context, id string) error
}

// PlanRecord is what a backend stores of a plan.
type PlanRecord struct {
	ID             string    `json:"id"`
	Pool           string    `json:"pool"`  // the first step's pool: scopes the idempotency key
	Steps          []string  `json:"steps"` // job ids, in order
	Approval       string    `json:"approval,omitempty"`
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	RequestHash    []byte    `json:"request_hash,omitempty"`
	CreatedBy      string    `json:"created_by"`
	CreatedAt      time.Time `json:"created_at"`
	Ended          bool      `json:"ended,omitempty"`
}

// ErrNoPlan is what Plans.Plan returns for an id it does not hold.
var ErrNoPlan = errors.New("no such plan")

// NoPlan is the refusal for a plan the caller may not see or that does not exist.
func NoPlan(id string) *client.APIError {
	return Refuse(http.StatusNotFound, api.CodeNotFound, "no plan %q in the pools your token may see", id)
}

// planActor is who the layer acts as when it moves a plan on (queues its next step,
// cancels the rest): the audit log names the plan.
func planActor(id string) Principal {
	return Principal{TokenID: id, Name: "plan " + id, Role: api.RoleAdmin, Pool: api.AllPools}
}

func (s *Server) planRoutes(m *http.ServeMux, pb Plans) {
	m.Handle("POST /v1/plans", s.auth(submitters, func(w http.ResponseWriter, r *http.Request, p Principal) error {
		return s.hPlanSubmit(w, r, p, pb)
	}))
	m.Handle("GET /v1/plans/{id}", s.auth(readers, func(w http.ResponseWriter, r *http.Request, p Principal) error {
		if err := OnlyParams(r); err != nil {
			return err
		}
		pl, err := s.planView(r.Context(), p, pb, r.PathValue("id"), true)
		if err != nil {
			return err
		}
		api.WriteJSON(w, http.StatusOK, pl)
		return nil
	}))
	m.Handle("POST /v1/plans/{id}/approval", s.auth(approvers, func(w http.ResponseWriter, r *http.Request, p Principal) error {
		return s.hPlanApprove(w, r, p, pb)
	}))
	m.Handle("POST /v1/plans/{id}/deny", s.auth(approvers, func(w http.ResponseWriter, r *http.Request, p Principal) error {
		return s.hPlanDeny(w, r, p, pb)
	}))
}

// PlanRequestHash is what an idempotent replay of POST /v1/plans must match.
func PlanRequestHash(steps []Submission) []byte {
	h := sha256.New()
	for _, s := range steps {
		h.Write(s.RequestHash)
	}
	return h.Sum(nil)
}

func (s *Server) hPlanSubmit(w http.ResponseWriter, r *http.Request, p Principal, pb Plans) error {
	var req api.PlanRequest
	// The steps' inputs together get one input cap, not one each: a plan is no way to send
	// a hundred times more than a job.
	if err := Decode(w, r, int64(s.cfg.MaxInputBytes)+2*bodySlack, &req, false); err != nil {
		return err
	}
	if err := api.CheckPlanSize(len(req.Steps)); err != nil {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "%v", err)
	}
	if req.IdempotencyKey != "" && !api.ValidIdempotencyKey(req.IdempotencyKey) {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "idempotency_key must be 1-200 printable ASCII characters without spaces")
	}
	ctx := r.Context()
	// Every step is checked before anything is written: one bad step refuses the plan.
	subs := make([]Submission, len(req.Steps))
	for i, st := range req.Steps {
		sr, err := st.Submit()
		if err == nil {
			subs[i], err = s.prepare(ctx, p, sr, false)
		}
		if err != nil {
			return stepRefusal(i, err)
		}
	}
	rec := PlanRecord{ID: api.NewPlanID(), Pool: subs[0].Pool, IdempotencyKey: req.IdempotencyKey,
		RequestHash: PlanRequestHash(subs), CreatedBy: p.Who(), CreatedAt: time.Now().UTC()}
	for _, sub := range subs {
		rec.Steps = append(rec.Steps, sub.ID)
	}
	rec, created, err := pb.CreatePlan(ctx, rec)
	if err != nil {
		return err
	}
	// The plan is recorded before its jobs, so that no step is ever a job without its plan
	// (which would let it be approved alone). Each step's job is submitted under a key of
	// its own: a retried submit (same idempotency key) makes the steps a failed one left
	// out, and finds the others.
	for i := range subs {
		subs[i].ID = rec.Steps[i]
		subs[i].IdempotencyKey = fmt.Sprintf("%s/%d", rec.ID, i+1)
		if _, _, err := s.recordSubmission(ctx, p, subs[i]); err != nil {
			return stepRefusal(i, err)
		}
	}
	view, err := s.planView(ctx, p, pb, rec.ID, false)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	api.WriteJSON(w, status, view)
	return nil
}

// stepRefusal names the step in a refusal.
func stepRefusal(i int, err error) error {
	if ae, ok := asRefusal(err); ok {
		c := *ae
		c.Message = fmt.Sprintf("steps[%d]: %s", i, ae.Message)
		return &c
	}
	return err
}

func (s *Server) hPlanApprove(w http.ResponseWriter, r *http.Request, p Principal, pb Plans) error {
	var req api.ApproveRequest
	if err := Decode(w, r, approval.MaxTokenBytes+1024, &req, false); err != nil {
		return err
	}
	if err := approval.CheckShape(req.Token); err != nil {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "token: %v", err)
	}
	ctx := r.Context()
	id := r.PathValue("id")
	view, err := s.planView(ctx, p, pb, id, false)
	if err != nil {
		return err
	}
	if view.State != api.PlanPendingApproval {
		return Refuse(http.StatusConflict, api.CodeInvalidState, "plan %s is %s; only a pending_approval plan takes an approval", id, view.State)
	}
	// A door check for mistakes, not a security check (the control plane holds no keys;
	// each worker verifies): the token must be a plan approval for exactly these steps.
	c, _, err := approval.Inspect(req.Token)
	if err != nil {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "token: %v", err)
	}
	if c.Plan != id || len(c.Steps) != len(view.Steps) {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "token is not a plan approval for plan %s and its %d steps (sign one with approval.SignPlan)", id, len(view.Steps))
	}
	for i, st := range c.Steps {
		if st.JobID != view.Steps[i].ID {
			return Refuse(http.StatusBadRequest, api.CodeInvalidField, "token: step %d is job %q; plan %s's step %d is %s", i+1, st.JobID, id, i+1, view.Steps[i].ID)
		}
	}
	if _, err := pb.AttachPlanApproval(ctx, p, id, req.Token); err != nil {
		return err
	}
	s.record(ctx, p, "plan.approve", "", ApprovalAuditDetail(req.Token))
	s.log.Info("plan approved", zap.String("plan_id", id), zap.String("by", p.TokenID))
	view, err = s.planView(ctx, p, pb, id, true)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, view)
	return nil
}

func (s *Server) hPlanDeny(w http.ResponseWriter, r *http.Request, p Principal, pb Plans) error {
	var body api.DenyBody
	if err := Decode(w, r, smallBody, &body, false); err != nil {
		return err
	}
	reason, code, err := body.Check()
	if err != nil {
		return Refuse(http.StatusBadRequest, code, "%v", err)
	}
	ctx := r.Context()
	id := r.PathValue("id")
	view, err := s.planView(ctx, p, pb, id, false)
	if err != nil {
		return err
	}
	if view.State != api.PlanPendingApproval {
		return Refuse(http.StatusConflict, api.CodeInvalidState, "plan %s is %s; only a pending_approval plan can be denied", id, view.State)
	}
	for _, j := range view.Steps {
		if _, err := s.b.Deny(ctx, p, j.ID, reason); err != nil && !isInvalidState(err) {
			return err
		}
	}
	s.log.Info("plan denied", zap.String("plan_id", id), zap.String("by", p.TokenID))
	view, err = s.planView(ctx, p, pb, id, true)
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, view)
	return nil
}

func isInvalidState(err error) bool {
	ae, ok := asRefusal(err)
	return ok && ae.Code == api.CodeInvalidState
}

// planView reads plan id and its steps for p, moving it on first when advance is set.
func (s *Server) planView(ctx context.Context, p Principal, pb Plans, id string, advance bool) (api.Plan, error) {
	if !api.ValidPlanID(id) {
		return api.Plan{}, Refuse(http.StatusNotFound, api.CodeNotFound, "no plan %q (plan ids look like plan_ and 24 hex digits)", id)
	}
	rec, err := pb.Plan(ctx, id)
	if errors.Is(err, ErrNoPlan) {
		return api.Plan{}, NoPlan(id)
	}
	if err != nil {
		return api.Plan{}, err
	}
	if advance {
		if _, err := s.advance(ctx, pb, rec); err != nil {
			return api.Plan{}, err
		}
	}
	steps, err := s.planSteps(ctx, rec)
	if err != nil && !errors.Is(err, errStepMissing) {
		return api.Plan{}, err
	}
	for _, j := range steps {
		if !p.CanPool(j.Pool) {
			return api.Plan{}, NoPlan(id)
		}
	}
	st, cur := PlanState(rec.Approval != "", steps)
	return api.Plan{ID: rec.ID, State: st, Approved: rec.Approval != "", CreatedAt: rec.CreatedAt, Current: cur, Steps: steps}, nil
}

// errStepMissing: a step's job does not exist (yet): the plan is being submitted, or its
// submit failed half-way and was not retried.
var errStepMissing = errors.New("a step's job is not created")

// planSteps reads the steps' jobs. A step whose job is missing reads as a pending job
// (the plan is recorded before its jobs, and a retried submit creates the missing ones),
// and the error is errStepMissing.
func (s *Server) planSteps(ctx context.Context, rec PlanRecord) ([]api.Job, error) {
	steps := make([]api.Job, len(rec.Steps))
	var missing error
	for i, id := range rec.Steps {
		j, err := s.b.Job(ctx, id)
		switch {
		case errors.Is(err, ErrNoJob), isNotFound(err):
			j = api.Job{ID: id, State: api.StatePendingApproval, ErrorMessage: "the step's job is not created yet (submit the plan again with its idempotency key)"}
			missing = errStepMissing
		case err != nil:
			return nil, err
		}
		steps[i] = j
	}
	return steps, missing
}

func isNotFound(err error) bool {
	ae, ok := asRefusal(err)
	return ok && ae.Code == api.CodeNotFound
}

// PlanState is the state of a plan whose steps' jobs are steps (in order), and the 1-based
// step that decides it (0 for none). A step that ended otherwise than succeeded decides
// first, whatever its place (a step cancelled before the plan was approved ends the plan):
// denied makes the plan denied, cancelled cancelled, any other end (failed, rejected, dead)
// failed. Otherwise the first step not succeeded decides: pending_approval until the plan is
// approved, running after.
func PlanState(approved bool, steps []api.Job) (api.PlanState, int) {
	if i := endedStep(steps); i >= 0 {
		switch steps[i].State {
		case api.StateDenied:
			return api.PlanDenied, i + 1
		case api.StateCancelled:
			return api.PlanCancelled, i + 1
		}
		return api.PlanFailed, i + 1
	}
	for i, j := range steps {
		switch {
		case j.State == api.StateSucceeded:
			continue
		case j.State == api.StatePendingApproval && !approved:
			return api.PlanPendingApproval, 0
		}
		return api.PlanRunning, i + 1
	}
	return api.PlanSucceeded, 0
}

// endedStep is the index of the first step that ended otherwise than succeeded, or -1.
func endedStep(steps []api.Job) int {
	for i, j := range steps {
		if j.State.Terminal() && j.State != api.StateSucceeded {
			return i
		}
	}
	return -1
}

// advance moves plan rec on, idempotently (several replicas may do it at once; each step
// is an atomic transition of its job): when a step has ended otherwise than succeeded,
// every step not ended is cancelled (denied, when the step was denied); else, once
// approved, the first step that has not succeeded is given the plan approval when it is
// pending, and so becomes queued. It reports whether the plan has ended (every step
// terminal).
func (s *Server) advance(ctx context.Context, pb Plans, rec PlanRecord) (bool, error) {
	steps, err := s.planSteps(ctx, rec)
	if errors.Is(err, errStepMissing) {
		return false, nil // nothing runs until every step exists
	}
	if err != nil {
		return false, err
	}
	if i := endedStep(steps); i >= 0 {
		end := steps[i]
		ended := true
		for _, k := range steps {
			if k.State.Terminal() {
				continue
			}
			ended = false
			var err error
			if end.State == api.StateDenied && k.State == api.StatePendingApproval {
				// A denied step denies the plan: the rest are denied alike, by the same
				// approver and for the same reason (a plan denial may still be denying them
				// one by one).
				denier := Principal{TokenID: rec.ID, Name: end.DeniedBy, Role: api.RoleAdmin, Pool: api.AllPools}
				_, err = s.b.Deny(ctx, denier, k.ID, end.ErrorMessage)
			} else {
				_, err = s.b.Cancel(ctx, planActor(rec.ID), k.ID)
			}
			if err != nil && !isInvalidState(err) && !isNotFound(err) {
				return false, err
			}
		}
		return ended, nil
	}
	for _, j := range steps {
		if j.State == api.StateSucceeded {
			continue
		}
		if j.State == api.StatePendingApproval && rec.Approval != "" {
			actor := planActor(rec.ID)
			_, err := s.b.Approve(ctx, actor, j.ID, rec.Approval)
			if err != nil && !isInvalidState(err) {
				return false, err
			}
			if err == nil {
				s.record(ctx, actor, "job.approve", j.ID, ApprovalAuditDetail(rec.Approval))
			}
		}
		return false, nil
	}
	return true, nil
}

// runPlans moves every active plan on whenever a job changes, and every RecheckInterval,
// until Shutdown. It is the only thing that queues a plan's later steps.
func (s *Server) runPlans(pb Plans) {
	recheck := time.NewTicker(s.cfg.RecheckInterval)
	defer recheck.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-s.closing; cancel() }()
	for {
		ch := s.b.Next(JobsChanged, "")
		if err := s.advanceAll(ctx, pb); err != nil && ctx.Err() == nil {
			s.log.Warn("moving plans on failed; retrying", zap.Error(err))
		}
		select {
		case <-ch:
		case <-recheck.C:
		case <-s.closing:
			return
		}
	}
}

func (s *Server) advanceAll(ctx context.Context, pb Plans) error {
	ids, err := pb.ActivePlans(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		rec, err := pb.Plan(ctx, id)
		if err == nil {
			var ended bool
			if ended, err = s.advance(ctx, pb, rec); err == nil && ended {
				err = pb.EndPlan(ctx, id)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("plan %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// refuseStepApproval refuses approving or denying a plan's step on its own: a plan is
// approved with one decision, and a step approved alone could run out of order.
func (s *Server) refuseStepApproval(ctx context.Context, jobID string) error {
	pb, ok := s.b.(Plans)
	if !ok {
		return nil
	}
	plan, err := pb.PlanOfJob(ctx, jobID)
	if err != nil || plan == "" {
		return err
	}
	return Refuse(http.StatusConflict, api.CodeInvalidState, "job %s is a step of plan %s; approve or deny the plan (POST /v1/plans/%s/approval or /deny)", jobID, plan, plan)
}

package api

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// MaxPlanSteps bounds a plan's steps; it is approval.MaxPlanSteps, the most one plan
// approval can sign for.
const MaxPlanSteps = 100

// PlanStepRequest is one step of POST /v1/plans: a job as POST /v1/jobs takes it, without
// an approval or an idempotency key of its own (the plan has them).
type PlanStepRequest struct {
	Task        string          `json:"task"`
	TaskVersion string          `json:"task_version,omitempty"` // default: newest published
	Pool        string          `json:"pool"`
	Input       json.RawMessage `json:"input"`
	MaxAttempts *int            `json:"max_attempts,omitempty"` // default 3, at most 100
}

// PlanRequest is POST /v1/plans: the steps in the order they run.
type PlanRequest struct {
	Steps          []PlanStepRequest `json:"steps"`
	IdempotencyKey string            `json:"idempotency_key,omitempty"`
}

// Submit returns step i as a submit request, or why it is refused.
func (s PlanStepRequest) Submit() (SubmitRequest, error) {
	return SubmitBody{SubmitRequest: SubmitRequest{Task: s.Task, TaskVersion: s.TaskVersion, Pool: s.Pool, Input: s.Input},
		MaxAttempts: s.MaxAttempts}.Request()
}

// PlanState is a plan's state, one for all its steps.
type PlanState string

const (
	PlanPendingApproval PlanState = "pending_approval" // no plan approval yet; nothing runs
	PlanRunning         PlanState = "running"          // approved; a step is queued or running
	PlanSucceeded       PlanState = "succeeded"        // every step succeeded
	PlanFailed          PlanState = "failed"           // a step ended failed, rejected or dead; later steps cancelled
	PlanCancelled       PlanState = "cancelled"        // a step was cancelled; the others too
	PlanDenied          PlanState = "denied"           // an approver denied the plan
)

// Terminal reports whether no step of a plan in state st will run again.
func (st PlanState) Terminal() bool {
	return st != PlanPendingApproval && st != PlanRunning
}

// Plan is GET /v1/plans/{id}: the plan as one unit, and its steps' jobs in order.
type Plan struct {
	ID        string    `json:"id"`
	State     PlanState `json:"state"`
	Approved  bool      `json:"approved"` // a plan approval is attached
	CreatedAt time.Time `json:"created_at"`
	// Current is the 1-based number of the step that decides the state: the one queued or
	// running, the one that ended the plan, or 0 (pending approval, or all succeeded).
	Current int   `json:"current"`
	Steps   []Job `json:"steps"`
}

// PlanIDPrefix starts every plan id.
const PlanIDPrefix = "plan_"

// ValidPlanID reports whether id looks like a plan id: plan_ and 24 lowercase hex digits.
func ValidPlanID(id string) bool {
	if len(id) != len(PlanIDPrefix)+24 || id[:len(PlanIDPrefix)] != PlanIDPrefix {
		return false
	}
	for _, c := range id[len(PlanIDPrefix):] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// CheckPlanSize says why a plan of n steps is refused, or nil.
func CheckPlanSize(n int) error {
	if n < 1 || n > MaxPlanSteps {
		return fmt.Errorf("steps has %d steps; a plan has 1 to %d", n, MaxPlanSteps)
	}
	return nil
}

// NewPlanID returns a random plan id.
func NewPlanID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail on supported platforms
	return PlanIDPrefix + hex.EncodeToString(b[:])
}

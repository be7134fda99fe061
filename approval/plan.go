package approval

import (
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// MaxPlanSteps bounds the steps of one plan approval. A plan of this many steps with
// ordinary names signs to well under MaxTokenBytes; SignPlan refuses a token that does not
// fit.
const MaxPlanSteps = 100

// MaxPlanIDBytes bounds the plan claim.
const MaxPlanIDBytes = 128

// StepClaims is one step of a plan approval, as signed: the same binding as a single-job
// approval's job, task, task_version, pool and input_sha256 claims. Unknown members are
// refused, as for every claim.
type StepClaims struct {
	JobID       string `json:"job"`
	Task        string `json:"task"`
	TaskVersion string `json:"task_version"`
	Pool        string `json:"pool"`
	InputSHA256 string `json:"input_sha256"` // hex SHA-256 of CanonicalJSON(input)
}

// PlanStep is one step an approver signs for in a plan.
type PlanStep struct {
	JobID, Task, TaskVersion, Pool string
	// Input is the step's job input as JSON; it is canonicalised before hashing. Empty
	// means null.
	Input []byte
}

// PlanRequest describes a plan an approver signs for with one decision.
type PlanRequest struct {
	// PlanID names the plan (the control plane's plan id). Required, at most MaxPlanIDBytes.
	PlanID string
	// Steps are the plan's jobs in the order they run: 1 to MaxPlanSteps of them, each job
	// ID at most once.
	Steps []PlanStep
	// TTL is how long the approval stays valid, for every step: it must cover the whole
	// plan. Optional; default DefaultTTL.
	TTL time.Duration
	// MaxAttempts is how many executions the approval authorises for each step. Optional;
	// default 1.
	MaxAttempts int
	// Approver, Auto and ApprovedBy are as in Request.
	Approver   string
	Auto       bool
	ApprovedBy *ApprovedBy
}

// SignPlan issues one approval for every step of a plan, signed with key like Sign's
// approvals (same header, same typ, same JWS code). Each worker that runs a step verifies
// the token with Verifier.Verify against its own job: the token authorises exactly the
// listed steps, each with its own task, version, pool and input, and nothing else.
func SignPlan(key jose.JSONWebKey, r PlanRequest) (token string, claims Claims, err error) {
	return signPlanAt(key, r, time.Now())
}

func signPlanAt(key jose.JSONWebKey, r PlanRequest, now time.Time) (string, Claims, error) {
	if r.PlanID == "" {
		return "", Claims{}, fmt.Errorf("approval: PlanRequest.PlanID is required")
	}
	if len(r.PlanID) > MaxPlanIDBytes {
		return "", Claims{}, fmt.Errorf("approval: PlanRequest.PlanID is %d bytes; at most %d", len(r.PlanID), MaxPlanIDBytes)
	}
	if n := len(r.Steps); n < 1 || n > MaxPlanSteps {
		return "", Claims{}, fmt.Errorf("approval: PlanRequest.Steps has %d steps; a plan has 1 to %d", n, MaxPlanSteps)
	}
	steps := make([]StepClaims, len(r.Steps))
	seen := make(map[string]int, len(r.Steps))
	for i, s := range r.Steps {
		for _, f := range []struct{ name, v string }{{"JobID", s.JobID}, {"Task", s.Task}, {"TaskVersion", s.TaskVersion}, {"Pool", s.Pool}} {
			if f.v == "" {
				return "", Claims{}, fmt.Errorf("approval: PlanRequest.Steps[%d].%s is required", i, f.name)
			}
		}
		if j, dup := seen[s.JobID]; dup {
			return "", Claims{}, fmt.Errorf("approval: PlanRequest.Steps[%d] and Steps[%d] are both job %q; a job is one step", j, i, s.JobID)
		}
		seen[s.JobID] = i
		hash, err := InputHash(s.Input)
		if err != nil {
			return "", Claims{}, fmt.Errorf("approval: PlanRequest.Steps[%d] input: %w", i, err)
		}
		steps[i] = StepClaims{JobID: s.JobID, Task: s.Task, TaskVersion: s.TaskVersion, Pool: s.Pool, InputSHA256: hash}
	}
	c, err := terms{ttl: r.TTL, maxAttempts: r.MaxAttempts, approver: r.Approver, auto: r.Auto, approvedBy: r.ApprovedBy}.claims("PlanRequest", key, now)
	if err != nil {
		return "", Claims{}, err
	}
	c.Plan, c.Steps = r.PlanID, steps
	return signClaims(key, c)
}

// checkPlan checks the claims of a plan approval: a plan id, 1 to MaxPlanSteps well-formed
// steps naming distinct jobs, and none of the single-job claims (a token is one form or
// the other, so there is never a question of which binding applies).
func checkPlan(c Claims) *RejectError {
	for _, f := range []struct{ name, v string }{
		{"job", c.JobID}, {"task", c.Task}, {"task_version", c.TaskVersion}, {"pool", c.Pool}, {"input_sha256", c.InputSHA256},
	} {
		if f.v != "" {
			return reject(Malformed, fmt.Sprintf("a plan approval has the claim %q; its steps name their jobs, and a token is either one job's approval or a plan's", f.name))
		}
	}
	switch n := len(c.Steps); {
	case c.Plan == "":
		return reject(Malformed, "the approval has steps but the required claim \"plan\" is missing or empty")
	case len(c.Plan) > MaxPlanIDBytes:
		return reject(Malformed, fmt.Sprintf("the \"plan\" claim is %d bytes; at most %d", len(c.Plan), MaxPlanIDBytes))
	case n < 1 || n > MaxPlanSteps:
		return reject(Malformed, fmt.Sprintf("the plan approval has %d steps; a plan has 1 to %d", n, MaxPlanSteps))
	}
	seen := make(map[string]int, len(c.Steps))
	for i, s := range c.Steps {
		if rej := checkTarget(fmt.Sprintf("steps.%d.", i), s.JobID, s.Task, s.TaskVersion, s.Pool, s.InputSHA256); rej != nil {
			return rej
		}
		if j, dup := seen[s.JobID]; dup {
			return reject(Malformed, fmt.Sprintf("steps %d and %d of the plan approval are both job %q; a job is one step", j+1, i+1, s.JobID))
		}
		seen[s.JobID] = i
	}
	return nil
}

// stepFor returns c with the binding of the step for job copied into its single-job
// fields, or a wrong_job rejection when the plan has no such step.
func stepFor(c Claims, job string) (Claims, *RejectError) {
	for i, s := range c.Steps {
		if s.JobID == job {
			c.JobID, c.Task, c.TaskVersion, c.Pool, c.InputSHA256 = s.JobID, s.Task, s.TaskVersion, s.Pool, s.InputSHA256
			c.Step = i + 1
			return c, nil
		}
	}
	return Claims{}, reject(WrongJob, fmt.Sprintf("the plan approval %q (%d steps) has no step for job %q", c.Plan, len(c.Steps), job))
}

// replayKey is the key under which the replay store records uses of c: the nonce for a
// single-job approval; for a plan approval, which several jobs use, the nonce and the job,
// so that each step runs its attempts once. A nonce is exactly 22 characters without '/',
// so the two forms never collide.
func replayKey(c Claims) string {
	if c.Plan == "" {
		return c.Nonce
	}
	return c.Nonce + "/" + c.JobID
}

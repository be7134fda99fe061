package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

// TestPlanApprovalRealControlPlane: one plan approval, attached to each of its jobs on the
// real control plane, runs every step in the real sandbox; attached to a job that is not a
// step, it runs nothing.
func TestPlanApprovalRealControlPlane(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.startWorker(newWasmRunner(t))
	s.waitCatalog()
	inputs := []string{`{"n":1}`, `{"n":2}`, `{"n":3}`}
	var jobs []api.Job
	var steps []approval.PlanStep
	for _, in := range inputs {
		j := s.submitJob(in)
		jobs = append(jobs, j)
		steps = append(steps, approval.PlanStep{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Input: []byte(in)})
	}
	outsider := s.submitJob(`{"n":4}`)
	tok, _, err := approval.SignPlan(s.approver, approval.PlanRequest{PlanID: "plan-1", Steps: steps, MaxAttempts: 2, Approver: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range append(slices.Clone(jobs), outsider) {
		s.approve(j, tok)
	}
	for i, j := range jobs {
		got := s.wait(j.ID)
		if got.State != api.StateSucceeded || string(got.Output) != inputs[i] {
			t.Errorf("step %d: job = %s %s (%s), want succeeded with output %s", i+1, got.State, got.Output, got.ErrorMessage, inputs[i])
		}
	}
	got := s.wait(outsider.ID)
	if got.State != api.StateRejected || !strings.Contains(got.ErrorMessage, string(approval.WrongJob)) || len(got.Output) != 0 {
		t.Errorf("job outside the plan = %s %q, want rejected as %s", got.State, got.ErrorMessage, approval.WrongJob)
	}
}

// TestPlanApprovalLyingQueue: a queue that holds a plan approval delivers its steps
// honestly, a step twice, a step with other input or another version than signed, and a
// job that is not a step, all under the one token. Only the honest steps run, once each.
func TestPlanApprovalLyingQueue(t *testing.T) {
	t.Parallel()
	sg := newSigner(t)
	q := newFakeQueue("alpha")
	var mu sync.Mutex
	ran := map[string]int{}
	r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		mu.Lock()
		ran[id]++
		mu.Unlock()
		return runtime.Result{Output: in}
	})
	var steps []approval.PlanStep
	for _, id := range []string{"step-1", "step-2", "step-3"} {
		steps = append(steps, approval.PlanStep{JobID: id, Task: "echo", TaskVersion: "1.0.0", Pool: "alpha", Input: []byte(fmt.Sprintf(`{"id":%q}`, id))})
	}
	tok, _, err := approval.SignPlan(sg.key, approval.PlanRequest{PlanID: "plan-9", Steps: steps, MaxAttempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	lease := func(s approval.PlanStep, mutate func(*api.LeasedJob)) api.LeasedJob {
		j := api.LeasedJob{JobID: s.JobID, Task: s.Task, TaskVersion: s.TaskVersion, Pool: s.Pool, Input: json.RawMessage(s.Input),
			Approval: tok, Attempt: 1, MaxAttempts: 3, LeaseToken: "lease-" + s.JobID, LeaseExpiresAt: time.Now().Add(30 * time.Second)}
		if mutate != nil {
			mutate(&j)
		}
		return j
	}
	deliveries := []struct {
		job  api.LeasedJob
		want string // the outcome, or the rejection reason
	}{
		{lease(steps[0], nil), string(outcome.OK)},
		{lease(steps[1], nil), string(outcome.OK)},
		{lease(steps[1], func(j *api.LeasedJob) { j.LeaseToken += "-again" }), string(approval.Replayed)},
		{lease(steps[2], func(j *api.LeasedJob) { j.Input = json.RawMessage(`{"id":"step-3","all":true}`) }), string(approval.InputMismatch)},
		{lease(steps[2], func(j *api.LeasedJob) { j.TaskVersion = "0.9.0" }), string(approval.WrongVersion)},
		{lease(approval.PlanStep{JobID: "step-4", Task: "echo", TaskVersion: "1.0.0", Pool: "alpha", Input: []byte(`{}`)}, nil), string(approval.WrongJob)},
	}
	rw := startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Verifier: sg.verifier(), Concurrency: 1})
	// One delivery at a time, each after the previous one is finished, so that the second
	// copy of step 2 meets the replay store, not the worker's check for a job already
	// running, and which copy runs is decided by order.
	for i, d := range deliveries {
		q.push(d.job)
		q.waitUntil(t, fmt.Sprintf("report %d", i+1), func(q *fakeQueue) bool { return len(q.reports) > i })
		poll(t, fmt.Sprintf("delivery %d finished", i+1), func() bool { return rw.w.Done() > i })
	}
	_, reports, _ := q.snapshot()
	for i, d := range deliveries {
		rep := reports[i]
		got := rep.Req.Outcome
		if got == string(outcome.Rejected) {
			for _, reason := range approval.Reasons() {
				if strings.HasPrefix(rep.Req.ErrorMessage, "approval rejected ("+string(reason)+")") {
					got = string(reason)
				}
			}
		}
		if rep.JobID != d.job.JobID || got != d.want {
			t.Errorf("delivery %d (%s): reported %s %s %q, want %s", i+1, d.job.JobID, rep.JobID, rep.Req.Outcome, rep.Req.ErrorMessage, d.want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := map[string]int{"step-1": 1, "step-2": 1}; fmt.Sprint(ran) != fmt.Sprint(want) {
		t.Errorf("ran %v, want %v", ran, want)
	}
}

// TestPlanRoutesRealWorker: a plan submitted and approved through the plan routes runs its
// steps one after another in the real sandbox, each verified by the worker under the one
// plan approval.
func TestPlanRoutesRealWorker(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	var mu sync.Mutex
	var order []string
	wasm := newWasmRunner(t)
	s.startWorker(funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		mu.Lock()
		order = append(order, id)
		mu.Unlock()
		return wasm.Run(ctx, task, id, in)
	}))
	s.waitCatalog()
	inputs := []string{`{"n":1}`, `{"n":2}`, `{"n":3}`}
	var req api.PlanRequest
	for _, in := range inputs {
		req.Steps = append(req.Steps, api.PlanStepRequest{Task: "echo", Pool: pool, Input: json.RawMessage(in)})
	}
	p, err := s.submit.SubmitPlan(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var steps []approval.PlanStep
	for i, j := range p.Steps {
		steps = append(steps, approval.PlanStep{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Input: []byte(inputs[i])})
	}
	tok, _, err := approval.SignPlan(s.approver, approval.PlanRequest{PlanID: p.ID, Steps: steps})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.client(api.RoleApprover).ApprovePlan(context.Background(), p.ID, tok); err != nil {
		t.Fatal(err)
	}
	var got api.Plan
	poll(t, "plan ended", func() bool {
		got, err = s.submit.GetPlan(context.Background(), p.ID)
		return err == nil && got.State.Terminal()
	})
	if got.State != api.PlanSucceeded {
		t.Fatalf("plan = %s at step %d, want succeeded", got.State, got.Current)
	}
	mu.Lock()
	defer mu.Unlock()
	for i, j := range got.Steps {
		if string(j.Output) != inputs[i] || len(order) != 3 || order[i] != j.ID {
			t.Fatalf("step %d = %s output %s; ran %v, want the steps in order with their inputs echoed", i+1, j.State, j.Output, order)
		}
	}
}

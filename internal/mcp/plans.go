package mcp

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// The plan tools: several calls submitted as one plan (POST /v1/plans), which an approver
// approves or denies with one decision, and whose steps then run in order.
const (
	SubmitPlanToolName = "castellan_submit_plan"
	PlanResultToolName = "castellan_plan_result"
)

// PlanBackend is a Backend that can also submit and read plans. The plan tools are offered
// only when the backend is one; V1Backend is.
type PlanBackend interface {
	// SubmitPlan creates a plan, or returns the existing one for a repeated idempotency key.
	SubmitPlan(ctx context.Context, p Principal, req api.PlanRequest) (api.Plan, error)
	// GetPlan returns one plan with its steps.
	GetPlan(ctx context.Context, p Principal, id string) (api.Plan, error)
}

// SubmitPlan is POST /v1/plans with the caller's token.
func (b *V1Backend) SubmitPlan(ctx context.Context, p Principal, req api.PlanRequest) (api.Plan, error) {
	c, err := b.client(p)
	if err != nil {
		return api.Plan{}, err
	}
	return c.SubmitPlan(ctx, req)
}

// GetPlan is GET /v1/plans/{id} with the caller's token.
func (b *V1Backend) GetPlan(ctx context.Context, p Principal, id string) (api.Plan, error) {
	c, err := b.client(p)
	if err != nil {
		return api.Plan{}, err
	}
	return c.GetPlan(ctx, id)
}

// submitPlanTool describes castellan_submit_plan for the session's tools (task names,
// sorted): its schema lists them, so a client sees which calls a plan may hold.
func submitPlanTool(tools []string) *sdk.Tool {
	tool := map[string]any{"type": "string", "description": "the name of one of this server's task tools"}
	if len(tools) > 0 {
		tool["enum"] = tools
	}
	in := map[string]any{
		"type": "object",
		"properties": map[string]any{
			"steps": map[string]any{
				"type": "array", "minItems": 1, "maxItems": api.MaxPlanSteps,
				"description": "the calls, in the order they run",
				"items": map[string]any{
					"type": "object",
					"properties": map[string]any{
						"tool":      tool,
						"arguments": map[string]any{"type": "object", "description": "the tool's arguments, as for a call of the tool"},
					},
					"required":             []string{"tool", "arguments"},
					"additionalProperties": false,
				},
			},
		},
		"required":             []string{"steps"},
		"additionalProperties": false,
	}
	raw, _ := json.Marshal(in)
	return &sdk.Tool{
		Name:  SubmitPlanToolName,
		Title: "Submit several calls as one Castellan plan",
		Description: "Submits several tool calls as one plan: an approver approves or denies the whole plan with one " +
			"decision, then the steps run in order, and when a step fails the later ones are cancelled. Each step's " +
			"arguments are checked against its tool's input schema first. Waits for the plan to end for a while; if it " +
			"has not, call " + PlanResultToolName + " with the plan_id later.",
		InputSchema: json.RawMessage(raw),
	}
}

func planResultTool() *sdk.Tool {
	return &sdk.Tool{
		Name:  PlanResultToolName,
		Title: "Fetch a Castellan plan's state and results",
		Description: "Returns the state of a plan submitted with " + SubmitPlanToolName + " and, once it has ended, each " +
			"step's result. Waits up to wait_seconds (default 30, at most 60) for the plan to end.",
		InputSchema: json.RawMessage(`{"type":"object","properties":{"plan_id":{"type":"string","minLength":1,"maxLength":200},` +
			`"wait_seconds":{"type":"integer","minimum":0,"maximum":60}},"required":["plan_id"],"additionalProperties":false}`),
		Annotations: &sdk.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true},
	}
}

// planToolsLocked (re)offers the plan tools for the tasks now offered; s.mu is held.
func (s *session) planToolsLocked() {
	if _, ok := s.h.b.(PlanBackend); !ok {
		return
	}
	names := make([]string, 0, len(s.tasks))
	for name := range s.tasks {
		names = append(names, name)
	}
	slices.Sort(names)
	if slices.Equal(s.planTools, names) {
		return
	}
	s.planTools = names
	if len(names) == 0 {
		// No task to call: no plan to submit (the result tool stays, for plans made before).
		s.srv.RemoveTools(SubmitPlanToolName)
		return
	}
	s.srv.AddTool(submitPlanTool(names), s.callSubmitPlan)
	if !s.planResult {
		s.planResult = true
		s.srv.AddTool(planResultTool(), s.callPlanResult)
	}
}

func (s *session) callSubmitPlan(ctx context.Context, req *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
	pb := s.h.b.(PlanBackend)
	var in struct {
		Steps []struct {
			Tool      string          `json:"tool"`
			Arguments json.RawMessage `json:"arguments"`
		} `json:"steps"`
	}
	s.mu.Lock()
	tools := s.planTools
	tasks := make(map[string]api.TaskDef, len(s.tasks))
	for k, v := range s.tasks {
		tasks[k] = v
	}
	s.mu.Unlock()
	sch, err := s.h.schemas.Get(submitPlanTool(tools).InputSchema.(json.RawMessage))
	if err != nil {
		return toolError("the plan tool's schema does not compile"), nil
	}
	if issues, err := schema.Validate(sch, req.Params.Arguments); err != nil || len(issues) > 0 {
		if err != nil {
			return toolError("arguments are not JSON: %v", err), nil
		}
		return toolError("invalid arguments: %s", schema.Message(issues)), nil
	}
	if err := json.Unmarshal(req.Params.Arguments, &in); err != nil {
		return toolError("arguments are not JSON: %v", err), nil
	}
	steps := make([]api.PlanStepRequest, len(in.Steps))
	for i, st := range in.Steps {
		d, ok := tasks[st.Tool]
		if !ok {
			return toolError("invalid arguments: steps[%d].tool: %q is not a tool of this server", i, st.Tool), nil
		}
		ssch, err := s.h.schemas.Get(d.InputSchema)
		if err != nil {
			return toolError("steps[%d]: task %s has an input schema that does not compile", i, d.Name), nil
		}
		issues, err := schema.Validate(ssch, st.Arguments)
		if err != nil {
			return toolError("invalid arguments: steps[%d].arguments are not JSON: %v", i, err), nil
		}
		if len(issues) > 0 {
			return toolError("invalid arguments: steps[%d].arguments (tool %s): %s", i, d.Name, schema.Message(issues)), nil
		}
		steps[i] = api.PlanStepRequest{Task: d.Name, TaskVersion: d.Version, Pool: s.p.Pool, Input: json.RawMessage(bytes.Clone(st.Arguments))}
	}
	sid := ""
	if req.Session != nil {
		sid = req.Session.ID()
	}
	pl, err := pb.SubmitPlan(ctx, s.p, api.PlanRequest{Steps: steps, IdempotencyKey: idempotencyKey(sid, req)})
	if err != nil {
		return apiToolError("submit plan", err), nil
	}
	return s.followPlan(ctx, pb, pl, s.h.opts.CallWait)
}

func (s *session) callPlanResult(ctx context.Context, req *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
	pb := s.h.b.(PlanBackend)
	id, wait, bad := s.fetchArgs(planResultTool(), "plan_id", req.Params.Arguments)
	if bad != nil {
		return bad, nil
	}
	pl, err := pb.GetPlan(ctx, s.p, id)
	if err != nil {
		return apiToolError("get plan", err), nil
	}
	return s.followPlan(ctx, pb, pl, wait)
}

// followPlan waits at most wait for plan pl to end. /v1 has no long-poll for a plan, so it
// is re-read every ProgressPoll; a job wait on the step that decides it would miss the
// plan's own moves (the next step queued, the rest cancelled).
func (s *session) followPlan(ctx context.Context, pb PlanBackend, pl api.Plan, wait time.Duration) (*sdk.CallToolResult, error) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(s.h.opts.ProgressPoll)
	defer tick.Stop()
	for !pl.State.Terminal() {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-deadline.C:
			return planAnswer(pl), nil
		case <-tick.C:
		}
		next, err := pb.GetPlan(ctx, s.p, pl.ID)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return apiToolError("get plan", err), nil
		}
		pl = next
	}
	return planAnswer(pl), nil
}

// planAnswer is a plan as a tool result: its state and each step's, with the outputs once
// it has succeeded, who denied it and why, or which step ended it. Anything but succeeded
// is a tool error, as a job's is, so that no client takes a pending plan for a result.
func planAnswer(pl api.Plan) *sdk.CallToolResult {
	steps := make([]map[string]any, len(pl.Steps))
	for i, j := range pl.Steps {
		st := map[string]any{"job_id": j.ID, "tool": j.Task, "state": string(j.State)}
		if j.Outcome != "" {
			st["outcome"] = j.Outcome
		}
		if j.State == api.StateSucceeded && len(j.Output) > 0 {
			st["output"] = json.RawMessage(j.Output)
		}
		if j.ErrorMessage != "" && j.State.Terminal() {
			st["message"] = j.ErrorMessage
		}
		if j.DeniedBy != "" {
			st["denied_by"] = j.DeniedBy
		}
		steps[i] = st
	}
	sc := map[string]any{"plan_id": pl.ID, "state": string(pl.State), "current": pl.Current, "steps": steps}
	var msg string
	switch pl.State {
	case api.PlanSucceeded:
		outs := make([]string, len(pl.Steps))
		for i, j := range pl.Steps {
			outs[i] = fmt.Sprintf("step %d (%s): %s", i+1, j.Task, cmp.Or(string(j.Output), "null"))
		}
		msg = fmt.Sprintf("plan %s succeeded:\n%s", pl.ID, strings.Join(outs, "\n"))
		return &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: msg}}, StructuredContent: sc}
	case api.PlanDenied:
		j := pl.Steps[max(pl.Current, 1)-1]
		sc["denied_by"], sc["message"] = j.DeniedBy, j.ErrorMessage
		msg = fmt.Sprintf("plan %s ended denied: outcome %s: denied by approver %q: %s", pl.ID, api.OutcomeDeniedByApprover, j.DeniedBy, j.ErrorMessage)
	case api.PlanPendingApproval, api.PlanRunning:
		sc["pending"] = true
		msg = fmt.Sprintf("plan %s is still %s (step %d of %d). Fetch its result later with the %s tool and arguments {\"plan_id\": %q}.",
			pl.ID, pl.State, pl.Current, len(pl.Steps), PlanResultToolName, pl.ID)
	default:
		j := pl.Steps[max(pl.Current, 1)-1]
		msg = fmt.Sprintf("plan %s ended %s at step %d (%s): %s", pl.ID, pl.State, max(pl.Current, 1), j.Task, cmp.Or(j.Outcome, string(j.State)))
		if j.ErrorMessage != "" {
			msg += ": " + j.ErrorMessage
		}
	}
	return &sdk.CallToolResult{IsError: true, Content: []sdk.Content{&sdk.TextContent{Text: msg}}, StructuredContent: sc}
}

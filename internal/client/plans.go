package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// SubmitPlan submits a plan: its steps become jobs, pending the plan's one approval.
func (c *Client) SubmitPlan(ctx context.Context, req api.PlanRequest) (api.Plan, error) {
	var out api.Plan
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/plans", nil, req, &out)
}

// GetPlan returns a plan as one unit, with its steps' jobs.
func (c *Client) GetPlan(ctx context.Context, id string) (api.Plan, error) {
	var out api.Plan
	return out, c.do(ctx, c.reqTimeout, http.MethodGet, "/v1/plans/"+url.PathEscape(id), nil, nil, &out)
}

// ApprovePlan attaches a plan approval (approval.SignPlan) to a pending_approval plan: its
// first step is queued, and each later one when the one before it succeeded.
func (c *Client) ApprovePlan(ctx context.Context, id, token string) (api.Plan, error) {
	var out api.Plan
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/plans/"+url.PathEscape(id)+"/approval", nil, api.ApproveRequest{Token: token}, &out)
}

// DenyPlan refuses a pending_approval plan with a reason: every step ends denied.
func (c *Client) DenyPlan(ctx context.Context, id, reason string) (api.Plan, error) {
	var out api.Plan
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/plans/"+url.PathEscape(id)+"/deny", nil, api.DenyRequest{Reason: reason}, &out)
}

package controlplane

import (
	"testing"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestPlanState: the plan's one state comes from the first step that has not succeeded.
func TestPlanState(t *testing.T) {
	t.Parallel()
	const (
		pend = api.StatePendingApproval
		q    = api.StateQueued
		run  = api.StateRunning
		ok   = api.StateSucceeded
		fail = api.StateFailed
		rej  = api.StateRejected
		dead = api.StateDead
		canc = api.StateCancelled
		den  = api.StateDenied
		creq = api.StateCancelRequested
	)
	for _, tt := range []struct {
		approved bool
		steps    []api.State
		want     api.PlanState
		current  int
	}{
		{false, []api.State{pend, pend}, api.PlanPendingApproval, 0},
		{true, []api.State{pend, pend}, api.PlanRunning, 1},
		{true, []api.State{q, pend}, api.PlanRunning, 1},
		{true, []api.State{ok, run}, api.PlanRunning, 2},
		{true, []api.State{ok, creq, pend}, api.PlanRunning, 2},
		{true, []api.State{ok, ok}, api.PlanSucceeded, 0},
		{true, []api.State{ok, fail, pend}, api.PlanFailed, 2},
		{true, []api.State{ok, fail, canc}, api.PlanFailed, 2},
		{true, []api.State{rej, canc}, api.PlanFailed, 1},
		{true, []api.State{ok, dead}, api.PlanFailed, 2},
		{true, []api.State{canc, canc}, api.PlanCancelled, 1},
		{false, []api.State{pend, canc}, api.PlanCancelled, 2},
		{false, []api.State{den, pend}, api.PlanDenied, 1},
		{false, []api.State{den, den}, api.PlanDenied, 1},
	} {
		var jobs []api.Job
		for _, st := range tt.steps {
			jobs = append(jobs, api.Job{State: st})
		}
		got, cur := PlanState(tt.approved, jobs)
		if got != tt.want || cur != tt.current {
			t.Errorf("PlanState(approved %v, %v) = %s, %d; want %s, %d", tt.approved, tt.steps, got, cur, tt.want, tt.current)
		}
	}
}

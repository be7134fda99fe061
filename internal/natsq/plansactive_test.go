package natsq_test

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestJobChangesDoNotReadThePlanList: the layer looks for plans to move on at every job
// change; with the plan list watched, a job's submit, approval, claim and result do not
// read the list (each read it before).
func TestJobChangesDoNotReadThePlanList(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	s := newSigner(t)
	rep := startAPI(t, natsURL)
	startWorker(t, natsURL, s, newCounter().echo(), natsq.Options{}, 2)
	submitter := apiClient(t, natsURL, rep.url, api.RoleClient, pool)
	approver := apiClient(t, natsURL, rep.url, api.RoleApprover, pool)
	waitCatalog(t, submitter)

	obs := dial(t, natsURL)
	var reads atomic.Int64
	// Reads of the list's key (an approval still reads the job's own key, j.<id>, to refuse
	// approving a plan's step alone).
	if _, err := obs.Subscribe("$JS.API.DIRECT.GET.KV_"+natsq.PlansBucket+".$KV."+natsq.PlansBucket+".active", func(*nats.Msg) { reads.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := obs.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		in := json.RawMessage(`{"n":1}`)
		j, err := submitter.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: in, MaxAttempts: 1})
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := approval.Sign(s.key, approval.Request{JobID: j.ID, Task: "echo", TaskVersion: j.TaskVersion, Pool: pool,
			Input: in, MaxAttempts: 1, Approver: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := approver.Approve(t.Context(), j.ID, tok); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		got, err := submitter.Wait(ctx, j.ID)
		cancel()
		if err != nil || got.State != api.StateSucceeded {
			t.Fatalf("job %d: %s, %v", i, got.State, err)
		}
	}
	if err := obs.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := reads.Load(); n != 0 {
		t.Fatalf("%d reads of the plan list for 3 jobs, want 0", n)
	}
}

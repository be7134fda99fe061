package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestPlanCommands: `castellan plan submit` (a file), `plan approve` with a key made by
// keygen, and `plan get`, against a real `castellan server`; a stand-in worker verifies each
// leased step's approval with the key's public half, as a worker does, before completing it.
func TestPlanCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db := filepath.Join(dir, "cp.db")
	files := map[api.Role]string{}
	for _, role := range []api.Role{api.RoleWorker, api.RoleClient, api.RoleApprover} {
		var b bytes.Buffer
		_, err := TokenCreate(t.Context(), TokenConfig{DB: db, Role: string(role), Pool: "default", Name: "t-" + string(role)}, &b)
		must(t, err)
		files[role] = filepath.Join(dir, string(role)+".token")
		must(t, os.WriteFile(files[role], b.Bytes(), 0o600))
	}
	base, _ := startServer(t, ServerConfig{DB: db, Listen: "127.0.0.1:0", LogLevel: "error"})
	privPath, pubPath, err := Keygen(KeygenConfig{Out: dir, Name: "t-approver"}, io.Discard)
	must(t, err)
	keys, err := approval.LoadKeySet(pubPath)
	must(t, err)
	verifier := approval.NewVerifier(keys, approval.NewMemoryReplayStore())

	wtok, err := readToken(files[api.RoleWorker])
	must(t, err)
	w, err := client.New(base, wtok)
	must(t, err)
	_, err = w.Register(t.Context(), api.RegisterRequest{Name: "stand-in", AgentVersion: "test"})
	must(t, err)
	_, err = w.PublishCatalog(t.Context(), []api.TaskDef{{Name: "echo", Version: "1.0.0", InputSchema: json.RawMessage(`{"type":"object"}`)}})
	must(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	var order []string
	workerDone := make(chan struct{})
	t.Cleanup(func() { cancel(); <-workerDone })
	go func() {
		defer close(workerDone)
		for ctx.Err() == nil {
			jobs, err := w.Lease(ctx, 1, time.Second)
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
				continue
			}
			for _, j := range jobs {
				req := api.CompleteRequest{LeaseToken: j.LeaseToken, Attempt: j.Attempt, Outcome: "ok", Output: j.Input}
				if _, err := verifier.Verify(ctx, j.Approval, approval.Expect{JobID: j.JobID, Task: j.Task, TaskVersion: j.TaskVersion,
					Pool: "default", Input: j.Input, Attempt: j.Attempt}); err != nil {
					req = api.CompleteRequest{LeaseToken: j.LeaseToken, Attempt: j.Attempt, Outcome: "rejected", ErrorMessage: err.Error()}
				}
				order = append(order, j.JobID)
				_, _ = w.Complete(ctx, j.JobID, req)
			}
		}
	}()

	planFile := filepath.Join(dir, "plan.json")
	must(t, os.WriteFile(planFile, []byte(`{"steps":[{"task":"echo","pool":"default","input":{"step":1}},{"task":"echo","pool":"default","input":{"step":2}}]}`), 0o600))
	submitter := JobConfig{Server: base, TokenFile: files[api.RoleClient]}
	p, err := PlanSubmit(t.Context(), submitter, planFile, nil, io.Discard)
	must(t, err)
	if p.State != api.PlanPendingApproval || len(p.Steps) != 2 {
		t.Fatalf("plan submit = %+v, want a pending plan of 2 steps", p)
	}
	var shown bytes.Buffer
	a := PlanApproveConfig{JobConfig: JobConfig{Server: base, TokenFile: files[api.RoleApprover]}, PlanID: p.ID, Key: privPath, As: "t-approver", TTL: time.Minute}
	must(t, PlanApprove(t.Context(), &a, &shown))
	if !strings.Contains(shown.String(), p.Steps[1].ID) {
		t.Errorf("plan approve showed %q, want every step listed", shown.String())
	}
	deadline := time.Now().Add(20 * time.Second)
	var out bytes.Buffer
	for {
		out.Reset()
		jc := submitter
		jc.JSON = true
		must(t, PlanGet(t.Context(), jc, p.ID, &out))
		var got api.Plan
		must(t, json.Unmarshal(out.Bytes(), &got))
		if got.State == api.PlanSucceeded {
			break
		}
		if got.State.Terminal() || time.Now().After(deadline) {
			t.Fatalf("plan = %s (%s), want succeeded", got.State, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-workerDone
	if len(order) != 2 || order[0] != p.Steps[0].ID || order[1] != p.Steps[1].ID {
		t.Fatalf("the worker ran %v, want step 1 then step 2", order)
	}

	if _, err := PlanSubmit(t.Context(), submitter, `{"steps":[],"extra":1}`, nil, io.Discard); err == nil || !strings.Contains(err.Error(), "extra") {
		t.Errorf("plan submit with an unknown member = %v, want it refused naming it", err)
	}
}

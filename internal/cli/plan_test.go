package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
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
	base, files := echoServer(t, dir)
	privPath, pubPath, err := Keygen(KeygenConfig{Out: dir, Name: "t-approver"}, io.Discard)
	must(t, err)
	keys, err := approval.LoadKeySet(pubPath)
	must(t, err)
	verifier := approval.NewVerifier(keys, approval.NewMemoryReplayStore())

	w := standInWorker(t, base, files[api.RoleWorker])
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

// TestPlanApproveRefusesUnhashableInput: a lying control plane shows a plan whose step input
// is not I-JSON (duplicate names, a lone surrogate, a number out of range); `plan approve`
// refuses before signing and posts nothing, naming the step.
func TestPlanApproveRefusesUnhashableInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	privPath, _, err := Keygen(KeygenConfig{Out: dir, Name: "t-approver"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(api.TokenPrefix+"lying-control-plane-test"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, input := range []string{`{"a":1,"a":2}`, `{"a":"\ud800"}`, `{"a":1e400}`} {
		var posted atomic.Bool
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet {
				posted.Store(true)
				http.Error(w, "no", http.StatusTeapot)
				return
			}
			job := func(id, in string) string {
				return `{"id":"` + id + `","task":"echo","task_version":"1","pool":"default","state":"pending_approval","input":` + in + `,"max_attempts":1,"submitted_by":"tok_x","created_at":"2026-12-01T00:00:00Z","updated_at":"2026-12-01T00:00:00Z"}`
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"id":"plan_0123456789abcdef01234567","state":"pending_approval","created_at":"2026-12-01T00:00:00Z","steps":[`+
				job("job_000000000000000000000001", `{"n":1}`)+`,`+job("job_000000000000000000000002", input)+`]}`)
		}))
		cfg := PlanApproveConfig{JobConfig: JobConfig{Server: srv.URL, TokenFile: tokFile}, PlanID: "plan_0123456789abcdef01234567",
			Key: privPath, As: "t", TTL: time.Minute}
		err := PlanApprove(t.Context(), &cfg, io.Discard)
		srv.Close()
		if err == nil || !strings.Contains(err.Error(), "step 2") || !strings.Contains(err.Error(), "cannot be hashed") {
			t.Errorf("input %s: PlanApprove = %v, want a refusal naming step 2", input, err)
		}
		if posted.Load() || cfg.Approval != "" {
			t.Errorf("input %s: an approval was posted", input)
		}
	}
}

// echoServer starts a `castellan server` on a database in dir, with a worker, a client and
// an approver token of pool default in files dir/<role>.token.
func echoServer(t *testing.T, dir string) (base string, files map[api.Role]string) {
	t.Helper()
	db := filepath.Join(dir, "cp.db")
	files = map[api.Role]string{}
	for _, role := range []api.Role{api.RoleWorker, api.RoleClient, api.RoleApprover} {
		var b bytes.Buffer
		_, err := TokenCreate(t.Context(), TokenConfig{DB: db, Role: string(role), Pool: "default", Name: "t-" + string(role)}, &b)
		must(t, err)
		files[role] = filepath.Join(dir, string(role)+".token")
		must(t, os.WriteFile(files[role], b.Bytes(), 0o600))
	}
	base, _ = startServer(t, ServerConfig{DB: db, Listen: "127.0.0.1:0", LogLevel: "error"})
	return base, files
}

// standInWorker registers a worker with the token in tokenFile and publishes task "echo",
// so that jobs and plans of it can be submitted; the caller leases them, if at all.
func standInWorker(t *testing.T, base, tokenFile string) *client.Client {
	t.Helper()
	wtok, err := readToken(tokenFile)
	must(t, err)
	w, err := client.New(base, wtok)
	must(t, err)
	_, err = w.Register(t.Context(), api.RegisterRequest{Name: "stand-in", AgentVersion: "test"})
	must(t, err)
	_, err = w.PublishCatalog(t.Context(), []api.TaskDef{{Name: "echo", Version: "1.0.0", InputSchema: json.RawMessage(`{"type":"object"}`)}})
	must(t, err)
	return w
}

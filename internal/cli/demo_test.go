package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// The demo writes the crm-lookup schemas from constants (the examples package embeds only
// the module and the policy); they must stay equal to the files operators use.
func TestDemoSchemasMatchExamples(t *testing.T) {
	t.Parallel()
	for file, want := range map[string]string{
		"../../examples/crm-lookup/input.schema.json":  crmLookupInputSchema,
		"../../examples/crm-lookup/output.schema.json": crmLookupOutputSchema,
	} {
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("ReadFile(%s) differs from the demo's constant; copy one to the other", file)
		}
	}
}

// TestDemoMCPStep: the demo's agent step against a real `castellan server` (in-process) and
// a stand-in worker over /v1: the agent lists the tools, its crm-lookup call waits as a
// pending job until the demo's approver signs it, and the structuredContent is printed.
func TestDemoMCPStep(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db := filepath.Join(dir, "cp.db")
	files := map[api.Role]string{}
	for _, role := range []api.Role{api.RoleWorker, api.RoleClient, api.RoleApprover} {
		var b bytes.Buffer
		_, err := TokenCreate(t.Context(), TokenConfig{DB: db, Role: string(role), Pool: demoPool, Name: "t-" + string(role)}, &b)
		must(t, err)
		files[role] = filepath.Join(dir, string(role)+".token")
		must(t, os.WriteFile(files[role], b.Bytes(), 0o600))
	}
	base, _ := startServer(t, ServerConfig{DB: db, Listen: "127.0.0.1:0", LogLevel: "error"})
	privPath, _, err := Keygen(KeygenConfig{Out: dir, Name: "t-approver"}, io.Discard)
	must(t, err)

	wtok, err := readToken(files[api.RoleWorker])
	must(t, err)
	w, err := client.New(base, wtok)
	must(t, err)
	_, err = w.Register(t.Context(), api.RegisterRequest{Name: "stand-in", AgentVersion: "test"})
	must(t, err)
	_, err = w.PublishCatalog(t.Context(), []api.TaskDef{{Name: "crm-lookup", Version: "1.0.0",
		InputSchema: json.RawMessage(crmLookupInputSchema), OutputSchema: json.RawMessage(crmLookupOutputSchema)}})
	must(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	leased := make(chan api.LeasedJob, 1)
	workerDone := make(chan struct{})
	t.Cleanup(func() { cancel(); <-workerDone })
	go func() {
		defer close(workerDone)
		for ctx.Err() == nil {
			jobs, err := w.Lease(ctx, 1, time.Second)
			if err != nil {
				select { // back off: the server may be shutting down
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
				continue
			}
			for _, j := range jobs {
				select {
				case leased <- j:
				default:
				}
				_, _ = w.Complete(ctx, j.JobID, api.CompleteRequest{LeaseToken: j.LeaseToken, Attempt: j.Attempt, Outcome: "ok",
					Output: json.RawMessage(`{"customer_id":"42","name":"Ada Lovelace","tier":"gold","open_tickets":2}`)})
			}
		}
	}()

	var out bytes.Buffer
	step := func(format string, args ...any) { fmt.Fprintf(&out, "==> "+format+"\n", args...) }
	info := func(format string, args ...any) { fmt.Fprintf(&out, "    "+format+"\n", args...) }
	approverCfg := JobConfig{Server: base, TokenFile: files[api.RoleApprover]}
	var approved []string
	approve := func(id string) error {
		approved = append(approved, id)
		a := ApproveConfig{JobConfig: approverCfg, JobID: id, Key: privPath, As: "t-approver", TTL: time.Minute}
		return JobApprove(t.Context(), &a, io.Discard)
	}
	if err := demoMCP(t.Context(), base, JobConfig{Server: base, TokenFile: files[api.RoleClient]}, approve, step, info); err != nil {
		t.Fatalf("demoMCP() = %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"tools/list: castellan_job_result, castellan_plan_result, castellan_submit_plan, crm-lookup",
		"is pending_approval: the agent cannot approve it",
		`structuredContent: {"customer_id":"42","name":"Ada Lovelace","open_tickets":2,"tier":"gold"}`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demoMCP output lacks %q:\n%s", want, out.String())
		}
	}
	if len(approved) != 1 {
		t.Fatalf("approved %v, want the one job of the call", approved)
	}
	if j := <-leased; j.JobID != approved[0] || j.Approval == "" || string(j.Input) != `{"customer_id":"42"}` {
		t.Errorf("the worker leased %s (approval %t, input %s), want %s approved with the agent's input", j.JobID, j.Approval != "", j.Input, approved[0])
	}
}

package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"

	_ "modernc.org/sqlite" // read the control plane's database directly
)

const crmToken = "e2e-crm-token-6f1d0c9a2b7e4f3a"

// The happy path through the CLI: submit, approve (signed by the CLI with the approver's
// key), wait; a schema-invalid submit is refused; the worker holds no listening socket.
func TestHappyPathCLI(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	srv, url := e.server("127.0.0.1:0")
	w := e.worker(url, e.policy(crm(t, crmToken, 0), crmToken), "w1")

	t.Run("no listening port", func(t *testing.T) {
		// The check must be able to see a listener: the server has one.
		if n := listeningSockets(t, srv.cmd.Process.Pid); n == 0 {
			t.Fatalf("listeningSockets(server) = 0, want at least 1 (the check is blind)")
		}
		if n := listeningSockets(t, w.cmd.Process.Pid); n != 0 {
			t.Fatalf("listeningSockets(worker) = %d, want 0", n)
		}
	})

	out, errs, code := e.cli(url, api.RoleClient, "submit", "--task", "crm-lookup", "--pool", pool, "--input", `{"customer_id":"x"}`)
	if code != 1 || !strings.Contains(errs, "input_invalid") || !strings.Contains(errs, "customer_id") {
		t.Fatalf("job submit (schema-invalid) = exit %d, stderr %q, want 1 with input_invalid at customer_id", code, errs)
	}
	out, errs, code = e.cli(url, api.RoleClient, "submit", "--json", "--task", "crm-lookup", "--pool", pool, "--input", `{"customer_id":"42"}`)
	if code != 0 {
		t.Fatalf("job submit = exit %d, stderr %q", code, errs)
	}
	j := jobJSON(t, out)
	if j.State != api.StatePendingApproval {
		t.Fatalf("job submit state = %s, want %s", j.State, api.StatePendingApproval)
	}
	out, errs, code = e.cli(url, api.RoleApprover, "approve", "--key", e.privKey, "--as", "alice", j.ID)
	if code != 0 || !strings.Contains(out, "sha256:") {
		t.Fatalf("job approve = exit %d, stdout %q, stderr %q; want 0 and the input hash shown", code, out, errs)
	}
	out, errs, code = e.cli(url, api.RoleClient, "wait", "--json", j.ID)
	if code != 0 {
		t.Fatalf("job wait = exit %d, stdout %q, stderr %q", code, out, errs)
	}
	done := jobJSON(t, out)
	var res struct {
		CustomerID string `json:"customer_id"`
		Name       string `json:"name"`
	}
	if err := json.Unmarshal(done.Output, &res); err != nil || res.CustomerID != "42" || res.Name == "" {
		t.Fatalf("job output = %s (%v), want customer 42 with a name", done.Output, err)
	}
	out, _, code = e.cli(url, api.RoleClient, "list", "--state", "succeeded")
	if code != 0 || !strings.Contains(out, j.ID) {
		t.Fatalf("job list --state succeeded = exit %d, %q; want it to list %s", code, out, j.ID)
	}
	if code := w.signal(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("worker exit status after SIGTERM = %d, want 0", code)
	}
}

// A worker SIGKILLed mid-job: the lease expires, a second worker runs the job, and exactly
// one completion is recorded.
func TestWorkerKilledMidJob(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("waits for a lease to expire")
	}
	e := newEnv(t)
	e.withAutoApprove("crm-lookup")
	srv, url := e.server("127.0.0.1:0", "--lease-ttl", "2s")
	pol := e.policy(crm(t, crmToken, 2*time.Second), crmToken)
	w1 := e.worker(url, pol, "w1")
	out := mustRun(t, "job", "submit", "--server", url, "--token-file", e.tokens[api.RoleClient], "--json",
		"--task", "crm-lookup", "--pool", pool, "--input", `{"customer_id":"7"}`)
	id := jobJSON(t, out).ID
	c := e.client(url, api.RoleClient)
	e.waitFor("job running on w1", 30*time.Second, func() bool {
		j, err := c.Get(t.Context(), id)
		return err == nil && j.State == api.StateRunning
	}, w1)
	w1.kill()
	e.worker(url, pol, "w2")
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	j, err := c.Wait(ctx, id)
	if err != nil {
		t.Fatalf("Wait(%s) = %v", id, err)
	}
	if j.State != api.StateSucceeded || j.Attempt != 2 {
		t.Fatalf("job after w1 was killed = %s attempt %d, want succeeded attempt 2", j.State, j.Attempt)
	}
	if code := srv.signal(syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("server exit status after SIGTERM = %d, want 0", code)
	}
	counts := countDB(t, e.db)
	if counts.Attempts != 2 || counts.Jobs[api.StateSucceeded] != 1 {
		t.Fatalf("Count() = %+v, want 2 attempts and 1 succeeded job", counts)
	}
	// Count's Completions also counts the attempt the reaper closed; ask the table directly
	// how each attempt ended.
	if got := attemptEnds(t, e.db, id); got != "1:timeout/lease_expired 2:ok/" {
		t.Fatalf("attempts of %s = %q, want attempt 1 expired and exactly one result, from attempt 2", id, got)
	}
}

// attemptEnds lists "attempt:outcome/end_reason" for a job's attempts, read-only.
func attemptEnds(t *testing.T, db, id string) string {
	t.Helper()
	conn, err := sql.Open("sqlite", "file:"+db+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rows, err := conn.QueryContext(t.Context(), `SELECT attempt, COALESCE(outcome, ''), COALESCE(end_reason, '')
		FROM job_attempts WHERE job_id = ? ORDER BY attempt`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var parts []string
	for rows.Next() {
		var n int
		var oc, reason string
		if err := rows.Scan(&n, &oc, &reason); err != nil {
			t.Fatal(err)
		}
		if reason == "completed" {
			reason = ""
		}
		parts = append(parts, fmt.Sprintf("%d:%s/%s", n, oc, reason))
	}
	return strings.Join(parts, " ")
}

// The control plane SIGKILLed and restarted on the same database while jobs flow: every
// job ends succeeded, exactly once.
func TestControlPlaneRestart(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("restarts the control plane")
	}
	e := newEnv(t)
	e.withAutoApprove("crm-lookup")
	addr := freeAddr(t)
	srv, url := e.server(addr, "--lease-ttl", "2s")
	e.worker(url, e.policy(crm(t, crmToken, 0), crmToken), "w1", "--concurrency", "4")
	c := e.client(url, api.RoleClient)

	const n = 30
	ids := make([]string, n)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // a client that keeps submitting through the outage, idempotently
		defer wg.Done()
		for i := range n {
			deadline := time.Now().Add(40 * time.Second)
			for {
				ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
				j, err := c.Submit(ctx, api.SubmitRequest{Task: "crm-lookup", Pool: pool,
					Input: json.RawMessage(fmt.Sprintf(`{"customer_id":"%s"}`, []string{"42", "7"}[i%2])), IdempotencyKey: fmt.Sprintf("job-%d", i)})
				cancel()
				if err == nil {
					ids[i] = j.ID
					break
				}
				if time.Now().After(deadline) || t.Context().Err() != nil {
					return
				}
				time.Sleep(20 * time.Millisecond) // retry pace while the server is down
			}
		}
	}()
	e.waitFor("some jobs done", 30*time.Second, func() bool {
		l, err := c.List(t.Context(), client.ListOptions{State: api.StateSucceeded})
		return err == nil && len(l.Jobs) >= 5
	})
	srv.kill()
	_, url2 := e.server(addr, "--lease-ttl", "2s")
	if url2 != url {
		t.Fatalf("restarted server URL = %s, want %s", url2, url)
	}
	wg.Wait()
	for i, id := range ids {
		if id == "" {
			t.Fatalf("job %d was never accepted", i)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		j, err := c.Wait(ctx, id)
		cancel()
		if err != nil || j.State != api.StateSucceeded {
			t.Fatalf("Wait(%s) = %s, %v; want succeeded", id, j.State, err)
		}
	}
	counts := countDB(t, e.db)
	if counts.Jobs[api.StateSucceeded] != n {
		t.Fatalf("Count() = %+v, want %d succeeded jobs", counts, n)
	}
	// An attempt running when the server died may have lost its completion and run again
	// (at least once); what must hold is one recorded result per job.
	var results, jobs int
	queryDB(t, e.db, `SELECT COUNT(*), COUNT(DISTINCT job_id) FROM job_attempts WHERE end_reason = 'completed'`, &results, &jobs)
	if results != n || jobs != n {
		t.Fatalf("completed attempts = %d over %d jobs, want %d over %d (Count() = %+v)", results, jobs, n, n, counts)
	}
}

// queryDB runs a one-row query on the control plane's database, read-only.
func queryDB(t *testing.T, db, q string, dest ...any) {
	t.Helper()
	conn, err := sql.Open("sqlite", "file:"+db+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.QueryRowContext(t.Context(), q).Scan(dest...); err != nil {
		t.Fatalf("query %q: %v", q, err)
	}
}

// SIGTERM drains: the running job finishes and is reported, and the worker exits 0.
func TestSIGTERMDrain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.withAutoApprove("crm-lookup")
	_, url := e.server("127.0.0.1:0")
	w := e.worker(url, e.policy(crm(t, crmToken, 1500*time.Millisecond), crmToken), "w1")
	c := e.client(url, api.RoleClient)
	j, err := c.Submit(t.Context(), api.SubmitRequest{Task: "crm-lookup", Pool: pool, Input: json.RawMessage(`{"customer_id":"42"}`)})
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the worker to start the job, not for the server to say "running": a lease
	// response still in flight when SIGTERM cancels the long-poll is lost until the lease
	// expires (see the report on internal/worker).
	e.waitFor("job started on the worker", 30*time.Second, func() bool {
		return strings.Contains(w.stderr.String(), "job started")
	}, w)
	if code := w.signal(syscall.SIGTERM, 30*time.Second); code != 0 {
		t.Fatalf("worker exit status after SIGTERM = %d, want 0\n%s", code, w.stderr.String())
	}
	if !strings.Contains(w.stderr.String(), "draining") {
		t.Errorf("worker log has no \"draining\" line")
	}
	got, err := c.Get(t.Context(), j.ID)
	if err != nil || got.State != api.StateSucceeded || got.Attempt != 1 {
		t.Fatalf("job after drain = %s attempt %d (%v), want succeeded attempt 1", got.State, got.Attempt, err)
	}
}

// `castellan demo` runs the whole story, reports both separation checks, and ends with an
// approver deciding one job by rule and one in its console, and an MCP client listing the
// tools and getting crm-lookup's structuredContent.
func TestDemo(t *testing.T) {
	t.Parallel()
	out, errs, code := run(t, "demo")
	if code != 0 {
		t.Fatalf("castellan demo = exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	for _, want := range []string{
		"separation check passed: the CRM token appears in neither",
		"separation check passed: the CRM's internal address",
		"rejected by the worker, nothing ran: approval rejected (input_mismatch)",
		"rejected by the worker, nothing ran: approval rejected (wrong_job)",
		`"customer_id":"42"`,
		"tools/list: castellan_job_result, castellan_plan_result, castellan_submit_plan, crm-lookup",
		"approved by rule read-only-lookups, signed by the approver process; the worker ran it:",
		"approved by person demo-person in the console; the worker ran it:",
		`the agent's tool result, structuredContent: {"customer_id":"42","name":"Ada Lovelace","open_tickets":2,"tier":"gold"}`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("castellan demo output lacks %q:\n%s", want, out)
		}
	}
}

func countDB(t *testing.T, db string) server.Counts {
	t.Helper()
	st, err := server.OpenStore(t.Context(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c, err := st.Count(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

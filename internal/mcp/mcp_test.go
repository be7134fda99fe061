package mcp_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
)

const echoSchema = `{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}`

func echoTask() api.TaskDef {
	yes := true
	return api.TaskDef{Name: "echo", Version: "1", Title: "Echo a number", Description: "returns its input", InputSchema: json.RawMessage(echoSchema),
		OutputSchema: json.RawMessage(`{"type":"object","properties":{"n":{"type":"integer"}}}`),
		Annotations:  &api.ToolAnnotations{ReadOnly: &yes, Idempotent: &yes}}
}

// env is a real control plane (SQLite file, loopback HTTP) with /mcp served next to /v1,
// a worker loop that leases jobs over /v1 and echoes their input, and tokens per role.
type env struct {
	t        testing.TB
	s        *server.Server
	url      string
	key      jose.JSONWebKey
	secrets  map[string]string
	approver *client.Client
	workerA  *client.Client
	// release lets the test worker finish one job of the "held" task; completed then
	// receives the time its completion was accepted.
	release   chan struct{}
	completed chan time.Time
	// jobReads counts GET /v1/jobs/{id} and /v1/jobs/{id}/wait requests.
	jobReads atomic.Int64
	// catalogReads counts GET /v1/catalog requests.
	catalogReads atomic.Int64
}

type autoApprover struct{ key jose.JSONWebKey }

func (a autoApprover) Approve(_ context.Context, j server.ApprovalSubject) (string, error) {
	tok, _, err := approval.Sign(a.key, approval.Request{JobID: j.JobID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Input: j.Input, Auto: true})
	return tok, err
}

func newEnv(t testing.TB, autoApprove bool, opts mcp.Options) *env {
	t.Helper()
	priv, _, err := approval.GenerateKey("test")
	if err != nil {
		t.Fatal(err)
	}
	cfg := server.Config{DBPath: filepath.Join(t.TempDir(), "cp.db"), RecheckInterval: 50 * time.Millisecond}
	if autoApprove {
		cfg.AutoApprover, cfg.AutoApproveTasks = autoApprover{priv}, []string{"*"}
	}
	s, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("server.New() = %v", err)
	}
	mux := http.NewServeMux()
	hs := httptest.NewUnstartedServer(mux)
	hs.Start()
	b, err := mcp.NewV1Backend(hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	h := mcp.Handler(b, opts)
	mux.Handle(mcp.Path, h)
	mux.Handle(mcp.MetadataPath+"/", h)
	mux.Handle(mcp.MetadataPath, h)
	e := &env{t: t, s: s, url: hs.URL, key: priv, secrets: map[string]string{}, release: make(chan struct{}), completed: make(chan time.Time, 8)}
	v1 := s.Handler()
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/jobs/"):
			e.jobReads.Add(1)
		case r.Method == http.MethodGet && r.URL.Path == "/v1/catalog":
			e.catalogReads.Add(1)
		}
		v1.ServeHTTP(w, r)
	}))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait(); s.Close(); hs.Close() })
	e.approver = e.newClient("approver", api.RoleApprover, "*")
	e.newClient("client", api.RoleClient, "alpha")
	e.newClient("admin", api.RoleAdmin, "*")
	e.workerA = e.newWorker("worker-a", "alpha", echoTask())
	e.newWorker("worker-b", "beta", api.TaskDef{Name: "beta-only", Version: "1", InputSchema: json.RawMessage(`{"type":"object"}`)})
	wg.Add(1)
	go func() { defer wg.Done(); e.runWorker(ctx, e.workerA) }()
	return e
}

func (e *env) newClient(name string, role api.Role, pool string) *client.Client {
	e.t.Helper()
	tok, err := e.s.Store().CreateToken(context.Background(), role, pool, name, time.Now())
	if err != nil {
		e.t.Fatalf("CreateToken(%s) = %v", name, err)
	}
	e.secrets[name] = tok.Secret
	c, err := client.New(e.url, tok.Secret)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) newWorker(name, pool string, tasks ...api.TaskDef) *client.Client {
	e.t.Helper()
	c := e.newClient(name, api.RoleWorker, pool)
	if _, err := c.Register(context.Background(), api.RegisterRequest{Name: name, AgentVersion: "test"}); err != nil {
		e.t.Fatalf("Register(%s) = %v", name, err)
	}
	if _, err := c.PublishCatalog(context.Background(), tasks); err != nil {
		e.t.Fatalf("PublishCatalog(%s) = %v", name, err)
	}
	return c
}

// runWorker leases over /v1 and completes each job with its input as output, except:
// "held" jobs wait for e.release; the conformance suite's fixture tasks
// (conformance_test.go) answer as the suite expects.
func (e *env) runWorker(ctx context.Context, w *client.Client) {
	for ctx.Err() == nil {
		jobs, err := w.Lease(ctx, 1, time.Second)
		if err != nil {
			continue
		}
		for _, j := range jobs {
			req := api.CompleteRequest{LeaseToken: j.LeaseToken, Attempt: j.Attempt, Outcome: "ok", Output: j.Input, DurationMS: 1}
			switch j.Task {
			case "held":
				select {
				case <-e.release:
				case <-ctx.Done():
					return
				}
			case "test_simple_text":
				req.Output = json.RawMessage(`{"text":"This is a simple text response for testing."}`)
			case "test_error_handling":
				req.Outcome, req.Output, req.ErrorMessage = "task_error", nil, "This tool intentionally returns an error for testing"
			case "test_tool_with_progress":
				// The suite's reference tool works ~100ms between its notifications; this
				// one runs long enough for the running state to be reported.
				t := time.NewTimer(400 * time.Millisecond)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return
				}
			}
			if _, err := w.Complete(ctx, j.JobID, req); err == nil && j.Task == "held" {
				e.completed <- time.Now()
			}
		}
	}
}

// approve signs an approval for job id as `castellan job approve` does and attaches it.
func (e *env) approve(ctx context.Context, id string) {
	e.t.Helper()
	j, err := e.approver.Get(ctx, id)
	if err != nil {
		e.t.Fatalf("Get(%s) = %v", id, err)
	}
	tok, _, err := approval.Sign(e.key, approval.Request{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Input: j.Input, MaxAttempts: j.MaxAttempts, Approver: "test"})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.approver.Approve(ctx, j.ID, tok); err != nil {
		e.t.Fatalf("Approve(%s) = %v", id, err)
	}
}

// pendingJob polls until one job of pool alpha waits for approval.
func (e *env) pendingJob(ctx context.Context) api.Job {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		l, err := e.approver.List(ctx, client.ListOptions{State: api.StatePendingApproval, Pool: "alpha"})
		if err != nil {
			e.t.Fatalf("List() = %v", err)
		}
		if len(l.Jobs) > 0 {
			return l.Jobs[0]
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	e.t.Fatal("no job reached pending_approval within 10s")
	return api.Job{}
}

type bearer struct {
	token string
	base  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

func (e *env) connect(ctx context.Context, token string, opts *sdk.ClientOptions) *sdk.ClientSession {
	e.t.Helper()
	c := sdk.NewClient(&sdk.Implementation{Name: "test-agent", Version: "1"}, opts)
	tr := &sdk.StreamableClientTransport{Endpoint: e.url + mcp.Path, HTTPClient: &http.Client{Transport: bearer{token, http.DefaultTransport}}}
	cs, err := c.Connect(ctx, tr, nil)
	if err != nil {
		e.t.Fatalf("Connect() = %v", err)
	}
	e.t.Cleanup(func() { cs.Close() })
	return cs
}

func toolNames(t testing.TB, ctx context.Context, cs *sdk.ClientSession) []string {
	t.Helper()
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatalf("ListTools() = %v", err)
	}
	var names []string
	for _, tl := range res.Tools {
		names = append(names, tl.Name)
	}
	slices.Sort(names)
	return names
}

func text(r *sdk.CallToolResult) string {
	var b strings.Builder
	for _, c := range r.Content {
		if tc, ok := c.(*sdk.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// checkHints compares a listed tool's MCP hints with the catalog's annotations: none sent
// without annotations, and each hint as the policy set it (an unset one at the protocol's
// cautious default).
func checkHints(t *testing.T, tl *sdk.Tool, a *api.ToolAnnotations) {
	t.Helper()
	if a == nil {
		if tl.Annotations != nil {
			t.Errorf("tool %s annotations = %+v, want none (the policy set none)", tl.Name, tl.Annotations)
		}
		return
	}
	if tl.Annotations == nil {
		t.Fatalf("tool %s has no annotations, want %+v", tl.Name, a)
	}
	is := func(p *bool) bool { return p != nil && *p }
	h := tl.Annotations
	if h.ReadOnlyHint != is(a.ReadOnly) || h.IdempotentHint != is(a.Idempotent) {
		t.Errorf("tool %s hints readOnly %t idempotent %t, want %t %t", tl.Name, h.ReadOnlyHint, h.IdempotentHint, is(a.ReadOnly), is(a.Idempotent))
	}
	if (h.DestructiveHint == nil) != (a.Destructive == nil) || (a.Destructive != nil && *h.DestructiveHint != *a.Destructive) {
		t.Errorf("tool %s destructiveHint = %v, want %v", tl.Name, h.DestructiveHint, a.Destructive)
	}
}

func TestInitializeAndListTools(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	ctx := t.Context()
	cs := e.connect(ctx, e.secrets["client"], nil)
	ir := cs.InitializeResult()
	t.Logf("Go SDK client negotiated %s, session %q", ir.ProtocolVersion, cs.ID())
	if ir.ProtocolVersion != "2026-07-28" && ir.ProtocolVersion != "2025-11-25" {
		t.Errorf("ProtocolVersion = %q, want the SDK's newest", ir.ProtocolVersion)
	}
	if ir.Capabilities.Tools == nil || !ir.Capabilities.Tools.ListChanged {
		t.Errorf("Capabilities.Tools = %+v, want listChanged", ir.Capabilities.Tools)
	}
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cat, err := e.workerA.Catalog(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]api.TaskDef{}
	for _, d := range cat.Tasks {
		want[d.Name] = d
	}
	got := map[string]bool{}
	for _, tl := range res.Tools {
		got[tl.Name] = true
		if tl.Name == mcp.ResultToolName || tl.Name == mcp.SubmitPlanToolName || tl.Name == mcp.PlanResultToolName {
			continue
		}
		d, ok := want[tl.Name]
		if !ok {
			t.Errorf("tool %q is not in pool alpha's catalog", tl.Name)
			continue
		}
		in, _ := json.Marshal(tl.InputSchema)
		if !jsonEqual(in, d.InputSchema) {
			t.Errorf("tool %s inputSchema = %s, want %s", tl.Name, in, d.InputSchema)
		}
		out, _ := json.Marshal(tl.OutputSchema)
		if !jsonEqual(out, d.OutputSchema) {
			t.Errorf("tool %s outputSchema = %s, want %s", tl.Name, out, d.OutputSchema)
		}
		if !strings.Contains(tl.Description, d.Description) {
			t.Errorf("tool %s description = %q, want it to contain %q", tl.Name, tl.Description, d.Description)
		}
		if tl.Title != d.Title {
			t.Errorf("tool %s title = %q, want %q", tl.Name, tl.Title, d.Title)
		}
		checkHints(t, tl, d.Annotations)
	}
	if annotated := want["echo"].Annotations; annotated == nil || want["echo"].Title == "" {
		t.Error("the catalog's echo has no title or annotations; this test would check nothing")
	}
	for name := range want {
		if !got[name] {
			t.Errorf("catalog task %q is not listed as a tool", name)
		}
	}
	for _, name := range []string{mcp.ResultToolName, mcp.SubmitPlanToolName, mcp.PlanResultToolName} {
		if !got[name] {
			t.Errorf("tool %s is not listed", name)
		}
	}
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}

func TestCallWithApproval(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	ctx := t.Context()
	var mu sync.Mutex
	var progress []string
	cs := e.connect(ctx, e.secrets["client"], &sdk.ClientOptions{ProgressNotificationHandler: func(_ context.Context, r *sdk.ProgressNotificationClientRequest) {
		mu.Lock()
		progress = append(progress, r.Params.Message)
		mu.Unlock()
	}})
	type out struct {
		r   *sdk.CallToolResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": 7}, Meta: sdk.Meta{"progressToken": "p1"}})
		done <- out{r, err}
	}()
	j := e.pendingJob(ctx)
	if j.Task != "echo" || j.HasApproval {
		t.Fatalf("pending job = %+v, want an unapproved echo job", j)
	}
	e.approve(ctx, j.ID)
	o := <-done
	if o.err != nil {
		t.Fatalf("CallTool(echo) = %v", o.err)
	}
	if o.r.IsError {
		t.Fatalf("CallTool(echo).IsError, text %q", text(o.r))
	}
	sc, _ := json.Marshal(o.r.StructuredContent)
	if !jsonEqual(sc, []byte(`{"n":7}`)) || !jsonEqual([]byte(text(o.r)), []byte(`{"n":7}`)) {
		t.Errorf("CallTool(echo) structured %s text %q, want {\"n\":7} in both", sc, text(o.r))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(progress) == 0 || !strings.Contains(progress[0], "pending approval") {
		t.Errorf("progress = %q, want it to start with pending approval", progress)
	}
}

func TestCallInvalidArgumentsNamesPath(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	ctx := t.Context()
	cs := e.connect(ctx, e.secrets["client"], nil)
	for _, tc := range []struct {
		args any
		want string
	}{
		{map[string]any{"n": "seven"}, "/n"},
		{map[string]any{}, "(root)"},
		{map[string]any{"n": 1, "extra": true}, "extra"},
	} {
		r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: tc.args})
		if err != nil {
			t.Fatalf("CallTool(%v) = %v", tc.args, err)
		}
		if !r.IsError || !strings.Contains(text(r), tc.want) || !strings.Contains(text(r), "invalid arguments") {
			t.Errorf("CallTool(%v) = isError %v %q, want a tool error naming %s", tc.args, r.IsError, text(r), tc.want)
		}
	}
	l, err := e.approver.List(ctx, client.ListOptions{Pool: "alpha"})
	if err != nil || len(l.Jobs) != 0 {
		t.Errorf("jobs after invalid calls = %d, %v; want none", len(l.Jobs), err)
	}
}

func TestOtherPoolNotListedNorCallable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	ctx := t.Context()
	cs := e.connect(ctx, e.secrets["client"], nil)
	if names := toolNames(t, ctx, cs); slices.Contains(names, "beta-only") {
		t.Errorf("tools = %v, want no beta-only", names)
	}
	r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "beta-only", Arguments: map[string]any{}})
	if err == nil && !r.IsError {
		t.Fatalf("CallTool(beta-only) succeeded: %q", text(r))
	}
	l, err := e.approver.List(ctx, client.ListOptions{Pool: "beta"})
	if err != nil || len(l.Jobs) != 0 {
		t.Errorf("beta jobs = %d, %v; want none", len(l.Jobs), err)
	}
}

func TestUnauthenticated(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	for _, auth := range []string{"", "Bearer cst_not-a-token", "Basic abc"} {
		req, _ := http.NewRequest(http.MethodPost, e.url+mcp.Path, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		wa := resp.Header.Get("WWW-Authenticate")
		want := `Bearer resource_metadata="` + e.url + mcp.MetadataPath + mcp.Path + `"`
		if resp.StatusCode != http.StatusUnauthorized || wa != want {
			t.Errorf("POST /mcp with %q = %d, WWW-Authenticate %q; want 401, %q", auth, resp.StatusCode, wa, want)
		}
	}
	for _, p := range []string{mcp.MetadataPath, mcp.MetadataPath + mcp.Path} {
		resp, err := http.Get(e.url + p)
		if err != nil {
			t.Fatal(err)
		}
		var m struct {
			Resource string   `json:"resource"`
			Methods  []string `json:"bearer_methods_supported"`
		}
		err = json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || m.Resource != e.url+mcp.Path {
			t.Errorf("GET %s = %d %+v %v, want resource %s", p, resp.StatusCode, m, err, e.url+mcp.Path)
		}
	}
}

func TestCancelMidApprovalCancelsJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	cs := e.connect(t.Context(), e.secrets["client"], nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": 1}})
		done <- err
	}()
	j := e.pendingJob(t.Context())
	cancel() // the SDK client sends notifications/cancelled
	if err := <-done; err == nil {
		t.Fatal("CallTool after cancel = nil error")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := e.approver.Get(t.Context(), j.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State == api.StateCancelled {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job state = %s 10s after notifications/cancelled, want cancelled", got.State)
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

func TestPendingResultAndFetchLater(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{CallWait: time.Second})
	ctx := t.Context()
	cs := e.connect(ctx, e.secrets["client"], nil)
	r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": 3}})
	if err != nil {
		t.Fatal(err)
	}
	j := e.pendingJob(ctx)
	if !r.IsError || !strings.Contains(text(r), j.ID) || !strings.Contains(text(r), mcp.ResultToolName) {
		t.Fatalf("CallTool after CallWait = %q, want it to name job %s and %s", text(r), j.ID, mcp.ResultToolName)
	}
	e.approve(ctx, j.ID)
	r, err = cs.CallTool(ctx, &sdk.CallToolParams{Name: mcp.ResultToolName, Arguments: map[string]any{"job_id": j.ID, "wait_seconds": 10}})
	if err != nil || r.IsError {
		t.Fatalf("CallTool(%s) = %v, %q", mcp.ResultToolName, err, text(r))
	}
	if !jsonEqual([]byte(text(r)), []byte(`{"n":3}`)) {
		t.Errorf("result text = %q, want {\"n\":3}", text(r))
	}
}

// TestDeniedCallIsToolError: a call whose job an approver denies ends as a tool error that
// names the outcome code, who denied it and why, in the text (what most clients show the
// model) and in the structured content, whether the call was still waiting or the agent
// fetches the result later with castellan_job_result.
func TestDeniedCallIsToolError(t *testing.T) {
	t.Parallel()
	check := func(t *testing.T, r *sdk.CallToolResult, reason string) {
		t.Helper()
		if r == nil || !r.IsError {
			t.Fatalf("result = %+v, want a tool error", r)
		}
		txt := text(r)
		for _, want := range []string{api.OutcomeDeniedByApprover, `"approver"`, reason} {
			if !strings.Contains(txt, want) {
				t.Errorf("tool error text = %q, want it to name %q", txt, want)
			}
		}
		sc, _ := json.Marshal(r.StructuredContent)
		var m map[string]any
		if err := json.Unmarshal(sc, &m); err != nil || m["denied_by"] != "approver" || m["state"] != "denied" ||
			m["outcome"] != api.OutcomeDeniedByApprover || m["message"] != reason {
			t.Errorf("structured content = %s, want state denied, outcome %s, denied_by approver and the reason", sc, api.OutcomeDeniedByApprover)
		}
	}
	t.Run("while the call waits", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, false, mcp.Options{})
		ctx := t.Context()
		cs := e.connect(ctx, e.secrets["client"], nil)
		type res struct {
			r   *sdk.CallToolResult
			err error
		}
		done := make(chan res, 1)
		go func() {
			r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": 4}})
			done <- res{r, err}
		}()
		j := e.pendingJob(ctx)
		if _, err := e.approver.Deny(ctx, j.ID, "not during the freeze"); err != nil {
			t.Fatalf("Deny() = %v", err)
		}
		got := <-done
		if got.err != nil {
			t.Fatalf("CallTool(denied job) = %v", got.err)
		}
		check(t, got.r, "not during the freeze")
	})
	t.Run("fetched later", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, false, mcp.Options{CallWait: 100 * time.Millisecond})
		ctx := t.Context()
		cs := e.connect(ctx, e.secrets["client"], nil)
		if r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": 5}}); err != nil || !r.IsError {
			t.Fatalf("CallTool = %v, %+v; want the pending answer", err, r)
		}
		j := e.pendingJob(ctx)
		if _, err := e.approver.Deny(ctx, j.ID, "needs a ticket"); err != nil {
			t.Fatalf("Deny() = %v", err)
		}
		r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: mcp.ResultToolName, Arguments: map[string]any{"job_id": j.ID, "wait_seconds": 0}})
		if err != nil {
			t.Fatal(err)
		}
		check(t, r, "needs a ticket")
	})
}

func TestListChangedOnCatalogChange(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{CatalogPoll: 100 * time.Millisecond})
	ctx := t.Context()
	changed := make(chan struct{}, 8)
	cs := e.connect(ctx, e.secrets["client"], &sdk.ClientOptions{ToolListChangedHandler: func(context.Context, *sdk.ToolListChangedRequest) {
		changed <- struct{}{}
	}})
	if names := toolNames(t, ctx, cs); slices.Contains(names, "hot") {
		t.Fatalf("tools = %v before the change", names)
	}
	if _, err := e.workerA.PublishCatalog(ctx, []api.TaskDef{echoTask(), {Name: "hot", Version: "1", InputSchema: json.RawMessage(`{"type":"object"}`)}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no notifications/tools/list_changed within 10s of a catalog change")
	}
	if names := toolNames(t, ctx, cs); !slices.Contains(names, "hot") {
		t.Errorf("tools after list_changed = %v, want hot", names)
	}
}

// TestHintsChangeWithoutNewVersion: the security team changes a task's annotations in the
// policy without a new module version; the control plane takes them (the newest publication
// wins) and clients are told and see the new hints, never the old ones.
func TestHintsChangeWithoutNewVersion(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{CatalogPoll: 100 * time.Millisecond})
	ctx := t.Context()
	changed := make(chan struct{}, 8)
	cs := e.connect(ctx, e.secrets["client"], &sdk.ClientOptions{ToolListChangedHandler: func(context.Context, *sdk.ToolListChangedRequest) {
		changed <- struct{}{}
	}})
	yes := true
	def := echoTask()
	def.Title = "Echo, now destructive"
	def.Annotations = &api.ToolAnnotations{Destructive: &yes}
	if _, err := e.workerA.PublishCatalog(ctx, []api.TaskDef{def}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no notifications/tools/list_changed within 10s of new annotations")
	}
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tl := range res.Tools {
		if tl.Name == "echo" {
			if tl.Title != def.Title {
				t.Errorf("title = %q, want %q", tl.Title, def.Title)
			}
			checkHints(t, tl, def.Annotations)
			return
		}
	}
	t.Fatal("echo is not listed")
}

func TestRetrySameRequestIDSameJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{CallWait: time.Second})
	ctx := t.Context()
	cs := e.connect(ctx, e.secrets["client"], nil)
	// Replay one tools/call twice with the same JSON-RPC id on the same session, as a
	// client retrying after a dropped connection does.
	post := func(id int) string {
		call := `{"name":"echo","arguments":{"n":5}}`
		if id >= 910 {
			call = `{"name":"` + mcp.SubmitPlanToolName + `","arguments":{"steps":[{"tool":"echo","arguments":{"n":6}}]}}`
		}
		body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":%s}`, id, call)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+mcp.Path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Authorization", "Bearer "+e.secrets["client"])
		req.Header.Set("Mcp-Session-Id", cs.ID())
		req.Header.Set("Mcp-Protocol-Version", cs.InitializeResult().ProtocolVersion)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var sb strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(buf)
			sb.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return sb.String()
	}
	post(900)
	post(900)
	post(901)
	// castellan_submit_plan too: one plan (of one step) per request id.
	post(910)
	post(910)
	post(911)
	l, err := e.approver.List(ctx, client.ListOptions{Pool: "alpha"})
	if err != nil {
		t.Fatal(err)
	}
	var calls, steps int
	for _, j := range l.Jobs {
		if j, err = e.approver.Get(ctx, j.ID); err != nil { // lists omit the input
			t.Fatal(err)
		}
		switch string(j.Input) {
		case `{"n":5}`:
			calls++
		case `{"n":6}`:
			steps++
		}
	}
	if calls != 2 || steps != 2 {
		t.Errorf("after 2 sends of id 900 and 1 of id 901, jobs = %d; after 2 sends of plan id 910 and 1 of 911, plan steps = %d; want 2 each", calls, steps)
	}
}

func TestNegotiatesOlderRevisions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	for _, tc := range []struct{ ask, want string }{
		{"2024-11-05", "2024-11-05"},
		{"2025-03-26", "2025-03-26"},
		{"2025-06-18", "2025-06-18"},
		{"2025-11-25", "2025-11-25"},
		{"1999-01-01", ""}, // unknown: the server offers a revision it speaks
	} {
		body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + tc.ask +
			`","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, e.url+mcp.Path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Authorization", "Bearer "+e.secrets["client"])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var sb strings.Builder
		_, _ = io.Copy(&sb, resp.Body)
		resp.Body.Close()
		data := sb.String()
		if i := strings.Index(data, "data: "); i >= 0 {
			data = strings.TrimSpace(data[i+len("data: "):])
		}
		var m struct {
			Result struct {
				ProtocolVersion string `json:"protocolVersion"`
			} `json:"result"`
		}
		if err := json.Unmarshal([]byte(data), &m); err != nil {
			t.Fatalf("initialize(%s) answer %q: %v", tc.ask, sb.String(), err)
		}
		got := m.Result.ProtocolVersion
		if tc.want != "" && got != tc.want || tc.want == "" && got == "" {
			t.Errorf("initialize(%s) = protocolVersion %q, want %q", tc.ask, got, tc.want)
		}
		t.Logf("initialize(%s) -> %s", tc.ask, got)
	}
}

// A worker's catalog is not trusted to be servable: a schema the SDK would panic on must
// drop that one tool, not the session.
func TestUnservableSchemaIsSkipped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	ctx := t.Context()
	bad := []api.TaskDef{
		{Name: "not-object", Version: "1", InputSchema: json.RawMessage(`{"type":"string"}`)},
		{Name: "no-type", Version: "1", InputSchema: json.RawMessage(`{"properties":{"a":{}}}`)},
		{Name: "bad-header", Version: "1", InputSchema: json.RawMessage(`{"type":"object","properties":{"a":{"type":"object","x-mcp-header":"X-A"}}}`)},
	}
	if _, err := e.workerA.PublishCatalog(ctx, append([]api.TaskDef{echoTask()}, bad...)); err != nil {
		t.Fatalf("PublishCatalog() = %v", err)
	}
	cs := e.connect(ctx, e.secrets["client"], nil)
	names := toolNames(t, ctx, cs)
	if !slices.Contains(names, "echo") {
		t.Errorf("tools = %v, want echo still served", names)
	}
	for _, d := range bad[:2] {
		if slices.Contains(names, d.Name) {
			t.Errorf("tools = %v, want no %s (schema %s)", names, d.Name, d.InputSchema)
		}
	}
}

// A dropped HTTP connection is not a cancellation: the job goes on, and the agent fetches
// its result later with castellan_job_result.
func TestDroppedConnectionThenFetchResult(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	ctx := t.Context()
	cs := e.connect(ctx, e.secrets["client"], nil)
	rctx, drop := context.WithCancel(ctx)
	body := `{"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"echo","arguments":{"n":9}}}`
	req, _ := http.NewRequestWithContext(rctx, http.MethodPost, e.url+mcp.Path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Authorization", "Bearer "+e.secrets["client"])
	req.Header.Set("Mcp-Session-Id", cs.ID())
	req.Header.Set("Mcp-Protocol-Version", cs.InitializeResult().ProtocolVersion)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	j := e.pendingJob(ctx)
	drop()
	<-done
	e.approve(ctx, j.ID)
	r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: mcp.ResultToolName, Arguments: map[string]any{"job_id": j.ID, "wait_seconds": 10}})
	if err != nil || r.IsError || !jsonEqual([]byte(text(r)), []byte(`{"n":9}`)) {
		t.Fatalf("CallTool(%s) after a dropped call = %v, %+v; want output {\"n\":9}", mcp.ResultToolName, err, r)
	}
}

// A session is bound to the token that opened it: another valid token of the same pool
// cannot use its session id.
func TestSessionBoundToToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	ctx := t.Context()
	cs := e.connect(ctx, e.secrets["client"], nil)
	e.newClient("client2", api.RoleClient, "alpha")
	for _, tc := range []struct {
		token string
		ok    bool
	}{{e.secrets["client"], true}, {e.secrets["client2"], false}} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+mcp.Path, strings.NewReader(`{"jsonrpc":"2.0","id":5,"method":"tools/list","params":{}}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Authorization", "Bearer "+tc.token)
		req.Header.Set("Mcp-Session-Id", cs.ID())
		req.Header.Set("Mcp-Protocol-Version", cs.InitializeResult().ProtocolVersion)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var sb strings.Builder
		_, _ = io.Copy(&sb, resp.Body)
		resp.Body.Close()
		got := resp.StatusCode == http.StatusOK && strings.Contains(sb.String(), `"echo"`)
		if got && !strings.Contains(sb.String(), `"cacheScope":"private"`) {
			t.Errorf("tools/list = %q, want cacheScope private: the list is one pool's", sb.String())
		}
		if got != tc.ok {
			t.Errorf("tools/list on the session with token %d… = %d %q, want ok=%v", len(tc.token), resp.StatusCode, sb.String(), tc.ok)
		}
	}
}

// TestProgressEachStateAndPromptResult: a call that asked for progress hears of each state
// its job passes through (pending approval, then running while the worker holds it, then
// the end), and its result comes within milliseconds of the worker's completion, not at
// the next poll.
func TestProgressEachStateAndPromptResult(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{ProgressPoll: 50 * time.Millisecond})
	ctx := t.Context()
	held := api.TaskDef{Name: "held", Version: "1", InputSchema: json.RawMessage(`{"type":"object"}`)}
	if _, err := e.workerA.PublishCatalog(ctx, []api.TaskDef{echoTask(), held}); err != nil {
		t.Fatal(err)
	}
	type note struct {
		progress float64
		msg      string
	}
	var mu sync.Mutex
	var notes []note
	cs := e.connect(ctx, e.secrets["client"], &sdk.ClientOptions{ProgressNotificationHandler: func(_ context.Context, r *sdk.ProgressNotificationClientRequest) {
		mu.Lock()
		notes = append(notes, note{r.Params.Progress, r.Params.Message})
		mu.Unlock()
	}})
	heard := func(word string) bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(notes, func(n note) bool { return strings.Contains(n.msg, word) })
	}
	type out struct {
		r   *sdk.CallToolResult
		err error
		at  time.Time
	}
	done := make(chan out, 1)
	go func() {
		r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "held", Arguments: map[string]any{"k": 1}, Meta: sdk.Meta{"progressToken": "p"}})
		done <- out{r, err, time.Now()}
	}()
	j := e.pendingJob(ctx)
	e.approve(ctx, j.ID)
	deadline := time.Now().Add(10 * time.Second)
	for !heard("running") {
		if time.Now().After(deadline) {
			t.Fatalf("no running progress within 10s of the approval while the worker holds the job; heard %v", notes)
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	e.release <- struct{}{}
	finishedAt := <-e.completed
	o := <-done
	if o.err != nil || o.r.IsError {
		t.Fatalf("CallTool(held) = %v, %+v", o.err, o.r)
	}
	lag := o.at.Sub(finishedAt)
	t.Logf("result %v after the worker's completion was accepted", lag)
	if lag > 500*time.Millisecond {
		t.Errorf("result came %v after the job ended, want it within milliseconds (long-poll, not a poll)", lag)
	}
	// The SDK client hands notifications to their handler on its own goroutine, so the
	// last one may reach the handler after the result.
	for deadline := time.Now().Add(5 * time.Second); !heard("succeeded") && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	mu.Lock()
	defer mu.Unlock()
	var msgs []string
	for i, n := range notes {
		msgs = append(msgs, n.msg)
		if i > 0 && n.progress <= notes[i-1].progress {
			t.Errorf("progress %v after %v, want increasing", n.progress, notes[i-1].progress)
		}
	}
	if len(msgs) < 3 || !strings.Contains(msgs[0], "pending approval") || !strings.Contains(msgs[len(msgs)-1], "succeeded") {
		t.Errorf("progress = %q, want pending approval first, running, and succeeded last", msgs)
	}
}

// TestBoundedWaitHonoursCallWait: the bounded wait lasts CallWait to the millisecond, though
// /v1 waits count whole seconds.
func TestBoundedWaitHonoursCallWait(t *testing.T) {
	t.Parallel()
	wait := 1500 * time.Millisecond
	e := newEnv(t, false, mcp.Options{CallWait: wait})
	ctx := t.Context()
	cs := e.connect(ctx, e.secrets["client"], nil)
	t0 := time.Now()
	r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": 2}})
	took := time.Since(t0)
	if err != nil || !r.IsError || !strings.Contains(text(r), "still pending_approval") {
		t.Fatalf("CallTool = %v, %q; want the pending answer", err, text(r))
	}
	if took < wait || took > wait+time.Second {
		t.Errorf("pending answer after %v, want after CallWait %v (and well before a second more)", took, wait)
	}
	// One long-poll cut at CallWait and one read of the state then; a poll loop would make
	// one request per second, or spin through the last fraction of one.
	if n := e.jobReads.Load(); n > 3 {
		t.Errorf("%d job reads for one %v wait, want at most 3", n, wait)
	}
}

// TestCallsDoNotRebuildTheSession: the SDK asks for a server on every HTTP request (to
// learn its protocol versions) and uses it only to open a session; a request of an open
// session must not cost a catalog read and a rebuilt tool list.
func TestCallsDoNotRebuildTheSession(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true, mcp.Options{CatalogPoll: time.Hour})
	ctx := t.Context()
	before := e.catalogReads.Load()
	cs := e.connect(ctx, e.secrets["client"], nil)
	opened := e.catalogReads.Load() - before
	for i := range 10 {
		if r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": i}}); err != nil || r.IsError {
			t.Fatalf("CallTool(echo) = %v, %+v", err, r)
		}
	}
	toolNames(t, ctx, cs)
	// Opening reads it at most twice: for the session's tools, and to describe the token
	// where the control plane has no /v1/whoami.
	if n := e.catalogReads.Load() - before - opened; n != 0 || opened > 2 {
		t.Errorf("catalog reads: %d to open the session, %d for 10 calls and a tools/list; want at most 2 and 0", opened, n)
	}
}

// TestIdleSessionEnds: an agent that opens a session and vanishes without DELETE does not
// keep it (and its catalog poll) forever.
func TestIdleSessionEnds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{SessionIdle: 300 * time.Millisecond, CatalogPoll: 100 * time.Millisecond})
	ctx := t.Context()
	post := func(session, body string) *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+mcp.Path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Authorization", "Bearer "+e.secrets["client"])
		req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
		if session != "" {
			req.Header.Set("Mcp-Session-Id", session)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	resp := post("", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"gone","version":"1"}}}`)
	id := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || id == "" {
		t.Fatalf("initialize = %d, session %q", resp.StatusCode, id)
	}
	post(id, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	// A GET does not keep the session alive, so it can probe without resetting the timer.
	deadline := time.Now().Add(10 * time.Second)
	for {
		gctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		req, _ := http.NewRequestWithContext(gctx, http.MethodGet, e.url+mcp.Path, nil)
		req.Header.Set("Accept", "text/event-stream")
		req.Header.Set("Authorization", "Bearer "+e.secrets["client"])
		req.Header.Set("Mcp-Session-Id", id)
		req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
		resp, err := http.DefaultClient.Do(req)
		status := 0
		if err == nil {
			status = resp.StatusCode
			resp.Body.Close()
		}
		cancel()
		if status == http.StatusNotFound {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("session still served (%d, %v) 10s after its last POST; SessionIdle is 300ms", status, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}

// approvePlan signs one plan approval over plan id's steps as `castellan plan approve`
// does and attaches it.
func (e *env) approvePlan(ctx context.Context, id string) {
	e.t.Helper()
	pl, err := e.approver.GetPlan(ctx, id)
	if err != nil {
		e.t.Fatalf("GetPlan(%s) = %v", id, err)
	}
	var steps []approval.PlanStep
	for _, j := range pl.Steps {
		steps = append(steps, approval.PlanStep{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Input: j.Input})
	}
	tok, _, err := approval.SignPlan(e.key, approval.PlanRequest{PlanID: id, Steps: steps})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.approver.ApprovePlan(ctx, id, tok); err != nil {
		e.t.Fatalf("ApprovePlan(%s) = %v", id, err)
	}
}

// pendingPlan polls until a job of pool alpha that is a plan step waits for approval, and
// returns its plan's id.
func (e *env) pendingPlan(ctx context.Context) string {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var l api.AuditList
		if err := e.adminDo(ctx, "/v1/audit?action=plan.submit", &l); err != nil {
			e.t.Fatal(err)
		}
		for _, en := range l.Entries {
			var d struct {
				Plan string `json:"plan"`
			}
			if json.Unmarshal(en.Detail, &d) != nil || d.Plan == "" {
				continue
			}
			// The plan is recorded before its steps' jobs: wait until they all exist.
			pl, err := e.approver.GetPlan(ctx, d.Plan)
			if err != nil {
				e.t.Fatal(err)
			}
			created := true
			for _, j := range pl.Steps {
				created = created && j.Task != ""
			}
			if created {
				return d.Plan
			}
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	e.t.Fatal("no plan was submitted within 10s")
	return ""
}

func (e *env) adminDo(ctx context.Context, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.url+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+e.secrets["admin"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

// TestSubmitPlanApproved: castellan_submit_plan submits its steps as one plan of the tools'
// tasks, an approver approves it with one signature, and the call answers with every
// step's output in order; castellan_plan_result reads the same plan later.
func TestSubmitPlanApproved(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	ctx := t.Context()
	cs := e.connect(ctx, e.secrets["client"], nil)
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var planTool *sdk.Tool
	for _, tl := range res.Tools {
		if tl.Name == mcp.SubmitPlanToolName {
			planTool = tl
		}
	}
	if planTool == nil {
		t.Fatalf("tools = %v, want %s", toolNames(t, ctx, cs), mcp.SubmitPlanToolName)
	}
	if sch, _ := json.Marshal(planTool.InputSchema); !strings.Contains(string(sch), `"enum":["echo"]`) {
		t.Errorf("%s input schema %s, want its tool enum to be the pool's tasks [echo]", mcp.SubmitPlanToolName, sch)
	}
	type out struct {
		r   *sdk.CallToolResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: mcp.SubmitPlanToolName, Arguments: map[string]any{"steps": []any{
			map[string]any{"tool": "echo", "arguments": map[string]any{"n": 1}},
			map[string]any{"tool": "echo", "arguments": map[string]any{"n": 2}},
		}}})
		done <- out{r, err}
	}()
	id := e.pendingPlan(ctx)
	e.approvePlan(ctx, id)
	o := <-done
	if o.err != nil || o.r.IsError {
		t.Fatalf("CallTool(%s) = %v, %q; want the plan's result", mcp.SubmitPlanToolName, o.err, text(o.r))
	}
	var sc struct {
		PlanID string `json:"plan_id"`
		State  string `json:"state"`
		Steps  []struct {
			JobID  string          `json:"job_id"`
			Tool   string          `json:"tool"`
			Output json.RawMessage `json:"output"`
		} `json:"steps"`
	}
	b, _ := json.Marshal(o.r.StructuredContent)
	if err := json.Unmarshal(b, &sc); err != nil || sc.PlanID != id || sc.State != "succeeded" || len(sc.Steps) != 2 ||
		!jsonEqual(sc.Steps[0].Output, []byte(`{"n":1}`)) || !jsonEqual(sc.Steps[1].Output, []byte(`{"n":2}`)) || sc.Steps[1].Tool != "echo" {
		t.Fatalf("structured content %s, want plan %s succeeded with outputs {n:1} then {n:2}", b, id)
	}
	r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: mcp.PlanResultToolName, Arguments: map[string]any{"plan_id": id, "wait_seconds": 0}})
	if err != nil || r.IsError || !strings.Contains(text(r), "succeeded") {
		t.Fatalf("CallTool(%s) = %v, %q; want the succeeded plan", mcp.PlanResultToolName, err, text(r))
	}
}

// TestSubmitPlanDenied: a plan the approver denies answers, once fetched later, with who
// denied it and why; no step ran.
func TestSubmitPlanDenied(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{CallWait: 100 * time.Millisecond})
	ctx := t.Context()
	cs := e.connect(ctx, e.secrets["client"], nil)
	r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: mcp.SubmitPlanToolName, Arguments: map[string]any{"steps": []any{
		map[string]any{"tool": "echo", "arguments": map[string]any{"n": 3}},
		map[string]any{"tool": "echo", "arguments": map[string]any{"n": 4}},
	}}})
	if err != nil || !r.IsError || !strings.Contains(text(r), "pending_approval") || !strings.Contains(text(r), mcp.PlanResultToolName) {
		t.Fatalf("CallTool(%s) = %v, %q; want the pending answer naming %s", mcp.SubmitPlanToolName, err, text(r), mcp.PlanResultToolName)
	}
	b, _ := json.Marshal(r.StructuredContent)
	var sc struct {
		PlanID  string `json:"plan_id"`
		Pending bool   `json:"pending"`
	}
	if json.Unmarshal(b, &sc) != nil || !api.ValidPlanID(sc.PlanID) || !sc.Pending {
		t.Fatalf("structured content %s, want a pending plan id", b)
	}
	if _, err := e.approver.DenyPlan(ctx, sc.PlanID, "one step at a time"); err != nil {
		t.Fatalf("DenyPlan() = %v", err)
	}
	r, err = cs.CallTool(ctx, &sdk.CallToolParams{Name: mcp.PlanResultToolName, Arguments: map[string]any{"plan_id": sc.PlanID, "wait_seconds": 10}})
	if err != nil || !r.IsError {
		t.Fatalf("CallTool(%s) = %v, %+v; want the denied plan as a tool error", mcp.PlanResultToolName, err, r)
	}
	for _, want := range []string{"denied", `"approver"`, "one step at a time", api.OutcomeDeniedByApprover} {
		if !strings.Contains(text(r), want) {
			t.Errorf("denied plan text %q, want it to name %q", text(r), want)
		}
	}
	b, _ = json.Marshal(r.StructuredContent)
	var d map[string]any
	if json.Unmarshal(b, &d) != nil || d["state"] != "denied" || d["denied_by"] != "approver" || d["message"] != "one step at a time" {
		t.Errorf("structured content %s, want state denied by approver with the reason", b)
	}
}

// TestSubmitPlanRefusals: a step naming no tool of the pool, or with arguments its tool's
// schema refuses, is a tool error naming steps[i]; nothing is submitted. The same MCP
// request sent twice makes one plan.
func TestSubmitPlanRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{CallWait: 50 * time.Millisecond})
	ctx := t.Context()
	cs := e.connect(ctx, e.secrets["client"], nil)
	ok := map[string]any{"tool": "echo", "arguments": map[string]any{"n": 1}}
	for _, tc := range []struct {
		name string
		args map[string]any
		want string
	}{
		{"other pool's tool", map[string]any{"steps": []any{ok, map[string]any{"tool": "beta-only", "arguments": map[string]any{}}}}, "steps"},
		{"bad arguments", map[string]any{"steps": []any{ok, map[string]any{"tool": "echo", "arguments": map[string]any{"n": "two"}}}}, "steps[1].arguments"},
		{"extra argument", map[string]any{"steps": []any{map[string]any{"tool": "echo", "arguments": map[string]any{"n": 1, "x": 1}}}}, "steps[0].arguments"},
		{"no steps", map[string]any{"steps": []any{}}, "invalid arguments"},
		{"no arguments", map[string]any{"steps": []any{map[string]any{"tool": "echo"}}}, "arguments"},
	} {
		r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: mcp.SubmitPlanToolName, Arguments: tc.args})
		if err != nil || !r.IsError || !strings.Contains(text(r), tc.want) {
			t.Errorf("%s: CallTool = %v, %q; want a tool error naming %s", tc.name, err, text(r), tc.want)
		}
	}
	l, err := e.approver.List(ctx, client.ListOptions{Pool: "alpha"})
	if err != nil || len(l.Jobs) != 0 {
		t.Fatalf("jobs after refused plans = %d, %v; want none", len(l.Jobs), err)
	}
}

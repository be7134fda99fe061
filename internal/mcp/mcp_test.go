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
	mux.Handle("/", s.Handler())
	e := &env{t: t, s: s, url: hs.URL, key: priv, secrets: map[string]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait(); s.Close(); hs.Close() })
	e.approver = e.newClient("approver", api.RoleApprover, "*")
	e.newClient("client", api.RoleClient, "alpha")
	e.newClient("admin", api.RoleAdmin, "*")
	e.workerA = e.newWorker("worker-a", "alpha", echoTask())
	e.newWorker("worker-b", "beta", api.TaskDef{Name: "beta-only", Version: "1", InputSchema: json.RawMessage(`{"type":"object"}`)})
	wg.Add(1)
	go func() { defer wg.Done(); runWorker(ctx, e.workerA) }()
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

// runWorker leases over /v1 and completes each job with its input as output.
func runWorker(ctx context.Context, w *client.Client) {
	for ctx.Err() == nil {
		jobs, err := w.Lease(ctx, 1, time.Second)
		if err != nil {
			continue
		}
		for _, j := range jobs {
			_, _ = w.Complete(ctx, j.JobID, api.CompleteRequest{LeaseToken: j.LeaseToken, Attempt: j.Attempt, Outcome: "ok", Output: j.Input, DurationMS: 1})
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
		if tl.Name == mcp.ResultToolName {
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
	if !got[mcp.ResultToolName] {
		t.Errorf("tool %s is not listed", mcp.ResultToolName)
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
	for _, auth := range []string{"", "Bearer cst_not-a-token", "Basic abc", "Bearer " + e.secrets["admin"]} {
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
// names who denied it and why, both in the text and the structured content.
func TestDeniedCallIsToolError(t *testing.T) {
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
	if got.err != nil || got.r == nil || !got.r.IsError {
		t.Fatalf("CallTool(denied job) = %+v, %v, want a tool error", got.r, got.err)
	}
	if txt := text(got.r); !strings.Contains(txt, "denied") || !strings.Contains(txt, `"approver"`) || !strings.Contains(txt, "not during the freeze") {
		t.Fatalf("tool error text = %q, want who denied the job and why", txt)
	}
	sc, _ := json.Marshal(got.r.StructuredContent)
	var m map[string]any
	if err := json.Unmarshal(sc, &m); err != nil || m["denied_by"] != "approver" || m["state"] != "denied" ||
		m["outcome"] != api.OutcomeDeniedByApprover || m["message"] != "not during the freeze" {
		t.Fatalf("structured content = %s, want state denied, denied_by approver and the reason", sc)
	}
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
		body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"n":5}}}`, id)
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
	l, err := e.approver.List(ctx, client.ListOptions{Pool: "alpha"})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Jobs) != 2 {
		t.Errorf("jobs after 2 sends of id 900 and 1 of id 901 = %d, want 2", len(l.Jobs))
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

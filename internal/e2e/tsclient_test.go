package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/castellan-dev/castellan/examples"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/testenv"
)

// TestTypeScriptAgent runs the official TypeScript MCP SDK client (the version pinned by
// internal/mcp/testdata/tsclient/package-lock.json; the driver is testdata/tsagent/agent.mjs)
// against real processes: `castellan server` (SQLite, then NATS JetStream on an embedded
// nats-server), one `castellan worker` running the shipped crm-lookup example with a plugins
// directory, and the demo CRM. The node script only relays; every check is made here, the
// jobs' states read through /v1. node and npm are required (internal/testenv: a skip with only Go, a failure in CI).
func TestTypeScriptAgent(t *testing.T) {
	node := testenv.LookPath(t, "this test runs the TypeScript MCP client: apt-get install -y nodejs npm", "node")
	dir := npmInstall(t)
	for _, mode := range []string{"sqlite", "nats"} {
		t.Run(mode, func(t *testing.T) {
			var e *env
			var workerURL string
			var extra []string
			if mode == "sqlite" {
				e = newEnv(t)
			} else {
				natsURL := embeddedNATS(t)
				e = newNATSEnv(t, natsURL)
				workerURL = natsURL
				extra = []string{"--pool", pool}
			}
			_, url := e.server("127.0.0.1:0")
			if workerURL == "" {
				workerURL = url
			}
			tsScenarios(t, e, node, dir, url, workerURL, extra)
		})
	}
}

// npmInstall installs the pinned SDK (the package.json and lock of internal/mcp's test, so
// one pin serves both) and the agent script into a fresh directory.
func npmInstall(t *testing.T) string {
	t.Helper()
	npm := testenv.LookPath(t, "this test runs the TypeScript MCP client: apt-get install -y nodejs npm", "npm")
	dir := t.TempDir()
	for src, dst := range map[string]string{
		"../mcp/testdata/tsclient/package.json":      "package.json",
		"../mcp/testdata/tsclient/package-lock.json": "package-lock.json",
		"testdata/tsagent/agent.mjs":                 "agent.mjs",
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ci := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
	ci.Dir = dir
	if out, err := ci.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}
	return dir
}

func embeddedNATS(t *testing.T) string {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("the embedded NATS server did not start")
	}
	t.Cleanup(ns.Shutdown)
	return ns.ClientURL()
}

// newNATSEnv is newEnv for `castellan server --nats`: the tokens live in JetStream, and the
// worker consumes from NATS directly (the embedded server has no auth, so its token file
// holds a placeholder).
func newNATSEnv(t *testing.T, natsURL string) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, tokens: map[api.Role]string{}, store: []string{"--nats", natsURL}}
	for _, role := range []api.Role{api.RoleClient, api.RoleApprover, api.RoleAdmin} {
		p := pool
		if role == api.RoleAdmin {
			p = "*"
		}
		e.tokens[role] = e.token(role, p, string(role))
	}
	e.tokens[api.RoleWorker] = filepath.Join(dir, "worker.token")
	if err := os.WriteFile(e.tokens[api.RoleWorker], []byte("unused-by-an-open-nats-server"), 0o600); err != nil {
		t.Fatal(err)
	}
	e.keys()
	return e
}

func tsScenarios(t *testing.T, e *env, node, dir, url, workerURL string, workerExtra []string) {
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	start := time.Now()
	plugins := filepath.Join(e.dir, "plugins")
	if err := os.Mkdir(plugins, 0o700); err != nil {
		t.Fatal(err)
	}
	pol := e.policy(crm(t, crmToken, 0), crmToken)
	grant := "  crm-plugin:\n    endpoints: [crm]\n    annotations: {read_only: true}\nplugins:\n  require_signed: false\n"
	f, err := os.OpenFile(pol, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(grant); err != nil {
		t.Fatal(err)
	}
	f.Close()
	w := e.worker(workerURL, pol, "w1", append(workerExtra, "--plugins", plugins)...)
	admin := e.client(url, api.RoleAdmin)
	otherToken := e.token(api.RoleClient, "other", "client-other")

	a := startAgent(t, ctx, node, dir, url, e.tokens[api.RoleClient])
	t.Logf("TypeScript client negotiated MCP %s", a.protocol)
	if a.protocol == "" {
		t.Error("no protocol version negotiated")
	}
	known := map[string]bool{}

	t.Run("tools equal the catalog", func(t *testing.T) {
		cat, err := admin.Catalog(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		checkTools(t, a.list(t), cat.Tasks, "crm-lookup")
	})

	t.Run("call crm-lookup", func(t *testing.T) {
		r := a.call(t, "crm-lookup", `{"customer_id":"42"}`, true)
		j := pendingJob(t, ctx, admin, known, w)
		if _, errs, code := e.cli(url, api.RoleApprover, "approve", "--key", e.privKey, "--as", "alice", j.ID); code != 0 {
			t.Fatalf("job approve %s = exit %d: %s", j.ID, code, errs)
		}
		res := r.wait(t)
		done, err := admin.Get(ctx, j.ID)
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			CustomerID string `json:"customer_id"`
			Name       string `json:"name"`
		}
		if res.IsError || json.Unmarshal(res.StructuredContent, &out) != nil || out.CustomerID != "42" || out.Name == "" {
			t.Errorf("callTool(crm-lookup) = isError %v structuredContent %s text %q, want customer 42 with a name", res.IsError, res.StructuredContent, res.Text)
		}
		if done.State != api.StateSucceeded || !jsonEqual(done.Output, res.StructuredContent) {
			t.Errorf("job %s via /v1 = %s output %s, want succeeded with the structuredContent %s", j.ID, done.State, done.Output, res.StructuredContent)
		}
		if len(res.Progress) == 0 || !strings.Contains(res.Progress[0], "pending approval") {
			t.Errorf("progress = %q, want pending approval first", res.Progress)
		}
	})

	t.Run("invalid arguments", func(t *testing.T) {
		before := jobCount(t, ctx, admin, pool)
		res := a.call(t, "crm-lookup", `{"customer_id":"x"}`, false).wait(t)
		if !res.IsError || !strings.Contains(res.Text, "customer_id") {
			t.Errorf("callTool(crm-lookup, customer_id x) = %+v, want a tool error naming customer_id", res)
		}
		if n := jobCount(t, ctx, admin, pool); n != before {
			t.Errorf("jobs in %s after an invalid call = %d, want %d (no job)", pool, n, before)
		}
	})

	t.Run("task outside the token's pool", func(t *testing.T) {
		o := startAgent(t, ctx, node, dir, url, otherToken)
		cat, err := admin.Catalog(ctx, "other")
		if err != nil {
			t.Fatal(err)
		}
		checkTools(t, o.list(t), cat.Tasks)
		before := jobCount(t, ctx, admin, pool)
		r := o.call(t, "crm-lookup", `{"customer_id":"42"}`, false)
		msg, res := r.outcome(t)
		if msg == "" && !res.IsError {
			t.Errorf("callTool(crm-lookup) with a token of pool other = %+v, want an error", res)
		}
		if n := jobCount(t, ctx, admin, pool); n != before {
			t.Errorf("jobs in %s after a call from pool other = %d, want %d", pool, n, before)
		}
		if n := jobCount(t, ctx, admin, "other"); n != 0 {
			t.Errorf("jobs in pool other = %d, want 0", n)
		}
	})

	t.Run("cancellation mid-approval", func(t *testing.T) {
		r := a.call(t, "crm-lookup", `{"customer_id":"7"}`, false)
		j := pendingJob(t, ctx, admin, known, w)
		a.send(t, map[string]any{"op": "abort", "target": r.id})
		if msg, res := r.outcome(t); msg == "" {
			t.Errorf("aborted callTool = %+v, want the SDK's abort error", res)
		}
		waitFor(t, "job "+j.ID+" cancelled via /v1", 20*time.Second, func() bool {
			g, err := admin.Get(ctx, j.ID)
			return err == nil && g.State == api.StateCancelled
		}, w)
	})

	t.Run("hot-loaded plugin through list_changed", func(t *testing.T) {
		a.drainEvents()
		installPlugin(t, plugins)
		select {
		case <-a.listChanged:
		case <-time.After(30 * time.Second):
			t.Fatal("no notifications/tools/list_changed within 30s of the plugin's install")
		}
		cat, err := admin.Catalog(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		checkTools(t, a.list(t), cat.Tasks, "crm-lookup", "crm-plugin")
	})

	t.Run("dropped connection then fetch the result", func(t *testing.T) {
		b := startAgent(t, ctx, node, dir, url, e.tokens[api.RoleClient])
		b.call(t, "crm-lookup", `{"customer_id":"1001"}`, false)
		j := pendingJob(t, ctx, admin, known, w)
		// SIGKILL closes the agent's sockets at once; the server sees the connection end
		// long before the approve command below (a process start) reaches it, and an
		// approval of a job that the drop had cancelled would fail.
		b.kill()
		if _, errs, code := e.cli(url, api.RoleApprover, "approve", "--key", e.privKey, "--as", "alice", j.ID); code != 0 {
			t.Fatalf("job approve %s = exit %d: %s", j.ID, code, errs)
		}
		res := a.call(t, mcp.ResultToolName, fmt.Sprintf(`{"job_id":%q,"wait_seconds":20}`, j.ID), false).wait(t)
		var out struct {
			CustomerID string `json:"customer_id"`
		}
		if res.IsError || json.Unmarshal(res.StructuredContent, &out) != nil || out.CustomerID != "1001" {
			t.Errorf("callTool(%s) after a dropped call = %+v, want customer 1001", mcp.ResultToolName, res)
		}
		if g, err := admin.Get(ctx, j.ID); err != nil || g.State != api.StateSucceeded {
			t.Errorf("job %s via /v1 = %s, %v; want succeeded (a dropped connection is no cancellation)", j.ID, g.State, err)
		}
	})
	t.Logf("%s scenarios took %s", filepath.Base(t.Name()), time.Since(start).Round(time.Millisecond))
}

// checkTools compares tools/list with the pool's /v1 catalog: the names (and want, so that
// an empty catalog cannot pass), title, description, both schemas and the hints.
func checkTools(t *testing.T, tools []tsTool, catalog []api.TaskDef, want ...string) {
	t.Helper()
	var names, catNames []string
	for _, tl := range tools {
		names = append(names, tl.Name)
	}
	for _, d := range catalog {
		catNames = append(catNames, d.Name)
	}
	// Besides the tasks: fetching a job's result later and, while the pool has tasks,
	// submitting a plan and fetching it.
	fixed := []string{mcp.ResultToolName}
	if len(catalog) > 0 {
		fixed = append(fixed, mcp.SubmitPlanToolName, mcp.PlanResultToolName)
	}
	catNames = append(catNames, fixed...)
	want = append(want, fixed...)
	slices.Sort(names)
	slices.Sort(catNames)
	slices.Sort(want)
	if !slices.Equal(names, catNames) || !slices.Equal(names, want) {
		t.Fatalf("tools/list = %v, catalog %v, want %v", names, catNames, want)
	}
	for _, d := range catalog {
		i := slices.IndexFunc(tools, func(tl tsTool) bool { return tl.Name == d.Name })
		tl := tools[i]
		// The description is the catalog's, then a line saying that the call waits for an approver.
		if tl.Title != d.Title || !strings.HasPrefix(tl.Description, d.Description+"\n\n") || !strings.Contains(tl.Description, "approver must approve") {
			t.Errorf("tool %s title %q description %q, catalog %q %q", d.Name, tl.Title, tl.Description, d.Title, d.Description)
		}
		if !jsonEqual(tl.InputSchema, d.InputSchema) {
			t.Errorf("tool %s inputSchema %s, catalog %s", d.Name, tl.InputSchema, d.InputSchema)
		}
		if (len(d.OutputSchema) > 0 || len(tl.OutputSchema) > 0) && !jsonEqual(tl.OutputSchema, d.OutputSchema) {
			t.Errorf("tool %s outputSchema %s, catalog %s", d.Name, tl.OutputSchema, d.OutputSchema)
		}
		// The SDK always sends readOnlyHint and idempotentHint (unset is false, the safe
		// reading), and destructiveHint only when the policy states it.
		hints := map[string]bool{"readOnlyHint": false, "idempotentHint": false}
		if a := d.Annotations; a != nil {
			for k, v := range map[string]*bool{"readOnlyHint": a.ReadOnly, "destructiveHint": a.Destructive, "idempotentHint": a.Idempotent} {
				if v != nil {
					hints[k] = *v
				}
			}
		}
		got := map[string]bool{}
		for k, v := range tl.Annotations {
			if b, ok := v.(bool); ok {
				got[k] = b
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(hints) {
			t.Errorf("tool %s hints %v, catalog %v", d.Name, got, hints)
		}
	}
}

// installPlugin installs crm-plugin (the crm-lookup module under a plugin manifest) into
// the worker's plugins directory the way docs/plugins.md says: written under a hidden name,
// then renamed into place.
func installPlugin(t *testing.T, plugins string) {
	t.Helper()
	tmp := filepath.Join(plugins, ".crm-plugin")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		t.Fatal(err)
	}
	manifest := `name: crm-plugin
version: "1.0.0"
title: Look up a CRM customer (plugin)
description: The crm-lookup module shipped as a hot-loaded plugin
input_schema:
  type: object
  required: [customer_id]
  properties:
    customer_id: {type: string, pattern: "^[0-9]{1,18}$"}
capabilities:
  endpoints: [crm]
`
	for name, b := range map[string][]byte{"plugin.yaml": []byte(manifest), "crm-plugin.wasm": examples.CRMLookupWasm} {
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(tmp, filepath.Join(plugins, "crm-plugin")); err != nil {
		t.Fatal(err)
	}
}

// pendingJob polls /v1 for a crm-lookup job pending approval that is not in known, and adds
// it there.
func pendingJob(t *testing.T, ctx context.Context, c *client.Client, known map[string]bool, watch ...*proc) api.Job {
	t.Helper()
	var found api.Job
	waitFor(t, "a new crm-lookup job pending approval", 20*time.Second, func() bool {
		l, err := c.List(ctx, client.ListOptions{State: api.StatePendingApproval, Task: "crm-lookup", Pool: pool})
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range l.Jobs {
			if !known[j.ID] {
				found = j
				return true
			}
		}
		return false
	}, watch...)
	known[found.ID] = true
	return found
}

func jobCount(t *testing.T, ctx context.Context, c *client.Client, pool string) int {
	t.Helper()
	l, err := c.List(ctx, client.ListOptions{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	return len(l.Jobs)
}

func jsonEqual(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	ja, _ := json.Marshal(x)
	jb, _ := json.Marshal(y)
	return string(ja) == string(jb)
}

// agent is one running agent.mjs: one MCP session.
type agent struct {
	cmd         *exec.Cmd
	stdin       io.WriteCloser
	stderr      syncBuffer
	protocol    string
	mu          sync.Mutex
	replies     map[string]chan tsReply
	listChanged chan struct{}
	exited      chan struct{}
	seq         int
}

type tsTool struct {
	Name         string          `json:"name"`
	Title        string          `json:"title"`
	Description  string          `json:"description"`
	InputSchema  json.RawMessage `json:"inputSchema"`
	OutputSchema json.RawMessage `json:"outputSchema"`
	Annotations  map[string]any  `json:"annotations"`
}

type tsResult struct {
	IsError           bool            `json:"isError"`
	StructuredContent json.RawMessage `json:"structuredContent"`
	Text              string          `json:"text"`
	Progress          []string        `json:"progress"`
}

type tsReply struct {
	ID       string    `json:"id"`
	Event    string    `json:"event"`
	Protocol string    `json:"protocolVersion"`
	Error    string    `json:"error"`
	Tools    []tsTool  `json:"tools"`
	Result   *tsResult `json:"result"`
}

func startAgent(t *testing.T, ctx context.Context, node, dir, url, tokenFile string) *agent {
	t.Helper()
	tok, err := os.ReadFile(tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{replies: map[string]chan tsReply{}, listChanged: make(chan struct{}, 16), exited: make(chan struct{})}
	a.cmd = exec.CommandContext(ctx, node, "agent.mjs")
	a.cmd.Dir = dir
	a.cmd.Env = append(os.Environ(), "MCP_URL="+url+mcp.Path, "MCP_TOKEN="+strings.TrimSpace(string(tok)))
	a.cmd.Stderr = &a.stderr
	if a.stdin, err = a.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	out, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		defer close(a.exited)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var r tsReply
			if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
				continue
			}
			switch {
			case r.Event == "ready":
				ready <- r.Protocol
			case r.Event == "list_changed":
				select {
				case a.listChanged <- struct{}{}:
				default:
				}
			case r.ID != "":
				a.mu.Lock()
				ch := a.replies[r.ID]
				a.mu.Unlock()
				if ch != nil {
					ch <- r
				}
			}
		}
		_ = a.cmd.Wait()
	}()
	t.Cleanup(func() {
		a.kill()
		if t.Failed() {
			t.Logf("agent.mjs stderr:\n%s", a.stderr.String())
		}
	})
	select {
	case a.protocol = <-ready:
	case <-a.exited:
		t.Fatalf("agent.mjs exited before connecting:\n%s", a.stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("agent.mjs did not connect within 30s")
	}
	return a
}

func (a *agent) kill() {
	_ = a.cmd.Process.Kill()
	<-a.exited
}

func (a *agent) drainEvents() {
	for {
		select {
		case <-a.listChanged:
		default:
			return
		}
	}
}

// pendingReply is a command sent and not yet answered.
type pendingReply struct {
	a  *agent
	id string
	ch chan tsReply
}

func (a *agent) send(t *testing.T, cmd map[string]any) pendingReply {
	t.Helper()
	a.mu.Lock()
	a.seq++
	id := fmt.Sprint(a.seq)
	ch := make(chan tsReply, 1)
	a.replies[id] = ch
	a.mu.Unlock()
	cmd["id"] = id
	b, _ := json.Marshal(cmd)
	if _, err := a.stdin.Write(append(b, '\n')); err != nil {
		t.Fatalf("write to agent.mjs: %v", err)
	}
	return pendingReply{a, id, ch}
}

func (p pendingReply) reply(t *testing.T) tsReply {
	t.Helper()
	select {
	case r := <-p.ch:
		return r
	case <-p.a.exited:
		t.Fatalf("agent.mjs exited before answering command %s:\n%s", p.id, p.a.stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("agent.mjs did not answer command %s within 60s", p.id)
	}
	return tsReply{}
}

func (a *agent) list(t *testing.T) []tsTool {
	t.Helper()
	r := a.send(t, map[string]any{"op": "list"}).reply(t)
	if r.Error != "" {
		t.Fatalf("listTools: %s", r.Error)
	}
	return r.Tools
}

func (a *agent) call(t *testing.T, name, args string, progress bool) pendingReply {
	t.Helper()
	return a.send(t, map[string]any{"op": "call", "name": name, "args": json.RawMessage(args), "progress": progress})
}

// outcome is the call's error (the SDK threw) or its result.
func (p pendingReply) outcome(t *testing.T) (string, tsResult) {
	t.Helper()
	r := p.reply(t)
	if r.Error != "" || r.Result == nil {
		return r.Error + " ", tsResult{}
	}
	return "", *r.Result
}

// wait is the call's result; an SDK error fails the test.
func (p pendingReply) wait(t *testing.T) tsResult {
	t.Helper()
	msg, res := p.outcome(t)
	if msg != "" {
		t.Fatalf("callTool threw: %s", msg)
	}
	return res
}

package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// env is one server on a real SQLite file behind a real loopback HTTP server, with a
// client for each role. The reaper does not run: tests call s.reap after moving the clock.
type env struct {
	t        testing.TB
	s        *Server
	url      string
	dbPath   string
	clock    *fakeClock
	secrets  map[string]string // role name -> bearer secret
	admin    *client.Client
	client   *client.Client // pool alpha
	approver *client.Client // all pools
	worker   *client.Client // pool alpha, registered, catalog published
}

const echoSchema = `{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}`

func echoTask() api.TaskDef {
	return api.TaskDef{Name: "echo", Version: "1", Description: "returns n", InputSchema: json.RawMessage(echoSchema)}
}

func newEnv(t testing.TB, mods ...func(*Config)) *env {
	t.Helper()
	dir := t.TempDir()
	clock := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	cfg := Config{DBPath: filepath.Join(dir, "cp.db"), Now: clock.Now,
		Jitter: func(max time.Duration) time.Duration { return max }, RecheckInterval: 50 * time.Millisecond}
	for _, m := range mods {
		m(&cfg)
	}
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { s.Close(); hs.Close() })
	e := &env{t: t, s: s, url: hs.URL, dbPath: cfg.DBPath, clock: clock, secrets: map[string]string{}}
	e.admin = e.newClient("admin", api.RoleAdmin, "*")
	e.client = e.newClient("client", api.RoleClient, "alpha")
	e.approver = e.newClient("approver", api.RoleApprover, "*")
	e.worker = e.newWorker("worker", "alpha", echoTask())
	return e
}

func (e *env) newClient(name string, role api.Role, pool string) *client.Client {
	e.t.Helper()
	tok, err := e.s.Store().CreateToken(context.Background(), role, pool, name, e.clock.Now())
	if err != nil {
		e.t.Fatalf("CreateToken(%s, %s) = %v", role, pool, err)
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
	ctx := context.Background()
	if _, err := c.Register(ctx, api.RegisterRequest{Name: name, AgentVersion: "test"}); err != nil {
		e.t.Fatalf("Register(%s) = %v", name, err)
	}
	if _, err := c.PublishCatalog(ctx, tasks); err != nil {
		e.t.Fatalf("PublishCatalog(%s) = %v", name, err)
	}
	return c
}

// fakeJWS looks like a compact JWS; the server does not verify it (workers do).
func fakeJWS(sub string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"EdDSA","typ":"JWT"}`)) + "." + enc([]byte(`{"sub":"`+sub+`"}`)) + "." + enc([]byte("signature-bytes"))
}

func (e *env) submit(ctx context.Context, n int, approved bool) api.Job {
	e.t.Helper()
	req := api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))}
	if approved {
		req.Approval = fakeJWS("x")
	}
	j, err := e.client.Submit(ctx, req)
	if err != nil {
		e.t.Fatalf("Submit(n=%d) = %v", n, err)
	}
	return j
}

func (e *env) leaseOne(ctx context.Context, w *client.Client) api.LeasedJob {
	e.t.Helper()
	jobs, err := w.Lease(ctx, 1, 0)
	if err != nil || len(jobs) != 1 {
		e.t.Fatalf("Lease(1, 0) = %d jobs, %v; want 1 job", len(jobs), err)
	}
	return jobs[0]
}

func (e *env) count(query string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.s.store.db.QueryRow(query, args...).Scan(&n); err != nil {
		e.t.Fatalf("count %q: %v", query, err)
	}
	return n
}

func (e *env) state(ctx context.Context, id string) api.State {
	e.t.Helper()
	j, err := e.admin.Get(ctx, id)
	if err != nil {
		e.t.Fatalf("Get(%s) = %v", id, err)
	}
	return j.State
}

// snapshot renders every table, to prove a refused request changed nothing.
func (e *env) snapshot() string {
	e.t.Helper()
	var b strings.Builder
	for _, table := range []string{"tokens", "workers", "tasks", "worker_tasks", "jobs", "job_attempts", "audit"} {
		rows, err := e.s.store.db.Query(`SELECT * FROM ` + table + ` ORDER BY rowid`)
		if err != nil {
			e.t.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				e.t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s %v\n", table, vals)
		}
		rows.Close()
	}
	return b.String()
}

func wantCode(t testing.TB, call string, err error, status int, code string) {
	t.Helper()
	ae, ok := err.(*client.APIError)
	if !ok {
		t.Fatalf("%s = %v, want API error %d %s", call, err, status, code)
	}
	if ae.Status != status || ae.Code != code {
		t.Fatalf("%s = %d %s (%s), want %d %s", call, ae.Status, ae.Code, ae.Message, status, code)
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Package approvertest starts a real control plane (internal/server on a SQLite file behind
// a loopback HTTP server) with tokens for every role, published tasks and an approval key,
// for the tests of the approver and its console. It is imported only by tests.
package approvertest

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// Pools the environment serves: Pool has workers for every task; Other too, and an
// approver serving only Pool must never touch its jobs.
const (
	Pool  = "default"
	Other = "other"
)

// LookupSchema is the input schema of the crm-lookup task.
const LookupSchema = `{"type":"object","properties":{"customer_id":{"type":"string","title":"Customer"},"note":{"type":"string"}},"required":["customer_id"],"additionalProperties":false}`

// RefundSchema is the input schema of the refund task.
const RefundSchema = `{"type":"object","properties":{"amount":{"type":"number","title":"Amount"},"reason":{"type":"string"}},"required":["amount"]}`

// Tasks are published in both pools.
func Tasks() []api.TaskDef {
	return []api.TaskDef{
		{Name: "crm-lookup", Version: "1", Title: "CRM lookup", InputSchema: json.RawMessage(LookupSchema)},
		{Name: "refund", Version: "2", Title: "Refund", InputSchema: json.RawMessage(RefundSchema)},
	}
}

// Env is one control plane and its clients.
type Env struct {
	T   testing.TB
	URL string
	// Admin may list token names; Approver is an approver-role token for every pool;
	// Client submits (token name "agent") in Pool, OtherClient in Other; Workers lease.
	Admin, Approver, Client, OtherClient *client.Client
	Workers                              map[string]*client.Client // by pool
	Key                                  jose.JSONWebKey           // private approval key
	Trusted                              *jose.JSONWebKeySet       // its public half
	Secrets                              map[string]string         // token name -> secret
	Server                               *server.Server
}

// New starts an Env that lives until the test ends.
func New(t testing.TB) *Env {
	t.Helper()
	s, err := server.New(context.Background(), server.Config{DBPath: filepath.Join(t.TempDir(), "cp.db"),
		RecheckInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("server.New() = %v", err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { hs.Close(); s.Close() })
	priv, pub, err := approval.GenerateKey("approver-test")
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{T: t, URL: hs.URL, Server: s, Key: priv, Trusted: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}},
		Secrets: map[string]string{}, Workers: map[string]*client.Client{}}
	e.Admin = e.NewClient("admin", api.RoleAdmin, api.AllPools)
	e.Approver = e.NewClient("approver", api.RoleApprover, api.AllPools)
	e.Client = e.NewClient("agent", api.RoleClient, Pool)
	e.OtherClient = e.NewClient("other-agent", api.RoleClient, Other)
	for _, p := range []string{Pool, Other} {
		w := e.NewClient("worker-"+p, api.RoleWorker, p)
		ctx := context.Background()
		if _, err := w.Register(ctx, api.RegisterRequest{Name: "w-" + p, AgentVersion: "test"}); err != nil {
			t.Fatalf("Register(%s) = %v", p, err)
		}
		if _, err := w.PublishCatalog(ctx, Tasks()); err != nil {
			t.Fatalf("PublishCatalog(%s) = %v", p, err)
		}
		e.Workers[p] = w
	}
	return e
}

// NewClient creates a token and a client using it.
func (e *Env) NewClient(name string, role api.Role, pool string) *client.Client {
	e.T.Helper()
	tok, err := e.Server.Store().CreateToken(context.Background(), role, pool, name, time.Now())
	if err != nil {
		e.T.Fatalf("CreateToken(%s, %s) = %v", role, pool, err)
	}
	e.Secrets[name] = tok.Secret
	c, err := client.New(e.URL, tok.Secret)
	if err != nil {
		e.T.Fatal(err)
	}
	return c
}

// Submit submits a job without an approval through c.
func (e *Env) Submit(c *client.Client, task, pool, input string) api.Job {
	e.T.Helper()
	j, err := c.Submit(context.Background(), api.SubmitRequest{Task: task, Pool: pool, Input: json.RawMessage(input)})
	if err != nil {
		e.T.Fatalf("Submit(%s, %s, %s) = %v", task, pool, input, err)
	}
	return j
}

// Get fetches a job with the admin token.
func (e *Env) Get(id string) api.Job {
	e.T.Helper()
	j, err := e.Admin.Get(context.Background(), id)
	if err != nil {
		e.T.Fatalf("Get(%s) = %v", id, err)
	}
	return j
}

// WaitState polls job id until it is in state want, failing the test after 10s.
func (e *Env) WaitState(id string, want api.State) api.Job {
	e.T.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		j := e.Get(id)
		if j.State == want {
			return j
		}
		if time.Now().After(deadline) {
			e.T.Fatalf("job %s is %s after 10s, want %s", id, j.State, want)
		}
		time.Sleep(5 * time.Millisecond) // polling the job's state
	}
}

// Lease leases the job in pool's queue with its worker, so the test can check the approval
// a worker would be handed. It fails the test unless exactly job id is leased.
func (e *Env) Lease(pool, id string) api.LeasedJob {
	e.T.Helper()
	jobs, err := e.Workers[pool].Lease(context.Background(), 1, 5*time.Second)
	if err != nil || len(jobs) != 1 || jobs[0].JobID != id {
		e.T.Fatalf("Lease(%s) = %+v, %v; want job %s", pool, jobs, err, id)
	}
	return jobs[0]
}

// Verify verifies an approval the way a worker does, against the leased job as delivered.
func (e *Env) Verify(lj api.LeasedJob) (approval.Claims, error) {
	v := approval.NewVerifier(e.Trusted, approval.NewMemoryReplayStore())
	return v.Verify(context.Background(), lj.Approval, approval.Expect{JobID: lj.JobID, Task: lj.Task,
		TaskVersion: lj.TaskVersion, Pool: lj.Pool, Input: lj.Input, Attempt: lj.Attempt})
}

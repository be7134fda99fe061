// Package approvertest starts a real control plane, in either mode (internal/server on a
// SQLite file, or internal/natsq on an embedded JetStream server), behind a loopback HTTP
// server, with tokens for every role, published tasks and an approval key, for the tests of
// the approver and its console. It is imported only by tests.
package approvertest

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/natsq"
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
	Workers                              map[string]Worker   // by pool
	Key                                  jose.JSONWebKey     // private approval key
	Trusted                              *jose.JSONWebKeySet // its public half
	Secrets                              map[string]string   // token name -> secret
	Mode                                 string              // "sqlite" or "nats"
	createToken                          func(role api.Role, pool, name string) (api.Token, error)
}

// Worker is a worker's side of the queue: a *client.Client in SQLite mode, a
// *natsq.WorkerQueue in NATS mode.
type Worker interface {
	Register(ctx context.Context, req api.RegisterRequest) (api.RegisterResponse, error)
	PublishCatalog(ctx context.Context, tasks []api.TaskDef) (api.CatalogResponse, error)
	Lease(ctx context.Context, max int, wait time.Duration) ([]api.LeasedJob, error)
	Complete(ctx context.Context, jobID string, req api.CompleteRequest) (api.CompleteResponse, error)
}

// New starts an Env on the SQLite control plane that lives until the test ends.
func New(t testing.TB) *Env {
	t.Helper()
	s, err := server.New(context.Background(), server.Config{DBPath: filepath.Join(t.TempDir(), "cp.db"),
		RecheckInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("server.New() = %v", err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { hs.Close(); s.Close() })
	e := newEnv(t, hs.URL, "sqlite", func(role api.Role, pool, name string) (api.Token, error) {
		return s.Store().CreateToken(context.Background(), role, pool, name, time.Now())
	})
	for _, p := range []string{Pool, Other} {
		e.startWorker(p, e.NewClient("worker-"+p, api.RoleWorker, p))
	}
	return e
}

// NewNATS starts an Env on the JetStream control plane (an embedded NATS server) that
// lives until the test ends.
func NewNATS(t testing.TB) *Env {
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
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := natsq.DialAPIServer(ctx, ns.ClientURL(), natsq.Options{})
	if err != nil {
		cancel()
		t.Fatalf("natsq.DialAPIServer() = %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(served) }()
	t.Cleanup(func() { cancel(); <-served; _ = srv.Close() })
	e := newEnv(t, "http://"+ln.Addr().String(), "nats", func(role api.Role, pool, name string) (api.Token, error) {
		return natsq.CreateToken(context.Background(), srv.Conn(), role, pool, name, 1)
	})
	for _, p := range []string{Pool, Other} {
		q, err := natsq.DialWorker(context.Background(), ns.ClientURL(), natsq.Options{Pool: p})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = q.Close() })
		e.startWorker(p, q)
	}
	// The API server learns the catalog from a bucket watch: wait until a submit can see it.
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range []string{Pool, Other} {
		for {
			cat, err := e.Admin.Catalog(context.Background(), p)
			if err == nil && len(cat.Tasks) == len(Tasks()) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the catalog of pool %s never reached the API server: %+v, %v", p, cat, err)
			}
			time.Sleep(5 * time.Millisecond) // polling the catalog watch
		}
	}
	return e
}

func newEnv(t testing.TB, url, mode string, create func(api.Role, string, string) (api.Token, error)) *Env {
	t.Helper()
	priv, pub, err := approval.GenerateKey("approver-test")
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{T: t, URL: url, Mode: mode, Key: priv, Trusted: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}},
		Secrets: map[string]string{}, Workers: map[string]Worker{}, createToken: create}
	e.Admin = e.NewClient("admin", api.RoleAdmin, api.AllPools)
	e.Approver = e.NewClient("approver", api.RoleApprover, api.AllPools)
	e.Client = e.NewClient("agent", api.RoleClient, Pool)
	e.OtherClient = e.NewClient("other-agent", api.RoleClient, Other)
	return e
}

func (e *Env) startWorker(pool string, w Worker) {
	e.T.Helper()
	ctx := context.Background()
	if _, err := w.Register(ctx, api.RegisterRequest{Name: "w-" + pool, AgentVersion: "test"}); err != nil {
		e.T.Fatalf("Register(%s) = %v", pool, err)
	}
	if _, err := w.PublishCatalog(ctx, Tasks()); err != nil {
		e.T.Fatalf("PublishCatalog(%s) = %v", pool, err)
	}
	e.Workers[pool] = w
}

// NewClient creates a token and a client using it.
func (e *Env) NewClient(name string, role api.Role, pool string) *client.Client {
	e.T.Helper()
	tok, err := e.createToken(role, pool, name)
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

// Succeed reports the leased job lj as run with outcome ok, as its worker would.
func (e *Env) Succeed(lj api.LeasedJob) {
	e.T.Helper()
	_, err := e.Workers[lj.Pool].Complete(context.Background(), lj.JobID, api.CompleteRequest{LeaseToken: lj.LeaseToken,
		Attempt: lj.Attempt, Outcome: "ok", Output: json.RawMessage(`{}`)})
	if err != nil {
		e.T.Fatalf("Complete(%s, ok) = %v", lj.JobID, err)
	}
}

// WaitPlan polls plan id until it is in state want, failing the test after 10s.
func (e *Env) WaitPlan(id string, want api.PlanState) api.Plan {
	e.T.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pl, err := e.Admin.GetPlan(context.Background(), id)
		if err != nil {
			e.T.Fatalf("GetPlan(%s) = %v", id, err)
		}
		if pl.State == want {
			return pl
		}
		if time.Now().After(deadline) {
			e.T.Fatalf("plan %s is %s after 10s, want %s", id, pl.State, want)
		}
		time.Sleep(5 * time.Millisecond) // polling the plan's state
	}
}

// Verify verifies an approval the way a worker does, against the leased job as delivered.
func (e *Env) Verify(lj api.LeasedJob) (approval.Claims, error) {
	v := approval.NewVerifier(e.Trusted, approval.NewMemoryReplayStore())
	return v.Verify(context.Background(), lj.Approval, approval.Expect{JobID: lj.JobID, Task: lj.Task,
		TaskVersion: lj.TaskVersion, Pool: lj.Pool, Input: lj.Input, Attempt: lj.Attempt})
}

// StagedPlans is a control plane caught while a plan is being submitted: the plan is
// recorded before its steps' jobs, so until Open the jobs in Missing do not exist. Listings
// leave them out, GET /v1/jobs/{id} does not find them, and GET /v1/plans/{id} shows them as
// the control plane shows a missing step (a placeholder naming only the job id) or, with
// Omit, leaves them out as a control plane that built the plan from its jobs would. It
// records the steps of every plan approval sent.
type StagedPlans struct {
	*client.Client
	Omit    bool
	Missing map[string]bool // step job ids not created until Open

	open    atomic.Bool
	fetches atomic.Int64
	mu      sync.Mutex
	sent    [][]string
}

// Open creates the missing jobs: from now on the control plane shows them.
func (s *StagedPlans) Open() { s.open.Store(true) }

// Fetches is how many times GET /v1/plans/{id} was called.
func (s *StagedPlans) Fetches() int64 { return s.fetches.Load() }

// Sent lists the steps' job ids of each plan approval sent, in order.
func (s *StagedPlans) Sent() [][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sent)
}

func (s *StagedPlans) hidden(id string) bool { return !s.open.Load() && s.Missing[id] }

// List is the real listing without the missing jobs.
func (s *StagedPlans) List(ctx context.Context, o client.ListOptions) (api.JobList, error) {
	l, err := s.Client.List(ctx, o)
	l.Jobs = slices.DeleteFunc(l.Jobs, func(j api.Job) bool { return s.hidden(j.ID) })
	return l, err
}

// Get does not find a missing job.
func (s *StagedPlans) Get(ctx context.Context, id string) (api.Job, error) {
	if s.hidden(id) {
		return api.Job{}, &client.APIError{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: "no job " + id}
	}
	return s.Client.Get(ctx, id)
}

// GetPlan shows the missing steps as placeholders, or leaves them out with Omit.
func (s *StagedPlans) GetPlan(ctx context.Context, id string) (api.Plan, error) {
	s.fetches.Add(1)
	pl, err := s.Client.GetPlan(ctx, id)
	if err != nil {
		return pl, err
	}
	var steps []api.Job
	for _, st := range pl.Steps {
		switch {
		case !s.hidden(st.ID):
			steps = append(steps, st)
		case !s.Omit:
			steps = append(steps, api.Job{ID: st.ID, State: api.StatePendingApproval, ErrorMessage: "the step's job is not created yet (submit the plan again with its idempotency key)"})
		}
	}
	pl.Steps = steps
	return pl, nil
}

// ApprovePlan records the approval's steps and sends it.
func (s *StagedPlans) ApprovePlan(ctx context.Context, id, tok string) (api.Plan, error) {
	c, _, err := approval.Inspect(tok)
	if err != nil {
		return api.Plan{}, err
	}
	var ids []string
	for _, st := range c.Steps {
		ids = append(ids, st.JobID)
	}
	s.mu.Lock()
	s.sent = append(s.sent, ids)
	s.mu.Unlock()
	return s.Client.ApprovePlan(ctx, id, tok)
}

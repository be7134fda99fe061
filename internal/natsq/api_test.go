package natsq_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/server/apitest"
)

// publishStrict runs a worker of pool that has registered and published strictCatalog.
func publishStrict(t *testing.T, natsURL string) *natsq.WorkerQueue {
	t.Helper()
	q, err := natsq.DialWorker(t.Context(), natsURL, natsq.Options{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	if _, err := q.Register(t.Context(), api.RegisterRequest{Name: "w"}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.PublishCatalog(t.Context(), strictCatalog); err != nil {
		t.Fatal(err)
	}
	return q
}

var strictCatalog = []api.TaskDef{{
	Name: "echo", Version: "1.0.0", Description: "echoes its input",
	InputSchema: json.RawMessage(`{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}`),
}}

type apiReplica struct {
	srv  *natsq.APIServer
	url  string
	stop context.CancelFunc
	done chan error
}

// startAPI runs one control-plane replica (HTTP API and result consumer) on its own
// connection and listener.
func startAPI(t testing.TB, natsURL string) *apiReplica {
	t.Helper()
	return startAPIWith(t, natsURL, natsq.Options{})
}

// startAPIWith is startAPI with options.
func startAPIWith(t testing.TB, natsURL string, o natsq.Options) *apiReplica {
	t.Helper()
	srv, err := natsq.DialAPIServer(context.Background(), natsURL, o)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &apiReplica{srv: srv, url: "http://" + ln.Addr().String(), stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-r.done; _ = srv.Close() })
	return r
}

func apiClient(t testing.TB, natsURL, baseURL string, role api.Role, pool string) *client.Client {
	t.Helper()
	c, _ := apiToken(t, natsURL, baseURL, role, pool)
	return c
}

// apiToken is apiClient that also returns the token (with its secret).
func apiToken(t testing.TB, natsURL, baseURL string, role api.Role, pool string) (*client.Client, api.Token) {
	t.Helper()
	nc := dial(t, natsURL)
	tok, err := natsq.CreateToken(context.Background(), nc, role, pool, string(role), 1)
	if err != nil {
		t.Fatalf("CreateToken(%s, %s) = %v", role, pool, err)
	}
	c, err := client.New(baseURL, tok.Secret)
	if err != nil {
		t.Fatal(err)
	}
	return c, tok
}

func waitCatalog(t testing.TB, c *client.Client) {
	t.Helper()
	poll(t, 20*time.Second, "the published catalog", func() bool {
		cat, err := c.Catalog(context.Background(), pool)
		return err == nil && len(cat.Tasks) > 0
	})
}

// TestAPISubmitApproveWait: the HTTP API over JetStream end to end, through internal/client
// and a real worker on the JetStream transport.
func TestAPISubmitApproveWait(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	s := newSigner(t)
	rep := startAPI(t, natsURL)
	c := newCounter()
	startWorker(t, natsURL, s, c.echo(), natsq.Options{}, 2)
	submitter := apiClient(t, natsURL, rep.url, api.RoleClient, pool)
	approver := apiClient(t, natsURL, rep.url, api.RoleApprover, pool)
	waitCatalog(t, submitter)

	in := `{"n":7}`
	j, err := submitter.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(in), MaxAttempts: 2, IdempotencyKey: "k-1"})
	if err != nil || j.State != api.StatePendingApproval || j.TaskVersion != "1.0.0" {
		t.Fatalf("Submit() = %s %q, %v, want pending_approval 1.0.0", j.State, j.TaskVersion, err)
	}
	again, err := submitter.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(in), MaxAttempts: 2, IdempotencyKey: "k-1"})
	if err != nil || again.ID != j.ID {
		t.Fatalf("Submit(same idempotency key) = %s, %v, want %s", again.ID, err, j.ID)
	}
	_, err = submitter.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(`{"n":8}`), MaxAttempts: 2, IdempotencyKey: "k-1"})
	if !client.IsCode(err, api.CodeIdempotency) {
		t.Fatalf("Submit(reused idempotency key) = %v, want %s", err, api.CodeIdempotency)
	}
	if _, err := submitter.Approve(t.Context(), j.ID, "x.y.z"); !client.IsCode(err, api.CodeForbidden) {
		t.Fatalf("Approve(with a client token) = %v, want %s", err, api.CodeForbidden)
	}
	tok, _, err := approval.Sign(s.key, approval.Request{JobID: j.ID, Task: "echo", TaskVersion: j.TaskVersion, Pool: pool,
		Input: []byte(in), MaxAttempts: 2, Approver: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if aj, err := approver.Approve(t.Context(), j.ID, tok); err != nil || aj.State != api.StateQueued {
		t.Fatalf("Approve() = %s, %v, want queued", aj.State, err)
	}
	if _, err := approver.Approve(t.Context(), j.ID, tok); !client.IsCode(err, api.CodeInvalidState) {
		t.Fatalf("Approve(again) = %v, want %s", err, api.CodeInvalidState)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	done, err := submitter.Wait(ctx, j.ID)
	if err != nil || done.State != api.StateSucceeded || string(done.Output) != in || done.SubmittedBy == "" {
		t.Fatalf("Wait(%s) = %s output %s by %q, %v, want succeeded with %s", j.ID, done.State, done.Output, done.SubmittedBy, err, in)
	}
	if got, err := submitter.Get(t.Context(), j.ID); err != nil || got.State != api.StateSucceeded {
		t.Fatalf("Get(%s) = %s, %v, want succeeded", j.ID, got.State, err)
	}
	if n := c.get(j.ID); n != 1 {
		t.Fatalf("runs of %s = %d, want 1", j.ID, n)
	}
	if _, err := submitter.Cancel(t.Context(), j.ID); !client.IsCode(err, api.CodeInvalidState) {
		t.Fatalf("Cancel(finished job) = %v, want %s", err, api.CodeInvalidState)
	}

	// An approval attached to the submit dispatches the job at once; this one was signed
	// for another job id, so the worker (not the control plane) refuses it.
	aj, err := submitter.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(in), MaxAttempts: 2, Approval: tok})
	if err != nil || aj.State != api.StateQueued || !aj.HasApproval {
		t.Fatalf("Submit(with approval) = %s, %v, want queued", aj.State, err)
	}
	if rj, err := submitter.Wait(ctx, aj.ID); err != nil || rj.State != api.StateRejected {
		t.Fatalf("Wait(%s) = %s, %v, want rejected (the approval names another job)", aj.ID, rj.State, err)
	}

	// A pending job is cancelled at once: it was never published.
	p, err := submitter.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(`{"n":9}`), MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	if cj, err := submitter.Cancel(t.Context(), p.ID); err != nil || cj.State != api.StateCancelled {
		t.Fatalf("Cancel(pending job) = %s, %v, want cancelled", cj.State, err)
	}
}

// TestAPIRefusals: schema, authentication, role and pool refusals carry the SQLite control
// plane's statuses and codes.
func TestAPIRefusals(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	rep := startAPI(t, natsURL)
	publishStrict(t, natsURL)
	submitter := apiClient(t, natsURL, rep.url, api.RoleClient, pool)
	otherPool := apiClient(t, natsURL, rep.url, api.RoleClient, "other")
	approver := apiClient(t, natsURL, rep.url, api.RoleApprover, pool)
	admin := apiClient(t, natsURL, rep.url, api.RoleAdmin, api.AllPools)
	waitCatalog(t, submitter)
	j, err := submitter.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(`{"n":1}`)})
	if err != nil {
		t.Fatalf("Submit(valid) = %v", err)
	}
	bogus, err := client.New(rep.url, "cst_"+"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	if err != nil {
		t.Fatal(err)
	}
	noToken := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, rep.url+"/v1/jobs/"+j.ID, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var body api.ErrorBody
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return &client.APIError{Status: resp.StatusCode, Code: body.Error.Code, Message: body.Error.Message}
	}
	tests := []struct {
		name   string
		call   func(context.Context) error
		status int
		code   string
	}{
		{"schema violation", func(ctx context.Context) error {
			_, err := submitter.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(`{"n":"seven"}`)})
			return err
		}, http.StatusBadRequest, api.CodeInputInvalid},
		{"extra property", func(ctx context.Context) error {
			_, err := submitter.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(`{"n":1,"x":2}`)})
			return err
		}, http.StatusBadRequest, api.CodeInputInvalid},
		{"unknown task", func(ctx context.Context) error {
			_, err := submitter.Submit(ctx, api.SubmitRequest{Task: "nope", Pool: pool, Input: json.RawMessage(`{}`)})
			return err
		}, http.StatusBadRequest, api.CodeUnknownTask},
		{"unknown token", func(ctx context.Context) error { _, err := bogus.Get(ctx, j.ID); return err }, http.StatusUnauthorized, api.CodeUnauthenticated},
		{"no token", noToken, http.StatusUnauthorized, api.CodeUnauthenticated},
		{"approver submits", func(ctx context.Context) error {
			_, err := approver.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(`{"n":1}`)})
			return err
		}, http.StatusForbidden, api.CodeForbidden},
		{"client approves", func(ctx context.Context) error { _, err := submitter.Approve(ctx, j.ID, "a.b.c"); return err }, http.StatusForbidden, api.CodeForbidden},
		{"other pool submits", func(ctx context.Context) error {
			_, err := otherPool.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(`{"n":1}`)})
			return err
		}, http.StatusForbidden, api.CodeForbidden},
		{"other pool reads", func(ctx context.Context) error { _, err := otherPool.Get(ctx, j.ID); return err }, http.StatusNotFound, api.CodeNotFound},
		{"garbage approval", func(ctx context.Context) error { _, err := approver.Approve(ctx, j.ID, "not-a-jws"); return err }, http.StatusBadRequest, api.CodeInvalidField},
		{"job id with wildcards", func(ctx context.Context) error { _, err := submitter.Get(ctx, "job.*"); return err }, http.StatusNotFound, api.CodeNotFound},
		{"unknown job", func(ctx context.Context) error {
			_, err := submitter.Get(ctx, "job_000000000000000000000000")
			return err
		}, http.StatusNotFound, api.CodeNotFound},
		// No registration tokens in this mode: the exchange is not served, and none is made.
		{"registration exchange", func(ctx context.Context) error {
			_, err := submitter.ExchangeRegistration(ctx, "w")
			return err
		}, http.StatusNotFound, api.CodeNotFound},
		{"registration token", func(ctx context.Context) error {
			_, err := admin.CreateToken(ctx, api.TokenCreateRequest{Role: api.RoleRegistration, Pool: pool, TTLSeconds: 60})
			return err
		}, http.StatusBadRequest, api.CodeInvalidField},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.call(t.Context())
			ae, ok := err.(*client.APIError)
			if !ok || ae.Status != tt.status || ae.Code != tt.code {
				t.Fatalf("%s = %v, want %d %s", tt.name, err, tt.status, tt.code)
			}
			if tt.code == api.CodeInputInvalid && len(ae.Details) == 0 {
				t.Fatalf("%s = %v, want schema issue details", tt.name, err)
			}
		})
	}
	// Approved but not pulled (no worker runs here): a cancel removes it from the stream at once.
	sig := newSigner(t)
	tok, _, err := approval.Sign(sig.key, approval.Request{JobID: j.ID, Task: "echo", TaskVersion: j.TaskVersion, Pool: pool,
		Input: []byte(`{"n":1}`), MaxAttempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	if aj, err := approver.Approve(t.Context(), j.ID, tok); err != nil || aj.State != api.StateQueued {
		t.Fatalf("Approve() = %s, %v, want queued", aj.State, err)
	}
	if cj, err := submitter.Cancel(t.Context(), j.ID); err != nil || cj.State != api.StateCancelled {
		t.Fatalf("Cancel(queued, unpulled) = %s, %v, want cancelled", cj.State, err)
	}
	if info, err := jobsStream(t, natsURL).Info(t.Context()); err != nil || info.State.Msgs != 0 {
		t.Fatalf("jobs stream after the cancel = %+v, %v, want empty", info.State, err)
	}
	if _, err := natsq.CreateToken(t.Context(), dial(t, natsURL), api.RoleWorker, pool, "w", 1); err == nil {
		t.Fatal("CreateToken(worker) = nil error, want a refusal: workers authenticate to NATS")
	}
}

// TestAPIReplicas: two replicas on one NATS; one stops mid-flow, the other keeps answering,
// and every result is recorded exactly once.
func TestAPIReplicas(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	s := newSigner(t)
	a, b := startAPI(t, natsURL), startAPI(t, natsURL)
	c := newCounter()
	startWorker(t, natsURL, s, c.echo(), natsq.Options{}, 4)
	subA := apiClient(t, natsURL, a.url, api.RoleClient, pool)
	appA := apiClient(t, natsURL, a.url, api.RoleApprover, pool)
	subB := apiClient(t, natsURL, b.url, api.RoleClient, pool)
	appB := apiClient(t, natsURL, b.url, api.RoleApprover, pool)
	waitCatalog(t, subA)
	waitCatalog(t, subB)
	const n = 40
	ids := make([]string, n)
	inputs := make([]string, n)
	for i := range n {
		inputs[i] = `{"n":` + string(rune('0'+i%10)) + `}`
		sub := subA
		if i%2 == 1 {
			sub = subB
		}
		j, err := sub.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(inputs[i]), MaxAttempts: 3})
		if err != nil {
			t.Fatalf("Submit(%d) = %v", i, err)
		}
		ids[i] = j.ID
	}
	approve := func(app *client.Client, i int) {
		tok, _, err := approval.Sign(s.key, approval.Request{JobID: ids[i], Task: "echo", TaskVersion: "1.0.0", Pool: pool,
			Input: []byte(inputs[i]), MaxAttempts: 3, Approver: "alice"})
		if err == nil {
			_, err = app.Approve(t.Context(), ids[i], tok)
		}
		if err != nil {
			t.Errorf("Approve(%s) = %v", ids[i], err)
		}
	}
	// Approve half through A, then stop A while its jobs run; B approves the rest (its own
	// submissions and A's) and records every result.
	for i := range n / 2 {
		approve(appA, i)
	}
	a.stop()
	if err := <-a.done; err != nil {
		t.Fatalf("replica A Serve() = %v", err)
	}
	a.done <- nil // for the cleanup
	if _, err := subA.Get(t.Context(), ids[0]); err == nil {
		t.Fatal("Get() via the stopped replica = nil error, want a connection error")
	}
	var wg sync.WaitGroup
	for i := n / 2; i < n; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); approve(appB, i) }()
	}
	wg.Wait()
	for i, id := range ids {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		j, err := subB.Wait(ctx, id)
		cancel()
		if err != nil || j.State != api.StateSucceeded || string(j.Output) != inputs[i] {
			t.Fatalf("Wait(%s) via B = %s output %s, %v, want succeeded with %s", id, j.State, j.Output, err, inputs[i])
		}
	}
	d, _, _ := startDispatcher(t, natsURL, natsq.Options{})
	for _, id := range ids {
		rec, err := d.Record(t.Context(), id)
		if err != nil || len(rec.Completions) != 1 {
			t.Fatalf("Record(%s) = %d completions, %v, want 1", id, len(rec.Completions), err)
		}
		if runs := c.get(id); runs != 1 {
			t.Fatalf("runs of %s = %d, want 1", id, runs)
		}
	}
	results := resultsPerJob(t, natsURL)
	for _, id := range ids {
		if results[id] != 1 {
			t.Fatalf("results published for %s = %d, want 1", id, results[id])
		}
	}
}

// TestCancelUnpulled: a dispatched job nobody has pulled is found by its message id,
// deleted from the stream and cancelled at once (Dispatch does not record its sequence).
func TestCancelUnpulled(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	s := newSigner(t)
	d, _, _ := startDispatcher(t, natsURL, natsq.Options{})
	if _, err := d.DispatchBatch(t.Context(), []natsq.Envelope{s.envelope(t, "keep", `{"n":1}`, 1), s.envelope(t, "drop", `{"n":2}`, 1)}); err != nil {
		t.Fatalf("DispatchBatch() = %v", err)
	}
	if j, err := d.Cancel(t.Context(), "drop"); err != nil || j.State != api.StateCancelled {
		t.Fatalf("Cancel(drop) = %s, %v, want cancelled", j.State, err)
	}
	info, err := jobsStream(t, natsURL).Info(t.Context())
	if err != nil || info.State.Msgs != 1 {
		t.Fatalf("jobs stream after the cancel = %d messages, %v, want 1 (keep)", info.State.Msgs, err)
	}
	c := newCounter()
	startWorker(t, natsURL, s, c.echo(), natsq.Options{}, 2)
	waitState(t, d, "keep", 20*time.Second, api.StateSucceeded)
	if n := c.get("drop"); n != 0 {
		t.Fatalf("runs of the cancelled job = %d, want 0", n)
	}
}

// rawRequest sends method path (with its query) with the bearer secret and returns the
// status, the error body (if any) and the raw body.
func rawRequest(ctx context.Context, t testing.TB, method, base, secret, path string) (int, api.ErrorBody, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s = %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var body api.ErrorBody
	if resp.StatusCode >= 400 {
		if err := json.Unmarshal(raw, &body); err != nil {
			t.Fatalf("%s %s = %d with a body that is not an API error: %q", method, path, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, body, raw
}

func ids(jobs []api.Job) []string {
	out := make([]string, len(jobs))
	for i, j := range jobs {
		out[i] = j.ID
	}
	return out
}

// TestAPIListJobs: GET /v1/jobs over JetStream pages newest first with stable cursors,
// filters by state, task and pool, scopes to the token's pool, omits input and output, and
// refuses bad parameters as internal/server does.
func TestAPIListJobs(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	rep := startAPI(t, natsURL)
	d, err := natsq.NewDispatcher(t.Context(), dial(t, natsURL), natsq.Options{})
	if err != nil {
		t.Fatal(err)
	}
	env := func(id, pool, task string) natsq.Envelope {
		return natsq.Envelope{JobID: id, Task: task, TaskVersion: "1.0.0", Pool: pool, Input: json.RawMessage(`{"secret_input":1}`),
			Approval: "not.checked.here", MaxAttempts: 1}
	}
	// One at a time (distinct creation times) and in a batch (one creation time: the id
	// orders them), in two pools and two tasks.
	for _, e := range []natsq.Envelope{env("a1", "default", "echo"), env("a2", "default", "echo"), env("c1", "default", "other"), env("d1", "beta", "echo")} {
		if _, err := d.Dispatch(t.Context(), e); err != nil {
			t.Fatalf("Dispatch(%s) = %v", e.JobID, err)
		}
	}
	if _, err := d.DispatchBatch(t.Context(), []natsq.Envelope{env("b1", "default", "echo"), env("b3", "default", "echo"),
		env("b2", "default", "echo"), env("d2", "beta", "echo")}); err != nil {
		t.Fatalf("DispatchBatch() = %v", err)
	}
	if j, err := d.Cancel(t.Context(), "a2"); err != nil || j.State != api.StateCancelled {
		t.Fatalf("Cancel(a2) = %s, %v, want cancelled", j.State, err)
	}
	var all []api.Job
	for _, id := range []string{"a1", "a2", "c1", "d1", "b1", "b2", "b3", "d2"} {
		j, err := d.Get(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, j)
	}
	slices.SortFunc(all, func(a, b api.Job) int {
		if c := b.CreatedAt.Compare(a.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(b.ID, a.ID)
	})
	want := func(keep func(api.Job) bool) []string {
		var out []string
		for _, j := range all {
			if keep(j) {
				out = append(out, j.ID)
			}
		}
		return out
	}
	admin, adminTok := apiToken(t, natsURL, rep.url, api.RoleAdmin, "")
	inDefault := apiClient(t, natsURL, rep.url, api.RoleClient, pool)
	everywhere := apiClient(t, natsURL, rep.url, api.RoleApprover, api.AllPools)

	// Every page in turn: the concatenation is the whole order, each job once.
	var paged []string
	cursor := ""
	for page := 0; ; page++ {
		l, err := admin.List(t.Context(), client.ListOptions{Limit: 3, Cursor: cursor})
		if err != nil || len(l.Jobs) > 3 {
			t.Fatalf("List(limit 3, page %d) = %d jobs, %v, want at most 3", page, len(l.Jobs), err)
		}
		if page > len(all) {
			t.Fatalf("List(limit 3) gave a next_cursor on page %d of %d jobs: the cursor does not advance", page, len(all))
		}
		for _, j := range l.Jobs {
			if j.Input != nil || j.Output != nil {
				t.Fatalf("List() job %s has input %s output %s, want both omitted", j.ID, j.Input, j.Output)
			}
		}
		paged = append(paged, ids(l.Jobs)...)
		if l.NextCursor == "" {
			break
		}
		cursor = l.NextCursor
	}
	if w := want(func(api.Job) bool { return true }); !slices.Equal(paged, w) {
		t.Fatalf("List(pages of 3) = %v, want %v", paged, w)
	}

	tests := []struct {
		name string
		c    *client.Client
		o    client.ListOptions
		want []string
	}{
		{"admin sees every pool", admin, client.ListOptions{}, want(func(api.Job) bool { return true })},
		{"state", admin, client.ListOptions{State: api.StateCancelled}, []string{"a2"}},
		{"task", admin, client.ListOptions{Task: "other"}, []string{"c1"}},
		{"pool", admin, client.ListOptions{Pool: "beta"}, want(func(j api.Job) bool { return j.Pool == "beta" })},
		{"all filters", admin, client.ListOptions{Pool: pool, Task: "echo", State: api.StateQueued},
			want(func(j api.Job) bool { return j.Pool == pool && j.Task == "echo" && j.State == api.StateQueued })},
		{"a pool-bound token sees its pool", inDefault, client.ListOptions{}, want(func(j api.Job) bool { return j.Pool == pool })},
		{"a '*' token sees every pool", everywhere, client.ListOptions{}, want(func(api.Job) bool { return true })},
		{"no match", admin, client.ListOptions{Task: "nothing"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l, err := tt.c.List(t.Context(), tt.o)
			if err != nil || !slices.Equal(ids(l.Jobs), tt.want) || l.NextCursor != "" {
				t.Fatalf("List(%+v) = %v next %q, %v, want %v", tt.o, ids(l.Jobs), l.NextCursor, err, tt.want)
			}
			if l.Jobs == nil {
				t.Fatalf("List(%+v) jobs = null, want []", tt.o)
			}
		})
	}

	bad := []struct {
		query  string
		status int
		code   string
		names  string // what the message must name
	}{
		{"?state=done", http.StatusBadRequest, api.CodeInvalidField, `state "done"`},
		{"?task=Not%20A%20Task", http.StatusBadRequest, api.CodeInvalidField, `task "Not A Task"`},
		{"?pool=BAD", http.StatusBadRequest, api.CodeInvalidField, `pool "BAD"`},
		{"?limit=0", http.StatusBadRequest, api.CodeInvalidField, `limit "0" must be an integer in 1..500`},
		{"?limit=501", http.StatusBadRequest, api.CodeInvalidField, `limit "501" must be an integer in 1..500`},
		{"?limit=ten", http.StatusBadRequest, api.CodeInvalidField, `limit "ten"`},
		{"?cursor=123", http.StatusBadRequest, api.CodeInvalidField, `cursor "123"`},
		{"?cursor=-1.a1", http.StatusBadRequest, api.CodeInvalidField, `cursor "-1.a1"`},
		{"?cursor=1.job*", http.StatusBadRequest, api.CodeInvalidField, `cursor "1.job*"`},
		{"?sort=asc", http.StatusBadRequest, api.CodeUnknownField, `"sort"`},
	}
	for _, tt := range bad {
		t.Run("refuses "+tt.query, func(t *testing.T) {
			t.Parallel()
			status, body, _ := rawRequest(t.Context(), t, http.MethodGet, rep.url, adminTok.Secret, "/v1/jobs"+tt.query)
			if status != tt.status || body.Error.Code != tt.code || !strings.Contains(body.Error.Message, tt.names) {
				t.Fatalf("GET /v1/jobs%s = %d %s %q, want %d %s naming %s", tt.query, status, body.Error.Code, body.Error.Message, tt.status, tt.code, tt.names)
			}
		})
	}
	if _, err := inDefault.List(t.Context(), client.ListOptions{Pool: "beta"}); !client.IsCode(err, api.CodeForbidden) {
		t.Fatalf("List(pool beta) with a token for %s = %v, want %s", pool, err, api.CodeForbidden)
	}
}

// TestAPITokens: GET /v1/tokens lists every token without a secret (admin only), and
// DELETE /v1/tokens/{id} revokes one so that it fails at once on every replica.
func TestAPITokens(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	a, b := startAPI(t, natsURL), startAPI(t, natsURL)
	admin, adminTok := apiToken(t, natsURL, a.url, api.RoleAdmin, "")
	victimA, victim := apiToken(t, natsURL, a.url, api.RoleClient, pool)
	victimB, err := client.New(b.url, victim.Secret)
	if err != nil {
		t.Fatal(err)
	}
	approver, approverTok := apiToken(t, natsURL, b.url, api.RoleApprover, pool)

	list, err := admin.ListTokens(t.Context())
	if err != nil {
		t.Fatalf("ListTokens() = %v", err)
	}
	var got []string
	for _, tok := range list {
		got = append(got, tok.ID+" "+string(tok.Role)+" "+tok.Pool)
		if tok.Secret != "" || tok.RevokedAt != nil || tok.CreatedAt.IsZero() {
			t.Fatalf("ListTokens() entry %+v, want no secret, not revoked, a creation time", tok)
		}
	}
	wantList := []string{adminTok.ID + " admin *", victim.ID + " client " + pool, approverTok.ID + " approver " + pool}
	if !slices.Equal(got, wantList) {
		t.Fatalf("ListTokens() = %v, want %v (oldest first)", got, wantList)
	}
	_, _, raw := rawRequest(t.Context(), t, http.MethodGet, a.url, adminTok.Secret, "/v1/tokens")
	for _, secret := range []string{adminTok.Secret, victim.Secret, approverTok.Secret} {
		if strings.Contains(string(raw), strings.TrimPrefix(secret, "cst_")) {
			t.Fatalf("GET /v1/tokens body %s holds a secret", raw)
		}
	}
	if _, err := approver.ListTokens(t.Context()); !client.IsCode(err, api.CodeForbidden) {
		t.Fatalf("ListTokens() as approver = %v, want %s", err, api.CodeForbidden)
	}
	if err := approver.RevokeToken(t.Context(), victim.ID); !client.IsCode(err, api.CodeForbidden) {
		t.Fatalf("RevokeToken() as approver = %v, want %s", err, api.CodeForbidden)
	}
	if status, body, _ := rawRequest(t.Context(), t, http.MethodGet, a.url, adminTok.Secret, "/v1/tokens?all=1"); status != http.StatusBadRequest || body.Error.Code != api.CodeUnknownField {
		t.Fatalf("GET /v1/tokens?all=1 = %d %s, want 400 %s", status, body.Error.Code, api.CodeUnknownField)
	}

	for name, c := range map[string]*client.Client{"A": victimA, "B": victimB} {
		if _, err := c.List(t.Context(), client.ListOptions{}); err != nil {
			t.Fatalf("List() via replica %s before the revoke = %v", name, err)
		}
	}
	if err := admin.RevokeToken(t.Context(), victim.ID); err != nil {
		t.Fatalf("RevokeToken(%s) via A = %v", victim.ID, err)
	}
	// No poll: the very next request on either replica is refused.
	for name, c := range map[string]*client.Client{"A": victimA, "B": victimB} {
		if _, err := c.List(t.Context(), client.ListOptions{}); !client.IsCode(err, api.CodeUnauthenticated) {
			t.Fatalf("List() via replica %s right after the revoke = %v, want %s", name, err, api.CodeUnauthenticated)
		}
	}
	if _, err := approver.List(t.Context(), client.ListOptions{}); err != nil {
		t.Fatalf("List() with another token after the revoke = %v, want it unaffected", err)
	}
	for _, id := range []string{victim.ID, "tok_000000000000", "tok_*", "nope"} {
		if err := admin.RevokeToken(t.Context(), id); !client.IsCode(err, api.CodeNotFound) {
			t.Fatalf("RevokeToken(%q) = %v, want %s", id, err, api.CodeNotFound)
		}
	}
	list, err = admin.ListTokens(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range list {
		if (tok.RevokedAt != nil) != (tok.ID == victim.ID) {
			t.Fatalf("ListTokens() after the revoke: %s revoked_at %v, want set only on %s", tok.ID, tok.RevokedAt, victim.ID)
		}
	}
}

// TestAPIShutdownEndsWaitsCleanly: a graceful shutdown answers a parked wait with the
// documented 503 unavailable JSON error, not with a cancelled request's empty 200.
func TestAPIShutdownEndsWaitsCleanly(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	s := newSigner(t)
	rep := startAPI(t, natsURL)
	startWorker(t, natsURL, s, newCounter().echo(), natsq.Options{}, 1)
	submitter, tok := apiToken(t, natsURL, rep.url, api.RoleClient, pool)
	waitCatalog(t, submitter)
	j, err := submitter.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(`{"n":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		status int
		body   api.ErrorBody
		raw    []byte
	}
	got := make(chan answer, 1)
	go func() {
		st, body, raw := rawRequest(context.Background(), t, "GET", rep.url, tok.Secret, "/v1/jobs/"+j.ID+"/wait?timeout=60")
		got <- answer{st, body, raw}
	}()
	poll(t, 10*time.Second, "the wait to park", func() bool { return rep.srv.ParkedWaits() == 1 })
	rep.stop()
	select {
	case a := <-got:
		if a.status != http.StatusServiceUnavailable || a.body.Error.Code != api.CodeUnavailable {
			t.Fatalf("wait during shutdown = %d %q, want 503 %s", a.status, a.raw, api.CodeUnavailable)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("the parked wait got no answer after shutdown began")
	}
}

// TestAPIMalformedRequestsGetJSONErrors runs the generated table both modes share
// (internal/server/apitest) against the JetStream control plane.
func TestAPIMalformedRequestsGetJSONErrors(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	s := newSigner(t)
	rep := startAPI(t, natsURL)
	startWorker(t, natsURL, s, newCounter().echo(), natsq.Options{}, 1)
	submitter, clientTok := apiToken(t, natsURL, rep.url, api.RoleClient, pool)
	_, approverTok := apiToken(t, natsURL, rep.url, api.RoleApprover, pool)
	waitCatalog(t, submitter)
	j, err := submitter.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(`{"n":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{"client": clientTok.Secret, "approver": approverTok.Secret}
	for _, c := range apitest.Malformed(pool, j.ID) {
		apitest.Check(t, rep.url, secrets[c.Role], c)
	}
	if got, err := submitter.Get(t.Context(), j.ID); err != nil || got.State != api.StatePendingApproval {
		t.Fatalf("the pending job after the refused requests = %s, %v; want pending_approval", got.State, err)
	}
}

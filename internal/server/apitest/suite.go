package apitest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// Queue is the worker's side of a backend: worker.Queue's job methods. Over SQLite it is
// internal/client on the HTTP worker routes; over JetStream it is natsq's WorkerQueue. It is
// declared here so that this package does not import the worker.
type Queue interface {
	Lease(ctx context.Context, max int, wait time.Duration) ([]api.LeasedJob, error)
	Heartbeat(ctx context.Context, leaseToken string) (api.HeartbeatResponse, error)
	Complete(ctx context.Context, jobID string, req api.CompleteRequest) (api.CompleteResponse, error)
}

// Pool is the pool every backend's worker serves; Other is a second pool nobody serves.
const (
	Pool  = "alpha"
	Other = "beta"
)

// Catalog is what each backend's worker publishes in Pool before a scenario starts.
var Catalog = []api.TaskDef{{
	Name: "echo", Version: "1.0.0", Description: "echoes its input",
	InputSchema: json.RawMessage(`{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}`),
}}

// Backend is one running control plane, started fresh for each scenario by the harness of
// its mode.
type Backend struct {
	URL string
	// NewToken creates a bearer token (Secret set). Roles client, approver, admin, and
	// worker where HTTPWorkers.
	NewToken func(t testing.TB, role api.Role, pool string) api.Token
	// Worker leases, heartbeats and completes jobs of Pool; it has published Catalog.
	Worker Queue
	// PublishCatalog publishes tasks as a second worker of Pool (its refusal, if any).
	PublishCatalog func(ctx context.Context, tasks []api.TaskDef) error
	// Waiters reports how many job waits and list long-polls are parked, so a test can
	// poll for one.
	Waiters func() int
	// HTTPWorkers is true where workers use the HTTP worker routes (SQLite mode).
	HTTPWorkers bool
	// NewTokenTTL creates a token as NewToken does, expiring ttl after Clock's now.
	NewTokenTTL func(t testing.TB, role api.Role, pool string, ttl time.Duration) api.Token
	// Clock is the control plane's clock (token expiry, worker presence).
	Clock *Clock
}

// Options configure the backend a scenario needs.
type Options struct {
	// AutoApprove: the control plane approves every submit of task echo itself.
	AutoApprove bool
	// ShortLease: leases last 1 s without a heartbeat, and expired ones are reaped at once.
	ShortLease bool
}

// Run runs every scenario of the /v1 contract (docs/api.md) against a fresh backend each.
// gaps names the scenarios this mode does not pass yet, with the reason: each is skipped
// as a known gap, never counted as passing.
func Run(t *testing.T, gaps map[string]string, start func(t *testing.T, o Options) *Backend) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			if why, ok := gaps[sc.name]; ok {
				t.Skipf("known gap: %s (issue 14)", why)
			}
			sc.run(t, newSuite(t, start(t, needs[sc.name])))
		})
	}
}

type scenario struct {
	name string
	run  func(t *testing.T, s *suite)
}

// needs are the scenarios that need a backend configured otherwise than by default.
var needs = map[string]Options{"auto_approve": {AutoApprove: true}, "lease/expiry": {ShortLease: true}}

// suite is a backend with a token of each role, in Pool unless named otherwise.
type suite struct {
	*Backend
	admin, client, approver, otherClient, otherApprover string
}

func newSuite(t *testing.T, b *Backend) *suite {
	return &suite{Backend: b,
		admin:         b.NewToken(t, api.RoleAdmin, api.AllPools).Secret,
		client:        b.NewToken(t, api.RoleClient, Pool).Secret,
		approver:      b.NewToken(t, api.RoleApprover, Pool).Secret,
		otherClient:   b.NewToken(t, api.RoleClient, Other).Secret,
		otherApprover: b.NewToken(t, api.RoleApprover, Other).Secret,
	}
}

// answer is one HTTP response.
type answer struct {
	status int
	header http.Header
	raw    []byte
}

func (s *suite) do(t testing.TB, secret, method, path, body string) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, s.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if secret != "" {
		req.Header.Set("Authorization", "Bearer "+secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, raw: raw}
}

// ok sends a request that must succeed with status and decodes the answer into out.
func (s *suite) ok(t testing.TB, status int, secret, method, path, body string, out any) {
	t.Helper()
	a := s.do(t, secret, method, path, body)
	if a.status != status {
		t.Fatalf("%s %s %s = %d %s, want %d", method, path, body, a.status, a.raw, status)
	}
	if out != nil {
		if err := json.Unmarshal(a.raw, out); err != nil {
			t.Fatalf("%s %s: answer %s: %v", method, path, a.raw, err)
		}
	}
}

// refused sends a request that must be refused with status and code (the documented JSON
// error body) and returns the error.
func (s *suite) refused(t testing.TB, status int, code, secret, method, path, body string) api.ErrorDetail {
	t.Helper()
	a := s.do(t, secret, method, path, body)
	var eb api.ErrorBody
	dec := json.NewDecoder(bytes.NewReader(a.raw))
	dec.DisallowUnknownFields()
	if a.status != status || dec.Decode(&eb) != nil || eb.Error.Code != code || eb.Error.Message == "" {
		t.Errorf("%s %s %.200s = %d %.300s, want %d %s", method, path, body, a.status, a.raw, status, code)
	}
	if !strings.HasPrefix(a.header.Get("Content-Type"), "application/json") {
		t.Errorf("%s %s: Content-Type %q, want application/json", method, path, a.header.Get("Content-Type"))
	}
	if strings.Contains(eb.Error.Message, api.TokenPrefix) {
		t.Errorf("%s %s: error message %q echoes a token", method, path, eb.Error.Message)
	}
	return eb.Error
}

// Approver is an auto-approver for Options.AutoApprove: it signs nothing, and returns
// FakeApproval(job id).
type Approver struct{}

// Approve implements controlplane.AutoApprover.
func (Approver) Approve(_ context.Context, j controlplane.ApprovalSubject) (string, error) {
	return FakeApproval(j.JobID), nil
}

// FakeApproval has the shape of a compact JWS; control planes check only the shape.
func FakeApproval(sub string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"EdDSA","typ":"JWT"}`)) + "." + enc([]byte(`{"sub":"`+sub+`"}`)) + "." + enc([]byte("signature-bytes"))
}

func submitBody(extra string) string {
	return `{"task":"echo","pool":"` + Pool + `","input":{"n":1}` + extra + `}`
}

func (s *suite) submit(t testing.TB, extra string) api.Job {
	t.Helper()
	var j api.Job
	s.ok(t, http.StatusCreated, s.client, "POST", "/v1/jobs", submitBody(extra), &j)
	return j
}

func (s *suite) submitApproved(t testing.TB, extra string) api.Job {
	t.Helper()
	return s.submit(t, `,"approval":"`+FakeApproval("x")+`"`+extra)
}

func (s *suite) get(t testing.TB, id string) api.Job {
	t.Helper()
	var j api.Job
	s.ok(t, http.StatusOK, s.admin, "GET", "/v1/jobs/"+id, "", &j)
	return j
}

// eventually polls the job until cond holds: over JetStream a result is recorded
// asynchronously, after Complete returned.
func (s *suite) eventually(t testing.TB, id, what string, cond func(api.Job) bool) api.Job {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		j := s.get(t, id)
		if cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: timed out waiting for %s; it is %s", id, what, j.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s *suite) waitState(t testing.TB, id string, want api.State) api.Job {
	t.Helper()
	return s.eventually(t, id, string(want), func(j api.Job) bool { return j.State == want })
}

// lease leases exactly one job, polling until one comes (a JetStream worker binds its
// consumers a moment after the first approval).
func (s *suite) lease(t testing.TB) api.LeasedJob {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		jobs, err := s.Worker.Lease(context.Background(), 1, time.Second)
		if err != nil {
			t.Fatalf("Lease() = %v", err)
		}
		if len(jobs) == 1 {
			return jobs[0]
		}
		if len(jobs) > 1 {
			t.Fatalf("Lease(max 1) = %d jobs", len(jobs))
		}
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting to lease a job")
		}
	}
}

func complete(lj api.LeasedJob, code string, retryable *bool) api.CompleteRequest {
	return api.CompleteRequest{LeaseToken: lj.LeaseToken, Attempt: lj.Attempt, Outcome: code,
		DurationMS: 3, ModuleDigest: "sha256:test", Retryable: retryable, ErrorMessage: errMsg(code)}
}

func errMsg(code string) string {
	if code == "ok" {
		return ""
	}
	return "the task said " + code
}

func wantCode(t testing.TB, call string, err error, code string) {
	t.Helper()
	if !client.IsCode(err, code) {
		t.Fatalf("%s = %v, want %s", call, err, code)
	}
}

// wantIs checks err against the worker's typed errors: exactly those in want match.
func wantIs(t testing.TB, call string, err error, want ...error) {
	t.Helper()
	for _, target := range []error{api.ErrLeaseLost, api.ErrJobCancelled, api.ErrFenced, api.ErrNotRegistered, api.ErrFinal} {
		if got := errors.Is(err, target); got != slices.Contains(want, target) {
			t.Errorf("%s = %v: errors.Is(%v) = %v, want %v", call, err, target, got, !got)
		}
	}
}

var jobIDForm = regexp.MustCompile(`^job_[0-9a-f]{24}$`)

var scenarios = []scenario{
	{"healthz", func(t *testing.T, s *suite) {
		var body map[string]string
		s.ok(t, http.StatusOK, "", "GET", "/healthz", "", &body)
		if body["status"] != "ok" {
			t.Fatalf("GET /healthz = %v, want {\"status\":\"ok\"}", body)
		}
		s.ok(t, http.StatusOK, "", "GET", "/readyz", "", &body)
		if body["status"] != "ready" {
			t.Fatalf("GET /readyz = %v, want {\"status\":\"ready\"}", body)
		}
	}},
	{"errors", func(t *testing.T, s *suite) {
		s.refused(t, 401, api.CodeUnauthenticated, "", "GET", "/v1/jobs", "")
		s.refused(t, 401, api.CodeUnauthenticated, api.TokenPrefix+strings.Repeat("A", 43), "GET", "/v1/jobs", "")
		s.refused(t, 401, api.CodeUnauthenticated, "not-a-token", "GET", "/v1/jobs", "")
		s.refused(t, 404, api.CodeNotFound, s.admin, "GET", "/v1/nope", "")
		s.refused(t, 404, api.CodeNotFound, s.admin, "GET", "/v2/jobs", "")
		s.refused(t, 405, api.CodeMethodNotAllowed, s.admin, "DELETE", "/v1/jobs", "")
		a := s.do(t, s.admin, "PUT", "/v1/jobs", "")
		if a.status != 405 || !strings.Contains(a.header.Get("Allow"), "POST") {
			t.Errorf("PUT /v1/jobs = %d Allow %q, want 405 with Allow naming POST", a.status, a.header.Get("Allow"))
		}
	}},
	{"submit", func(t *testing.T, s *suite) {
		before := time.Now().Add(-time.Second)
		j := s.submit(t, "")
		if !jobIDForm.MatchString(j.ID) || j.State != api.StatePendingApproval || j.HasApproval || j.Task != "echo" ||
			j.TaskVersion != "1.0.0" || j.Pool != Pool || j.Attempt != 0 || j.MaxAttempts != 3 || j.SubmittedBy == "" ||
			string(j.Input) != `{"n":1}` || j.CreatedAt.Before(before) || j.FinishedAt != nil {
			t.Fatalf("submit = %+v, want a pending_approval job_<24 hex> of echo@1.0.0 in %s, max_attempts 3", j, Pool)
		}
		if got := s.get(t, j.ID); got.ID != j.ID || got.State != j.State || string(got.Input) != `{"n":1}` {
			t.Fatalf("GET %s = %+v, want the submitted job", j.ID, got)
		}
		// The pool may be left out by a token bound to one pool; an explicit version too.
		var k api.Job
		s.ok(t, 201, s.client, "POST", "/v1/jobs", `{"task":"echo","task_version":"1.0.0","input":{"n":2},"max_attempts":100}`, &k)
		if k.Pool != Pool || k.MaxAttempts != 100 || k.ID == j.ID {
			t.Fatalf("submit without pool = %+v, want pool %s, max_attempts 100, a new id", k, Pool)
		}
		s.ok(t, 201, s.client, "POST", "/v1/jobs", submitBody(`,"max_attempts":1`), &k)
		if k.MaxAttempts != 1 {
			t.Fatalf("max_attempts 1 = %d", k.MaxAttempts)
		}
		// Admin tokens (all pools) must name the pool.
		s.refused(t, 400, api.CodeInvalidField, s.admin, "POST", "/v1/jobs", `{"task":"echo","input":{"n":1}}`)
		s.ok(t, 201, s.admin, "POST", "/v1/jobs", submitBody(""), &k)
	}},
	{"submit/refusals", func(t *testing.T, s *suite) {
		long := func(n int) string { return strings.Repeat("p", n) }
		for _, c := range []struct {
			name, who, body string
			status          int
			code            string
		}{
			{"no input", s.client, `{"task":"echo","pool":"alpha"}`, 400, api.CodeInvalidField},
			{"null input", s.client, `{"task":"echo","pool":"alpha","input":null}`, 400, api.CodeInputInvalid},
			{"bad task name", s.client, `{"task":"../x","pool":"alpha","input":{}}`, 400, api.CodeInvalidField},
			{"task starting with a digit", s.client, `{"task":"1echo","pool":"alpha","input":{}}`, 400, api.CodeInvalidField},
			{"task name 65", s.client, `{"task":"e` + strings.Repeat("c", 64) + `","pool":"alpha","input":{}}`, 400, api.CodeInvalidField},
			{"bad version", s.client, submitBody(`,"task_version":"1 0"`), 400, api.CodeInvalidField},
			{"unknown task", s.client, `{"task":"nope","pool":"alpha","input":{}}`, 400, api.CodeUnknownTask},
			{"unknown version", s.client, submitBody(`,"task_version":"9"`), 400, api.CodeUnknownTask},
			{"other pool", s.client, `{"task":"echo","pool":"beta","input":{"n":1}}`, 403, api.CodeForbidden},
			{"pool of 64", s.admin, `{"task":"echo","pool":"` + long(64) + `","input":{"n":1}}`, 400, api.CodeInvalidField},
			{"pool upper case", s.admin, `{"task":"echo","pool":"Alpha","input":{"n":1}}`, 400, api.CodeInvalidField},
			{"pool with a star", s.admin, `{"task":"echo","pool":"*","input":{"n":1}}`, 400, api.CodeInvalidField},
			{"pool starting with a dot", s.admin, `{"task":"echo","pool":".a","input":{"n":1}}`, 400, api.CodeInvalidField},
			{"pool of 63 unserved", s.admin, `{"task":"echo","pool":"` + long(63) + `","input":{"n":1}}`, 400, api.CodeUnknownTask},
			{"max_attempts 0", s.client, submitBody(`,"max_attempts":0`), 400, api.CodeInvalidField},
			{"max_attempts 101", s.client, submitBody(`,"max_attempts":101`), 400, api.CodeInvalidField},
			{"max_attempts -1", s.client, submitBody(`,"max_attempts":-1`), 400, api.CodeInvalidField},
			{"schema", s.client, `{"task":"echo","pool":"alpha","input":{"n":"one"}}`, 400, api.CodeInputInvalid},
			{"schema extra", s.client, `{"task":"echo","pool":"alpha","input":{"n":1,"m":2}}`, 400, api.CodeInputInvalid},
			{"beyond a double", s.client, `{"task":"echo","pool":"alpha","input":{"n":9007199254740993}}`, 400, api.CodeInvalidField},
			{"lone surrogate", s.client, `{"task":"echo","pool":"alpha","input":{"n":1,"s":"\ud800"}}`, 400, api.CodeInvalidField},
			{"invalid UTF-8", s.client, "{\"task\":\"echo\",\"pool\":\"alpha\",\"input\":{\"n\":1,\"s\":\"\xff\"}}", 400, api.CodeInvalidField},
			{"duplicate member", s.client, `{"task":"echo","pool":"alpha","input":{"n":1,"n":2}}`, 400, api.CodeInvalidField},
			{"bad approval", s.client, submitBody(`,"approval":"not-a-jws"`), 400, api.CodeInvalidField},
			{"idempotency key with a space", s.client, submitBody(`,"idempotency_key":"a b"`), 400, api.CodeInvalidField},
			{"idempotency key of 201", s.client, submitBody(`,"idempotency_key":"` + long(201) + `"`), 400, api.CodeInvalidField},
			{"approver submits", s.approver, submitBody(""), 403, api.CodeForbidden},
			{"input too large", s.client, `{"task":"echo","pool":"alpha","input":{"n":1,"p":"` + long(1<<20) + `"}}`, 413, api.CodeInputTooLarge},
			{"body too large", s.client, `{"task":"echo","pool":"alpha","input":{"n":1,"p":"` + long(2<<20) + `"}}`, 413, api.CodeBodyTooLarge},
		} {
			t.Run(c.name, func(t *testing.T) {
				e := s.refused(t, c.status, c.code, c.who, "POST", "/v1/jobs", c.body)
				if c.code == api.CodeInputInvalid && (len(e.Details) == 0 || e.Details[0].Location == "" && e.Details[0].Message == "") {
					t.Errorf("input_invalid without details: %+v", e)
				}
			})
		}
		var l api.JobList
		s.ok(t, 200, s.admin, "GET", "/v1/jobs", "", &l)
		if len(l.Jobs) != 0 {
			t.Fatalf("refused submits created %d jobs", len(l.Jobs))
		}
	}},
	{"submit/schema_details", func(t *testing.T, s *suite) {
		e := s.refused(t, 400, api.CodeInputInvalid, s.client, "POST", "/v1/jobs", `{"task":"echo","pool":"alpha","input":{"n":"one"}}`)
		if len(e.Details) != 1 || e.Details[0].Location != "/n" || e.Details[0].Message == "" {
			t.Fatalf("details = %+v, want one issue at /n", e.Details)
		}
	}},
	{"submit/idempotency", func(t *testing.T, s *suite) {
		j := s.submit(t, `,"idempotency_key":"order-42"`)
		if j.IdempotencyKey != "order-42" {
			t.Fatalf("idempotency_key = %q", j.IdempotencyKey)
		}
		var again api.Job
		s.ok(t, 200, s.client, "POST", "/v1/jobs", submitBody(`,"idempotency_key":"order-42"`), &again)
		if again.ID != j.ID {
			t.Fatalf("replay = %s, want %s", again.ID, j.ID)
		}
		s.refused(t, 409, api.CodeIdempotency, s.client, "POST", "/v1/jobs", `{"task":"echo","pool":"alpha","input":{"n":2},"idempotency_key":"order-42"}`)
		s.refused(t, 409, api.CodeIdempotency, s.client, "POST", "/v1/jobs", submitBody(`,"idempotency_key":"order-42","max_attempts":5`))
		// Another key is another job.
		if k := s.submit(t, `,"idempotency_key":"order-43"`); k.ID == j.ID {
			t.Fatal("a second key returned the first job")
		}
	}},
	{"approve", func(t *testing.T, s *suite) {
		j := s.submit(t, "")
		path := "/v1/jobs/" + j.ID + "/approval"
		s.refused(t, 403, api.CodeForbidden, s.client, "POST", path, `{"token":"`+FakeApproval("x")+`"}`)
		s.refused(t, 400, api.CodeInvalidField, s.approver, "POST", path, `{"token":"a.b"}`)
		s.refused(t, 400, api.CodeInvalidField, s.approver, "POST", path, `{"token":""}`)
		s.refused(t, 404, api.CodeNotFound, s.otherApprover, "POST", path, `{"token":"`+FakeApproval("x")+`"}`)
		s.refused(t, 404, api.CodeNotFound, s.approver, "POST", "/v1/jobs/job_"+strings.Repeat("0", 24)+"/approval", `{"token":"`+FakeApproval("x")+`"}`)
		if got := s.get(t, j.ID); got.State != api.StatePendingApproval {
			t.Fatalf("refused approvals moved the job to %s", got.State)
		}
		var a api.Job
		s.ok(t, 200, s.approver, "POST", path, `{"token":"`+FakeApproval("x")+`"}`, &a)
		if a.State != api.StateQueued || !a.HasApproval || a.ID != j.ID {
			t.Fatalf("approve = %s has_approval %v, want queued with an approval", a.State, a.HasApproval)
		}
		if strings.Contains(string(s.do(t, s.admin, "GET", "/v1/jobs/"+j.ID, "").raw), "signature") {
			t.Fatal("GET returns the approval itself")
		}
		s.refused(t, 409, api.CodeInvalidState, s.approver, "POST", path, `{"token":"`+FakeApproval("y")+`"}`)
		// An approval attached at submit queues at once, and the worker gets it verbatim.
		q := s.submitApproved(t, "")
		if q.State != api.StateQueued || !q.HasApproval {
			t.Fatalf("submit with approval = %s, want queued", q.State)
		}
		first := s.lease(t)
		if first.JobID != j.ID || first.Approval != FakeApproval("x") {
			t.Fatalf("leased %s with approval %q, want the oldest job %s with its approval", first.JobID, first.Approval, j.ID)
		}
	}},
	{"submitted_by_name", func(t *testing.T, s *suite) {
		// The submitting token's name is stored with the job, so that an approver (which may
		// not list tokens) can read who asked: in the submit's answer, a get and a list.
		var named, unnamed api.Token
		s.ok(t, 201, s.admin, "POST", "/v1/tokens", `{"role":"client","pool":"alpha","name":"agent-7"}`, &named)
		s.ok(t, 201, s.admin, "POST", "/v1/tokens", `{"role":"client","pool":"alpha"}`, &unnamed)
		var viaNamed, viaUnnamed, approved api.Job
		s.ok(t, 201, named.Secret, "POST", "/v1/jobs", submitBody(""), &viaNamed)
		s.ok(t, 201, unnamed.Secret, "POST", "/v1/jobs", submitBody(""), &viaUnnamed)
		s.ok(t, 201, named.Secret, "POST", "/v1/jobs", submitBody(`,"approval":"`+FakeApproval("n")+`"`), &approved)
		want := map[string]string{viaNamed.ID: "agent-7", viaUnnamed.ID: "", approved.ID: "agent-7"}
		for _, j := range []api.Job{viaNamed, viaUnnamed, approved} {
			if j.SubmittedByName != want[j.ID] || j.SubmittedBy == "" {
				t.Fatalf("submit answer %s: submitted_by %q, submitted_by_name %q, want name %q", j.ID, j.SubmittedBy, j.SubmittedByName, want[j.ID])
			}
			var got api.Job
			s.ok(t, 200, s.approver, "GET", "/v1/jobs/"+j.ID, "", &got)
			if got.SubmittedByName != want[j.ID] || got.SubmittedBy != j.SubmittedBy {
				t.Fatalf("GET %s as approver: submitted_by %q, submitted_by_name %q, want %q, %q", j.ID, got.SubmittedBy, got.SubmittedByName, j.SubmittedBy, want[j.ID])
			}
		}
		if a := s.do(t, s.approver, "GET", "/v1/jobs/"+viaUnnamed.ID, ""); bytes.Contains(a.raw, []byte("submitted_by_name")) {
			t.Fatalf("an unnamed token's job shows submitted_by_name: %s", a.raw)
		}
		var l api.JobList
		s.ok(t, 200, s.approver, "GET", "/v1/jobs?state=pending_approval", "", &l)
		seen := 0
		for _, j := range l.Jobs {
			if w, ok := want[j.ID]; ok {
				seen++
				if j.SubmittedByName != w {
					t.Fatalf("GET /v1/jobs lists %s with submitted_by_name %q, want %q", j.ID, j.SubmittedByName, w)
				}
			}
		}
		if seen != 2 {
			t.Fatalf("GET /v1/jobs?state=pending_approval = %+v, want both pending jobs", l.Jobs)
		}
	}},
	{"deny", func(t *testing.T, s *suite) {
		j := s.submit(t, "")
		path := "/v1/jobs/" + j.ID + "/deny"
		s.refused(t, 403, api.CodeForbidden, s.client, "POST", path, `{"reason":"no"}`)
		s.refused(t, 404, api.CodeNotFound, s.otherApprover, "POST", path, `{"reason":"no"}`)
		s.refused(t, 404, api.CodeNotFound, s.approver, "POST", "/v1/jobs/job_"+strings.Repeat("0", 24)+"/deny", `{"reason":"no"}`)
		for _, c := range []struct{ name, body, code string }{
			{"no reason", `{}`, api.CodeInvalidField},
			{"null reason", `{"reason":null}`, api.CodeInvalidField},
			{"empty reason", `{"reason":""}`, api.CodeInvalidField},
			{"reason of 1001 bytes", `{"reason":"` + strings.Repeat("r", 1001) + `"}`, api.CodeInvalidField},
			{"reason of 1001 bytes in 3-byte runes", `{"reason":"rr` + strings.Repeat("€", 333) + `"}`, api.CodeInvalidField},
			{"newline", `{"reason":"a\nb"}`, api.CodeInvalidField},
			{"escape", `{"reason":"a\u001b[31mb"}`, api.CodeInvalidField},
			{"NUL", `{"reason":"a\u0000b"}`, api.CodeInvalidField},
			{"DEL", `{"reason":"a\u007fb"}`, api.CodeInvalidField},
			{"C1 control", `{"reason":"a\u0085b"}`, api.CodeInvalidField},
			{"bidi override", `{"reason":"a\u202eb"}`, api.CodeInvalidField},
			{"line separator", `{"reason":"a\u2028b"}`, api.CodeInvalidField},
			{"lone surrogate", `{"reason":"a\ud800b"}`, api.CodeInvalidField},
			{"invalid UTF-8", "{\"reason\":\"a\xffb\"}", api.CodeInvalidField},
			{"number", `{"reason":1}`, api.CodeInvalidJSON},
			{"array", `{"reason":["no"]}`, api.CodeInvalidJSON},
			{"unknown field", `{"reason":"no","by":"x"}`, api.CodeUnknownField},
			{"no body", ``, api.CodeInvalidJSON},
		} {
			t.Run(c.name, func(t *testing.T) { s.refused(t, 400, c.code, s.approver, "POST", path, c.body) })
		}
		if got := s.get(t, j.ID); got.State != api.StatePendingApproval {
			t.Fatalf("refused denies moved the job to %s", got.State)
		}
		reason := "refunds over 500 € need a ticket"
		var d api.Job
		s.ok(t, 200, s.approver, "POST", path, `{"reason":"`+reason+`"}`, &d)
		if d.ID != j.ID || d.State != api.StateDenied || d.Outcome != api.OutcomeDeniedByApprover || d.ErrorMessage != reason ||
			d.DeniedBy != "approver" || d.FinishedAt == nil || d.HasApproval {
			t.Fatalf("deny = %+v, want denied (denied_by_approver) by approver with the reason", d)
		}
		if !d.State.Terminal() {
			t.Fatal("denied is not terminal")
		}
		s.refused(t, 409, api.CodeInvalidState, s.approver, "POST", path, `{"reason":"again"}`)
		s.refused(t, 409, api.CodeInvalidState, s.approver, "POST", "/v1/jobs/"+j.ID+"/approval", `{"token":"`+FakeApproval("x")+`"}`)
		s.refused(t, 409, api.CodeInvalidState, s.client, "POST", "/v1/jobs/"+j.ID+"/cancel", "")
		var w api.Job
		s.ok(t, 200, s.client, "GET", "/v1/jobs/"+j.ID+"/wait?timeout=30", "", &w)
		if w.State != api.StateDenied || w.DeniedBy != "approver" || w.ErrorMessage != reason {
			t.Fatalf("wait = %+v, want denied at once", w)
		}
		if g := s.get(t, j.ID); g.State != api.StateDenied || g.DeniedBy != "approver" || g.ErrorMessage != reason || g.Outcome != api.OutcomeDeniedByApprover {
			t.Fatalf("GET = %+v, want denied", g)
		}
		var l api.JobList
		s.ok(t, 200, s.client, "GET", "/v1/jobs?state=denied", "", &l)
		if len(l.Jobs) != 1 || l.Jobs[0].ID != j.ID || l.Jobs[0].DeniedBy != "approver" {
			t.Fatalf("state=denied lists %+v, want the denied job", l.Jobs)
		}
		// Only a pending job: a queued one is refused, and an admin may deny too.
		q := s.submitApproved(t, "")
		s.refused(t, 409, api.CodeInvalidState, s.approver, "POST", "/v1/jobs/"+q.ID+"/deny", `{"reason":"late"}`)
		k := s.submit(t, "")
		s.ok(t, 200, s.admin, "POST", "/v1/jobs/"+k.ID+"/deny", `{"reason":"no"}`, &d)
		if d.State != api.StateDenied || d.DeniedBy != "admin" {
			t.Fatalf("admin deny = %s by %q, want denied by admin", d.State, d.DeniedBy)
		}
		// Nothing reached the worker: it leases the queued job and nothing else.
		if lj := s.lease(t); lj.JobID != q.ID {
			t.Fatalf("leased %s, want the approved job %s", lj.JobID, q.ID)
		}
		jobs, err := s.Worker.Lease(t.Context(), 1, time.Second)
		if err != nil || len(jobs) != 0 {
			t.Fatalf("Lease() after the denies = %d jobs, %v; want none", len(jobs), err)
		}
	}},
	{"lease/succeed", func(t *testing.T, s *suite) {
		j := s.submitApproved(t, `,"max_attempts":2`)
		lj := s.lease(t)
		if lj.JobID != j.ID || lj.Task != "echo" || lj.TaskVersion != "1.0.0" || lj.Pool != Pool || string(lj.Input) != `{"n":1}` ||
			lj.Attempt != 1 || lj.MaxAttempts != 2 || lj.LeaseToken == "" || !lj.LeaseExpiresAt.After(time.Now()) {
			t.Fatalf("leased %+v, want attempt 1 of 2 of %s", lj, j.ID)
		}
		if got := s.get(t, j.ID); got.State != api.StateRunning || got.Attempt != 1 {
			t.Fatalf("leased job is %s attempt %d, want running attempt 1", got.State, got.Attempt)
		}
		hb, err := s.Worker.Heartbeat(t.Context(), lj.LeaseToken)
		if err != nil || hb.JobID != j.ID || hb.CancelRequested || !hb.LeaseExpiresAt.After(time.Now()) {
			t.Fatalf("Heartbeat() = %+v, %v", hb, err)
		}
		_, err = s.Worker.Heartbeat(t.Context(), "lease_bogus")
		wantCode(t, "Heartbeat(unknown lease)", err, api.CodeLeaseLost)
		wantIs(t, "Heartbeat(unknown lease)", err, api.ErrLeaseLost, api.ErrFinal)
		wrong := complete(lj, "ok", nil)
		wrong.Attempt = 2
		_, err = s.Worker.Complete(t.Context(), j.ID, wrong)
		wantCode(t, "Complete(wrong attempt)", err, api.CodeLeaseConflict)
		wantIs(t, "Complete(wrong attempt)", err, api.ErrFenced, api.ErrFinal)
		wrong = complete(lj, "ok", nil)
		wrong.LeaseToken = "lease_" + strings.Repeat("A", 43)
		_, err = s.Worker.Complete(t.Context(), j.ID, wrong)
		wantCode(t, "Complete(wrong lease token)", err, api.CodeLeaseConflict)
		other := s.submit(t, "")
		_, err = s.Worker.Complete(t.Context(), other.ID, complete(lj, "ok", nil))
		wantCode(t, "Complete(another job's id)", err, api.CodeLeaseConflict)

		req := complete(lj, "ok", nil)
		req.Output = json.RawMessage(`{"n": 1}`)
		resp, err := s.Worker.Complete(t.Context(), j.ID, req)
		if err != nil || resp.JobID != j.ID || resp.State != api.StateSucceeded || resp.Attempt != 1 || resp.NotBefore != nil {
			t.Fatalf("Complete(ok) = %+v, %v, want succeeded", resp, err)
		}
		done := s.waitState(t, j.ID, api.StateSucceeded)
		if string(done.Output) != `{"n":1}` || done.Outcome != "ok" || done.FinishedAt == nil || done.Attempt != 1 ||
			done.DurationMS != 3 || done.ModuleDigest != "sha256:test" {
			t.Fatalf("succeeded job = %+v", done)
		}
		_, err = s.Worker.Complete(t.Context(), j.ID, req)
		wantCode(t, "Complete(again)", err, api.CodeLeaseConflict)
		wantIs(t, "Complete(again)", err, api.ErrFenced, api.ErrFinal)
		_, err = s.Worker.Heartbeat(t.Context(), lj.LeaseToken)
		wantCode(t, "Heartbeat(finished)", err, api.CodeLeaseLost)
		wantIs(t, "Heartbeat(finished)", err, api.ErrLeaseLost, api.ErrFinal)
	}},
	{"lease/retry", func(t *testing.T, s *suite) {
		j := s.submitApproved(t, `,"max_attempts":2`)
		lj := s.lease(t)
		before := time.Now()
		resp, err := s.Worker.Complete(t.Context(), j.ID, complete(lj, "timeout", nil))
		after := time.Now()
		if err != nil || resp.State != api.StateQueued || resp.NotBefore == nil {
			t.Fatalf("Complete(timeout, attempt 1 of 2) = %+v, %v, want queued with not_before", resp, err)
		}
		// Full jitter: uniform in [0, 1 s × 2^(attempt−1)), so strictly under 1 s after.
		if resp.NotBefore.Before(before.Add(-time.Millisecond)) || !resp.NotBefore.Before(after.Add(time.Second)) {
			t.Fatalf("not_before = %s after the completion, want in [0, 1s)", resp.NotBefore.Sub(before))
		}
		s.waitState(t, j.ID, api.StateQueued)
		lj2 := s.lease(t)
		if lj2.JobID != j.ID || lj2.Attempt != 2 || lj2.LeaseToken == lj.LeaseToken {
			t.Fatalf("second lease = %s attempt %d, want %s attempt 2 with a new lease", lj2.JobID, lj2.Attempt, j.ID)
		}
		_, err = s.Worker.Complete(t.Context(), j.ID, complete(lj, "ok", nil))
		wantCode(t, "Complete(the superseded attempt)", err, api.CodeLeaseConflict)
		resp, err = s.Worker.Complete(t.Context(), j.ID, complete(lj2, "internal", nil))
		if err != nil || resp.State != api.StateDead || resp.NotBefore != nil {
			t.Fatalf("Complete(internal, attempt 2 of 2) = %+v, %v, want dead", resp, err)
		}
		if d := s.waitState(t, j.ID, api.StateDead); d.Outcome != "internal" || d.FinishedAt == nil || d.Attempt != 2 {
			t.Fatalf("dead job = %+v", d)
		}
	}},
	{"lease/expiry", func(t *testing.T, s *suite) {
		// A lease that expires without a completion counts its attempt; the job runs
		// again, and once no attempt is left it is dead with outcome timeout.
		j := s.submitApproved(t, `,"max_attempts":2`)
		first := s.lease(t)
		if first.JobID != j.ID || first.Attempt != 1 {
			t.Fatalf("leased %s attempt %d", first.JobID, first.Attempt)
		}
		second := s.lease(t) // comes once the first lease expired
		if second.JobID != j.ID || second.Attempt != 2 || second.LeaseToken == first.LeaseToken {
			t.Fatalf("after the expiry leased %s attempt %d, want %s attempt 2", second.JobID, second.Attempt, j.ID)
		}
		_, err := s.Worker.Complete(t.Context(), j.ID, complete(first, "ok", nil))
		wantIs(t, "Complete(the expired lease)", err, api.ErrFenced, api.ErrFinal)
		deadline := time.Now().Add(20 * time.Second)
		for {
			// Keep asking: over JetStream the exhausted job is declared dead when its
			// message is delivered again.
			jobs, err := s.Worker.Lease(t.Context(), 1, 200*time.Millisecond)
			if err != nil || len(jobs) != 0 {
				t.Fatalf("Lease() = %d jobs, %v; want none (attempts used up)", len(jobs), err)
			}
			if got := s.get(t, j.ID); got.State == api.StateDead {
				if got.Outcome != "timeout" || got.ErrorMessage == "" || got.FinishedAt == nil || got.Attempt != 2 {
					t.Fatalf("dead job = outcome %q error %q attempt %d, want timeout with a message after attempt 2",
						got.Outcome, got.ErrorMessage, got.Attempt)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s never became dead: %+v", j.ID, s.get(t, j.ID))
			}
		}
	}},
	{"lease/retry_jitter", func(t *testing.T, s *suite) {
		// Full jitter: each first retry waits uniformly in [0, 1 s). Without jitter every
		// one waits 1 s; with it, all five at 0.9 s or more has a chance of 1e-5.
		var ids []string
		for range 5 {
			ids = append(ids, s.submitApproved(t, `,"max_attempts":2`).ID)
		}
		var leased []api.LeasedJob
		for range ids {
			leased = append(leased, s.lease(t))
		}
		var delays []time.Duration
		for _, lj := range leased {
			before := time.Now()
			resp, err := s.Worker.Complete(t.Context(), lj.JobID, complete(lj, "timeout", nil))
			if err != nil || resp.NotBefore == nil {
				t.Fatalf("Complete(timeout) = %+v, %v", resp, err)
			}
			delays = append(delays, resp.NotBefore.Sub(before))
		}
		short := 0
		for _, d := range delays {
			if d < -time.Millisecond || d > 2*time.Second {
				t.Fatalf("retry delays %v: want each in [0, 1s)", delays)
			}
			if d < 900*time.Millisecond {
				short++
			}
		}
		if short == 0 {
			t.Fatalf("retry delays %v: none under 0.9s, want full jitter under 1s", delays)
		}
	}},
	{"lease/retry_not_before", func(t *testing.T, s *suite) {
		j := s.submitApproved(t, `,"max_attempts":3`)
		lj := s.lease(t)
		if _, err := s.Worker.Complete(t.Context(), j.ID, complete(lj, "timeout", nil)); err != nil {
			t.Fatal(err)
		}
		q := s.eventually(t, j.ID, "queued with not_before", func(j api.Job) bool { return j.State == api.StateQueued })
		if q.NotBefore == nil || q.Outcome != "timeout" || q.Attempt != 1 {
			t.Fatalf("requeued job = %+v, want not_before, outcome timeout, attempt 1", q)
		}
	}},
	{"lease/final", func(t *testing.T, s *suite) {
		yes, no := true, false
		for _, c := range []struct {
			code      string
			retryable *bool
			want      api.State
		}{
			{"task_error", nil, api.StateFailed},
			{"timeout", &no, api.StateFailed},
			{"task_error", &yes, api.StateDead}, // retryable, but max_attempts 1
			{"internal", nil, api.StateDead},
			{"rejected", nil, api.StateRejected},
			{"denied", nil, api.StateFailed},
		} {
			j := s.submitApproved(t, `,"max_attempts":1`)
			lj := s.lease(t)
			resp, err := s.Worker.Complete(t.Context(), j.ID, complete(lj, c.code, c.retryable))
			if err != nil || resp.State != c.want {
				t.Fatalf("Complete(%s, retryable %v) = %s, %v, want %s", c.code, c.retryable, resp.State, err, c.want)
			}
			if got := s.waitState(t, j.ID, c.want); got.Outcome != c.code || got.ErrorMessage != errMsg(c.code) {
				t.Fatalf("%s job = outcome %q error %q", c.want, got.Outcome, got.ErrorMessage)
			}
		}
	}},
	{"cancel", func(t *testing.T, s *suite) {
		cancel := func(id string) api.Job {
			t.Helper()
			var j api.Job
			s.ok(t, 200, s.client, "POST", "/v1/jobs/"+id+"/cancel", "", &j)
			return j
		}
		p := s.submit(t, "")
		s.refused(t, 404, api.CodeNotFound, s.otherClient, "POST", "/v1/jobs/"+p.ID+"/cancel", "")
		s.refused(t, 403, api.CodeForbidden, s.approver, "POST", "/v1/jobs/"+p.ID+"/cancel", "")
		if c := cancel(p.ID); c.State != api.StateCancelled || c.FinishedAt == nil {
			t.Fatalf("cancel(pending_approval) = %s, want cancelled", c.State)
		}
		s.refused(t, 409, api.CodeInvalidState, s.client, "POST", "/v1/jobs/"+p.ID+"/cancel", "")
		s.refused(t, 409, api.CodeInvalidState, s.approver, "POST", "/v1/jobs/"+p.ID+"/approval", `{"token":"`+FakeApproval("x")+`"}`)
		q := s.submitApproved(t, "")
		if c := cancel(q.ID); c.State != api.StateCancelled {
			t.Fatalf("cancel(queued) = %s, want cancelled", c.State)
		}
		if got := s.get(t, q.ID); got.State != api.StateCancelled {
			t.Fatalf("cancelled queued job reads %s", got.State)
		}
		// A running job is asked to stop; its worker learns it from the heartbeat, and its
		// completion ends the job cancelled.
		r := s.submitApproved(t, "")
		lj := s.lease(t)
		if lj.JobID != r.ID {
			t.Fatalf("leased %s, want %s (a cancelled job was leased)", lj.JobID, r.ID)
		}
		if c := cancel(r.ID); c.State != api.StateCancelRequested {
			t.Fatalf("cancel(running) = %s, want cancel_requested", c.State)
		}
		if c := cancel(r.ID); c.State != api.StateCancelRequested {
			t.Fatalf("cancel(cancel_requested) = %s, want cancel_requested unchanged", c.State)
		}
		hb, err := s.Worker.Heartbeat(t.Context(), lj.LeaseToken)
		if err != nil || !hb.CancelRequested {
			t.Fatalf("Heartbeat(after cancel) = %+v, %v, want cancel_requested", hb, err)
		}
		resp, err := s.Worker.Complete(t.Context(), r.ID, complete(lj, "cancelled", nil))
		if err != nil || resp.State != api.StateCancelled {
			t.Fatalf("Complete(cancel requested) = %+v, %v, want cancelled", resp, err)
		}
		if got := s.waitState(t, r.ID, api.StateCancelled); got.FinishedAt == nil {
			t.Fatalf("cancelled job has no finished_at")
		}
		s.refused(t, 409, api.CodeInvalidState, s.client, "POST", "/v1/jobs/"+r.ID+"/cancel", "")
	}},
	{"cancel/requeued", func(t *testing.T, s *suite) {
		j := s.submitApproved(t, `,"max_attempts":3`)
		lj := s.lease(t)
		if _, err := s.Worker.Complete(t.Context(), j.ID, complete(lj, "timeout", nil)); err != nil {
			t.Fatal(err)
		}
		s.waitState(t, j.ID, api.StateQueued)
		var c api.Job
		s.ok(t, 200, s.client, "POST", "/v1/jobs/"+j.ID+"/cancel", "", &c)
		if c.State != api.StateCancelled {
			t.Fatalf("cancel(queued for a retry) = %s, want cancelled", c.State)
		}
		// Nothing is leased any more: the cancelled job never runs again.
		jobs, err := s.Worker.Lease(t.Context(), 1, 2*time.Second)
		if err != nil || len(jobs) != 0 {
			t.Fatalf("Lease() after the cancel = %d jobs, %v; want none", len(jobs), err)
		}
		if got := s.get(t, j.ID); got.State != api.StateCancelled {
			t.Fatalf("job is %s, want cancelled", got.State)
		}
	}},
	{"wait", func(t *testing.T, s *suite) {
		j := s.submitApproved(t, "")
		path := "/v1/jobs/" + j.ID + "/wait"
		var now api.Job
		s.ok(t, 200, s.client, "GET", path+"?timeout=0", "", &now)
		if now.State != api.StateQueued {
			t.Fatalf("wait timeout=0 = %s, want queued at once", now.State)
		}
		s.refused(t, 400, api.CodeInvalidField, s.client, "GET", path+"?timeout=61", "")
		s.refused(t, 400, api.CodeInvalidField, s.client, "GET", path+"?timeout=-1", "")
		s.refused(t, 400, api.CodeInvalidField, s.client, "GET", path+"?timeout=x", "")
		s.refused(t, 400, api.CodeUnknownField, s.client, "GET", path+"?timeout=1&x=1", "")
		s.refused(t, 404, api.CodeNotFound, s.otherClient, "GET", path+"?timeout=0", "")
		lj := s.lease(t)
		type res struct {
			j   api.Job
			a   answer
			dur time.Duration
		}
		got := make(chan res, 1)
		parked := time.Now()
		go func() {
			a := s.do(t, s.client, "GET", path+"?timeout=30", "")
			var w api.Job
			_ = json.Unmarshal(a.raw, &w)
			got <- res{w, a, time.Since(parked)}
		}()
		for deadline := time.Now().Add(20 * time.Second); s.Waiters() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the wait never parked")
			}
		}
		if _, err := s.Worker.Complete(t.Context(), j.ID, complete(lj, "ok", nil)); err != nil {
			t.Fatal(err)
		}
		r := <-got
		if r.a.status != 200 || r.j.State != api.StateSucceeded {
			t.Fatalf("wait = %d %s, want 200 succeeded", r.a.status, r.a.raw)
		}
		if r.dur > 20*time.Second {
			t.Fatalf("wait returned after %s, not at the transition", r.dur)
		}
	}},
	{"get_list", func(t *testing.T, s *suite) {
		var ids []string
		for range 3 {
			ids = append(ids, s.submit(t, "").ID)
		}
		s.refused(t, 400, api.CodeUnknownField, s.client, "GET", "/v1/jobs/"+ids[0]+"?x=1", "")
		s.refused(t, 404, api.CodeNotFound, s.otherClient, "GET", "/v1/jobs/"+ids[0], "")
		var page api.JobList
		s.ok(t, 200, s.client, "GET", "/v1/jobs?limit=2", "", &page)
		if len(page.Jobs) != 2 || page.Jobs[0].ID != ids[2] || page.Jobs[1].ID != ids[1] || page.NextCursor == "" {
			t.Fatalf("page 1 = %d jobs, cursor %q, want the newest two and a cursor", len(page.Jobs), page.NextCursor)
		}
		for _, j := range page.Jobs {
			if j.Input != nil || j.Output != nil {
				t.Fatalf("listed job carries input/output")
			}
		}
		var page2 api.JobList
		s.ok(t, 200, s.client, "GET", "/v1/jobs?limit=2&cursor="+page.NextCursor, "", &page2)
		if len(page2.Jobs) != 1 || page2.Jobs[0].ID != ids[0] || page2.NextCursor != "" {
			t.Fatalf("page 2 = %d jobs, cursor %q, want the oldest and no cursor", len(page2.Jobs), page2.NextCursor)
		}
		var none api.JobList
		s.ok(t, 200, s.otherClient, "GET", "/v1/jobs", "", &none)
		if len(none.Jobs) != 0 {
			t.Fatalf("a client of pool %s lists %d jobs of %s", Other, len(none.Jobs), Pool)
		}
		s.ok(t, 200, s.client, "GET", "/v1/jobs?state=queued", "", &none)
		if len(none.Jobs) != 0 {
			t.Fatalf("state=queued lists %d pending jobs", len(none.Jobs))
		}
		var pending api.JobList
		s.ok(t, 200, s.approver, "GET", "/v1/jobs?state=pending_approval&task=echo&pool=alpha", "", &pending)
		if len(pending.Jobs) != 3 {
			t.Fatalf("state=pending_approval lists %d jobs, want 3", len(pending.Jobs))
		}
		s.refused(t, 403, api.CodeForbidden, s.client, "GET", "/v1/jobs?pool=beta", "")
		s.refused(t, 400, api.CodeInvalidField, s.client, "GET", "/v1/jobs?state=done", "")
		s.refused(t, 400, api.CodeInvalidField, s.client, "GET", "/v1/jobs?limit=0", "")
		s.refused(t, 400, api.CodeInvalidField, s.client, "GET", "/v1/jobs?limit=501", "")
		s.refused(t, 400, api.CodeInvalidField, s.client, "GET", "/v1/jobs?cursor=abc", "")
		s.refused(t, 400, api.CodeUnknownField, s.client, "GET", "/v1/jobs?sate=queued", "")
	}},
	{"list/wait", func(t *testing.T, s *suite) {
		for _, v := range []string{"61", "-1", "x", "1.5"} {
			s.refused(t, 400, api.CodeInvalidField, s.approver, "GET", "/v1/jobs?wait_seconds="+v, "")
		}
		var l api.JobList
		s.ok(t, 200, s.approver, "GET", "/v1/jobs?state=pending_approval&wait_seconds=0", "", &l)
		if len(l.Jobs) != 0 {
			t.Fatalf("list = %d jobs, want none", len(l.Jobs))
		}
		// An empty page waits out wait_seconds and answers empty.
		start := time.Now()
		s.ok(t, 200, s.approver, "GET", "/v1/jobs?state=pending_approval&wait_seconds=1", "", &l)
		if len(l.Jobs) != 0 || time.Since(start) < 900*time.Millisecond {
			t.Fatalf("list wait_seconds=1 = %d jobs after %s, want none after about 1s", len(l.Jobs), time.Since(start))
		}
		// A parked list answers when a matching job is created; a job that does not
		// match (queued) does not end the wait with an empty page.
		c, err := client.New(s.URL, s.approver)
		if err != nil {
			t.Fatal(err)
		}
		type res struct {
			l   api.JobList
			err error
			dur time.Duration
		}
		got := make(chan res, 1)
		parked := time.Now()
		go func() {
			l, err := c.List(context.Background(), client.ListOptions{State: api.StatePendingApproval, Pool: Pool, Wait: 30 * time.Second})
			got <- res{l, err, time.Since(parked)}
		}()
		for deadline := time.Now().Add(20 * time.Second); s.Waiters() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the list never parked")
			}
		}
		s.submitApproved(t, "")
		j := s.submit(t, "")
		r := <-got
		if r.err != nil || len(r.l.Jobs) != 1 || r.l.Jobs[0].ID != j.ID || r.l.Jobs[0].State != api.StatePendingApproval {
			t.Fatalf("parked list = %+v, %v, want the new pending job %s", r.l.Jobs, r.err, j.ID)
		}
		if r.dur > 20*time.Second {
			t.Fatalf("the list answered after %s, not at the submit", r.dur)
		}
		// A page that has jobs answers at once, whatever the wait.
		start = time.Now()
		s.ok(t, 200, s.approver, "GET", "/v1/jobs?state=pending_approval&wait_seconds=60", "", &l)
		if len(l.Jobs) != 1 || time.Since(start) > 20*time.Second {
			t.Fatalf("list of a non-empty page = %d jobs after %s, want 1 at once", len(l.Jobs), time.Since(start))
		}
	}},
	{"tokens", func(t *testing.T, s *suite) {
		var list api.TokenList
		s.ok(t, 200, s.admin, "GET", "/v1/tokens", "", &list)
		if len(list.Tokens) < 5 {
			t.Fatalf("GET /v1/tokens lists %d tokens, want at least the suite's 5", len(list.Tokens))
		}
		for _, tok := range list.Tokens {
			if tok.Secret != "" || !strings.HasPrefix(tok.ID, "tok_") || tok.CreatedAt.IsZero() {
				t.Fatalf("listed token %+v: want an id, a creation time and no secret", tok)
			}
		}
		for _, who := range []string{s.client, s.approver} {
			s.refused(t, 403, api.CodeForbidden, who, "GET", "/v1/tokens", "")
			s.refused(t, 403, api.CodeForbidden, who, "DELETE", "/v1/tokens/tok_x", "")
			s.refused(t, 403, api.CodeForbidden, who, "GET", "/v1/workers/x/audit-head", "")
		}
		victim := s.NewToken(t, api.RoleClient, Pool)
		s.ok(t, 200, victim.Secret, "GET", "/v1/jobs", "", nil)
		if a := s.do(t, s.admin, "DELETE", "/v1/tokens/"+victim.ID, ""); a.status != 204 {
			t.Fatalf("DELETE /v1/tokens/%s = %d %s, want 204", victim.ID, a.status, a.raw)
		}
		s.refused(t, 401, api.CodeUnauthenticated, victim.Secret, "GET", "/v1/jobs", "")
		s.refused(t, 404, api.CodeNotFound, s.admin, "DELETE", "/v1/tokens/"+victim.ID, "")
		s.refused(t, 404, api.CodeNotFound, s.admin, "DELETE", "/v1/tokens/tok_nope", "")
		s.refused(t, 400, api.CodeUnknownField, s.admin, "DELETE", "/v1/tokens/tok_nope?force=1", "")
		s.refused(t, 400, api.CodeUnknownField, s.admin, "GET", "/v1/tokens?role=client", "")
		s.ok(t, 200, s.admin, "GET", "/v1/tokens", "", &list)
		for _, tok := range list.Tokens {
			if tok.ID == victim.ID && tok.RevokedAt == nil {
				t.Fatalf("the revoked token is listed without revoked_at")
			}
		}
	}},
	{"tokens/ttl", func(t *testing.T, s *suite) {
		tok := s.NewTokenTTL(t, api.RoleClient, Pool, time.Hour)
		if tok.ExpiresAt == nil || tok.ExpiresAt.Sub(tok.CreatedAt) != time.Hour {
			t.Fatalf("created %+v, want expires_at one hour after created_at", tok)
		}
		s.ok(t, 200, tok.Secret, "GET", "/v1/jobs", "", nil)
		var list api.TokenList
		s.ok(t, 200, s.admin, "GET", "/v1/tokens", "", &list)
		found := false
		for _, l := range list.Tokens {
			if l.ID == tok.ID {
				found = l.ExpiresAt != nil && l.ExpiresAt.Equal(*tok.ExpiresAt)
			} else if l.ExpiresAt != nil {
				t.Errorf("token %s without a TTL is listed with expires_at %v", l.ID, l.ExpiresAt)
			}
		}
		if !found {
			t.Fatalf("GET /v1/tokens = %+v, want %s with expires_at %v", list.Tokens, tok.ID, tok.ExpiresAt)
		}
		s.Clock.Advance(59 * time.Minute)
		s.ok(t, 200, tok.Secret, "GET", "/v1/jobs", "", nil)
		s.Clock.Advance(time.Minute)
		// Expired exactly at expires_at, on every route, with a message that says so.
		for _, r := range []struct{ method, path, body string }{
			{"GET", "/v1/jobs", ""}, {"POST", "/v1/jobs", submitBody("")}, {"GET", "/v1/catalog", ""},
		} {
			e := s.refused(t, 401, api.CodeUnauthenticated, tok.Secret, r.method, r.path, r.body)
			if !strings.Contains(e.Message, "expired") || !strings.Contains(e.Message, tok.ID) {
				t.Errorf("%s %s with an expired token: message %q, want it to say %s expired", r.method, r.path, e.Message, tok.ID)
			}
		}
		// Tokens without a TTL are untouched by time.
		s.Clock.Advance(100 * 24 * time.Hour)
		s.ok(t, 200, s.client, "GET", "/v1/jobs", "", nil)
		s.ok(t, 200, s.admin, "GET", "/v1/tokens", "", nil)
		// An unknown token is still "unknown", not "expired".
		unknown := api.TokenPrefix + strings.Repeat("A", 43)
		if e := s.refused(t, 401, api.CodeUnauthenticated, unknown, "GET", "/v1/jobs", ""); strings.Contains(e.Message, "expired") {
			t.Errorf("an unknown token's refusal says %q", e.Message)
		}
	}},
	{"whoami", func(t *testing.T, s *suite) {
		ttl := s.NewTokenTTL(t, api.RoleApprover, Pool, 2*time.Hour)
		who := []api.Token{s.NewToken(t, api.RoleClient, Pool), s.NewToken(t, api.RoleAdmin, api.AllPools), ttl}
		if s.HTTPWorkers {
			who = append(who, s.NewToken(t, api.RoleWorker, Pool))
		}
		for _, tok := range who {
			var got api.Token
			s.ok(t, 200, tok.Secret, "GET", "/v1/whoami", "", &got)
			want := tok
			want.Secret = ""
			if got.ID != want.ID || got.Role != want.Role || got.Pool != want.Pool || got.Name != want.Name ||
				!got.CreatedAt.Equal(want.CreatedAt) || (got.ExpiresAt == nil) != (want.ExpiresAt == nil) ||
				(got.ExpiresAt != nil && !got.ExpiresAt.Equal(*want.ExpiresAt)) || got.Secret != "" || got.RevokedAt != nil {
				t.Errorf("GET /v1/whoami as %s = %+v, want %+v", tok.Role, got, want)
			}
			c, err := client.New(s.URL, tok.Secret)
			if err != nil {
				t.Fatal(err)
			}
			if ct, err := c.Whoami(t.Context()); err != nil || ct.ID != tok.ID || ct.Secret != "" {
				t.Errorf("Client.Whoami() as %s = %+v, %v", tok.Role, ct, err)
			}
		}
		s.refused(t, 401, api.CodeUnauthenticated, "", "GET", "/v1/whoami", "")
		s.refused(t, 400, api.CodeUnknownField, s.client, "GET", "/v1/whoami?id=x", "")
		s.Clock.Advance(2 * time.Hour)
		s.refused(t, 401, api.CodeUnauthenticated, ttl.Secret, "GET", "/v1/whoami", "")
	}},
	{"workers", func(t *testing.T, s *suite) {
		var l api.WorkerList
		s.ok(t, 200, s.admin, "GET", "/v1/workers", "", &l)
		if len(l.Workers) != 2 || l.OnlineWindowSeconds < 90 {
			t.Fatalf("GET /v1/workers = %+v, want the backend's two workers and a window of at least 90 s", l)
		}
		served := 0
		for _, w := range l.Workers {
			if w.Pool != Pool || !w.Online || w.Version != "test" || w.Name == "" || w.ID == "" || w.RegisteredAt == nil ||
				time.Since(w.LastSeenAt) > time.Minute || w.Tasks == nil {
				t.Errorf("listed worker %+v: want an online worker of %s, version test, seen just now", w, Pool)
			}
			if slices.Equal(w.Tasks, []string{"echo@1.0.0"}) {
				served++
			}
		}
		if served != 1 {
			t.Errorf("GET /v1/workers = %+v, want one worker serving echo@1.0.0 (the other published nothing)", l.Workers)
		}
		var mine api.WorkerList
		s.ok(t, 200, s.approver, "GET", "/v1/workers", "", &mine)
		if len(mine.Workers) != 2 {
			t.Errorf("GET /v1/workers as %s's approver = %d workers, want 2", Pool, len(mine.Workers))
		}
		s.ok(t, 200, s.otherApprover, "GET", "/v1/workers", "", &mine)
		if len(mine.Workers) != 0 {
			t.Errorf("GET /v1/workers as %s's approver = %+v, want none (no worker serves %s)", Other, mine.Workers, Other)
		}
		s.ok(t, 200, s.admin, "GET", "/v1/workers?pool="+Other, "", &mine)
		if len(mine.Workers) != 0 {
			t.Errorf("GET /v1/workers?pool=%s = %+v, want none", Other, mine.Workers)
		}
		s.refused(t, 403, api.CodeForbidden, s.otherApprover, "GET", "/v1/workers?pool="+Pool, "")
		s.refused(t, 403, api.CodeForbidden, s.client, "GET", "/v1/workers", "")
		s.refused(t, 400, api.CodeUnknownField, s.admin, "GET", "/v1/workers?online=1", "")
		s.refused(t, 400, api.CodeInvalidField, s.admin, "GET", "/v1/workers?pool=No!", "")
		// Past the window without a lease or heartbeat, both are offline (and still listed).
		s.Clock.Advance(time.Duration(l.OnlineWindowSeconds)*time.Second + time.Minute)
		s.ok(t, 200, s.admin, "GET", "/v1/workers", "", &l)
		if len(l.Workers) != 2 || l.Workers[0].Online || l.Workers[1].Online {
			t.Fatalf("GET /v1/workers after the window = %+v, want both listed offline", l.Workers)
		}
		if s.HTTPWorkers {
			// A lease is a sign of life: that worker is online again.
			if _, err := s.Worker.Lease(t.Context(), 1, 0); err != nil {
				t.Fatal(err)
			}
			s.ok(t, 200, s.admin, "GET", "/v1/workers", "", &l)
			if !l.Workers[0].Online || l.Workers[1].Online || !slices.Equal(l.Workers[0].Tasks, []string{"echo@1.0.0"}) {
				t.Fatalf("GET /v1/workers after a lease = %+v, want the leasing worker online and first", l.Workers)
			}
		}
	}},
	{"registration", func(t *testing.T, s *suite) {
		var reg api.Token
		s.ok(t, 201, s.admin, "POST", "/v1/tokens", `{"role":"registration","pool":"alpha","name":"dc2","ttl_seconds":3600}`, &reg)
		if reg.Role != api.RoleRegistration || reg.ExpiresAt == nil {
			t.Fatalf("POST /v1/tokens role registration = %+v", reg)
		}
		// Its only power is the exchange.
		for _, r := range []struct{ method, path, body string }{
			{"GET", "/v1/jobs", ""}, {"POST", "/v1/jobs", submitBody("")}, {"GET", "/v1/catalog", ""}, {"GET", "/v1/whoami", ""},
			{"POST", "/v1/workers/register", `{"name":"x"}`}, {"POST", "/v1/lease", `{"max":1,"wait_seconds":0}`},
			{"PUT", "/v1/catalog", `{"tasks":[]}`}, {"GET", "/v1/tokens", ""}, {"POST", "/v1/tokens", `{"role":"worker","pool":"alpha"}`},
			{"GET", "/v1/audit", ""}, {"GET", "/v1/workers", ""},
		} {
			s.refused(t, 403, api.CodeForbidden, reg.Secret, r.method, r.path, r.body)
		}
		worker := s.NewToken(t, api.RoleWorker, Pool).Secret
		for _, who := range []string{s.client, s.approver, s.admin, worker} {
			s.refused(t, 403, api.CodeForbidden, who, "POST", "/v1/register/exchange", `{"name":"w"}`)
		}
		s.refused(t, 400, api.CodeInvalidField, reg.Secret, "POST", "/v1/register/exchange", `{"name":""}`)
		s.refused(t, 400, api.CodeUnknownField, reg.Secret, "POST", "/v1/register/exchange", `{"name":"w","pool":"beta"}`)
		// Short-lived, one pool, and never of another pool's worker.
		s.refused(t, 400, api.CodeInvalidField, s.admin, "POST", "/v1/tokens", `{"role":"registration","pool":"alpha"}`)
		s.refused(t, 400, api.CodeInvalidField, s.admin, "POST", "/v1/tokens", `{"role":"registration","pool":"alpha","ttl_seconds":604800}`)
		s.refused(t, 400, api.CodeInvalidField, s.admin, "POST", "/v1/tokens", `{"role":"registration","pool":"*","ttl_seconds":60}`)

		var w api.Token
		s.ok(t, 201, reg.Secret, "POST", "/v1/register/exchange", `{"name":"dc2-w7"}`, &w)
		if w.Role != api.RoleWorker || w.Pool != Pool || w.Name != "dc2-w7" || !strings.HasPrefix(w.Secret, api.TokenPrefix) || w.ExpiresAt != nil {
			t.Fatalf("exchange = %+v, want a lasting worker token of %s named dc2-w7", w, Pool)
		}
		s.ok(t, 200, w.Secret, "POST", "/v1/workers/register", `{"name":"dc2-w7","agent_version":"test"}`, nil)
		// Used up: a second exchange is refused, and says why.
		if e := s.refused(t, 401, api.CodeUnauthenticated, reg.Secret, "POST", "/v1/register/exchange", `{"name":"again"}`); e.Message == "" {
			t.Fatal("no message")
		}
		// An expired one too.
		late := s.NewTokenTTL(t, api.RoleRegistration, Pool, time.Minute)
		s.Clock.Advance(time.Minute)
		if e := s.refused(t, 401, api.CodeUnauthenticated, late.Secret, "POST", "/v1/register/exchange", `{"name":"late"}`); !strings.Contains(e.Message, "expired") {
			t.Fatalf("exchange with an expired registration token: %q, want it to say expired", e.Message)
		}
		var l api.AuditList
		s.ok(t, 200, s.admin, "GET", "/v1/audit?action=token.exchange", "", &l)
		if len(l.Entries) != 1 || l.Entries[0].Actor != reg.ID || !strings.Contains(string(l.Entries[0].Detail), w.ID) {
			t.Fatalf("audit of the exchange = %+v, want one token.exchange by %s naming %s", l.Entries, reg.ID, w.ID)
		}
	}},
	{"tokens/create", func(t *testing.T, s *suite) {
		var tok api.Token
		s.ok(t, 201, s.admin, "POST", "/v1/tokens", `{"role":"client","pool":"alpha","name":"ci"}`, &tok)
		if !strings.HasPrefix(tok.Secret, api.TokenPrefix) || tok.Role != api.RoleClient || tok.Pool != Pool || tok.Name != "ci" {
			t.Fatalf("POST /v1/tokens = %+v", tok)
		}
		s.ok(t, 200, tok.Secret, "GET", "/v1/jobs", "", nil)
		s.refused(t, 403, api.CodeForbidden, s.client, "POST", "/v1/tokens", `{"role":"admin","pool":"*"}`)
		s.refused(t, 400, api.CodeInvalidField, s.admin, "POST", "/v1/tokens", `{"role":"root","pool":"*"}`)
		s.refused(t, 400, api.CodeInvalidField, s.admin, "POST", "/v1/tokens", `{"role":"worker","pool":"*"}`)
		s.refused(t, 400, api.CodeInvalidField, s.admin, "POST", "/v1/tokens", `{"role":"client","pool":"`+strings.Repeat("p", 64)+`"}`)
		var short api.Token
		s.ok(t, 201, s.admin, "POST", "/v1/tokens", `{"role":"client","pool":"alpha","ttl_seconds":60}`, &short)
		if short.ExpiresAt == nil || short.ExpiresAt.Sub(short.CreatedAt) != time.Minute {
			t.Fatalf("POST /v1/tokens ttl_seconds 60 = %+v, want expires_at a minute after created_at", short)
		}
		s.ok(t, 200, short.Secret, "GET", "/v1/jobs", "", nil)
		s.Clock.Advance(time.Minute)
		s.refused(t, 401, api.CodeUnauthenticated, short.Secret, "GET", "/v1/jobs", "")
		for _, ttl := range []string{"-1", "999999999999"} {
			s.refused(t, 400, api.CodeInvalidField, s.admin, "POST", "/v1/tokens", `{"role":"client","pool":"alpha","ttl_seconds":`+ttl+`}`)
		}
		s.refused(t, 400, api.CodeInvalidJSON, s.admin, "POST", "/v1/tokens", `{"role":"client","pool":"alpha","ttl_seconds":"1h"}`)
	}},
	{"roles/worker_routes", func(t *testing.T, s *suite) {
		worker := s.NewToken(t, api.RoleWorker, Pool).Secret
		s.refused(t, 403, api.CodeForbidden, worker, "POST", "/v1/jobs", submitBody(""))
		s.refused(t, 403, api.CodeForbidden, worker, "GET", "/v1/jobs", "")
		for _, who := range []string{s.client, s.approver, s.admin} {
			s.refused(t, 403, api.CodeForbidden, who, "POST", "/v1/lease", `{"max":1,"wait_seconds":0}`)
			s.refused(t, 403, api.CodeForbidden, who, "POST", "/v1/workers/register", `{"name":"x"}`)
			s.refused(t, 403, api.CodeForbidden, who, "PUT", "/v1/catalog", `{"tasks":[]}`)
			s.refused(t, 403, api.CodeForbidden, who, "POST", "/v1/leases/lease_x/heartbeat", "")
		}
	}},
	{"catalog", func(t *testing.T, s *suite) {
		var c api.CatalogResponse
		s.ok(t, 200, s.client, "GET", "/v1/catalog", "", &c)
		if c.Pool != Pool || len(c.Tasks) != 1 || c.Tasks[0].Name != "echo" || c.Tasks[0].Version != "1.0.0" {
			t.Fatalf("GET /v1/catalog = %+v, want echo@1.0.0 in %s", c, Pool)
		}
		s.ok(t, 200, s.approver, "GET", "/v1/catalog?pool=alpha", "", &c)
		s.ok(t, 200, s.admin, "GET", "/v1/catalog?pool=beta", "", &c)
		if c.Pool != Other || len(c.Tasks) != 0 {
			t.Fatalf("GET /v1/catalog?pool=beta = %+v, want no tasks", c)
		}
		s.refused(t, 403, api.CodeForbidden, s.client, "GET", "/v1/catalog?pool=beta", "")
		s.refused(t, 400, api.CodeInvalidField, s.admin, "GET", "/v1/catalog", "")
		s.refused(t, 400, api.CodeUnknownField, s.client, "GET", "/v1/catalog?pol=alpha", "")
		// The same definition again, and a new version, are published.
		v2 := Catalog[0]
		v2.Version = "2.0.0"
		if err := s.PublishCatalog(t.Context(), []api.TaskDef{Catalog[0], v2}); err != nil {
			t.Fatalf("PublishCatalog(same definition, new version) = %v", err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			s.ok(t, 200, s.client, "GET", "/v1/catalog", "", &c)
			if len(c.Tasks) == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the new version never appeared: %+v", c)
			}
			time.Sleep(10 * time.Millisecond)
		}
		var j api.Job
		s.ok(t, 201, s.client, "POST", "/v1/jobs", submitBody(""), &j)
		if j.TaskVersion != "2.0.0" {
			t.Fatalf("submit without task_version = %s, want the newest published (2.0.0)", j.TaskVersion)
		}
	}},
	{"catalog/conflict", func(t *testing.T, s *suite) {
		redef := Catalog[0]
		redef.InputSchema = json.RawMessage(`{"type":"object"}`)
		err := s.PublishCatalog(t.Context(), []api.TaskDef{redef})
		wantCode(t, "PublishCatalog(a published version redefined)", err, api.CodeCatalogConflict)
		// The published definition still applies.
		s.refused(t, 400, api.CodeInputInvalid, s.client, "POST", "/v1/jobs", `{"task":"echo","pool":"alpha","input":{"n":"x"}}`)
	}},
	{"catalog/refusals", func(t *testing.T, s *suite) {
		for _, c := range []struct {
			name string
			def  api.TaskDef
		}{
			{"bad schema", api.TaskDef{Name: "t", Version: "1", InputSchema: json.RawMessage(`{"type":"nope"}`)}},
			{"file ref", api.TaskDef{Name: "t", Version: "1", InputSchema: json.RawMessage(`{"$ref":"file:///etc/passwd"}`)}},
			{"no schema", api.TaskDef{Name: "t", Version: "1"}},
			{"name starting with a digit", api.TaskDef{Name: "1t", Version: "1", InputSchema: json.RawMessage(`{}`)}},
			{"bad version", api.TaskDef{Name: "t", Version: "1 0", InputSchema: json.RawMessage(`{}`)}},
		} {
			err := s.PublishCatalog(t.Context(), []api.TaskDef{c.def})
			wantCode(t, "PublishCatalog("+c.name+")", err, api.CodeInvalidField)
		}
	}},
	{"auto_approve", func(t *testing.T, s *suite) {
		j := s.submit(t, "")
		if j.State != api.StateQueued || !j.HasApproval {
			t.Fatalf("submit of an auto-approved task = %s has_approval %v, want queued with an approval", j.State, j.HasApproval)
		}
		if lj := s.lease(t); lj.JobID != j.ID || lj.Approval == "" {
			t.Fatalf("leased %s with approval %q, want %s with the server's approval", lj.JobID, lj.Approval, j.ID)
		}
		// An approval attached at submit is kept, not replaced.
		k := s.submitApproved(t, "")
		if lj := s.lease(t); lj.JobID != k.ID || lj.Approval != FakeApproval("x") {
			t.Fatalf("leased %s with approval %q, want %s with the submitted approval", lj.JobID, lj.Approval, k.ID)
		}
	}},
	{"audit", func(t *testing.T, s *suite) {
		j := s.submit(t, "")
		var l api.AuditList
		s.ok(t, 200, s.admin, "GET", "/v1/audit?job_id="+j.ID, "", &l)
		if len(l.Entries) == 0 || l.Entries[0].Action != "job.submit" || l.Entries[0].JobID != j.ID {
			t.Fatalf("GET /v1/audit?job_id = %+v, want job.submit first", l.Entries)
		}
		s.refused(t, 403, api.CodeForbidden, s.approver, "GET", "/v1/audit", "")
		s.refused(t, 400, api.CodeInvalidField, s.admin, "GET", "/v1/audit?limit=1001", "")
		s.refused(t, 400, api.CodeUnknownField, s.admin, "GET", "/v1/audit?job=x", "")

		// More actions, some at once: every entry chains onto the one before it, with no fork.
		k := s.submit(t, "")
		s.ok(t, 200, s.approver, "POST", "/v1/jobs/"+k.ID+"/approval", `{"token":"`+FakeApproval("k")+`"}`, nil)
		s.ok(t, 200, s.client, "POST", "/v1/jobs/"+j.ID+"/cancel", "", nil)
		// A deny and token changes are API actions of the chain in both modes too.
		d := s.submit(t, "")
		s.ok(t, 200, s.approver, "POST", "/v1/jobs/"+d.ID+"/deny", `{"reason":"not this week"}`, nil)
		var tok api.Token
		s.ok(t, 201, s.admin, "POST", "/v1/tokens", `{"role":"client","pool":"alpha","ttl_seconds":60}`, &tok)
		s.ok(t, 204, s.admin, "DELETE", "/v1/tokens/"+tok.ID, "", nil)
		done := make(chan struct{})
		for range 8 {
			go func() {
				defer func() { done <- struct{}{} }()
				s.do(t, s.client, "POST", "/v1/jobs", submitBody(""))
			}()
		}
		for range 8 {
			<-done
		}
		// A worker's completion is recorded too (over JetStream, by the result consumer, after
		// the job's record: poll for it).
		lj := s.lease(t)
		if lj.JobID != k.ID {
			t.Fatalf("leased %s, want the approved %s", lj.JobID, k.ID)
		}
		if _, err := s.Worker.Complete(t.Context(), lj.JobID, complete(lj, "ok", nil)); err != nil {
			t.Fatal(err)
		}
		s.waitState(t, k.ID, api.StateSucceeded)
		deadline := time.Now().Add(20 * time.Second)
		for {
			var c api.AuditList
			s.ok(t, 200, s.admin, "GET", "/v1/audit?action=job.complete", "", &c)
			if len(c.Entries) == 1 && c.Entries[0].JobID == k.ID && strings.Contains(string(c.Entries[0].Detail), `"succeeded"`) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET /v1/audit?action=job.complete = %+v, want the completion of %s", c.Entries, k.ID)
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Oldest first, over pages of 5.
		var all []api.AuditEntry
		cursor := ""
		for {
			var page api.AuditList
			q := "/v1/audit?limit=5"
			if cursor != "" {
				q += "&cursor=" + cursor
			}
			s.ok(t, 200, s.admin, "GET", q, "", &page)
			all = append(all, page.Entries...)
			if cursor = page.NextCursor; cursor == "" {
				break
			}
		}
		slices.Reverse(all)
		var chain api.AuditChain
		actions := map[string]int{}
		for _, e := range all {
			if err := chain.Add(e); err != nil {
				t.Fatalf("the audit chain breaks: %v (entries %+v)", err, all)
			}
			if e.Role != "direct" { // the harness's own tokens, made with direct access
				actions[e.Action]++
			}
		}
		if actions["job.submit"] != 11 || actions["job.approve"] != 1 || actions["job.cancel"] != 1 || actions["job.complete"] != 1 ||
			actions["job.deny"] != 1 || actions["token.create"] != 1 || actions["token.revoke"] != 1 {
			t.Fatalf("audit actions = %v, want 11 job.submit, 1 each of job.approve, job.cancel, job.complete, job.deny, token.create, token.revoke", actions)
		}
		var denied api.AuditList
		s.ok(t, 200, s.admin, "GET", "/v1/audit?action=job.deny", "", &denied)
		if len(denied.Entries) != 1 || denied.Entries[0].JobID != d.ID || denied.Entries[0].Role != string(api.RoleApprover) ||
			!strings.Contains(string(denied.Entries[0].Detail), "not this week") {
			t.Fatalf("GET /v1/audit?action=job.deny = %+v, want the approver's deny of %s with its reason", denied.Entries, d.ID)
		}
		var created api.AuditList
		s.ok(t, 200, s.admin, "GET", "/v1/audit?action=token.create&limit=1", "", &created)
		if len(created.Entries) != 1 || created.Entries[0].Role != string(api.RoleAdmin) || !strings.Contains(string(created.Entries[0].Detail), tok.ID) ||
			!strings.Contains(string(created.Entries[0].Detail), "expires_at") || strings.Contains(string(created.Entries[0].Detail), tok.Secret) {
			t.Fatalf("GET /v1/audit?action=token.create = %+v, want %s by the admin with its expiry and no secret", created.Entries, tok.ID)
		}
		var mine api.AuditList
		s.ok(t, 200, s.admin, "GET", "/v1/audit?job_id="+k.ID, "", &mine)
		if len(mine.Entries) < 3 || mine.Entries[0].Action != "job.complete" || mine.Entries[len(mine.Entries)-1].Action != "job.submit" {
			t.Fatalf("GET /v1/audit?job_id=%s = %+v, want its completion first and (oldest) its submit last", k.ID, mine.Entries)
		}
		for _, e := range mine.Entries {
			if e.JobID != k.ID || len(e.Hash) != 64 {
				t.Fatalf("GET /v1/audit?job_id=%s lists %+v", k.ID, e)
			}
		}
		s.ok(t, 200, s.admin, "GET", "/v1/audit?action=job.cancel", "", &mine)
		if len(mine.Entries) != 1 || mine.Entries[0].JobID != j.ID {
			t.Fatalf("GET /v1/audit?action=job.cancel = %+v, want the one cancel of %s", mine.Entries, j.ID)
		}
	}},
}

// GapNATS lists the scenarios the JetStream control plane does not pass yet, and why.
// Worker-route scenarios do not apply there: its workers talk to NATS with their own
// credentials, and their permissions are NATS subject permissions (docs/deploy.md).
func GapNATS() map[string]string {
	return map[string]string{
		"roles/worker_routes": "not applicable in NATS mode: workers authenticate to NATS, there are no worker tokens or worker routes (docs/api.md)",
		"registration":        "not applicable in NATS mode: workers authenticate to NATS with NATS credentials, which a control plane without the account's signing key cannot mint (docs/deploy.md)",
	}
}

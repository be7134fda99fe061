package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/server/apitest"
)

// rawRequest sends body as-is with the named token ("" for none, "bogus" for a made-up one).
func rawRequest(t testing.TB, e *env, who, method, path, body string) (int, api.ErrorBody) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, e.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	switch who {
	case "":
	case "bogus":
		req.Header.Set("Authorization", "Bearer cst_"+strings.Repeat("A", 43))
	default:
		req.Header.Set("Authorization", "Bearer "+e.secrets[who])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var eb api.ErrorBody
	if resp.StatusCode >= 300 {
		if err := json.Unmarshal(data, &eb); err != nil {
			t.Fatalf("%s %s: status %d with non-JSON body %q", method, path, resp.StatusCode, data)
		}
	}
	return resp.StatusCode, eb
}

func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.MaxInputBytes = 1024; c.MaxOutputBytes = 2048 })
	ctx := t.Context()
	e.newClient("beta-client", api.RoleClient, "beta")
	e.newWorker("beta-worker", "beta", echoTask())
	e.newClient("unregistered", api.RoleWorker, "alpha")
	pending := e.submit(ctx, 1, false)
	queued := e.submit(ctx, 2, true)
	running := e.submit(ctx, 3, true)
	lj := e.leaseOne(ctx, e.worker) // leases "queued" (oldest due)
	_ = running
	jobPath := "/v1/jobs/" + pending.ID
	big := `{"task":"echo","pool":"alpha","input":{"n":1,"pad":"` + strings.Repeat("x", 2000) + `"}}`
	huge := `{"task":"echo","pool":"alpha","input":{"n":1,"pad":"` + strings.Repeat("x", 200<<10) + `"}}`
	bigOut := `{"lease_token":"` + lj.LeaseToken + `","attempt":1,"outcome":"ok","output":{"s":"` + strings.Repeat("y", 3000) + `"}}`
	complete := "/v1/jobs/" + lj.JobID + "/complete"
	noID := "/v1/jobs/job_000000000000000000000000"

	cases := []struct {
		name, who, method, path, body string
		status                        int
		code                          string
	}{
		// authentication and roles
		{"no token", "", "GET", jobPath, "", 401, api.CodeUnauthenticated},
		{"unknown token", "bogus", "GET", jobPath, "", 401, api.CodeUnauthenticated},
		{"client leases", "client", "POST", "/v1/lease", `{"max":1}`, 403, api.CodeForbidden},
		{"worker submits", "worker", "POST", "/v1/jobs", `{"task":"echo","pool":"alpha","input":{"n":1}}`, 403, api.CodeForbidden},
		{"worker reads jobs", "worker", "GET", jobPath, "", 403, api.CodeForbidden},
		{"client approves", "client", "POST", jobPath + "/approval", `{"token":"a.b.c"}`, 403, api.CodeForbidden},
		{"client creates token", "client", "POST", "/v1/tokens", `{"role":"admin","pool":"*"}`, 403, api.CodeForbidden},
		{"approver reads audit", "approver", "GET", "/v1/audit", "", 403, api.CodeForbidden},
		{"admin leases", "admin", "POST", "/v1/lease", `{"max":1}`, 403, api.CodeForbidden},
		// routing
		{"unknown route", "admin", "GET", "/v1/nope", "", 404, api.CodeNotFound},
		{"wrong method", "admin", "DELETE", "/v1/jobs", "", 405, api.CodeMethodNotAllowed},
		// submit
		{"submit malformed", "client", "POST", "/v1/jobs", `{"task":`, 400, api.CodeInvalidJSON},
		{"submit empty", "client", "POST", "/v1/jobs", ``, 400, api.CodeInvalidJSON},
		{"submit array", "client", "POST", "/v1/jobs", `[1]`, 400, api.CodeInvalidJSON},
		{"submit wrong type", "client", "POST", "/v1/jobs", `{"task":5,"pool":"alpha","input":{"n":1}}`, 400, api.CodeInvalidJSON},
		{"submit unknown field", "client", "POST", "/v1/jobs", `{"task":"echo","pool":"alpha","input":{"n":1},"url":"http://x"}`, 400, api.CodeUnknownField},
		{"submit trailing data", "client", "POST", "/v1/jobs", `{"task":"echo","pool":"alpha","input":{"n":1}} {}`, 400, api.CodeInvalidJSON},
		{"submit no input", "client", "POST", "/v1/jobs", `{"task":"echo","pool":"alpha"}`, 400, api.CodeInvalidField},
		{"submit bad task name", "client", "POST", "/v1/jobs", `{"task":"../x","pool":"alpha","input":{}}`, 400, api.CodeInvalidField},
		{"submit unknown task", "client", "POST", "/v1/jobs", `{"task":"nope","pool":"alpha","input":{}}`, 400, api.CodeUnknownTask},
		{"submit unknown version", "client", "POST", "/v1/jobs", `{"task":"echo","task_version":"9","pool":"alpha","input":{"n":1}}`, 400, api.CodeUnknownTask},
		{"submit other pool", "client", "POST", "/v1/jobs", `{"task":"echo","pool":"beta","input":{"n":1}}`, 403, api.CodeForbidden},
		{"submit max_attempts", "client", "POST", "/v1/jobs", `{"task":"echo","pool":"alpha","input":{"n":1},"max_attempts":101}`, 400, api.CodeInvalidField},
		{"submit bad approval", "client", "POST", "/v1/jobs", `{"task":"echo","pool":"alpha","input":{"n":1},"approval":"not-a-jws"}`, 400, api.CodeInvalidField},
		{"submit input too large", "client", "POST", "/v1/jobs", big, 413, api.CodeInputTooLarge},
		{"submit body too large", "client", "POST", "/v1/jobs", huge, 413, api.CodeBodyTooLarge},
		{"submit schema invalid", "client", "POST", "/v1/jobs", `{"task":"echo","pool":"alpha","input":{"n":true}}`, 400, api.CodeInputInvalid},
		{"submit input beyond a double", "client", "POST", "/v1/jobs", `{"task":"echo","pool":"alpha","input":{"n":9007199254740993}}`, 400, api.CodeInvalidField},
		{"submit input invalid UTF-8", "client", "POST", "/v1/jobs", "{\"task\":\"echo\",\"pool\":\"alpha\",\"input\":{\"n\":1,\"s\":\"\xff\"}}", 400, api.CodeInvalidField},
		{"submit input lone surrogate", "client", "POST", "/v1/jobs", `{"task":"echo","pool":"alpha","input":{"n":1,"s":"\ud800"}}`, 400, api.CodeInvalidField},
		// get / list / wait / cancel
		{"get unknown", "client", "GET", noID, "", 404, api.CodeNotFound},
		{"get malformed id", "client", "GET", "/v1/jobs/zzz", "", 404, api.CodeNotFound},
		{"get other pool", "beta-client", "GET", jobPath, "", 404, api.CodeNotFound},
		{"get unknown param", "client", "GET", jobPath + "?x=1", "", 400, api.CodeUnknownField},
		{"list bad state", "client", "GET", "/v1/jobs?state=done", "", 400, api.CodeInvalidField},
		{"list bad limit", "client", "GET", "/v1/jobs?limit=0", "", 400, api.CodeInvalidField},
		{"list bad cursor", "client", "GET", "/v1/jobs?cursor=abc", "", 400, api.CodeInvalidField},
		{"list other pool", "client", "GET", "/v1/jobs?pool=beta", "", 403, api.CodeForbidden},
		{"list unknown param", "client", "GET", "/v1/jobs?sate=queued", "", 400, api.CodeUnknownField},
		{"wait too long", "client", "GET", jobPath + "/wait?timeout=61", "", 400, api.CodeInvalidField},
		{"wait unknown", "client", "GET", noID + "/wait?timeout=0", "", 404, api.CodeNotFound},
		{"cancel unknown", "client", "POST", noID + "/cancel", "", 404, api.CodeNotFound},
		{"cancel other pool", "beta-client", "POST", jobPath + "/cancel", "", 404, api.CodeNotFound},
		{"cancel with body field", "client", "POST", jobPath + "/cancel", `{"force":true}`, 400, api.CodeUnknownField},
		// approval
		{"approve unknown", "approver", "POST", noID + "/approval", `{"token":"` + fakeJWS("x") + `"}`, 404, api.CodeNotFound},
		{"approve garbage", "approver", "POST", jobPath + "/approval", `{"token":"a.b"}`, 400, api.CodeInvalidField},
		{"approve bad header", "approver", "POST", jobPath + "/approval", `{"token":"e30.e30.c2ln"}`, 400, api.CodeInvalidField},
		{"approve queued", "approver", "POST", "/v1/jobs/" + queued.ID + "/approval", `{"token":"` + fakeJWS("x") + `"}`, 409, api.CodeInvalidState},
		{"approve unknown field", "approver", "POST", jobPath + "/approval", `{"jws":"x"}`, 400, api.CodeUnknownField},
		// worker endpoints
		{"register no name", "worker", "POST", "/v1/workers/register", `{}`, 400, api.CodeInvalidField},
		{"catalog unregistered", "unregistered", "PUT", "/v1/catalog", `{"tasks":[]}`, 409, api.CodeNotRegistered},
		{"lease unregistered", "unregistered", "POST", "/v1/lease", `{"max":1,"wait_seconds":0}`, 409, api.CodeNotRegistered},
		{"catalog endpoint field", "worker", "PUT", "/v1/catalog", `{"tasks":[{"name":"echo","version":"2","input_schema":{},"endpoint":"http://10.0.0.1"}]}`, 400, api.CodeUnknownField},
		{"catalog no tasks", "worker", "PUT", "/v1/catalog", `{}`, 400, api.CodeInvalidField},
		{"catalog bad schema", "worker", "PUT", "/v1/catalog", `{"tasks":[{"name":"echo","version":"2","input_schema":{"type":"nope"}}]}`, 400, api.CodeInvalidField},
		{"catalog file ref", "worker", "PUT", "/v1/catalog", `{"tasks":[{"name":"echo","version":"2","input_schema":{"$ref":"file:///etc/passwd"}}]}`, 400, api.CodeInvalidField},
		{"catalog http ref", "worker", "PUT", "/v1/catalog", `{"tasks":[{"name":"echo","version":"2","input_schema":{"$ref":"http://127.0.0.1:1/s.json"}}]}`, 400, api.CodeInvalidField},
		{"catalog no schema", "worker", "PUT", "/v1/catalog", `{"tasks":[{"name":"echo","version":"2"}]}`, 400, api.CodeInvalidField},
		{"catalog duplicate", "worker", "PUT", "/v1/catalog", `{"tasks":[{"name":"a","version":"1","input_schema":{}},{"name":"a","version":"1","input_schema":{}}]}`, 400, api.CodeInvalidField},
		{"catalog redefines version", "worker", "PUT", "/v1/catalog", `{"tasks":[{"name":"echo","version":"1","input_schema":{}}]}`, 409, api.CodeCatalogConflict},
		{"catalog other pool", "worker", "GET", "/v1/catalog?pool=beta", "", 403, api.CodeForbidden},
		{"lease max 0", "worker", "POST", "/v1/lease", `{"max":0}`, 400, api.CodeInvalidField},
		{"lease wait 61", "worker", "POST", "/v1/lease", `{"max":1,"wait_seconds":61}`, 400, api.CodeInvalidField},
		{"lease wait string", "worker", "POST", "/v1/lease", `{"max":1,"wait_seconds":"5"}`, 400, api.CodeInvalidJSON},
		{"lease pool field", "worker", "POST", "/v1/lease", `{"max":1,"pool":"beta"}`, 400, api.CodeUnknownField},
		{"heartbeat bogus", "worker", "POST", "/v1/leases/lease_bogus/heartbeat", "", 409, api.CodeLeaseLost},
		{"heartbeat other pool", "beta-worker", "POST", "/v1/leases/" + lj.LeaseToken + "/heartbeat", "", 409, api.CodeLeaseLost},
		{"complete bad outcome", "worker", "POST", complete, `{"lease_token":"` + lj.LeaseToken + `","attempt":1,"outcome":"great"}`, 400, api.CodeInvalidField},
		{"complete no lease", "worker", "POST", complete, `{"attempt":1,"outcome":"ok"}`, 400, api.CodeInvalidField},
		{"complete attempt 0", "worker", "POST", complete, `{"lease_token":"` + lj.LeaseToken + `","attempt":0,"outcome":"ok"}`, 400, api.CodeInvalidField},
		{"complete ok retryable", "worker", "POST", complete, `{"lease_token":"` + lj.LeaseToken + `","attempt":1,"outcome":"ok","retryable":true}`, 400, api.CodeInvalidField},
		{"complete bad output", "worker", "POST", complete, `{"lease_token":"` + lj.LeaseToken + `","attempt":1,"outcome":"ok","output":{nope}}`, 400, api.CodeInvalidJSON},
		{"complete output too large", "worker", "POST", complete, bigOut, 413, api.CodeOutputTooLarge},
		{"complete unknown job", "worker", "POST", noID + "/complete", `{"lease_token":"` + lj.LeaseToken + `","attempt":1,"outcome":"ok"}`, 404, api.CodeNotFound},
		{"complete other pool", "beta-worker", "POST", complete, `{"lease_token":"` + lj.LeaseToken + `","attempt":1,"outcome":"ok"}`, 404, api.CodeNotFound},
		{"complete wrong job", "worker", "POST", "/v1/jobs/" + pending.ID + "/complete", `{"lease_token":"` + lj.LeaseToken + `","attempt":1,"outcome":"ok"}`, 409, api.CodeLeaseConflict},
		// admin
		{"token bad role", "admin", "POST", "/v1/tokens", `{"role":"root","pool":"*"}`, 400, api.CodeInvalidField},
		{"token worker all pools", "admin", "POST", "/v1/tokens", `{"role":"worker","pool":"*"}`, 400, api.CodeInvalidField},
		{"token revoke unknown", "admin", "DELETE", "/v1/tokens/tok_nope", "", 404, api.CodeNotFound},
		{"audit bad limit", "admin", "GET", "/v1/audit?limit=x", "", 400, api.CodeInvalidField},
	}
	before := e.snapshot()
	for _, tc := range cases {
		status, eb := rawRequest(t, e, tc.who, tc.method, tc.path, tc.body)
		if status != tc.status || eb.Error.Code != tc.code || eb.Error.Message == "" {
			t.Errorf("%s: %s %s = %d %s (%s), want %d %s", tc.name, tc.method, tc.path, status, eb.Error.Code, eb.Error.Message, tc.status, tc.code)
		}
		if strings.Contains(eb.Error.Message, lj.LeaseToken) || strings.Contains(eb.Error.Message, "cst_") {
			t.Errorf("%s: error message %q echoes a secret", tc.name, eb.Error.Message)
		}
	}
	if after := e.snapshot(); after != before {
		t.Fatalf("refused requests changed the database:\n--- after\n%s\n--- before\n%s", after, before)
	}
}

// TestMalformedRequestsGetJSONErrors runs the generated table both modes share
// (internal/server/apitest): every malformed body and impossible id is refused with the
// documented JSON error, and nothing changes.
func TestMalformedRequestsGetJSONErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	pending := e.submit(t.Context(), 1, false)
	before := e.snapshot()
	for _, c := range apitest.Malformed("alpha", pending.ID) {
		apitest.Check(t, e.url, e.secrets[c.Role], c)
	}
	if after := e.snapshot(); after != before {
		t.Fatalf("refused requests changed the database:\n--- after\n%s\n--- before\n%s", after, before)
	}
}

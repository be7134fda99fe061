// Package apitest holds API checks that both control-plane modes (internal/server on
// SQLite, internal/natsq on JetStream) must pass, so that a refusal means the same in each:
// a generated table of malformed requests, and the check that each is refused with the
// documented JSON error of docs/api.md. It is imported only by tests.
package apitest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// Codes are the error codes docs/api.md documents.
var Codes = []string{api.CodeUnauthenticated, api.CodeForbidden, api.CodeNotFound, api.CodeMethodNotAllowed,
	api.CodeInvalidJSON, api.CodeUnknownField, api.CodeInvalidField, api.CodeInputInvalid, api.CodeBodyTooLarge,
	api.CodeInputTooLarge, api.CodeOutputTooLarge, api.CodeUnknownTask, api.CodeIdempotency, api.CodeInvalidState,
	api.CodeLeaseConflict, api.CodeLeaseLost, api.CodeJobCancelled, api.CodeCatalogConflict, api.CodeNotRegistered,
	api.CodeInternal, api.CodeUnavailable, api.CodeAutoApproveFailed}

// Case is one request that must be refused. Role names the token to send it with.
type Case struct {
	Name, Role, Method, Path, Body string
	Status                         int    // 0: any 4xx
	Code                           string // "": any documented code
}

// Malformed generates refusals for the routes both modes serve: bodies that are not one
// JSON object of the right shape for every body-taking route, explicit max_attempts
// outside 1..100 (0 included: omit the field for the default), and ids no job can have
// for every id-taking route. pool is the client token's pool; jobID a pending job's id.
func Malformed(pool, jobID string) []Case {
	var out []Case
	notObjects := []string{"null", " null ", "\nnull\n", "[]", "[{}]", `"x"`, "1", "-0", "true", "false"}
	broken := []string{"{", "}", "{}}", "{} {}", "{}x", `{"task":`, `{"task" "echo"}`, "\xff", "{\"task\":\"echo\"\x00}"}
	bodyRoutes := []struct{ role, method, path, valid string }{
		{"client", "POST", "/v1/jobs", `{"task":"echo","pool":"` + pool + `","input":{"n":1}}`},
		{"approver", "POST", "/v1/jobs/" + jobID + "/approval", `{"token":"a.b.c"}`},
		{"client", "POST", "/v1/jobs/" + jobID + "/cancel", `{}`},
		{"approver", "POST", "/v1/jobs/" + jobID + "/deny", `{"reason":"no"}`},
	}
	for _, r := range bodyRoutes {
		for _, b := range notObjects {
			out = append(out, Case{Name: r.path + " body " + b, Role: r.role, Method: r.method, Path: r.path, Body: b,
				Status: http.StatusBadRequest, Code: api.CodeInvalidJSON})
		}
		for _, b := range broken {
			out = append(out, Case{Name: r.path + " body " + b, Role: r.role, Method: r.method, Path: r.path, Body: b,
				Status: http.StatusBadRequest, Code: api.CodeInvalidJSON})
		}
		unknown := `{"zz_unknown":1,` + r.valid[1:]
		if r.valid == "{}" {
			unknown = `{"zz_unknown":1}`
		}
		out = append(out, Case{Name: r.path + " unknown field", Role: r.role, Method: r.method, Path: r.path,
			Body: unknown, Status: http.StatusBadRequest, Code: api.CodeUnknownField})
	}
	submit := func(extra string) string {
		return `{"task":"echo","pool":"` + pool + `","input":{"n":1}` + extra + `}`
	}
	for _, v := range []string{"0", "-1", "101", "1000000"} {
		out = append(out, Case{Name: "max_attempts " + v, Role: "client", Method: "POST", Path: "/v1/jobs",
			Body: submit(`,"max_attempts":` + v), Status: http.StatusBadRequest, Code: api.CodeInvalidField})
	}
	for _, v := range []string{`"3"`, "1.5", "1e2", "true", "[3]", "{}", "99999999999999999999999"} {
		out = append(out, Case{Name: "max_attempts " + v, Role: "client", Method: "POST", Path: "/v1/jobs",
			Body: submit(`,"max_attempts":` + v), Status: http.StatusBadRequest, Code: api.CodeInvalidJSON})
	}
	// A field of the wrong JSON type, each field in turn.
	for _, field := range []string{"task", "pool", "task_version", "idempotency_key", "approval", "traceparent"} {
		for _, v := range []string{"1", "true", "[]", "{}"} {
			members := map[string]string{"task": `"echo"`, "pool": `"` + pool + `"`, "input": `{"n":1}`, field: v}
			var b strings.Builder
			for _, k := range []string{"task", "pool", "input", "task_version", "idempotency_key", "approval", "traceparent"} {
				if m, ok := members[k]; ok {
					if b.Len() > 0 {
						b.WriteByte(',')
					}
					b.WriteString(`"` + k + `":` + m)
				}
			}
			out = append(out, Case{Name: "submit " + field + "=" + v, Role: "client", Method: "POST", Path: "/v1/jobs",
				Body: "{" + b.String() + "}", Status: http.StatusBadRequest, Code: api.CodeInvalidJSON})
		}
	}
	ids := []string{"abc%25", "%25", "%25%25", "job_%25", "%2e%2e", "..%2F..", "a%2Fb", "%00", "%E2%80%AE", "%F0%9F%98%80",
		"job_000000000000000000000000", strings.Repeat("a", 300), "job_" + strings.Repeat("0", 25), "JOB_" + strings.Repeat("0", 24)}
	for _, id := range ids {
		for _, r := range []struct{ role, method, suffix, body string }{
			{"client", "GET", "", ""}, {"client", "GET", "/wait?timeout=0", ""}, {"client", "POST", "/cancel", ""},
			{"approver", "POST", "/approval", `{"token":"a.b.c"}`}, {"approver", "POST", "/deny", `{"reason":"no"}`},
		} {
			c := Case{Name: r.method + " id " + id + r.suffix, Role: r.role, Method: r.method, Path: "/v1/jobs/" + id + r.suffix,
				Body: r.body, Code: api.CodeNotFound, Status: http.StatusNotFound}
			if r.suffix == "/approval" {
				c.Code, c.Status = "", 0 // the token's shape may be judged first
			}
			out = append(out, c)
		}
	}
	return out
}

// Check sends c to base with secret and fails t unless the answer is a 4xx with a JSON
// body that is exactly one documented error: {"error":{"code":...,"message":...}}.
func Check(t testing.TB, base, secret string, c Case) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), c.Method, base+c.Path, strings.NewReader(c.Body))
	if err != nil {
		t.Fatalf("%s: %v", c.Name, err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %s %s = %v", c.Name, c.Method, c.Path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: reading the answer: %v", c.Name, err)
	}
	if resp.StatusCode < 400 || resp.StatusCode > 499 || (c.Status != 0 && resp.StatusCode != c.Status) {
		t.Errorf("%s: %s %s %q = %d %s, want %s", c.Name, c.Method, c.Path, c.Body, resp.StatusCode, raw, want(c))
		return
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		t.Errorf("%s: Content-Type %q, want application/json (body %q)", c.Name, resp.Header.Get("Content-Type"), raw)
		return
	}
	var body api.ErrorBody
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || dec.More() {
		t.Errorf("%s: body %q is not one API error: %v", c.Name, raw, err)
		return
	}
	if !slices.Contains(Codes, body.Error.Code) || body.Error.Message == "" || (c.Code != "" && body.Error.Code != c.Code) {
		t.Errorf("%s: %s %s %q = %d %s (%q), want %s", c.Name, c.Method, c.Path, c.Body, resp.StatusCode, body.Error.Code,
			body.Error.Message, want(c))
	}
}

func want(c Case) string {
	s := "a 4xx"
	if c.Status != 0 {
		s = http.StatusText(c.Status)
	}
	if c.Code != "" {
		s += " " + c.Code
	}
	return s
}

package console

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/approver/approvertest"
	"github.com/castellan-dev/castellan/internal/approver/process"
	"github.com/castellan-dev/castellan/internal/approver/rules"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// fixture is a real control plane, an approver with no rules (every job is asked) and its
// console behind a loopback HTTP server.
type fixture struct {
	e    *approvertest.Env
	a    *process.Approver
	c    *Console
	base string // http://127.0.0.1:PORT
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	e := approvertest.New(t)
	return newFixtureWith(t, e, e.Admin)
}

// newFixtureWith is newFixture on e with the approver reaching the control plane through
// ctl.
func newFixtureWith(t *testing.T, e *approvertest.Env, ctl process.Control) *fixture {
	t.Helper()
	rs, err := rules.Parse("r.yaml", []byte("rules: []\n"))
	if err != nil {
		t.Fatal(err)
	}
	a, err := process.New(process.Config{Control: ctl, Key: e.Key, Rules: rs, Pools: []string{approvertest.Pool}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(nil)
	c, err := New(Config{Approver: a, Catalog: e.Admin, Addr: hs.Listener.Addr().String(), Person: "alice@example.com", Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	hs.Config.Handler = c.Handler()
	hs.Start()
	t.Cleanup(hs.Close)
	return &fixture{e: e, a: a, c: c, base: hs.URL}
}

func (f *fixture) poll(t *testing.T) {
	t.Helper()
	if _, err := f.a.Poll(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// req sends one request with the given mutations and returns status and body.
func (f *fixture) req(t *testing.T, method, path string, form url.Values, mod func(*http.Request)) (int, string, *http.Response) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	r, err := http.NewRequestWithContext(t.Context(), method, f.base+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	r.AddCookie(&http.Cookie{Name: CookieName, Value: f.c.secret})
	if mod != nil {
		mod(r)
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp
}

// flip changes the first character of s, so the result differs from s.
func flip(s string) string {
	if s[0] == 'a' {
		return "b" + s[1:]
	}
	return "a" + s[1:]
}

// TestSessionURL: the printed URL sets an HttpOnly SameSite=Strict cookie and redirects to
// a URL without the secret; a wrong secret sets nothing.
func TestSessionURL(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	u, _ := url.Parse(f.c.SessionURL())
	noCookie := func(r *http.Request) { r.Header.Del("Cookie") }
	code, _, resp := f.req(t, "GET", "/?"+u.RawQuery, nil, noCookie)
	cks := resp.Cookies()
	if code != http.StatusSeeOther || resp.Header.Get("Location") != "/" || len(cks) != 1 || cks[0].Value != f.c.secret ||
		!cks[0].HttpOnly || cks[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("GET session URL = %d Location %q cookies %+v, want 303 to / with an HttpOnly SameSite=Strict session cookie", code, resp.Header.Get("Location"), cks)
	}
	code, _, resp = f.req(t, "GET", "/?session="+flip(f.c.secret), nil, noCookie)
	if code != http.StatusUnauthorized || len(resp.Cookies()) != 0 {
		t.Fatalf("GET wrong session URL = %d cookies %v, want 401 and no cookie", code, resp.Cookies())
	}
}

// TestConsoleAttacks: requests another page, another user or a rebinding DNS name could
// make are refused, and the job stays pending with no approval; the same request with
// everything right approves it.
func TestConsoleAttacks(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	j := f.e.Submit(f.e.Client, "crm-lookup", approvertest.Pool, `{"customer_id":"c-1"}`)
	f.poll(t)
	path := "/jobs/" + j.ID + "/approve"
	good := url.Values{"csrf": {f.c.CSRFToken()}}
	for _, tt := range []struct {
		name   string
		method string
		path   string
		form   url.Values
		mod    func(*http.Request)
		status int
	}{
		{"page without cookie", "GET", "/", nil, func(r *http.Request) { r.Header.Del("Cookie") }, http.StatusUnauthorized},
		{"page with a wrong cookie", "GET", "/", nil, func(r *http.Request) {
			r.Header.Del("Cookie")
			r.AddCookie(&http.Cookie{Name: CookieName, Value: flip(f.c.secret)})
		}, http.StatusUnauthorized},
		{"events without cookie", "GET", "/events", nil, func(r *http.Request) { r.Header.Del("Cookie") }, http.StatusUnauthorized},
		{"queue with wrong Host", "GET", "/queue", nil, func(r *http.Request) { r.Host = "attacker.example" + f.base[len("http://127.0.0.1"):] }, http.StatusMisdirectedRequest},
		{"approve without cookie", "POST", path, good, func(r *http.Request) { r.Header.Del("Cookie") }, http.StatusUnauthorized},
		{"approve with a wrong cookie", "POST", path, good, func(r *http.Request) {
			r.Header.Del("Cookie")
			r.AddCookie(&http.Cookie{Name: CookieName, Value: f.c.csrf})
		}, http.StatusUnauthorized},
		{"approve without CSRF token", "POST", path, url.Values{}, nil, http.StatusForbidden},
		{"approve with a wrong CSRF token", "POST", path, url.Values{"csrf": {flip(f.c.CSRFToken())}}, nil, http.StatusForbidden},
		{"approve with the session secret as CSRF token", "POST", path, url.Values{"csrf": {f.c.secret}}, nil, http.StatusForbidden},
		{"approve with the CSRF token in the query", "POST", path + "?csrf=" + f.c.CSRFToken(), url.Values{}, nil, http.StatusForbidden},
		{"approve with wrong Host (DNS rebinding)", "POST", path, good, func(r *http.Request) { r.Host = "rebind.attacker.example" + f.base[len("http://127.0.0.1"):] }, http.StatusMisdirectedRequest},
		{"approve with Host on another port", "POST", path, good, func(r *http.Request) { r.Host = "127.0.0.1:1" }, http.StatusMisdirectedRequest},
		{"approve cross-origin", "POST", path, good, func(r *http.Request) { r.Header.Set("Origin", "http://attacker.example") }, http.StatusForbidden},
		{"approve from a null origin", "POST", path, good, func(r *http.Request) { r.Header.Set("Origin", "null") }, http.StatusForbidden},
		{"approve cross-site", "POST", path, good, func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "cross-site") }, http.StatusForbidden},
		{"approve same-site other origin", "POST", path, good, func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "same-site") }, http.StatusForbidden},
		{"approve by GET", "GET", path, nil, nil, http.StatusMethodNotAllowed},
	} {
		code, _, resp := f.req(t, tt.method, tt.path, tt.form, tt.mod)
		if code != tt.status {
			t.Errorf("%s: %s %s = %d, want %d", tt.name, tt.method, tt.path, code, tt.status)
		}
		if resp.Header.Get("Content-Security-Policy") != CSP {
			t.Errorf("%s: CSP %q, want %q on every response", tt.name, resp.Header.Get("Content-Security-Policy"), CSP)
		}
		if got := f.e.Get(j.ID); got.State != api.StatePendingApproval || got.HasApproval {
			t.Fatalf("%s: the job is %s (approval %v), want untouched", tt.name, got.State, got.HasApproval)
		}
	}
	// Everything right, as a browser on the page sends it.
	code, _, resp := f.req(t, "POST", path, good, func(r *http.Request) {
		r.Header.Set("Origin", f.base)
		r.Header.Set("Sec-Fetch-Site", "same-origin")
	})
	if code != http.StatusSeeOther || resp.Header.Get("Location") != "/?done=approved" {
		t.Fatalf("good approve = %d Location %q, want 303 to /?done=approved", code, resp.Header.Get("Location"))
	}
	c, err := f.e.Verify(f.e.Lease(approvertest.Pool, j.ID))
	if err != nil || c.ApprovedBy == nil || c.ApprovedBy.Person != "alice@example.com" {
		t.Fatalf("worker Verify = %+v, %v; want an approval by person alice@example.com", c.ApprovedBy, err)
	}
	if code, _, _ := f.req(t, "POST", path, good, nil); code != http.StatusSeeOther {
		t.Fatalf("second approve = %d, want a redirect saying it is gone", code)
	}
}

// TestRenderedInert: markup in a job's input or in the requester's token name is shown as
// text, never as markup; the page loads no script but its own file.
func TestRenderedInert(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	evil := f.e.NewClient(`<img src=x onerror=alert(2)>`, api.RoleClient, approvertest.Pool)
	f.e.Submit(evil, "crm-lookup", approvertest.Pool, `{"customer_id":"<script>alert(1)</script>","note":"\"><svg onload=alert(3)>"}`)
	f.e.Submit(f.e.Client, "refund", approvertest.Pool, `{"amount":12.5,"</td><script>alert(4)</script>":1}`)
	f.poll(t)
	for _, p := range []string{"/", "/queue"} {
		code, body, resp := f.req(t, "GET", p, nil, nil)
		if code != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("GET %s = %d %s", p, code, resp.Header.Get("Content-Type"))
		}
		for _, bad := range []string{"<script>alert", "<img src=x", "<svg", "onerror=alert(2)>"} {
			if strings.Contains(body, bad) {
				t.Fatalf("GET %s holds %q unescaped:\n%s", p, bad, body)
			}
		}
		for _, want := range []string{"&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;img src=x onerror=alert(2)&gt;", "Customer", "not in the schema"} {
			if !strings.Contains(body, want) {
				t.Fatalf("GET %s lacks %q:\n%s", p, want, body)
			}
		}
		if n := strings.Count(body, "<script"); p == "/" && (n != 1 || !strings.Contains(body, `<script src="/static/app.js" defer></script>`)) {
			t.Fatalf("GET / has %d script tags, want only /static/app.js", n)
		}
	}
}

// TestDenyReason: a deny needs a one-line reason of at most api.MaxDenyReason bytes; without
// one the job stays pending.
func TestDenyReason(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	j := f.e.Submit(f.e.Client, "refund", approvertest.Pool, `{"amount":1}`)
	f.poll(t)
	for _, reason := range []string{"", "  ", "two\nlines", strings.Repeat("x", api.MaxDenyReason+1)} {
		code, _, resp := f.req(t, "POST", "/jobs/"+j.ID+"/deny", url.Values{"csrf": {f.c.CSRFToken()}, "reason": {reason}}, nil)
		if code != http.StatusSeeOther || resp.Header.Get("Location") != "/?error=reason" {
			t.Fatalf("deny with reason %q = %d %q, want a redirect to /?error=reason", reason, code, resp.Header.Get("Location"))
		}
	}
	if got := f.e.Get(j.ID); got.State != api.StatePendingApproval {
		t.Fatalf("job is %s, want pending_approval", got.State)
	}
	code, _, resp := f.req(t, "POST", "/jobs/"+j.ID+"/deny", url.Values{"csrf": {f.c.CSRFToken()}, "reason": {" not this quarter "}}, nil)
	if code != http.StatusSeeOther || resp.Header.Get("Location") != "/?done=denied" {
		t.Fatalf("deny = %d %q, want a redirect to /?done=denied", code, resp.Header.Get("Location"))
	}
	if got := f.e.Get(j.ID); got.State != api.StateDenied || got.ErrorMessage != "not this quarter" {
		t.Fatalf("job is %s (%q), want denied with the reason", got.State, got.ErrorMessage)
	}
}

// TestCheckAddr: the console binds loopback unless told otherwise, and never a wildcard.
func TestCheckAddr(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		addr   string
		remote bool
		ok     bool
	}{
		{"127.0.0.1:8470", false, true}, {"[::1]:8470", false, true}, {"localhost:8470", false, true},
		{"192.168.1.5:8470", false, false}, {"192.168.1.5:8470", true, true},
		{"0.0.0.0:8470", true, false}, {"[::]:8470", true, false}, {":8470", true, false},
		{"example.com:8470", true, false}, {"127.0.0.1", false, false},
	} {
		_, err := CheckAddr(tt.addr, tt.remote)
		if (err == nil) != tt.ok {
			t.Errorf("CheckAddr(%q, allowRemote %v) = %v, want ok %v", tt.addr, tt.remote, err, tt.ok)
		}
	}
}

// TestPlanRow: a pending plan is one row with its steps in order (no single-job rows for
// them); Approve signs one plan approval in the approver process, which a worker verifies
// for the first step; Deny with a reason denies every step; forged requests are refused.
func TestPlanRow(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	submit := func() api.Plan {
		pl, err := f.e.Client.SubmitPlan(t.Context(), api.PlanRequest{Steps: []api.PlanStepRequest{
			{Task: "crm-lookup", Pool: approvertest.Pool, Input: json.RawMessage(`{"customer_id":"c-9"}`)},
			{Task: "refund", Pool: approvertest.Pool, Input: json.RawMessage(`{"amount":7}`)},
		}})
		if err != nil {
			t.Fatalf("SubmitPlan() = %v", err)
		}
		return pl
	}
	ok, no := submit(), submit()
	f.poll(t)
	_, body, _ := f.req(t, "GET", "/queue", nil, nil)
	for _, pl := range []api.Plan{ok, no} {
		if strings.Count(body, `id="plan-`+pl.ID+`"`) != 1 || !strings.Contains(body, `action="/plans/`+pl.ID+`/approve"`) ||
			!strings.Contains(body, `action="/plans/`+pl.ID+`/deny"`) {
			t.Fatalf("GET /queue lacks one row for plan %s with Approve and Deny:\n%s", pl.ID, body)
		}
		first, second := strings.Index(body, `data-job="`+pl.Steps[0].ID+`"`), strings.Index(body, `data-job="`+pl.Steps[1].ID+`"`)
		if first < 0 || second < first {
			t.Fatalf("GET /queue does not list plan %s's steps in order:\n%s", pl.ID, body)
		}
	}
	if strings.Contains(body, `id="job-`) {
		t.Fatalf("GET /queue shows a plan step as a job of its own:\n%s", body)
	}
	good := url.Values{"csrf": {f.c.CSRFToken()}}
	if code, _, _ := f.req(t, "POST", "/plans/"+ok.ID+"/approve", url.Values{"csrf": {flip(f.c.CSRFToken())}}, nil); code != http.StatusForbidden {
		t.Fatalf("plan approve with a wrong CSRF token = %d, want 403", code)
	}
	code, _, resp := f.req(t, "POST", "/plans/"+ok.ID+"/approve", good, nil)
	if code != http.StatusSeeOther || resp.Header.Get("Location") != "/?done=plan-approved" {
		t.Fatalf("plan approve = %d %q, want 303 to /?done=plan-approved", code, resp.Header.Get("Location"))
	}
	c, err := f.e.Verify(f.e.Lease(approvertest.Pool, ok.Steps[0].ID))
	if err != nil || c.Plan != ok.ID || len(c.Steps) != 2 || c.ApprovedBy == nil || c.ApprovedBy.Person != "alice@example.com" {
		t.Fatalf("worker Verify(step 1) = %+v, %v; want one plan approval of %s by person alice@example.com", c, err, ok.ID)
	}
	code, _, resp = f.req(t, "POST", "/plans/"+no.ID+"/deny", url.Values{"csrf": {f.c.CSRFToken()}, "reason": {"a\nb"}}, nil)
	if code != http.StatusSeeOther || resp.Header.Get("Location") != "/?error=reason" {
		t.Fatalf("plan deny with a two-line reason = %d %q, want /?error=reason", code, resp.Header.Get("Location"))
	}
	code, _, resp = f.req(t, "POST", "/plans/"+no.ID+"/deny", url.Values{"csrf": {f.c.CSRFToken()}, "reason": {"one at a time"}}, nil)
	if code != http.StatusSeeOther || resp.Header.Get("Location") != "/?done=plan-denied" {
		t.Fatalf("plan deny = %d %q, want 303 to /?done=plan-denied", code, resp.Header.Get("Location"))
	}
	for _, st := range no.Steps {
		if got := f.e.Get(st.ID); got.State != api.StateDenied || got.ErrorMessage != "one at a time" {
			t.Fatalf("step %s = %s %q, want denied with the reason", st.ID, got.State, got.ErrorMessage)
		}
	}
}

// TestPlanChangedShownAgain: Approve on a plan row shown before the plan's last step
// existed signs nothing, says so, and shows the plan again with every step; Approve on the
// row shown then signs one plan approval over every step.
func TestPlanChangedShownAgain(t *testing.T) {
	t.Parallel()
	e := approvertest.New(t)
	pl, err := e.Client.SubmitPlan(t.Context(), api.PlanRequest{Steps: []api.PlanStepRequest{
		{Task: "crm-lookup", Pool: approvertest.Pool, Input: json.RawMessage(`{"customer_id":"c-9"}`)},
		{Task: "refund", Pool: approvertest.Pool, Input: json.RawMessage(`{"amount":7}`)},
	}})
	if err != nil {
		t.Fatalf("SubmitPlan() = %v", err)
	}
	ctl := &approvertest.StagedPlans{Client: e.Admin, Omit: true, Missing: map[string]bool{pl.Steps[1].ID: true}}
	f := newFixtureWith(t, e, ctl)
	f.poll(t)
	step := func(i int) string { return `data-job="` + pl.Steps[i].ID + `"` }
	if _, body, _ := f.req(t, "GET", "/queue", nil, nil); !strings.Contains(body, step(0)) || strings.Contains(body, step(1)) {
		t.Fatalf("GET /queue before the last step exists does not show the plan's first step alone:\n%s", body)
	}
	ctl.Open()
	good := url.Values{"csrf": {f.c.CSRFToken()}}
	code, _, resp := f.req(t, "POST", "/plans/"+pl.ID+"/approve", good, nil)
	if code != http.StatusSeeOther || resp.Header.Get("Location") != "/?error=changed" {
		t.Fatalf("approve of the row shown before the last step existed = %d %q, want 303 to /?error=changed", code, resp.Header.Get("Location"))
	}
	if _, body, _ := f.req(t, "GET", "/?error=changed", nil, nil); !strings.Contains(body, step(0)) || !strings.Contains(body, step(1)) ||
		!strings.Contains(body, "nothing was signed") {
		t.Fatalf("GET /?error=changed does not say nothing was signed and show both steps:\n%s", body)
	}
	if got := e.Get(pl.Steps[0].ID); got.State != api.StatePendingApproval || got.HasApproval {
		t.Fatalf("step 1 is %s (approval %v), want pending without an approval", got.State, got.HasApproval)
	}
	code, _, resp = f.req(t, "POST", "/plans/"+pl.ID+"/approve", good, nil)
	if code != http.StatusSeeOther || resp.Header.Get("Location") != "/?done=plan-approved" {
		t.Fatalf("approve of the row shown again = %d %q, want 303 to /?done=plan-approved", code, resp.Header.Get("Location"))
	}
	c, err := f.e.Verify(f.e.Lease(approvertest.Pool, pl.Steps[0].ID))
	if err != nil || c.Plan != pl.ID || len(c.Steps) != 2 {
		t.Fatalf("worker Verify(step 1) = %+v, %v; want the plan approval over both steps", c, err)
	}
}

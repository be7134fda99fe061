package runtime_test

// Adversarial tests of the whole sandbox boundary: a real wazero instance, the real castellan_v1
// host functions, the real egress gateway and a real HTTP server on loopback playing the internal
// API. The guest is testdata/http_probe.wat, a raw-ABI client driven by its input, so every
// smuggling form reaches the host exactly as a hostile module would send it.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/runtime"
)

const token = "s3cr3t-crm-token-0123456789abcdef"

type staticCreds map[string]string

func (c staticCreds) Credential(_ context.Context, name string) (string, error) {
	v, ok := c[name]
	if !ok {
		return "", outcome.New(outcome.CredentialUnavailable, "credential %q unknown", name)
	}
	return v, nil
}

// upstream is the internal API. It counts requests and records the Authorization headers it saw.
type upstream struct {
	*httptest.Server
	requests atomic.Int64
	mu       sync.Mutex
	auths    []string
	ctxDone  chan struct{}
}

func newUpstream(t testing.TB) *upstream {
	u := &upstream{ctxDone: make(chan struct{}, 16)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/customers/{id}", func(w http.ResponseWriter, r *http.Request) {
		switch id := r.PathValue("id"); id {
		case "echo": // dangerous: echoes every request header, like a debug endpoint would
			_ = json.NewEncoder(w).Encode(map[string]any{"headers": r.Header, "query": r.URL.RawQuery})
		case "echo-b64":
			fmt.Fprintf(w, `{"auth":%q}`, base64.StdEncoding.EncodeToString([]byte(r.Header.Get("Authorization"))))
		case "echo-header":
			w.Header().Set("X-Debug-Auth", r.Header.Get("Authorization"))
			w.Header().Add("Set-Cookie", "session=abc")
			fmt.Fprint(w, `{}`)
		case "echo-url":
			fmt.Fprintf(w, `{"auth":%q}`, url.QueryEscape(r.Header.Get("Authorization")))
		case "echo-hex":
			fmt.Fprintf(w, `{"auth":"%x"}`, strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
		case "slow":
			<-r.Context().Done()
			u.ctxDone <- struct{}{}
		case "big":
			chunk := strings.Repeat("x", 4096)
			for range 512 {
				if _, err := fmt.Fprint(w, chunk); err != nil {
					return
				}
			}
		case "redirect-same":
			http.Redirect(w, r, "/api/customers/42", http.StatusFound)
		case "redirect-admin":
			http.Redirect(w, r, "/admin/users", http.StatusFound)
		default:
			fmt.Fprintf(w, `{"id":%q,"name":"Ada Lovelace"}`, id)
		}
	})
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.requests.Add(1)
		u.mu.Lock()
		u.auths = append(u.auths, r.Header.Get("Authorization"))
		u.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

type sandbox struct {
	m    *runtime.Module
	red  *redact.Set
	mu   sync.Mutex
	last egress.Event // the tests look at the last event only; keeping every one would make
	// BenchmarkHTTPCall measure a slice of 100,000s of events growing, not the audit hook
}

func (s *sandbox) audit(ev egress.Event) {
	s.mu.Lock()
	s.last = ev
	s.mu.Unlock()
}

func (s *sandbox) lastEvent() egress.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func newSandbox(t testing.TB, base string, lim runtime.Limits, fixtureName string, rules ...string) *sandbox {
	t.Helper()
	if len(rules) == 0 {
		rules = []string{"GET /api/customers/*"}
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	ep := &egress.Endpoint{
		Name:    "crm",
		BaseURL: u,
		Auth:    egress.Auth{Kind: egress.AuthHeader, Credential: "crm_token", Header: "Authorization", Format: "Bearer {secret}"},
		Timeout: 5 * time.Second,
	}
	for _, r := range rules {
		ep.Rules = append(ep.Rules, egress.MustParseRule(r))
	}
	s := &sandbox{red: redact.NewSet()}
	if err := s.red.Add(token); err != nil {
		t.Fatal(err)
	}
	gw, err := egress.New(egress.Config{
		Endpoints:   []*egress.Endpoint{ep},
		Credentials: staticCreds{"crm_token": token},
		Redactor:    s.red,
		Audit:       s.audit,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.m, err = newEngine(t).Load(context.Background(), runtime.ModuleConfig{
		Name: "probe", Wasm: fixture(t, fixtureName), Limits: lim, HTTP: gw, Guard: s.red,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func probeInput(endpoint, method, target, headers, body string) []byte {
	return []byte(endpoint + "\x00" + method + "\x00" + target + "\x00" + headers + "\x00" + body)
}

func (s *sandbox) probe(t *testing.T, endpoint, method, target, headers string) runtime.Result {
	t.Helper()
	return s.m.Run(t.Context(), runtime.Job{ID: "job-1", Input: probeInput(endpoint, method, target, headers, "")})
}

func TestProbeReachesAPI(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	s := newSandbox(t, up.URL, runtime.Limits{}, "http_probe")
	res := s.probe(t, "crm", "GET", "/api/customers/42", "Accept: application/json\n")
	if res.Err != nil {
		t.Fatalf("probe = %v", res.Err)
	}
	if !strings.HasPrefix(string(res.Output), "200\n") || !strings.Contains(string(res.Output), `"name":"Ada Lovelace"`) {
		t.Errorf("probe output = %q, want 200 and the record", res.Output)
	}
	if ev := s.lastEvent(); ev.Decision != "allow" || ev.Status != 200 || ev.Path != "/api/customers/42" || ev.Job != "job-1" || ev.Task != "probe" {
		t.Errorf("audit event = %+v, want allow 200 /api/customers/42 job-1 probe", ev)
	}
}

// TestCredentialNeverReadable: the API receives the real token, and the task can read it through
// no channel: not in an echoed header, its base64, URL or hex form, a response header, the output
// or the error message.
func TestCredentialNeverReadable(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	s := newSandbox(t, up.URL, runtime.Limits{}, "http_probe")
	forms := redact.Forms(token)
	for _, id := range []string{"echo", "echo-b64", "echo-header", "echo-url", "echo-hex"} {
		res := s.probe(t, "crm", "GET", "/api/customers/"+id+"?q=1", "")
		if res.Err != nil {
			t.Fatalf("probe(%s) = %v", id, res.Err)
		}
		out := string(res.Output)
		if !strings.HasPrefix(out, "200\n") || !strings.Contains(out, redact.Placeholder) {
			t.Errorf("probe(%s) output = %q, want 200 with %s", id, out, redact.Placeholder)
		}
		for _, f := range append(forms, "Bearer "+token) {
			if strings.Contains(out, f) {
				t.Errorf("probe(%s) output contains credential form %q:\n%s", id, f, out)
			}
		}
		if strings.Contains(strings.ToLower(out), "set-cookie") {
			t.Errorf("probe(%s) output shows a Set-Cookie header: %q", id, out)
		}
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	for i, a := range up.auths {
		if a != "Bearer "+token {
			t.Errorf("request %d reached the API with Authorization %q, want the injected token", i, a)
		}
	}
}

// TestSmugglingDenied: every form of request smuggling ends the job as denied, is audited as a
// denial, and never reaches the API.
func TestSmugglingDenied(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	s := newSandbox(t, up.URL, runtime.Limits{}, "http_probe")
	tests := []struct{ name, endpoint, method, target, headers string }{
		{"dotdot", "crm", "GET", "/api/customers/../admin", ""},
		{"dotdot at end", "crm", "GET", "/api/customers/..", ""},
		{"encoded dotdot", "crm", "GET", "/api/customers/%2e%2e/admin", ""},
		{"mixed-case encoded dotdot", "crm", "GET", "/api/customers/%2E%2e", ""},
		{"double-encoded dotdot", "crm", "GET", "/api/customers/%252e%252e", ""},
		{"dot segment", "crm", "GET", "/api/./customers/42", ""},
		{"tomcat dotdot", "crm", "GET", "/api/customers/..;/admin", ""},
		{"encoded slash", "crm", "GET", "/api/customers/42%2fadmin", ""},
		{"encoded backslash", "crm", "GET", "/api/customers/42%5Cadmin", ""},
		{"backslash", "crm", "GET", `/api\customers\42`, ""},
		{"double slash", "crm", "GET", "/api//customers/42", ""},
		{"protocol-relative", "crm", "GET", "//evil.example/api/customers/42", ""},
		{"absolute URL", "crm", "GET", "http://evil.example/api/customers/42", ""},
		{"no leading slash", "crm", "GET", "api/customers/42", ""},
		{"userinfo", "crm", "GET", "/api/customers/x@evil.example", ""},
		{"CRLF in target", "crm", "GET", "/api/customers/42 HTTP/1.1\r\nHost: evil.example\r\n\r\n", ""},
		{"encoded CRLF", "crm", "GET", "/api/customers/42%0d%0aHost:evil", ""},
		{"NUL", "crm", "GET", "/api/customers/42%00", ""},
		{"fragment", "crm", "GET", "/api/customers/42#x", ""},
		{"space", "crm", "GET", "/api/customers/4 2", ""},
		{"path not allowed", "crm", "GET", "/admin/users", ""},
		{"method not allowed", "crm", "DELETE", "/api/customers/42", ""},
		{"lower-case method", "crm", "get", "/api/customers/42", ""},
		{"method smuggling", "crm", "GET /admin HTTP/1.1\r\n", "/api/customers/42", ""},
		{"CONNECT", "crm", "CONNECT", "/api/customers/42", ""},
		{"unknown endpoint", "erp", "GET", "/api/customers/42", ""},
		{"endpoint as URL", "http://127.0.0.1/", "GET", "/api/customers/42", ""},
		{"Authorization header", "crm", "GET", "/api/customers/42", "Authorization: Bearer mine\n"},
		{"Cookie header", "crm", "GET", "/api/customers/42", "Cookie: a=b\n"},
		{"Host header", "crm", "GET", "/api/customers/42", "Host: evil.example\n"},
		{"X-Forwarded-For", "crm", "GET", "/api/customers/42", "X-Forwarded-For: 10.0.0.1\n"},
		{"Transfer-Encoding", "crm", "GET", "/api/customers/42", "Transfer-Encoding: chunked\n"},
		{"Proxy-Authorization", "crm", "GET", "/api/customers/42", "Proxy-Authorization: x\n"},
		{"CR in header value", "crm", "GET", "/api/customers/42", "X-A: b\r\nHost: evil\n"},
		{"bad header name", "crm", "GET", "/api/customers/42", "Bad Name: v\n"},
		{"header without colon", "crm", "GET", "/api/customers/42", "garbage\n"},
	}
	for _, tt := range tests {
		before := up.requests.Load()
		res := s.probe(t, tt.endpoint, tt.method, tt.target, tt.headers)
		if res.Code() != outcome.Denied {
			t.Errorf("%s: code = %s (%v; output %q), want denied", tt.name, res.Code(), res.Err, res.Output)
			continue
		}
		if got := up.requests.Load() - before; got != 0 {
			t.Errorf("%s: the API received %d request(s), want 0", tt.name, got)
		}
		msg := outcome.Message(res.Err)
		if strings.Contains(msg, up.Listener.Addr().String()) {
			t.Errorf("%s: denial message %q reveals the internal URL", tt.name, msg)
		}
		if tt.name != "CR in header value" && tt.name != "bad header name" && tt.name != "header without colon" {
			if ev := s.lastEvent(); ev.Decision != "deny" || ev.Reason == "" {
				t.Errorf("%s: last audit event = %+v, want a deny with a reason", tt.name, ev)
			}
		}
	}
}

func TestRedirects(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
	}))
	defer other.Close()
	s := newSandbox(t, up.URL, runtime.Limits{}, "http_probe")

	res := s.probe(t, "crm", "GET", "/api/customers/redirect-same", "")
	if res.Err != nil || !strings.Contains(string(res.Output), "Ada Lovelace") {
		t.Errorf("same-origin allowed redirect = %q, %v; want the record", res.Output, res.Err)
	}
	res = s.probe(t, "crm", "GET", "/api/customers/redirect-admin", "")
	if res.Code() != outcome.Denied {
		t.Errorf("redirect to a path the rules do not allow = %v, want denied", res.Err)
	}

	// An API that redirects to another origin: the hop is refused and never made.
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/api/customers/42", http.StatusFound)
	}))
	defer redirector.Close()
	s2 := newSandbox(t, redirector.URL, runtime.Limits{}, "http_probe")
	res = s2.probe(t, "crm", "GET", "/api/customers/42", "")
	if res.Code() != outcome.Denied {
		t.Errorf("redirect to another origin = %v, want denied", res.Err)
	}
	if n := elsewhere.Load(); n != 0 {
		t.Errorf("the other origin received %d request(s), want 0", n)
	}
}

func TestHTTPCallBudget(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	s := newSandbox(t, up.URL, runtime.Limits{HTTPCalls: 5}, "http_flood")
	res := s.m.Run(t.Context(), runtime.Job{ID: "flood"})
	if res.Code() != outcome.CallBudgetExceeded {
		t.Fatalf("http_flood = %v, want call_budget_exceeded", res.Err)
	}
	if got := up.requests.Load(); got != 5 {
		t.Errorf("the API received %d requests, want exactly the budget of 5", got)
	}
}

// TestTimeoutInterruptsHTTP: the job's deadline cancels an in-flight request; host functions
// are not interrupted by wazero, so the gateway must honour the job context itself.
func TestTimeoutInterruptsHTTP(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	s := newSandbox(t, up.URL, runtime.Limits{Timeout: 300 * time.Millisecond}, "http_probe")
	res := s.probe(t, "crm", "GET", "/api/customers/slow", "")
	if res.Code() != outcome.Timeout {
		t.Fatalf("slow call = %v (output %q), want timeout", res.Err, res.Output)
	}
	select {
	case <-up.ctxDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the upstream request was never cancelled")
	}
}

func TestResponseCap(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	s := newSandbox(t, up.URL, runtime.Limits{OutputBytes: 4 << 20}, "http_probe")
	res := s.probe(t, "crm", "GET", "/api/customers/big", "")
	if res.Err != nil {
		t.Fatalf("big = %v", res.Err)
	}
	out := string(res.Output)
	// 2 MiB served; the default cap is 1 MiB: the body stops at the cap with E_TOO_LARGE (-3).
	if !strings.HasSuffix(out, "E3") {
		t.Errorf("big output ends %q, want E3 (E_TOO_LARGE)", out[max(0, len(out)-20):])
	}
	if n := strings.Count(out, "x"); n > egress.DefaultMaxResponseBytes {
		t.Errorf("task read %d body bytes, want at most the cap %d", n, egress.DefaultMaxResponseBytes)
	}
}

func TestOutputGuard(t *testing.T) {
	t.Parallel()
	red := redact.NewSet()
	if err := red.Add(token); err != nil {
		t.Fatal(err)
	}
	e := newEngine(t)
	leak := []byte(`{"note":"` + base64.StdEncoding.EncodeToString([]byte(token)) + `"}`)
	for _, tt := range []struct {
		fixture string
		redact  bool
		want    outcome.Code
	}{
		{"echo", false, outcome.SecretInOutput},
		{"echo", true, outcome.OK},
		{"fail", false, outcome.SecretInOutput},
		{"fail", true, outcome.TaskError},
	} {
		m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: tt.fixture, Wasm: fixture(t, tt.fixture), Guard: red, RedactOutput: tt.redact})
		if err != nil {
			t.Fatal(err)
		}
		res := m.Run(t.Context(), runtime.Job{ID: "g", Input: leak})
		if res.Code() != tt.want {
			t.Errorf("%s (redact=%v) = %v, want %s", tt.fixture, tt.redact, res.Err, tt.want)
		}
		all := string(res.Output) + fmt.Sprint(res.Err)
		for _, f := range redact.Forms(token) {
			if strings.Contains(all, f) {
				t.Errorf("%s (redact=%v): result still holds credential form %q", tt.fixture, tt.redact, f)
			}
		}
	}
}

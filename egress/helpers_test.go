package egress

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/redact"
)

const (
	testSecret     = "tok-Zq8vN3xR7pL2mK9wY4"
	testCredential = "crm_token"
)

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// seen is one request as an upstream received it.
type seen struct {
	Method     string
	RequestURI string
	Header     http.Header
	Body       string
}

// upstream is a loopback server that records every request it receives.
type upstream struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newUpstream(t testing.TB, h http.HandlerFunc) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.reqs = append(u.reqs, seen{r.Method, r.RequestURI, r.Header.Clone(), string(b)})
		u.mu.Unlock()
		if h != nil {
			h(w, r)
		}
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) requests() []seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]seen(nil), u.reqs...)
}

// release returns a channel closed when the test ends, before its servers close, so that
// handlers which hang on purpose let the server shut down.
func release(t testing.TB) <-chan struct{} {
	ch := make(chan struct{})
	t.Cleanup(func() { close(ch) })
	return ch
}

type fakeCreds struct {
	values map[string]string
	err    error
	calls  int
	mu     sync.Mutex
}

func (f *fakeCreds) Credential(_ context.Context, name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.err != nil {
		return "", f.err
	}
	v, ok := f.values[name]
	if !ok {
		return "", outcome.New(outcome.CredentialUnavailable, "credential %q is not configured", name)
	}
	return v, nil
}

type auditLog struct {
	mu     sync.Mutex
	events []Event
}

func (a *auditLog) record(e Event) {
	a.mu.Lock()
	a.events = append(a.events, e)
	a.mu.Unlock()
}

func (a *auditLog) all() []Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]Event(nil), a.events...)
}

func newSet(t testing.TB, secrets ...string) *redact.Set {
	t.Helper()
	s := redact.NewSet()
	for _, v := range secrets {
		if err := s.Add(v); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// fixture is a gateway with one endpoint "crm" at srv (optionally under basePath).
type fixture struct {
	gw    *Gateway
	audit *auditLog
	creds *fakeCreds
	ep    *Endpoint
}

func newFixture(t testing.TB, srvURL, basePath string, auth Auth, rules ...string) *fixture {
	t.Helper()
	ep := &Endpoint{Name: "crm", BaseURL: mustURL(t, srvURL+basePath), Auth: auth}
	for _, r := range rules {
		ep.Rules = append(ep.Rules, MustParseRule(r))
	}
	return newFixtureEP(t, ep)
}

func newFixtureEP(t testing.TB, eps ...*Endpoint) *fixture {
	t.Helper()
	f := &fixture{audit: &auditLog{}, creds: &fakeCreds{values: map[string]string{testCredential: testSecret}}, ep: eps[0]}
	gw, err := New(Config{
		Endpoints:   eps,
		Credentials: f.creds,
		Redactor:    newSet(t, testSecret),
		Audit:       f.audit.record,
	})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	t.Cleanup(gw.CloseIdleConnections)
	f.gw = gw
	return f
}

var bearer = Auth{Kind: AuthHeader, Credential: testCredential, Header: "Authorization", Format: "Bearer {secret}"}

// readAll reads and closes a response body.
func readAll(t testing.TB, r *Response) (string, error) {
	t.Helper()
	b, err := io.ReadAll(r.Body)
	r.Body.Close()
	return string(b), err
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func codeOf(err error) outcome.Code { return outcome.CodeOf(err) }

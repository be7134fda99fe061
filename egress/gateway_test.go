package egress

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/redact"
)

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	base := func(s string) *url.URL { return mustURL(t, s) }
	ok := func() *Endpoint {
		return &Endpoint{Name: "crm", BaseURL: base("http://crm.internal/api"), Rules: []Rule{MustParseRule("GET /x")}}
	}
	with := func(f func(*Endpoint)) []*Endpoint { e := ok(); f(e); return []*Endpoint{e} }
	creds := &fakeCreds{}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no redactor", Config{Endpoints: []*Endpoint{ok()}}},
		{"nil endpoint", Config{Endpoints: []*Endpoint{nil}}},
		{"no name", Config{Endpoints: with(func(e *Endpoint) { e.Name = "" })}},
		{"duplicate", Config{Endpoints: []*Endpoint{ok(), ok()}}},
		{"nil base", Config{Endpoints: with(func(e *Endpoint) { e.BaseURL = nil })}},
		{"ftp", Config{Endpoints: with(func(e *Endpoint) { e.BaseURL = base("ftp://crm.internal/") })}},
		{"no host", Config{Endpoints: with(func(e *Endpoint) { e.BaseURL = base("http:///api") })}},
		{"opaque", Config{Endpoints: with(func(e *Endpoint) { e.BaseURL = base("http:crm.internal") })}},
		{"userinfo", Config{Endpoints: with(func(e *Endpoint) { e.BaseURL = base("http://u:p@crm.internal/") })}},
		{"query", Config{Endpoints: with(func(e *Endpoint) { e.BaseURL = base("http://crm.internal/?a=1") })}},
		{"force query", Config{Endpoints: with(func(e *Endpoint) { e.BaseURL = base("http://crm.internal/?") })}},
		{"fragment", Config{Endpoints: with(func(e *Endpoint) { e.BaseURL = base("http://crm.internal/#f") })}},
		{"dot base path", Config{Endpoints: with(func(e *Endpoint) { e.BaseURL = base("http://crm.internal/a/../b") })}},
		{"zero rule", Config{Endpoints: with(func(e *Endpoint) { e.Rules = []Rule{{}} })}},
		{"negative timeout", Config{Endpoints: with(func(e *Endpoint) { e.Timeout = -1 })}},
		{"negative max", Config{Endpoints: with(func(e *Endpoint) { e.MaxResponseBytes = -1 })}},
		{"auth without creds", Config{Endpoints: with(func(e *Endpoint) { e.Auth = bearer })}},
		{"no credential name", Config{Credentials: creds, Endpoints: with(func(e *Endpoint) { e.Auth = Auth{Kind: AuthBasic, Username: "u"} })}},
		{"format without secret", Config{Credentials: creds, Endpoints: with(func(e *Endpoint) {
			e.Auth = Auth{Kind: AuthHeader, Credential: "c", Header: "X-Api-Key", Format: "key"}
		})}},
		{"format with two secrets", Config{Credentials: creds, Endpoints: with(func(e *Endpoint) {
			e.Auth = Auth{Kind: AuthHeader, Credential: "c", Header: "X-Api-Key", Format: "{secret}{secret}"}
		})}},
		{"bad header name", Config{Credentials: creds, Endpoints: with(func(e *Endpoint) {
			e.Auth = Auth{Kind: AuthHeader, Credential: "c", Header: "X Key", Format: "{secret}"}
		})}},
		{"hop-by-hop auth header", Config{Credentials: creds, Endpoints: with(func(e *Endpoint) {
			e.Auth = Auth{Kind: AuthHeader, Credential: "c", Header: "connection", Format: "{secret}"}
		})}},
		{"CRLF format", Config{Credentials: creds, Endpoints: with(func(e *Endpoint) {
			e.Auth = Auth{Kind: AuthHeader, Credential: "c", Header: "X-Key", Format: "{secret}\r\nX: y"}
		})}},
		{"colon user", Config{Credentials: creds, Endpoints: with(func(e *Endpoint) {
			e.Auth = Auth{Kind: AuthBasic, Credential: "c", Username: "a:b"}
		})}},
		{"bad param", Config{Credentials: creds, Endpoints: with(func(e *Endpoint) {
			e.Auth = Auth{Kind: AuthQuery, Credential: "c", Param: "a&b"}
		})}},
		{"unknown kind", Config{Credentials: creds, Endpoints: with(func(e *Endpoint) {
			e.Auth = Auth{Kind: 99, Credential: "c"}
		})}},
	}
	for _, tt := range tests {
		if tt.cfg.Redactor == nil && tt.name != "no redactor" {
			tt.cfg.Redactor = newSet(t)
		}
		g, err := New(tt.cfg)
		if err == nil {
			t.Errorf("New(%s) = %v, nil; want an error", tt.name, g)
			continue
		}
		if contains(err.Error(), "u:p@") || contains(err.Error(), ":p@") {
			t.Errorf("New(%s) error %q prints the base URL's user info", tt.name, err)
		}
	}
}

// TestDefaultTransportIsDedicated checks that each endpoint gets its own transport (its own
// connection pool) with bounded timeouts, HTTP/1.1 only, no proxy and no transparent
// decompression, never http.DefaultTransport.
func TestDefaultTransportIsDedicated(t *testing.T) {
	t.Parallel()
	ep := func(name string) *Endpoint {
		return &Endpoint{Name: name, BaseURL: mustURL(t, "https://crm.internal"), Rules: []Rule{MustParseRule("GET /x")}, Timeout: 3 * time.Second}
	}
	g, err := New(Config{Redactor: newSet(t), Endpoints: []*Endpoint{ep("a"), ep("b")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(g.transports) != 2 || g.transports[0] == g.transports[1] {
		t.Fatalf("transports = %d; want one per endpoint", len(g.transports))
	}
	for _, tr := range g.transports {
		switch {
		case tr == http.DefaultTransport:
			t.Errorf("an endpoint uses http.DefaultTransport")
		case tr.Proxy != nil:
			t.Errorf("transport has a proxy function; want none (never the environment's)")
		case !tr.DisableCompression:
			t.Errorf("transport decompresses transparently; the gateway must decide on codings itself")
		case tr.TLSHandshakeTimeout != 3*time.Second || tr.IdleConnTimeout == 0 || tr.MaxResponseHeaderBytes == 0:
			t.Errorf("transport = %+v; want the endpoint timeout for TLS handshakes, bounded idle time and headers", tr)
		case tr.TLSClientConfig == nil || tr.TLSClientConfig.MinVersion < tls.VersionTLS12:
			t.Errorf("transport TLS config = %+v; want TLS 1.2 or later", tr.TLSClientConfig)
		case tr.Protocols == nil || tr.Protocols.HTTP2() || !tr.Protocols.HTTP1():
			t.Errorf("transport protocols = %v; want HTTP/1.1 only", tr.Protocols)
		}
	}
}

// TestDoDenies covers every policy refusal: the upstream must receive nothing, the error
// must be Denied with a specific message that never names the host, and exactly one deny
// event must be audited.
func TestDoDenies(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, nil)
	f := newFixture(t, srv.URL, "/api", bearer, "GET /customers/*", "POST /tickets/**", "* /admin/health")
	q := newFixture(t, srv.URL, "", Auth{Kind: AuthQuery, Credential: testCredential, Param: "api_key"}, "GET /x")
	small := newFixtureEP(t, &Endpoint{Name: "crm", BaseURL: mustURL(t, srv.URL), MaxRequestBytes: 4, Rules: []Rule{MustParseRule("POST /x")}})
	get := func(target string) Request { return Request{Endpoint: "crm", Method: "GET", Target: target} }
	hdr := func(k, v string) Request {
		r := get("/customers/1")
		r.Header = http.Header{k: {v}}
		return r
	}
	tests := []struct {
		name string
		fx   *fixture
		req  Request
		want string // part of the message
	}{
		{"unknown endpoint", f, Request{Endpoint: "billing", Method: "GET", Target: "/customers/1"}, `endpoint "billing" is not granted`},
		{"method not in rule", f, Request{Endpoint: "crm", Method: "DELETE", Target: "/customers/1"}, `DELETE /customers/1 not allowed by any rule`},
		{"path not in rule", f, get("/admin/users"), `endpoint "crm": GET /admin/users not allowed by any rule`},
		{"method smuggling", f, Request{Endpoint: "crm", Method: "GET /admin HTTP/1.1\r\nX:", Target: "/customers/1"}, "not an upper-case HTTP method"},
		{"lower-case method", f, Request{Endpoint: "crm", Method: "get", Target: "/customers/1"}, "not an upper-case HTTP method"},
		{"CONNECT", f, Request{Endpoint: "crm", Method: "CONNECT", Target: "/admin/health"}, "never allowed"},
		{"TRACE", f, Request{Endpoint: "crm", Method: "TRACE", Target: "/admin/health"}, "never allowed"},
		{"absolute URL", f, get("http://evil.example/customers/1"), "must start with"},
		{"network path", f, get("//evil.example/customers/1"), `"//"`},
		{"dot dot", f, get("/customers/../admin/users"), `".."`},
		{"encoded dot dot", f, get("/customers/%2e%2E/admin"), `encoded "."`},
		{"tomcat", f, get("/customers/..;/admin"), `";"`},
		{"encoded slash", f, get("/customers/1%2F..%2F..%2Fadmin"), "encoded slash"},
		{"backslash", f, get("/customers/1\\..\\admin"), `"\"`},
		{"at", f, get("/customers/@evil.example"), `"@"`},
		{"CRLF", f, get("/customers/1 HTTP/1.1\r\nHost: evil"), "white space"},
		{"NUL", f, get("/customers/1\x00"), "control"},
		{"raw utf8", f, get("/customers/caf\xc3\xa9"), "non-ASCII"},
		{"authorization", f, hdr("Authorization", "Bearer mine"), `header "Authorization" may not be set by a task`},
		{"lower-case authorization", f, hdr("authorization", "x"), `header "Authorization"`},
		{"proxy-authorization", f, hdr("Proxy-Authorization", "x"), `"Proxy-Authorization"`},
		{"proxy-anything", f, hdr("Proxy-Foo", "x"), `"Proxy-Foo"`},
		{"cookie", f, hdr("Cookie", "a=b"), `"Cookie"`},
		{"host", f, hdr("Host", "evil.example"), `"Host"`},
		{"connection", f, hdr("Connection", "close"), `"Connection"`},
		{"keep-alive", f, hdr("Keep-Alive", "1"), `"Keep-Alive"`},
		{"te", f, hdr("TE", "trailers"), `"Te"`},
		{"trailer", f, hdr("Trailer", "x"), `"Trailer"`},
		{"transfer-encoding", f, hdr("Transfer-Encoding", "chunked"), `"Transfer-Encoding"`},
		{"upgrade", f, hdr("Upgrade", "h2c"), `"Upgrade"`},
		{"content-length", f, hdr("Content-Length", "5"), `"Content-Length"`},
		{"forwarded", f, hdr("Forwarded", "for=1.2.3.4"), `"Forwarded"`},
		{"x-forwarded-for", f, hdr("X-Forwarded-For", "1.2.3.4"), `"X-Forwarded-For"`},
		{"x-forwarded-host", f, hdr("X-Forwarded-Host", "evil"), `"X-Forwarded-Host"`},
		{"x-real-ip", f, hdr("X-Real-IP", "1.2.3.4"), `"X-Real-Ip"`},
		{"accept-encoding", f, hdr("Accept-Encoding", "gzip"), `"Accept-Encoding"`},
		{"range", f, hdr("Range", "bytes=0-3"), `"Range"`},
		{"method override", f, hdr("X-HTTP-Method-Override", "DELETE"), `"X-Http-Method-Override"`},
		{"url override", f, hdr("X-Original-URL", "/admin/users"), `"X-Original-Url"`},
		{"bad header name", f, hdr("X Evil", "1"), "not a valid token"},
		{"header name CRLF", f, hdr("X-A\r\nHost", "1"), "not a valid token"},
		{"header value CRLF", f, hdr("X-Trace", "1\r\nHost: evil"), "CR, LF, NUL"},
		{"header value NUL", f, hdr("X-Trace", "1\x00"), "CR, LF, NUL"},
		{"body too large", small, Request{Endpoint: "crm", Method: "POST", Target: "/x", Body: []byte("12345")}, "over the limit of 4"},
		{"query credential param", q, get("/x?api_key=mine"), `query parameter "api_key"`},
		{"query credential param encoded", q, get("/x?a=1&api%5Fkey=mine"), `query parameter "api_key"`},
		{"query credential param semicolon", q, get("/x?a=1;API_KEY=mine"), `query parameter "api_key"`},
	}
	injected := newFixture(t, srv.URL, "", Auth{Kind: AuthHeader, Credential: testCredential, Header: "x-api-key", Format: "{secret}"}, "GET /x")
	tests = append(tests, struct {
		name string
		fx   *fixture
		req  Request
		want string
	}{"injected header", injected, Request{Endpoint: "crm", Method: "GET", Target: "/x", Header: http.Header{"X-API-KEY": {"mine"}}}, `"X-Api-Key"`})

	host := strings.TrimPrefix(srv.URL, "http://")
	hostname, _, _ := net.SplitHostPort(host)
	for _, tt := range tests {
		before := len(tt.fx.audit.all())
		resp, err := tt.fx.gw.Do(t.Context(), JobRef{Task: "t", Job: "j"}, tt.req)
		if resp != nil {
			resp.Body.Close()
		}
		var oe *outcome.Error
		if !errors.As(err, &oe) || oe.Code != outcome.Denied || !contains(oe.Msg, tt.want) {
			t.Errorf("%s: Do() = %v; want denied containing %q", tt.name, err, tt.want)
			continue
		}
		if contains(oe.Msg, hostname) || contains(oe.Msg, testSecret) {
			t.Errorf("%s: Do() message %q names the host or the credential", tt.name, oe.Msg)
		}
		evs := tt.fx.audit.all()[before:]
		if len(evs) != 1 || evs[0].Decision != "deny" || evs[0].Reason != oe.Msg {
			t.Errorf("%s: audit events = %+v; want one deny with the reason", tt.name, evs)
		}
	}
	if n := len(srv.requests()); n != 0 {
		t.Errorf("upstream received %d requests for denied calls, want 0", n)
	}
	if f.creds.calls != 0 {
		t.Errorf("credential fetched %d times for denied calls, want 0", f.creds.calls)
	}
}

func TestDoInjectsCredential(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	tests := []struct {
		name  string
		auth  Auth
		check func(s seen) bool
	}{
		{"header", Auth{Kind: AuthHeader, Credential: testCredential, Header: "x-api-key", Format: "Key {secret}"},
			func(s seen) bool { return s.Header.Get("X-Api-Key") == "Key "+testSecret }},
		{"bearer", bearer, func(s seen) bool { return s.Header.Get("Authorization") == "Bearer "+testSecret }},
		{"basic", Auth{Kind: AuthBasic, Credential: testCredential, Username: "svc"},
			func(s seen) bool {
				return s.Header.Get("Authorization") == "Basic "+base64.StdEncoding.EncodeToString([]byte("svc:"+testSecret))
			}},
		{"query", Auth{Kind: AuthQuery, Credential: testCredential, Param: "api_key"},
			func(s seen) bool {
				u, _ := url.Parse(s.RequestURI)
				return u.Query().Get("api_key") == testSecret && u.Query().Get("q") == "a b"
			}},
		{"none", Auth{}, func(s seen) bool { return s.Header.Get("Authorization") == "" }},
	}
	for _, tt := range tests {
		f := newFixture(t, srv.URL, "/api/v1/", tt.auth, "GET,POST /customers/*")
		before := len(srv.requests())
		resp, err := f.gw.Do(t.Context(), JobRef{}, Request{
			Endpoint: "crm", Method: "POST", Target: "/customers/a%20b?q=a+b",
			Header: http.Header{"X-Trace": {"t1"}, "content-type": {"text/plain"}}, Body: []byte("hello"),
		})
		if err != nil {
			t.Fatalf("%s: Do() = %v", tt.name, err)
		}
		body, err := readAll(t, resp)
		if err != nil || body != "ok" || resp.Status != 200 {
			t.Errorf("%s: response = %d %q %v; want 200 ok", tt.name, resp.Status, body, err)
		}
		got := srv.requests()[before:]
		if len(got) != 1 {
			t.Fatalf("%s: upstream saw %d requests, want 1", tt.name, len(got))
		}
		s := got[0]
		wantURI := "/api/v1/customers/a%20b?q=a+b"
		if !strings.HasPrefix(s.RequestURI, wantURI) || s.Method != "POST" || s.Body != "hello" ||
			s.Header.Get("X-Trace") != "t1" || s.Header.Get("Content-Type") != "text/plain" || !tt.check(s) {
			t.Errorf("%s: upstream saw %+v; want %s with the credential, task headers and body", tt.name, s, wantURI)
		}
	}
}

func TestDoFetchesCredentialPerCall(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, nil)
	f := newFixture(t, srv.URL, "", bearer, "GET /x")
	for _, v := range []string{"first-value-123456", "rotated-value-654321"} {
		f.creds.mu.Lock()
		f.creds.values[testCredential] = v
		f.creds.mu.Unlock()
		resp, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x"})
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, resp)
		reqs := srv.requests()
		if got := reqs[len(reqs)-1].Header.Get("Authorization"); got != "Bearer "+v {
			t.Errorf("after rotation upstream saw Authorization %q, want the current value", got)
		}
	}
}

func TestDoCredentialUnavailable(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, nil)
	f := newFixture(t, srv.URL, "", bearer, "GET /x")
	f.creds.err = outcome.New(outcome.CredentialUnavailable, "vault: secret crm_token missing")
	_, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x"})
	if !errors.Is(err, f.creds.err) {
		t.Errorf("Do() = %v; want the provider's *outcome.Error passed through", err)
	}
	f.creds.err = errors.New("plain error")
	_, err = f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x"})
	if codeOf(err) != outcome.CredentialUnavailable {
		t.Errorf("Do() = %v; want code credential_unavailable", err)
	}
	f.creds.err = nil
	f.creds.values[testCredential] = "has\r\nnewline-1234567"
	_, err = f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x"})
	if codeOf(err) != outcome.CredentialUnavailable || contains(err.Error(), "newline") {
		t.Errorf("Do() = %v; want credential_unavailable without the value", err)
	}
	if n := len(srv.requests()); n != 0 {
		t.Errorf("upstream received %d requests without a credential, want 0", n)
	}
	evs := f.audit.all()
	if len(evs) != 3 || evs[0].Decision != "allow" || !contains(evs[0].Reason, "credential_unavailable") {
		t.Errorf("audit = %+v; want 3 events with reason credential_unavailable", evs)
	}
}

// TestRedirects: same-origin hops under the rules are followed with the credential; every
// other hop fails the call as denied before anything is sent to it.
func TestRedirects(t *testing.T) {
	t.Parallel()
	other := newUpstream(t, nil) // must never receive anything
	var srv *upstream
	srv = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/start":
			http.Redirect(w, r, "/api/next?x=1", http.StatusFound)
		case "/api/next":
			io.WriteString(w, "arrived")
		case "/api/loop":
			http.Redirect(w, r, "/api/loop", http.StatusFound)
		case "/api/cross":
			http.Redirect(w, r, other.URL+"/api/next", http.StatusFound)
		case "/api/cross-scheme":
			http.Redirect(w, r, "https://"+r.Host+"/api/next", http.StatusFound)
		case "/api/cross-port":
			http.Redirect(w, r, "http://"+strings.Replace(r.Host, ":", ":1", 1)+"/api/next", http.StatusFound)
		case "/api/userinfo":
			http.Redirect(w, r, "http://user:pw@"+r.Host+"/api/next", http.StatusFound)
		case "/api/unlisted":
			http.Redirect(w, r, "/api/admin", http.StatusFound)
		case "/api/outside":
			http.Redirect(w, r, "/other/next", http.StatusFound)
		case "/api/dotdot":
			http.Redirect(w, r, "/api/x/../admin", http.StatusFound)
		case "/api/encoded":
			http.Redirect(w, r, "/api/next%2F..%2Fadmin", http.StatusFound)
		case "/api/post":
			http.Redirect(w, r, "/api/postonly", http.StatusFound) // 302 turns POST into GET
		case "/api/keep":
			http.Redirect(w, r, "/api/postonly", http.StatusTemporaryRedirect)
		case "/api/postonly":
			io.WriteString(w, r.Method)
		}
	})
	rules := []string{"GET /start", "GET /next", "GET /loop", "GET /cross", "GET /cross-scheme", "GET /cross-port",
		"GET /userinfo", "GET /unlisted", "GET /outside", "GET /dotdot", "GET /encoded", "POST /post", "POST /keep", "POST /postonly"}
	for _, auth := range []Auth{bearer, {Kind: AuthQuery, Credential: testCredential, Param: "api_key"}} {
		f := newFixture(t, srv.URL, "/api", auth, rules...)
		do := func(method, target string) (*Response, error) {
			return f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: method, Target: target, Body: []byte("b")})
		}

		before := len(srv.requests())
		resp, err := do("GET", "/start")
		if err != nil {
			t.Fatalf("Do(/start) = %v", err)
		}
		if body, _ := readAll(t, resp); body != "arrived" {
			t.Errorf("Do(/start) body = %q, want arrived", body)
		}
		hops := srv.requests()[before:]
		if len(hops) != 2 || !credentialIn(hops[1], auth) || !strings.HasPrefix(hops[1].RequestURI, "/api/next?x=1") {
			t.Errorf("redirect hops = %+v; want 2 with the credential on the second", hops)
		}

		resp, err = do("POST", "/keep")
		if err != nil {
			t.Fatalf("Do(/keep) = %v", err)
		}
		if body, _ := readAll(t, resp); body != "POST" {
			t.Errorf("307 hop body = %q, want POST", body)
		}

		for _, tt := range []struct{ method, target, want string }{
			{"GET", "/cross", "redirect to another origin refused"},
			{"GET", "/cross-scheme", "redirect to another origin refused"},
			{"GET", "/cross-port", "redirect to another origin refused"},
			{"GET", "/userinfo", "redirect to another origin refused"},
			{"GET", "/unlisted", "redirect to a path the rules do not allow"},
			{"GET", "/outside", "redirect to a path the rules do not allow"},
			{"GET", "/dotdot", "redirect to a path the rules do not allow"},
			{"GET", "/encoded", "redirect to a path the rules do not allow"},
			{"POST", "/post", "redirect to a path the rules do not allow"},
			{"GET", "/loop", "more than 5 redirects"},
		} {
			before := len(srv.requests())
			evBefore := len(f.audit.all())
			resp, err := do(tt.method, tt.target)
			if resp != nil {
				resp.Body.Close()
			}
			var oe *outcome.Error
			if !errors.As(err, &oe) || oe.Code != outcome.Denied || !contains(oe.Msg, tt.want) || contains(oe.Msg, "127.0.0.1") {
				t.Errorf("Do(%s %s) = %v; want denied %q", tt.method, tt.target, err, tt.want)
			}
			for _, s := range srv.requests()[before:] {
				if p := strings.SplitN(s.RequestURI, "?", 2)[0]; p == "/api/admin" || p == "/other/next" || p == "/api/postonly" {
					t.Errorf("Do(%s %s): upstream received the refused hop %s", tt.method, tt.target, s.RequestURI)
				}
			}
			if tt.target == "/loop" {
				if n := len(srv.requests()) - before; n != MaxRedirects+1 {
					t.Errorf("Do(GET /loop) sent %d requests, want %d", n, MaxRedirects+1)
				}
			}
			evs := f.audit.all()[evBefore:]
			if len(evs) != 1 || evs[0].Decision != "deny" {
				t.Errorf("Do(%s %s) audit = %+v; want one deny", tt.method, tt.target, evs)
			}
		}
	}
	if n := len(other.requests()); n != 0 {
		t.Errorf("other origin received %d requests, want 0", n)
	}
}

func credentialIn(s seen, a Auth) bool {
	if a.Kind == AuthBasic {
		u, p, ok := (&http.Request{Header: s.Header}).BasicAuth()
		return ok && u == a.Username && p == testSecret
	}
	if a.Kind == AuthQuery {
		u, _ := url.Parse(s.RequestURI)
		return u.Query()[a.Param][0] == testSecret && len(u.Query()[a.Param]) == 1
	}
	return s.Header.Get("Authorization") == "Bearer "+testSecret
}

func TestResponseHeadersFiltered(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Set-Cookie", "session=abc")
		h.Set("Set-Cookie2", "session=abc")
		h.Set("Connection", "X-Private")
		h.Set("X-Private", "conn-scoped")
		h.Set("Keep-Alive", "timeout=5")
		h.Set("Proxy-Authenticate", "Basic")
		h.Set("Upgrade", "h2c")
		h.Set("X-Echo", "Bearer "+testSecret)
		h.Set("X-"+testSecret, "1")
		// Written as is, and re-cased by the client's parser ("X-Tok-..."): the name check
		// must not depend on the letter case the credential arrives in.
		h["x-tok-"+testSecret] = []string{"1"}
		h.Set("X-Fine", "yes")
		io.WriteString(w, "ok")
	})
	f := newFixture(t, srv.URL, "", bearer, "GET /x")
	resp, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x"})
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, resp)
	for _, k := range []string{"Set-Cookie", "Set-Cookie2", "Connection", "X-Private", "Keep-Alive", "Proxy-Authenticate", "Upgrade"} {
		if v := resp.Header.Values(k); len(v) != 0 {
			t.Errorf("response header %s = %q, want removed", k, v)
		}
	}
	if got := resp.Header.Get("X-Fine"); got != "yes" {
		t.Errorf("response header X-Fine = %q, want yes", got)
	}
	if got := resp.Header.Get("X-Echo"); got == "" || contains(got, testSecret) {
		t.Errorf("response header X-Echo = %q, want present and redacted", got)
	}
	if s := fmt.Sprint(resp.Header); contains(strings.ToLower(s), strings.ToLower(testSecret)) {
		t.Errorf("response headers %s hold the credential (in some letter case)", s)
	}
}

func TestResponseTooLarge(t *testing.T) {
	t.Parallel()
	stop := release(t)
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/exact":
			w.Write(make([]byte, 64))
		case "/over":
			w.Write(make([]byte, 65))
		case "/endless": // never ends: the gateway must stop reading, not buffer
			chunk := make([]byte, 4096)
			for {
				if _, err := w.Write(chunk); err != nil {
					return
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}
	})
	f := newFixtureEP(t, &Endpoint{Name: "crm", BaseURL: mustURL(t, srv.URL), MaxResponseBytes: 64,
		Rules: []Rule{MustParseRule("GET /*")}})
	for _, tt := range []struct {
		target  string
		wantErr error
		wantN   int
	}{{"/exact", nil, 64}, {"/over", ErrResponseTooLarge, 0}, {"/endless", ErrResponseTooLarge, 0}} {
		resp, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: tt.target})
		if err != nil {
			t.Fatalf("Do(%s) = %v", tt.target, err)
		}
		var total int
		buf := make([]byte, 16)
		for {
			n, err := resp.Body.Read(buf)
			total += n
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("Do(%s) body error = %v, want %v", tt.target, err, tt.wantErr)
				}
				break
			}
		}
		if total > 64 || (tt.wantErr == nil && total != tt.wantN) {
			t.Errorf("Do(%s) body yielded %d bytes; want %d and never more than 64", tt.target, total, tt.wantN)
		}
		if _, err := resp.Body.Read(buf); !errors.Is(err, ErrResponseTooLarge) && tt.wantErr != nil {
			t.Errorf("Do(%s) second Read error = %v, want sticky ErrResponseTooLarge", tt.target, err)
		}
		resp.Body.Close()
		evs := f.audit.all()
		if ev := evs[len(evs)-1]; ev.ResponseBytes > 65 || (tt.wantErr != nil && ev.Reason != "response too large") {
			t.Errorf("Do(%s) audit = %+v; want at most 65 bytes read and the reason", tt.target, ev)
		}
	}
}

// TestResponseStreams shows that Do returns at the headers and the body arrives in pieces
// while the upstream is still writing.
func TestResponseStreams(t *testing.T) {
	t.Parallel()
	next := make(chan struct{})
	stop := release(t)
	first := strings.Repeat("a", 8<<10)
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, first)
		w.(http.Flusher).Flush()
		select {
		case <-next:
			io.WriteString(w, "second")
		case <-stop:
		}
	})
	f := newFixture(t, srv.URL, "", Auth{}, "GET /x")
	resp, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x"})
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	buf := make([]byte, 64)
	// The redactor may hold back less than one credential's length; the rest must arrive
	// while the upstream is still blocked.
	for len(got) < len(first)-64 {
		n, err := resp.Body.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("Read() = %v before the first chunk arrived", err)
		}
	}
	close(next)
	rest, err := readAll(t, resp)
	if err != nil || string(got)+rest != first+"second" {
		t.Errorf("streamed body = %d bytes, %v; want %d", len(got)+len(rest), err, len(first)+6)
	}
}

func TestCredentialEcho(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Echo-Auth", r.Header.Get("Authorization"))
		w.Header().Set("X-Echo-Query", r.URL.RawQuery)
		fmt.Fprintf(w, `{"headers":%q,"query":%q,"hex":"%x","b64":%q,"b64url":%q,"urlenc":%q,"uri":%q}`,
			fmt.Sprint(r.Header), r.URL.RawQuery, testSecret,
			base64.StdEncoding.EncodeToString([]byte(testSecret)),
			base64.RawURLEncoding.EncodeToString([]byte("x"+testSecret)),
			url.QueryEscape(testSecret), r.RequestURI)
	})
	forms := append(redact.Forms(testSecret), base64.StdEncoding.EncodeToString([]byte(testSecret)), url.QueryEscape(testSecret))
	for _, auth := range []Auth{bearer, {Kind: AuthBasic, Credential: testCredential, Username: "svc"},
		{Kind: AuthQuery, Credential: testCredential, Param: "api_key"}} {
		f := newFixture(t, srv.URL, "", auth, "GET /echo")
		before := len(srv.requests())
		resp, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/echo?a=1"})
		if err != nil {
			t.Fatal(err)
		}
		body, err := readAll(t, resp)
		if err != nil {
			t.Fatal(err)
		}
		visible := body + fmt.Sprint(resp.Header)
		for _, form := range forms {
			if contains(visible, form) {
				t.Errorf("auth kind %d: task-visible response holds credential form %q:\n%s", auth.Kind, form, visible)
			}
		}
		if !contains(body, "REDACTED") {
			t.Errorf("auth kind %d: body %s has no redaction marker; the echo did not happen", auth.Kind, body)
		}
		if s := srv.requests()[before]; !credentialIn(s, auth) {
			t.Errorf("auth kind %d: upstream did not receive the real credential: %+v", auth.Kind, s)
		}
	}
}

func TestAuditEvent(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "0123456789") })
	f := newFixture(t, srv.URL, "", Auth{Kind: AuthQuery, Credential: testCredential, Param: "api_key"}, "POST /c/*")
	resp, err := f.gw.Do(t.Context(), JobRef{Task: "sync", Job: "j-1"}, Request{
		Endpoint: "crm", Method: "POST", Target: "/c/42?email=alice%40example.com",
		Header: http.Header{"X-Note": {"header-value-secret"}}, Body: []byte("body-content"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(f.audit.all()); n != 0 {
		t.Errorf("%d audit events before Close, want 0", n)
	}
	readAll(t, resp)
	resp.Body.Close()
	evs := f.audit.all()
	if len(evs) != 1 {
		t.Fatalf("audit events = %d, want exactly 1", len(evs))
	}
	ev := evs[0]
	if ev.Task != "sync" || ev.Job != "j-1" || ev.Endpoint != "crm" || ev.Method != "POST" || ev.Path != "/c/42" ||
		ev.Status != 200 || ev.RequestBytes != 12 || ev.ResponseBytes != 10 || ev.Decision != "allow" ||
		ev.Reason != "" || ev.Duration <= 0 || ev.Time.IsZero() {
		t.Errorf("audit event = %+v; want the call's fields", ev)
	}
	s := fmt.Sprintf("%+v", ev)
	for _, leak := range []string{testSecret, "email", "alice", "api_key", "?", "header-value-secret", "body-content", "0123456789"} {
		if contains(s, leak) {
			t.Errorf("audit event %s contains %q", s, leak)
		}
	}
}

func TestEndpointTimeout(t *testing.T) {
	t.Parallel()
	stop := release(t)
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slowbody" {
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
		}
		select {
		case <-stop:
		case <-r.Context().Done():
		}
	})
	f := newFixtureEP(t, &Endpoint{Name: "crm", BaseURL: mustURL(t, srv.URL), Timeout: 100 * time.Millisecond,
		Rules: []Rule{MustParseRule("GET /*")}})
	_, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/hang"})
	var ue *UpstreamError
	if !errors.As(err, &ue) || !ue.Timeout() || ue.Endpoint != "crm" {
		t.Fatalf("Do(/hang) = %v; want an endpoint-timeout *UpstreamError", err)
	}
	if errors.Is(err, context.DeadlineExceeded) || codeOf(err) == outcome.Timeout {
		t.Errorf("Do(/hang) = %v reads as the job's deadline; want an upstream error", err)
	}

	resp, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/slowbody"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !errors.As(err, &ue) || !ue.Timeout() {
		t.Errorf("reading /slowbody = %v; want an endpoint-timeout *UpstreamError", err)
	}
	evs := f.audit.all()
	if len(evs) != 2 || !contains(evs[0].Reason, "upstream:") || !contains(evs[1].Reason, "upstream:") {
		t.Errorf("audit = %+v; want two events with upstream reasons", evs)
	}
}

func TestJobDeadlineAndCancel(t *testing.T) {
	t.Parallel()
	stop := release(t)
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/body" {
			io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
		}
		select {
		case <-stop:
		case <-r.Context().Done():
		}
	})
	f := newFixture(t, srv.URL, "", bearer, "GET /*")

	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := f.gw.Do(ctx, JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/hang"})
	if codeOf(err) != outcome.Timeout || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Do() past the job deadline = %v; want outcome timeout wrapping DeadlineExceeded", err)
	}

	ctx, cancel = context.WithCancel(t.Context())
	resp, err := f.gw.Do(ctx, JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/body"})
	if err != nil {
		t.Fatal(err)
	}
	// Cancel while the reader waits for bytes the upstream never sends (or just before:
	// either way the read must end as cancelled, not as an upstream error).
	go cancel()
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if codeOf(err) != outcome.Cancelled || !errors.Is(err, context.Canceled) {
		t.Errorf("reading after job cancel = %v; want outcome cancelled", err)
	}

	_, err = f.gw.Do(ctx, JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/hang"})
	if codeOf(err) != outcome.Cancelled {
		t.Errorf("Do() with a cancelled job = %v; want cancelled", err)
	}
}

func TestUpstreamUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens here now
	f := newFixture(t, "http://"+addr, "", Auth{Kind: AuthQuery, Credential: testCredential, Param: "api_key"}, "GET /x")
	_, err = f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x?page=2"})
	var ue *UpstreamError
	if !errors.As(err, &ue) || ue.Timeout() {
		t.Fatalf("Do() to a closed port = %v; want *UpstreamError", err)
	}
	if contains(err.Error(), testSecret) || contains(err.Error(), "page=2") || contains(err.Error(), "api_key") ||
		contains(err.Error(), addr) || contains(err.Error(), "127.0.0.1") {
		t.Errorf("UpstreamError %q holds the query, the credential or the endpoint's address", err)
	}
	evs := f.audit.all()
	if len(evs) != 1 || contains(fmt.Sprintf("%+v", evs[0]), testSecret) || !contains(evs[0].Reason, "upstream:") {
		t.Errorf("audit = %+v; want one upstream event without the credential", evs)
	}
}

// TestCloseDuringRead: the runtime closes open responses at job end, possibly while a Read
// is blocked; Close must unblock it and audit once.
func TestCloseDuringRead(t *testing.T) {
	t.Parallel()
	stop := release(t)
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush()
		select {
		case <-stop:
		case <-r.Context().Done():
		}
	})
	f := newFixture(t, srv.URL, "", Auth{}, "GET /x")
	resp, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := resp.Body.Read(make([]byte, 8))
		done <- err
	}()
	resp.Body.Close()
	if err := <-done; err == nil {
		t.Errorf("Read() after Close = nil error, want an error")
	}
	resp.Body.Close()
	if n := len(f.audit.all()); n != 1 {
		t.Errorf("audit events = %d, want 1 after two Closes", n)
	}
}

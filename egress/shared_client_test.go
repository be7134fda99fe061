package egress

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/castellan-dev/castellan/outcome"
)

// TestRedirectStatePerCall: one gateway (one shared http.Client) serves concurrent calls to
// two endpoints with different credentials and policies. Every redirect hop carries the
// credential of its own call's endpoint and is judged by that endpoint's rules, never by
// another call's.
func TestRedirectStatePerCall(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/a/start":
			http.Redirect(w, r, "/a/next", http.StatusFound)
		case "/b/start":
			http.Redirect(w, r, "/b/next", http.StatusFound)
		case "/b/escape":
			http.Redirect(w, r, "/a/next", http.StatusFound) // allowed for "a", not for "b"
		default:
			io.WriteString(w, r.Header.Get("Authorization"))
		}
	})
	a := &Endpoint{Name: "a", BaseURL: mustURL(t, srv.URL+"/a"), Rules: []Rule{MustParseRule("GET /**")},
		Auth: Auth{Kind: AuthHeader, Credential: "cred_a", Header: "Authorization", Format: "A {secret}"}}
	b := &Endpoint{Name: "b", BaseURL: mustURL(t, srv.URL+"/b"), Rules: []Rule{MustParseRule("GET /**")},
		Auth: Auth{Kind: AuthHeader, Credential: "cred_b", Header: "Authorization", Format: "B {secret}"}}
	creds := &fakeCreds{values: map[string]string{"cred_a": "secret-of-endpoint-a", "cred_b": "secret-of-endpoint-b"}}
	gw, err := New(Config{Endpoints: []*Endpoint{a, b}, Credentials: creds, Redactor: newSet(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.CloseIdleConnections)

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ep, want := "a", "A secret-of-endpoint-a"
			if i%2 == 1 {
				ep, want = "b", "B secret-of-endpoint-b"
			}
			resp, err := gw.Do(t.Context(), JobRef{}, Request{Endpoint: ep, Method: "GET", Target: "/start"})
			if err != nil {
				errs <- fmt.Errorf("Do(%s /start) = %v", ep, err)
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != want {
				errs <- fmt.Errorf("Do(%s /start) hop saw Authorization %q, want %q", ep, body, want)
			}
			if i%4 == 1 {
				resp, err := gw.Do(t.Context(), JobRef{}, Request{Endpoint: "b", Method: "GET", Target: "/escape"})
				if resp != nil {
					resp.Body.Close()
				}
				if outcome.CodeOf(err) != outcome.Denied {
					errs <- fmt.Errorf("Do(b /escape) = %v, want denied (the hop leaves b's base path)", err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestRedirectPolicyFailsClosed: a request that somehow reaches the shared client without its
// call's state is never redirected.
func TestRedirectPolicyFailsClosed(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest("GET", "http://crm.internal/api/next", nil)
	err := redirectPolicy(r, []*http.Request{r})
	if outcome.CodeOf(err) != outcome.Denied {
		t.Errorf("redirectPolicy(request without state) = %v, want denied", err)
	}
}

// headerTransport answers with fixed headers, spelled as a non-net/http transport might.
type headerTransport struct{ h http.Header }

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h := http.Header{}
	for k, v := range t.h {
		h[k] = append([]string(nil), v...)
	}
	return &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(strings.NewReader("ok")), Request: r}, nil
}

// TestResponseHeadersNonCanonical: header names that are not in canonical form (a custom
// transport) are dropped, merged and redacted exactly like canonical ones.
func TestResponseHeadersNonCanonical(t *testing.T) {
	t.Parallel()
	ep := &Endpoint{Name: "crm", BaseURL: mustURL(t, "http://crm.internal/"), Rules: []Rule{MustParseRule("GET /x")}, Auth: bearer}
	gw, err := New(Config{
		Endpoints: []*Endpoint{ep}, Credentials: &fakeCreds{values: map[string]string{testCredential: testSecret}},
		Redactor: newSet(t, testSecret),
		Transport: headerTransport{http.Header{
			"set-cookie":          {"session=abc"},
			"connection":          {"x-private"},
			"x-PRIVATE":           {"conn-scoped"},
			"transfer-encoding":   {"chunked"},
			"x-echo":              {"Bearer " + testSecret},
			"X-Echo":              {"plain"},
			"x-fine":              {"yes"},
			"proxy-authenticate":  {"Basic"},
			"Proxy-Authenticate2": {"kept: not hop-by-hop"},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x"})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	want := http.Header{
		"X-Echo":              {"Bearer " + "[REDACTED]", "plain"},
		"X-Fine":              {"yes"},
		"Proxy-Authenticate2": {"kept: not hop-by-hop"},
	}
	got := resp.Header
	if v := got["X-Echo"]; len(v) == 2 && v[0] == "plain" { // merge order follows map order
		v[0], v[1] = v[1], v[0]
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("response headers = %v, want %v", got, want)
	}
}

// TestBodyReadAfterClose: once closed, a body yields no more bytes (its redactor's pooled
// buffers have gone back), only an error.
func TestBodyReadAfterClose(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, strings.Repeat("data ", 1000)) })
	f := newFixture(t, srv.URL, "", bearer, "GET /x")
	resp, err := f.gw.Do(t.Context(), JobRef{}, Request{Endpoint: "crm", Method: "GET", Target: "/x"})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 16)
	if n, err := resp.Body.Read(p); n == 0 || err != nil {
		t.Fatalf("first Read() = %d, %v; want data", n, err)
	}
	resp.Body.Close()
	for range 3 {
		if n, err := resp.Body.Read(p); n != 0 || err == nil || errors.Is(err, io.EOF) {
			t.Errorf("Read() after Close = %d, %v; want 0 and a non-EOF error", n, err)
		}
	}
}

func TestNewRejectsEmptyPort(t *testing.T) {
	t.Parallel()
	for _, base := range []string{"http://crm.internal:/api", "https://[::1]:/"} {
		ep := &Endpoint{Name: "crm", BaseURL: mustURL(t, base), Rules: []Rule{MustParseRule("GET /x")}}
		if g, err := New(Config{Endpoints: []*Endpoint{ep}, Redactor: newSet(t)}); err == nil || !strings.Contains(err.Error(), "empty port") {
			t.Errorf("New(BaseURL %s) = %v, %v; want an empty port error", base, g, err)
		}
	}
}

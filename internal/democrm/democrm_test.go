package democrm

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

const token = "s3cr3t-token"

func get(t *testing.T, h http.Handler, target, auth string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), "GET", target, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestAuth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		target string
		auth   []string
		want   int
	}{
		{name: "right token", target: "/api/customers/42", auth: []string{"Bearer " + token}, want: 200},
		{name: "no token", target: "/api/customers/42", want: 401},
		{name: "wrong token", target: "/api/customers/42", auth: []string{"Bearer nope"}, want: 401},
		{name: "token prefix", target: "/api/customers/42", auth: []string{"Bearer " + token[:5]}, want: 401},
		{name: "token with suffix", target: "/api/customers/42", auth: []string{"Bearer " + token + "x"}, want: 401},
		{name: "bare token", target: "/api/customers/42", auth: []string{token}, want: 401},
		{name: "lower-case scheme", target: "/api/customers/42", auth: []string{"bearer " + token}, want: 401},
		{name: "two headers", target: "/api/customers/42", auth: []string{"Bearer nope", "Bearer " + token}, want: 401},
		{name: "unknown api route still needs auth", target: "/api/nothing", want: 401},
		{name: "unknown api route with auth", target: "/api/nothing", auth: []string{"Bearer " + token}, want: 404},
		{name: "healthz is open", target: "/healthz", want: 200},
		{name: "echo needs auth", target: "/api/echo", want: 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := New(token)
			req := httptest.NewRequestWithContext(t.Context(), "GET", tt.target, nil)
			for _, a := range tt.auth {
				req.Header.Add("Authorization", a)
			}
			rec := httptest.NewRecorder()
			s.Handler().ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Fatalf("GET %s with %q = %d, want %d", tt.target, tt.auth, rec.Code, tt.want)
			}
			wantCount := int64(0)
			if tt.want != 401 && strings.HasPrefix(tt.target, "/api/") {
				wantCount = 1
			}
			if got := s.Requests(); got != wantCount {
				t.Fatalf("Requests() = %d, want %d", got, wantCount)
			}
			if tt.want == 401 && rec.Header().Get("WWW-Authenticate") == "" {
				t.Fatalf("401 without WWW-Authenticate")
			}
		})
	}
}

func TestNewEmptyTokenPanics(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Fatalf("New(\"\") did not panic")
		}
	}()
	New("")
}

func TestCustomers(t *testing.T) {
	t.Parallel()
	h := New(token).Handler()
	for id, want := range customers {
		rec := get(t, h, "/api/customers/"+id, "Bearer "+token)
		var got Customer
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || rec.Code != 200 || got != want {
			t.Errorf("GET /api/customers/%s = %d %+v (%v), want 200 %+v", id, rec.Code, got, err, want)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q, want application/json", ct)
		}
	}
	if _, ok := Lookup("42"); !ok {
		t.Fatalf("customer 42 is not seeded; the demo needs it")
	}
	rec := get(t, h, "/api/customers/99", "Bearer "+token)
	if rec.Code != 404 || !strings.Contains(rec.Body.String(), `"customer \"99\" not found"`) {
		t.Fatalf("GET /api/customers/99 = %d %s, want 404 with an error", rec.Code, rec.Body)
	}
}

func TestEcho(t *testing.T) {
	t.Parallel()
	h := New(token).Handler()
	req := httptest.NewRequestWithContext(t.Context(), "POST", "/api/echo?a=1&b=%20", strings.NewReader("hello"))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("X-Custom", "v")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var got Echo
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatalf("echo body %q: %v", rec.Body, err)
	}
	if got.Method != "POST" || got.Path != "/api/echo" || got.RawQuery != "a=1&b=%20" || got.Body != "hello" ||
		got.Headers["Authorization"][0] != "Bearer "+token || got.Headers["X-Custom"][0] != "v" {
		t.Fatalf("echo = %+v, want the request reflected, credential included", got)
	}

	rec = get(t, h, "/api/echo-b64", "Bearer "+token)
	var b64 struct {
		V string `json:"authorization_b64"`
	}
	json.Unmarshal(rec.Body.Bytes(), &b64)
	if want := base64.StdEncoding.EncodeToString([]byte("Bearer " + token)); b64.V != want {
		t.Fatalf("echo-b64 = %q, want %q", b64.V, want)
	}
}

func TestRedirect(t *testing.T) {
	t.Parallel()
	h := New(token).Handler()
	for _, to := range []string{"/api/customers/42", "http://evil.example/x", "/a/%2e%2e/b", "/a/../b"} {
		rec := get(t, h, "/api/redirect?to="+strings.ReplaceAll(to, "%", "%25"), "Bearer "+token)
		if rec.Code != http.StatusFound || rec.Header().Get("Location") != to {
			t.Errorf("redirect to %q = %d Location %q, want 302 and the exact location", to, rec.Code, rec.Header().Get("Location"))
		}
	}
	if rec := get(t, h, "/api/redirect", "Bearer "+token); rec.Code != 400 {
		t.Errorf("redirect without to = %d, want 400", rec.Code)
	}
}

func TestBig(t *testing.T) {
	t.Parallel()
	h := New(token).Handler()
	for _, n := range []int{0, 1, 25, 26, 27, 32<<10 - 26, 32 << 10, 100_003} {
		rec := get(t, h, "/api/big?bytes="+itoa(n), "Bearer "+token)
		body := rec.Body.Bytes()
		if rec.Code != 200 || len(body) != n {
			t.Fatalf("big?bytes=%d = %d, %d bytes", n, rec.Code, len(body))
		}
		for i, c := range body {
			if c != Filler(int64(i)) {
				t.Fatalf("big?bytes=%d: byte %d = %q, want %q", n, i, c, Filler(int64(i)))
			}
		}
	}
	for _, bad := range []string{"-1", "x", "", "2000000000"} {
		if rec := get(t, h, "/api/big?bytes="+bad, "Bearer "+token); rec.Code != 400 {
			t.Errorf("big?bytes=%q = %d, want 400", bad, rec.Code)
		}
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestStartSlowAndStop(t *testing.T) {
	t.Parallel()
	if _, _, err := Start(t.Context(), ""); err == nil {
		t.Fatalf("Start(empty token) = nil error")
	}
	s := New(token)
	base, stop, err := s.Start(t.Context())
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	defer stop()

	do := func(ctx context.Context, path string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		return http.DefaultClient.Do(req)
	}
	resp, err := do(t.Context(), "/api/slow?ms=1")
	if err != nil {
		t.Fatalf("GET slow?ms=1: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(b)) != `{"slept_ms":1}` {
		t.Fatalf("GET slow?ms=1 = %d %s", resp.StatusCode, b)
	}

	// The client gives up long before the server would answer: the request must end, and
	// stop must not wait for the 5-minute sleep either.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := do(ctx, "/api/slow?ms=300000"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GET slow?ms=300000 with a 50ms deadline = %v, want DeadlineExceeded", err)
	}
	go do(t.Context(), "/api/slow?ms=300000") // still in flight when stop is called
	for deadline := time.Now().Add(5 * time.Second); s.Requests() < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Requests() = %d after 5s, want 3", s.Requests())
		}
	}
	start := time.Now()
	stop()
	stop() // idempotent
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("stop() took %v with a slow request in flight", d)
	}
	if _, err := do(t.Context(), "/healthz"); err == nil {
		t.Fatalf("GET /healthz after stop succeeded")
	}
}

func TestStartStopsWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	base, stop, err := Start(ctx, token)
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	defer stop()
	if resp, err := http.Get(base + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /healthz = %v, %v", resp, err)
	} else {
		resp.Body.Close()
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			break
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatalf("server still answering 5s after its context was cancelled")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRequestsByURL(t *testing.T) {
	t.Parallel()
	base, stop, err := Start(t.Context(), token)
	if err != nil {
		t.Fatalf("Start() = %v", err)
	}
	for i := range 2 {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", base+"/api/customers/42", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		resp.Body.Close()
	}
	if resp, err := http.Get(base + "/api/customers/42"); err == nil { // unauthenticated: not counted
		resp.Body.Close()
	}
	if got := Requests(base); got != 2 {
		t.Fatalf("Requests(%s) = %d, want 2", base, got)
	}
	stop()
	if got := Requests(base); got != 0 {
		t.Fatalf("Requests(%s) after stop = %d, want 0", base, got)
	}
}

// lineWriter hands each Write to a channel, so a test can wait for output without sleeping.
type lineWriter chan string

func (w lineWriter) Write(p []byte) (int, error) { w <- string(p); return len(p), nil }

func TestListenAndServe(t *testing.T) {
	t.Parallel()
	if err := ListenAndServe(t.Context(), "127.0.0.1:0", "", io.Discard); err == nil {
		t.Fatalf("ListenAndServe(empty token) = nil")
	}
	if err := ListenAndServe(t.Context(), "256.0.0.1:0", token, io.Discard); err == nil {
		t.Fatalf("ListenAndServe(bad address) = nil")
	}
	ctx, cancel := context.WithCancel(t.Context())
	out := make(lineWriter, 1)
	done := make(chan error, 1)
	go func() { done <- ListenAndServe(ctx, "127.0.0.1:0", token, out) }()
	var line string
	select {
	case line = <-out:
	case <-time.After(5 * time.Second):
		t.Fatalf("ListenAndServe wrote nothing in 5s")
	}
	_, rest, ok := strings.Cut(line, "http://")
	base, _, _ := strings.Cut(rest, " ")
	if !ok || base == "" {
		t.Fatalf("ListenAndServe wrote %q, want a line with the base URL", line)
	}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+base+"/api/customers/7", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET customer 7 = %v, %v", resp, err)
	}
	resp.Body.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("ListenAndServe after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("ListenAndServe still running 5s after its context was cancelled")
	}
}

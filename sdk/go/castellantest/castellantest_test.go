package castellantest

import (
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/castellan-dev/castellan/outcome"
	castellan "github.com/castellan-dev/castellan/sdk/go"
)

func TestBadTarget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		target string
		bad    bool
	}{
		{"/", false},
		{"/api/customers/42", false},
		{"/api/customers/42?expand=tickets&x=%20", false},
		{"/api/a.b/..c/.d", false},
		{"", true},
		{"api", true},
		{"http://evil.example/", true},
		{"//evil.example/", true},
		{"/api//x", true},
		{"/api/../admin", true},
		{"/api/./x", true},
		{"/api/..", true},
		{"/api/%2e%2e/admin", true},
		{"/api/%2E./admin", true},
		{"/api/a%2fb", true},
		{"/api/a%5cb", true},
		{"/api/a\\b", true},
		{"/api@evil", true},
		{"/api#frag", true},
		{"/api x", true},
		{"/api\r\nHost: evil", true},
		{"/api\x00", true},
		{"/api/%zz", true},
	}
	for _, tt := range tests {
		if why := badTarget(tt.target); (why != "") != tt.bad {
			t.Errorf("badTarget(%q) = %q, want bad=%v", tt.target, why, tt.bad)
		}
	}
}

func TestSensitiveHeader(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"authorization", "Proxy-Authorization", "COOKIE", "Host", "connection", "Keep-Alive", "TE",
		"Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Foo", "Content-Length", "Forwarded", "X-Forwarded-For"} {
		if !sensitiveHeader(name) {
			t.Errorf("sensitiveHeader(%q) = false, want true", name)
		}
	}
	for _, name := range []string{"Accept", "Content-Type", "X-Request-Id", "X-Forwarded"} {
		if sensitiveHeader(name) {
			t.Errorf("sensitiveHeader(%q) = true, want false", name)
		}
	}
}

func TestParseRequestHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{in: "", want: "map[]"},
		{in: "Accept: a\nx-id: 1\nX-Id: 2\n", want: "map[Accept:[a] X-Id:[1 2]]"},
		{in: "Accept: a", wantErr: true},
		{in: "no colon\n", wantErr: true},
		{in: ": v\n", wantErr: true},
		{in: "A B: v\n", wantErr: true},
		// Names the real host refuses (not RFC 9110 tokens) must fail here too, or a task
		// tested with castellantest breaks on the worker.
		{in: "X(y: v\n", wantErr: true},
		{in: "X/y: v\n", wantErr: true},
		{in: "\u00c4: v\n", wantErr: true},
		{in: "X\x00: v\n", wantErr: true},
		{in: "X-\"q\": v\n", wantErr: true},
		{in: "A: v\r\n", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseRequestHeaders([]byte(tt.in))
		if (err != nil) != tt.wantErr || (err == nil && fmt.Sprint(got) != tt.want) {
			t.Errorf("parseRequestHeaders(%q) = %v, %v; want %s (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestRedirects(t *testing.T) {
	t.Parallel()
	mux := http.NewServeMux()
	mux.HandleFunc("/final", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%s %s", r.Method, r.URL.RequestURI()) })
	mux.HandleFunc("/to", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Query().Get("u"), http.StatusFound)
	})
	mux.HandleFunc("/raw", func(w http.ResponseWriter, r *http.Request) {
		// Unlike http.Redirect, no cleaning: the Location goes out exactly as given.
		w.Header().Set("Location", r.URL.Query().Get("u"))
		w.WriteHeader(http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/see-other", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/final?from=post", http.StatusSeeOther)
	})
	mux.HandleFunc("/loop", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/loop", http.StatusFound) })
	tests := []struct {
		name     string
		method   string
		target   string
		want     string
		wantCode outcome.Code
		wantErr  error
	}{
		{name: "same origin absolute path", target: "/to?u=/final%3Fa=1", want: "GET /final?a=1"},
		{name: "same origin relative", target: "/to?u=final", want: "GET /final"},
		{name: "same origin full URL", target: "/to?u=http:%2F%2Fcrm.castellantest.invalid/final", want: "GET /final"},
		{name: "dot segments resolved first", target: "/raw?u=/a/..%2Ffinal", want: "GET /final"},
		{name: "post becomes get on 303", method: "POST", target: "/see-other", want: "GET /final?from=post"},
		{name: "off origin", target: "/to?u=http:%2F%2Fevil.example/final", wantCode: outcome.Denied},
		{name: "scheme change", target: "/to?u=https:%2F%2Fcrm.castellantest.invalid/final", wantCode: outcome.Denied},
		{name: "protocol-relative", target: "/raw?u=%2F%2Fevil.example/final", wantCode: outcome.Denied},
		{name: "encoded dot-dot", target: "/raw?u=/a/%252e%252e/final", wantCode: outcome.Denied},
		{name: "encoded slash", target: "/raw?u=/a%252Ffinal", wantCode: outcome.Denied},
		{name: "loop", target: "/loop", wantErr: castellan.ErrUpstream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var reqErr error
			out, _, err := RunOptions(func(c *castellan.Context) error {
				resp, err := c.HTTP("crm").Do(&castellan.Request{Method: tt.method, Path: tt.target})
				if err != nil {
					reqErr = err
					return err
				}
				b, err := resp.Bytes()
				if err != nil {
					return err
				}
				return c.Output(b)
			}, nil, Options{Endpoints: map[string]http.Handler{"crm": mux}, Context: t.Context()})
			switch {
			case tt.wantCode != "":
				if outcome.CodeOf(err) != tt.wantCode {
					t.Fatalf("Run(%s) = %v, want outcome %s", tt.target, err, tt.wantCode)
				}
			case tt.wantErr != nil:
				if err != nil || !isErr(reqErr, tt.wantErr) {
					t.Fatalf("Run(%s) = %v, request error %v; want request error %v", tt.target, err, reqErr, tt.wantErr)
				}
			default:
				if err != nil || string(out) != tt.want {
					t.Fatalf("Run(%s) = %q, %v; want %q", tt.target, out, err, tt.want)
				}
			}
		})
	}
}

func isErr(err, target error) bool {
	for err != nil {
		if err == target {
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

func TestBodyReadAfterJobEnds(t *testing.T) {
	t.Parallel()
	// A response that escapes the handler is unusable once the job is over, as on the worker.
	var leaked *castellan.Response
	_, _, err := Run(func(c *castellan.Context) error {
		var err error
		leaked, err = c.HTTP("crm").Get("/")
		return err
	}, nil, map[string]http.Handler{"crm": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "x") })})
	if err != nil {
		t.Fatalf("Run() = %v, want nil", err)
	}
	if _, err := leaked.Body.Read(make([]byte, 1)); !isErr(err, castellan.ErrBadHandle) {
		t.Fatalf("Read after the job = %v, want ErrBadHandle", err)
	}
}

func Example() {
	crm := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"name":"Ada Lovelace"}`)
	})
	lookup := func(ctx *castellan.Context) error {
		resp, err := ctx.HTTP("crm").Get("/api/customers/42")
		if err != nil {
			return err
		}
		var c struct{ Name string }
		if err := resp.JSON(&c); err != nil {
			return err
		}
		return ctx.Output([]byte("hello " + c.Name))
	}
	out, failMsg, err := Run(lookup, []byte(`{}`), map[string]http.Handler{"crm": crm})
	fmt.Printf("%s %q %v\n", out, failMsg, err)

	_, _, err = Run(lookup, []byte(`{}`), nil)
	fmt.Println(err)
	// Output:
	// hello Ada Lovelace "" <nil>
	// denied: endpoint "crm" is not granted to the task (castellantest Options.Endpoints has no such key)
}

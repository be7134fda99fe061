package castellan_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/outcome"
	castellan "github.com/castellan-dev/castellan/sdk/go"
	"github.com/castellan-dev/castellan/sdk/go/castellantest"
)

func TestHandlerResult(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		handler  func(*castellan.Context) error
		wantOut  string
		wantFail string
	}{
		{
			name:    "success",
			handler: func(c *castellan.Context) error { return c.Output([]byte("ok")) },
			wantOut: "ok",
		},
		{
			name: "error after output keeps the output",
			handler: func(c *castellan.Context) error {
				c.Output([]byte("partial"))
				return errors.New("customer 42 not found")
			},
			wantOut:  "partial",
			wantFail: "customer 42 not found",
		},
		{
			name:     "panic is recovered",
			handler:  func(*castellan.Context) error { panic("boom") },
			wantFail: "panic: boom",
		},
		{
			name:     "runtime error panic",
			handler:  func(*castellan.Context) error { var m map[string]int; m["x"]++; return nil },
			wantFail: "panic: assignment to entry in nil map",
		},
		{
			name:     "empty error message",
			handler:  func(*castellan.Context) error { return errors.New("") },
			wantFail: "task failed with an empty *errors.errorString error",
		},
		{
			name:     "no handler",
			handler:  nil,
			wantFail: "castellan: no handler registered: call castellan.Handle(yourFunc) from an init function in package main",
		},
		{
			name: "output twice concatenates",
			handler: func(c *castellan.Context) error {
				c.Output([]byte("a"))
				c.Output(nil)
				return c.Output([]byte("b"))
			},
			wantOut: "ab",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, failMsg, err := castellantest.Run(tt.handler, []byte(`{}`), nil)
			if err != nil || string(out) != tt.wantOut || failMsg != tt.wantFail {
				t.Fatalf("Run() = %q, %q, %v; want %q, %q, nil", out, failMsg, err, tt.wantOut, tt.wantFail)
			}
		})
	}
}

func TestInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		input    string
		wantOut  string
		wantFail string
	}{
		{name: "object", input: `{"customer_id":"42","n":3}`, wantOut: `{"n":3,"id":"42"}`},
		{name: "empty input", input: ``, wantFail: "castellan: decoding job input: the input is empty, want a JSON value"},
		{name: "not JSON", input: `{"customer_id":`, wantFail: "castellan: decoding job input: unexpected end of JSON input"},
		{name: "wrong type", input: `{"customer_id":42}`, wantFail: "castellan: decoding job input: json: cannot unmarshal number into Go struct field .customer_id of type string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			handler := func(c *castellan.Context) error {
				if got := string(c.Input()); got != tt.input {
					return fmt.Errorf("Input() = %q, want %q", got, tt.input)
				}
				var in struct {
					ID string `json:"customer_id"`
					N  int    `json:"n"`
				}
				if err := c.DecodeInput(&in); err != nil {
					return err
				}
				return c.EncodeOutput(struct {
					N  int    `json:"n"`
					ID string `json:"id"`
				}{in.N, in.ID})
			}
			out, failMsg, err := castellantest.Run(handler, []byte(tt.input), nil)
			if err != nil || string(out) != tt.wantOut || failMsg != tt.wantFail {
				t.Fatalf("Run(%q) = %q, %q, %v; want %q, %q, nil", tt.input, out, failMsg, err, tt.wantOut, tt.wantFail)
			}
		})
	}
}

func TestEncodeOutputError(t *testing.T) {
	t.Parallel()
	_, failMsg, err := castellantest.Run(func(c *castellan.Context) error {
		return c.EncodeOutput(func() {})
	}, nil, nil)
	if err != nil || !strings.HasPrefix(failMsg, "castellan: encoding output: json: unsupported type") {
		t.Fatalf("Run(EncodeOutput(func)) = %q, %v; want an encoding failure", failMsg, err)
	}
}

func TestLog(t *testing.T) {
	t.Parallel()
	type line struct {
		level castellan.Level
		msg   string
	}
	var got []line
	opts := castellantest.Options{Log: func(l castellan.Level, m string) { got = append(got, line{l, m}) }}
	_, failMsg, err := castellantest.RunOptions(func(c *castellan.Context) error {
		c.Debugf("d%d", 1)
		c.Infof("i%s", "x")
		c.Warnf("w")
		c.Errorf("e")
		c.Log(castellan.Level(9), "odd level")
		return nil
	}, nil, opts)
	want := []line{{castellan.LevelDebug, "d1"}, {castellan.LevelInfo, "ix"}, {castellan.LevelWarn, "w"},
		{castellan.LevelError, "e"}, {castellan.LevelError, "odd level"}}
	if err != nil || failMsg != "" || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("log lines = %v (fail %q, err %v), want %v", got, failMsg, err, want)
	}
}

func TestPanicIsLoggedWithStack(t *testing.T) {
	t.Parallel()
	var logged string
	opts := castellantest.Options{Log: func(_ castellan.Level, m string) { logged += m }}
	castellantest.RunOptions(func(*castellan.Context) error { panic("deep") }, nil, opts)
	if !strings.HasPrefix(logged, "panic: deep\n") || !strings.Contains(logged, "goroutine") {
		t.Fatalf("log after panic = %q, want the panic and a stack trace", logged)
	}
}

// echo answers with what it received, as JSON.
var echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Add("X-Multi", "1")
	w.Header().Add("X-Multi", "2")
	w.Header().Set("Set-Cookie", "session=secret")
	json.NewEncoder(w).Encode(map[string]any{
		"method": r.Method, "uri": r.URL.RequestURI(), "body": string(b),
		"ctype": r.Header.Get("Content-Type"), "trace": r.Header.Get("X-Trace-Id"),
	})
})

func TestHTTPRequests(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		send func(*castellan.Endpoint) (*castellan.Response, error)
		want string
	}{
		{
			name: "get",
			send: func(e *castellan.Endpoint) (*castellan.Response, error) { return e.Get("/api/x?q=1") },
			want: `{"body":"","ctype":"","method":"GET","trace":"","uri":"/api/x?q=1"}`,
		},
		{
			name: "post",
			send: func(e *castellan.Endpoint) (*castellan.Response, error) {
				return e.Post("/api/x", "application/json", []byte(`{"a":1}`))
			},
			want: `{"body":"{\"a\":1}","ctype":"application/json","method":"POST","trace":"","uri":"/api/x"}`,
		},
		{
			name: "do with lower-case method and header",
			send: func(e *castellan.Endpoint) (*castellan.Response, error) {
				return e.Do(&castellan.Request{Method: "put", Path: "/api/y", Header: castellan.Header{"x-trace-id": {"t1"}}, Body: []byte("b")})
			},
			want: `{"body":"b","ctype":"","method":"PUT","trace":"t1","uri":"/api/y"}`,
		},
		{
			name: "do defaults to GET",
			send: func(e *castellan.Endpoint) (*castellan.Response, error) { return e.Do(&castellan.Request{Path: "/"}) },
			want: `{"body":"","ctype":"","method":"GET","trace":"","uri":"/"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, failMsg, err := castellantest.Run(func(c *castellan.Context) error {
				resp, err := tt.send(c.HTTP("crm"))
				if err != nil {
					return err
				}
				defer resp.Close()
				if resp.Status != 200 {
					return fmt.Errorf("Status = %d, want 200", resp.Status)
				}
				if got := resp.Header.Values("x-multi"); fmt.Sprint(got) != "[1 2]" {
					return fmt.Errorf("Header.Values(x-multi) = %q, want [1 2]", got)
				}
				if got := resp.Header.Get("Set-Cookie"); got != "" {
					return fmt.Errorf("Header.Get(Set-Cookie) = %q, want it removed", got)
				}
				var v map[string]any
				if err := resp.JSON(&v); err != nil {
					return err
				}
				return c.EncodeOutput(v)
			}, nil, map[string]http.Handler{"crm": echo})
			if err != nil || failMsg != "" || string(out) != tt.want {
				t.Fatalf("Run() = %s, %q, %v; want %s", out, failMsg, err, tt.want)
			}
		})
	}
}

// filler writes n bytes of a recognisable pattern, optionally with a Content-Length.
func filler(n int, withLength bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if withLength {
			w.Header().Set("Content-Length", fmt.Sprint(n))
		}
		w.Write(pattern(n))
	})
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte('a' + i%26)
	}
	return b
}

func TestResponseBody(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		size       int
		withLength bool
		readBuf    int // 0: use Bytes
	}{
		{name: "empty", size: 0},
		{name: "small", size: 10},
		{name: "exactly one chunk", size: 32 << 10},
		{name: "several chunks", size: 200<<10 + 7},
		{name: "content-length hint", size: 100 << 10, withLength: true},
		{name: "wrong content-length hint", size: 100 << 10, withLength: true},
		{name: "tiny reads", size: 1000, readBuf: 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := filler(tt.size, tt.withLength)
			if tt.name == "wrong content-length hint" {
				h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Length", "3")
					w.Write(pattern(tt.size))
				})
			}
			out, failMsg, err := castellantest.Run(func(c *castellan.Context) error {
				resp, err := c.HTTP("big").Get("/")
				if err != nil {
					return err
				}
				var b []byte
				if tt.readBuf == 0 {
					b, err = resp.Bytes()
				} else {
					defer resp.Close()
					var sb strings.Builder
					_, err = io.CopyBuffer(struct{ io.Writer }{&sb}, struct{ io.Reader }{resp.Body}, make([]byte, tt.readBuf))
					b = []byte(sb.String())
				}
				if err != nil {
					return err
				}
				return c.Output(b)
			}, nil, map[string]http.Handler{"big": h})
			if err != nil || failMsg != "" || string(out) != string(pattern(tt.size)) {
				t.Fatalf("Run() = %d bytes, %q, %v; want the %d-byte pattern", len(out), failMsg, err, tt.size)
			}
		})
	}
}

func TestHTTPErrors(t *testing.T) {
	t.Parallel()
	var requests int
	endpoints := map[string]http.Handler{
		"ok":    http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { requests++; w.Write([]byte("hi")) }),
		"reset": http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }),
		"big":   filler(100, false),
	}
	tests := []struct {
		name    string
		do      func(*castellan.Context) error
		want    error
		wantMsg string
	}{
		{
			name: "upstream",
			do:   func(c *castellan.Context) error { _, err := c.HTTP("reset").Get("/"); return err },
			want: castellan.ErrUpstream, wantMsg: "castellan: GET reset /: endpoint unreachable or timed out (E_UPSTREAM)",
		},
		{
			name: "too large",
			do: func(c *castellan.Context) error {
				resp, err := c.HTTP("big").Get("/")
				if err != nil {
					return err
				}
				b, err := resp.Bytes()
				if len(b) != 50 {
					return fmt.Errorf("Bytes() returned %d bytes before the error, want 50", len(b))
				}
				return err
			},
			want: castellan.ErrTooLarge, wantMsg: "castellan: GET big /: reading body: response body larger than the endpoint allows (E_TOO_LARGE)",
		},
		{
			name: "too many open",
			do: func(c *castellan.Context) error {
				var open []*castellan.Response
				defer func() {
					for _, r := range open {
						r.Close()
					}
				}()
				for i := range 9 {
					r, err := c.HTTP("ok").Get("/")
					if err != nil {
						if i != 8 {
							return fmt.Errorf("request %d: %w, want the 9th to fail", i+1, err)
						}
						// Closing one makes room again.
						open[0].Close()
						r, err2 := c.HTTP("ok").Get("/")
						if err2 != nil {
							return fmt.Errorf("after closing one: %v", err2)
						}
						open = append(open, r)
						return err
					}
					open = append(open, r)
				}
				return nil
			},
			want: castellan.ErrTooManyOpen, wantMsg: "castellan: GET ok /: too many open responses, close one first (E_TOO_MANY_OPEN)",
		},
		{
			name: "read after close",
			do: func(c *castellan.Context) error {
				r, err := c.HTTP("ok").Get("/")
				if err != nil {
					return err
				}
				if err := r.Close(); err != nil {
					return err
				}
				if err := r.Close(); err != nil {
					return fmt.Errorf("second Close() = %v, want nil", err)
				}
				_, err = r.Body.Read(make([]byte, 10))
				return err
			},
			want: castellan.ErrBadHandle, wantMsg: "castellan: GET ok /: read on closed response body: response is not open (E_BAD_HANDLE)",
		},
		{
			name: "header injection refused before sending",
			do: func(c *castellan.Context) error {
				_, err := c.HTTP("ok").Do(&castellan.Request{Path: "/", Header: castellan.Header{"X-A": {"1\r\nAuthorization: Bearer stolen"}}})
				return err
			},
			want: castellan.ErrInvalid, wantMsg: "castellan: GET ok /: header X-A: value has a control character (CR, LF, NUL...) at byte 1: invalid arguments (E_INVALID)",
		},
		{
			name: "relative path refused before sending",
			do:   func(c *castellan.Context) error { _, err := c.HTTP("ok").Get("api/x"); return err },
			want: castellan.ErrInvalid, wantMsg: `castellan: GET ok api/x: path must start with "/" (it is relative to the endpoint's base URL): invalid arguments (E_INVALID)`,
		},
		{
			name: "bad method refused before sending",
			do: func(c *castellan.Context) error {
				_, err := c.HTTP("ok").Do(&castellan.Request{Method: "GET /evil", Path: "/"})
				return err
			},
			want: castellan.ErrInvalid, wantMsg: `castellan: GET /EVIL ok /: method "GET /evil" is not an HTTP token: invalid arguments (E_INVALID)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Not parallel: the endpoints share a request counter.
			before := requests
			var got error
			_, _, err := castellantest.RunOptions(func(c *castellan.Context) error {
				got = tt.do(c)
				return nil
			}, nil, castellantest.Options{Endpoints: endpoints, MaxResponseBytes: 50})
			if err != nil {
				t.Fatalf("RunOptions() = %v, want the task to end normally", err)
			}
			if !errors.Is(got, tt.want) || got.Error() != tt.wantMsg {
				t.Fatalf("error = %v, want %q (errors.Is %v)", got, tt.wantMsg, tt.want)
			}
			if errors.Is(got, castellan.ErrInvalid) && requests != before {
				t.Fatalf("an invalid request reached the endpoint")
			}
		})
	}
}

func TestHostEndsJob(t *testing.T) {
	t.Parallel()
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	tests := []struct {
		name string
		opts castellantest.Options
		do   func(*castellan.Context)
		want outcome.Code
	}{
		{name: "unknown endpoint", do: func(c *castellan.Context) { c.HTTP("payroll").Get("/") }, want: outcome.Denied},
		{name: "authorization header", do: func(c *castellan.Context) {
			c.HTTP("crm").Do(&castellan.Request{Path: "/", Header: castellan.Header{"Authorization": {"Bearer mine"}}})
		}, want: outcome.Denied},
		{name: "dot-dot", do: func(c *castellan.Context) { c.HTTP("crm").Get("/api/../admin") }, want: outcome.Denied},
		{name: "call budget", opts: castellantest.Options{HTTPCalls: 2}, do: func(c *castellan.Context) {
			for range 3 {
				r, _ := c.HTTP("crm").Get("/")
				r.Close()
			}
		}, want: outcome.CallBudgetExceeded},
		{name: "output limit", opts: castellantest.Options{OutputBytes: 4}, do: func(c *castellan.Context) {
			c.Output([]byte("abc"))
			c.Output([]byte("de"))
		}, want: outcome.OutputTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.opts.Endpoints = map[string]http.Handler{"crm": ok}
			returned := false
			_, failMsg, err := castellantest.RunOptions(func(c *castellan.Context) error {
				tt.do(c)
				returned = true
				return errors.New("the task should not get here")
			}, nil, tt.opts)
			if got := outcome.CodeOf(err); got != tt.want || returned || failMsg != "" {
				t.Fatalf("RunOptions() = %q, %v (handler returned: %v); want outcome %s and the handler stopped", failMsg, err, returned, tt.want)
			}
		})
	}
}

// TestPrepareJSON: PrepareJSON takes any value, including those encoding/json refuses and
// nil, without panicking (it runs in init, where a panic would make the module unusable).
func TestPrepareJSON(t *testing.T) {
	t.Parallel()
	type T struct {
		A string `json:"a"`
		B []int  `json:"b"`
	}
	castellan.PrepareJSON(nil, T{}, &T{B: []int{1}}, make(chan int), func() {}, map[string]T{"x": {}}, []*T{nil}, errors.New("x"))
}

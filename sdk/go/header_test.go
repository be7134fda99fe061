package castellan

import (
	"errors"
	"net/http"
	"reflect"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// TestIsTokenMatchesHTTPGuts: the guest's token check (which cannot import httpguts, see
// isToken) accepts exactly what the host's accepts, for every byte alone and inside a name.
func TestIsTokenMatchesHTTPGuts(t *testing.T) {
	t.Parallel()
	for c := range 256 {
		for _, s := range []string{string([]byte{byte(c)}), "X-" + string([]byte{byte(c)}) + "-y"} {
			if got, want := isToken(s), httpguts.ValidHeaderFieldName(s); got != want {
				t.Errorf("isToken(%q) = %v, want %v (as httpguts.ValidHeaderFieldName)", s, got, want)
			}
		}
	}
	for _, s := range []string{"", "GET", "X-Request-Id", "ünicode", "a b", "x:y"} {
		if got, want := isToken(s), httpguts.ValidHeaderFieldName(s); got != want {
			t.Errorf("isToken(%q) = %v, want %v (as httpguts.ValidHeaderFieldName)", s, got, want)
		}
	}
}

func TestCanonicalHeaderKeyMatchesNetHTTP(t *testing.T) {
	t.Parallel()
	keys := []string{"content-type", "CONTENT-TYPE", "x-request-id", "X-REQUEST-ID", "a", "-x-", "Accept", "www-authenticate", "bad key", "ünicode", "",
		"Content-Type", "X-Request-ID", "Content-type", "Content-Type ", "Content-Typé", "X-Y-z"}
	// Every string of up to four bytes over letters of both cases, a digit, a hyphen and
	// bytes that are not token bytes, so that each position of the canonical fast path and
	// the rewrite after it is covered.
	alphabet := []byte{'a', 'Z', 'q', 'B', '0', '-', ' ', ':', 0xc3}
	var gen func(prefix []byte, n int)
	gen = func(prefix []byte, n int) {
		keys = append(keys, string(prefix))
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			gen(append(prefix[:len(prefix):len(prefix)], c), n-1)
		}
	}
	gen(nil, 4)
	for _, k := range keys {
		if got, want := CanonicalHeaderKey(k), http.CanonicalHeaderKey(k); got != want {
			t.Errorf("CanonicalHeaderKey(%q) = %q, want %q (as net/http)", k, got, want)
		}
	}
}

func TestHeaderBlock(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		h       Header
		want    string
		wantErr bool
	}{
		{name: "nil", h: nil, want: ""},
		{name: "sorted and canonical", h: Header{"x-b": {"2"}, "Accept": {"a", "b"}}, want: "Accept: a\nAccept: b\nX-B: 2\n"},
		{name: "value trimmed", h: Header{"X-A": {"  v \t"}}, want: "X-A: v\n"},
		{name: "tab allowed inside", h: Header{"X-A": {"a\tb"}}, want: "X-A: a\tb\n"},
		{name: "LF smuggles a header", h: Header{"X-A": {"v\nAuthorization: Bearer x"}}, wantErr: true},
		{name: "CR", h: Header{"X-A": {"v\r"}}, wantErr: true},
		{name: "NUL", h: Header{"X-A": {"v\x00"}}, wantErr: true},
		{name: "DEL", h: Header{"X-A": {"v\x7f"}}, wantErr: true},
		{name: "colon in name", h: Header{"X:A": {"v"}}, wantErr: true},
		{name: "space in name", h: Header{"X A": {"v"}}, wantErr: true},
		{name: "empty name", h: Header{"": {"v"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := tt.h.block()
			if tt.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("%#v.block() = %q, %v, want an error wrapping ErrInvalid", tt.h, got, err)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("%#v.block() = %q, %v, want %q, nil", tt.h, got, err, tt.want)
			}
		})
	}
}

func TestParseHeaderBlock(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want Header
	}{
		{"", Header{}},
		{"Content-Type: application/json\n", Header{"Content-Type": {"application/json"}}},
		{"x-a: 1\nX-A: 2\n", Header{"X-A": {"1", "2"}}},
		{"X-A: 1\r\nX-B:2", Header{"X-A": {"1"}, "X-B": {"2"}}},
		{"X-A: a: b\n", Header{"X-A": {"a: b"}}},
		{"no colon\n: empty name\nbad name: x\nX-Ok: y\n", Header{"X-Ok": {"y"}}},
		{"X-Empty:\n", Header{"X-Empty": {""}}},
	}
	for _, tt := range tests {
		if got := parseHeaderBlock([]byte(tt.in)); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseHeaderBlock(%q) = %#v, want %#v", tt.in, got, tt.want)
		}
	}
}

func TestHeaderMethods(t *testing.T) {
	t.Parallel()
	h := Header{}
	h.Set("x-id", "1")
	h.Add("X-ID", "2")
	if got := h.Values("X-Id"); !reflect.DeepEqual(got, []string{"1", "2"}) {
		t.Errorf("Values(X-Id) = %q, want [1 2]", got)
	}
	if got := h.Get("x-id"); got != "1" {
		t.Errorf("Get(x-id) = %q, want 1", got)
	}
	h.Del("X-id")
	if got := h.Get("X-Id"); got != "" || len(h) != 0 {
		t.Errorf("after Del, Get(X-Id) = %q and len = %d, want empty", got, len(h))
	}
	if got := http.Header(Header{"A": {"b"}}).Get("a"); got != "b" {
		t.Errorf("http.Header(Header).Get(a) = %q, want b", got)
	}
}

func TestErrnoMessages(t *testing.T) {
	t.Parallel()
	seen := map[string]Errno{}
	for _, e := range []Errno{ErrInvalid, ErrUpstream, ErrTooLarge, ErrBadHandle, ErrTooManyOpen, ErrNotInJob, Errno(-99)} {
		msg := e.Error()
		if prev, dup := seen[msg]; dup || msg == "" {
			t.Errorf("Errno(%d).Error() = %q, same as Errno(%d) or empty", e, msg, prev)
		}
		seen[msg] = e
	}
}

func TestHandle(t *testing.T) {
	// Not parallel: Handle sets package state.
	defer func(h Handler) { handler = h }(handler)
	func() {
		defer func() {
			if recover() == nil {
				t.Errorf("Handle(nil) did not panic")
			}
		}()
		Handle(nil)
	}()
	called := false
	Handle(func(*Context) error { called = true; return nil })
	if code := invoke(nopHost{}, handler); code != 0 || !called {
		t.Errorf("invoke(registered handler) = %d, called %v; want 0, true", code, called)
	}
}

type nopHost struct{}

func (nopHost) InputSize() int32                                         { return 0 }
func (nopHost) InputRead([]byte) int32                                   { return 0 }
func (nopHost) OutputWrite([]byte) int32                                 { return 0 }
func (nopHost) Fail(string) int32                                        { return 0 }
func (nopHost) Log(int32, string) int32                                  { return 0 }
func (nopHost) HTTPRequest(string, string, string, []byte, []byte) int32 { return -4 }
func (nopHost) HTTPStatus(int32) int32                                   { return -4 }
func (nopHost) HTTPHeaderSize(int32) int32                               { return -4 }
func (nopHost) HTTPHeaderRead(int32, []byte) int32                       { return -4 }
func (nopHost) HTTPBodyRead(int32, []byte) int32                         { return -4 }
func (nopHost) HTTPClose(int32) int32                                    { return -4 }

package hostfuncs

import (
	"strings"
	"testing"
)

// TestParseHeaderBlockNames: a request header name that is not an RFC 9110 token is refused
// before the gateway sees it, whatever byte makes it so.
func TestParseHeaderBlockNames(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"X(y", "X/y", "X y", "\u00c4", "X\x00", "X\x7f", `X-"q"`, "X{y}", "X@y", ""} {
		block := name + ": v\n"
		if h, err := parseHeaderBlock([]byte(block)); err == nil {
			t.Errorf("parseHeaderBlock(%q) = %v, nil; want an error", block, h)
		}
	}
	h, err := parseHeaderBlock([]byte("X-Request-Id: 1\nAccept: a\n!#$%&'*+-.^_`|~: ok\n"))
	if err != nil || h.Get("X-Request-Id") != "1" || h.Get("Accept") != "a" || len(h) != 3 {
		t.Fatalf("parseHeaderBlock(valid) = %v, %v; want three headers", h, err)
	}
	if _, err := parseHeaderBlock([]byte("X(y: v\n")); err == nil || !strings.Contains(err.Error(), "invalid header name") {
		t.Fatalf("parseHeaderBlock(X(y) error = %v, want \"invalid header name\"", err)
	}
}

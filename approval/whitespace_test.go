package approval

import (
	"fmt"
	"strings"
	"testing"
)

// TestTokenWhitespace: the compact form is exact. Whitespace of any kind, around the token
// or inside it, is refused by Verify, Inspect and CheckShape alike, even though the
// signature would still verify over the unchanged parts (base64 decoders skip line breaks).
func TestTokenWhitespace(t *testing.T) {
	t.Parallel()
	e := newVerifyEnv(t)
	_, want := baseRequest()
	tok := e.token
	dot1 := strings.IndexByte(tok, '.')
	dot2 := strings.LastIndexByte(tok, '.')
	at := map[string]func(ws string) string{
		"before":               func(ws string) string { return ws + tok },
		"after":                func(ws string) string { return tok + ws },
		"around":               func(ws string) string { return ws + tok + ws },
		"inside the header":    func(ws string) string { return tok[:dot1/2] + ws + tok[dot1/2:] },
		"before the first dot": func(ws string) string { return tok[:dot1] + ws + tok[dot1:] },
		"after the first dot":  func(ws string) string { return tok[:dot1+1] + ws + tok[dot1+1:] },
		"inside the payload":   func(ws string) string { m := (dot1 + dot2) / 2; return tok[:m] + ws + tok[m:] },
		"inside the signature": func(ws string) string { m := dot2 + 20; return tok[:m] + ws + tok[m:] },
	}
	for _, ws := range []string{" ", "\t", "\n", "\r", "\r\n", "\v", "\f", "\u00a0", "\u2028", "\ufeff"} {
		for where, place := range at {
			bad := place(ws)
			v := NewVerifier(keySet(e.pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
			_, err := v.Verify(t.Context(), bad, want)
			wantReason(t, fmt.Sprintf("Verify(token with %q %s)", ws, where), err, Malformed, bad)
			if _, _, err := Inspect(bad); ReasonOf(err) != Malformed {
				t.Errorf("Inspect(token with %q %s) = %v, want malformed", ws, where, err)
			}
			if err := CheckShape(bad); err == nil {
				t.Errorf("CheckShape(token with %q %s) = nil, want an error", ws, where)
			}
		}
	}
	// The exact token is accepted by all three.
	v := NewVerifier(keySet(e.pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
	if _, err := v.Verify(t.Context(), tok, want); err != nil {
		t.Fatalf("Verify(exact token) = %v, want nil", err)
	}
	if _, _, err := Inspect(tok); err != nil {
		t.Fatalf("Inspect(exact token) = %v, want nil", err)
	}
	if err := CheckShape(tok); err != nil {
		t.Fatalf("CheckShape(exact token) = %v, want nil", err)
	}
}

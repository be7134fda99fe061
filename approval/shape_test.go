package approval

import (
	"strings"
	"testing"
	"time"
)

func TestCheckShape(t *testing.T) {
	t.Parallel()
	priv, _, err := GenerateKey("k")
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := Sign(priv, Request{JobID: "j", Task: "t", TaskVersion: "1", Pool: "p", Input: []byte(`{}`), TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckShape(tok); err != nil {
		t.Fatalf("CheckShape(signed token) = %v, want nil", err)
	}
	for _, bad := range []string{"", "a.b", "a.b.c.d", ".e30.sig", "e30.e30.!!!", "e30.e30.c2ln", // header {} has no alg
		strings.Repeat("a", MaxTokenBytes+1)} {
		if err := CheckShape(bad); err == nil {
			t.Errorf("CheckShape(%.20q) = nil, want an error", bad)
		}
	}
}

package approval

import (
	"encoding/json"
	"fmt"
	"os"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// craftedVectors are tokens whose signatures a signer built to be accepted by one Ed25519
// rule and refused by another (see testdata/crafted_signatures.json for how).
type craftedVectors struct {
	PrivateJWK            json.RawMessage `json:"private_jwk"`
	Genuine               string          `json:"genuine"`
	SmallOrderR           string          `json:"small_order_R"`
	NoncanonicalIdentityR string          `json:"noncanonical_identity_R"`
}

func loadCrafted(t *testing.T) (craftedVectors, jose.JSONWebKey) {
	t.Helper()
	data, err := os.ReadFile("testdata/crafted_signatures.json")
	if err != nil {
		t.Fatal(err)
	}
	var v craftedVectors
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(v.PrivateJWK); err != nil {
		t.Fatal(err)
	}
	return v, k
}

// verifyLease checks the approvals of one lease the way the worker does: one Verify per
// job, in lease order, on one Verifier.
func verifyLease(t *testing.T, v *Verifier, toks []string, want []Expect) []Reason {
	t.Helper()
	out := make([]Reason, len(toks))
	for i, tok := range toks {
		_, err := v.Verify(t.Context(), tok, want[i])
		out[i] = ReasonOf(err)
		if err != nil && out[i] == "" {
			t.Fatalf("Verify(lease[%d]) = %v, want a rejection or success", i, err)
		}
	}
	return out
}

// TestCraftedSignatureSameVerdict: a signer who holds the key can craft signatures that a
// cofactored equation accepts and the cofactorless one refuses (a small-order component in
// R, a non-canonical encoding of R). Such a token must get the same verdict whether it is
// checked alone or among other approvals, in any position and lease size: one rule for
// every token.
func TestCraftedSignatureSameVerdict(t *testing.T) {
	t.Parallel()
	vec, priv := loadCrafted(t)
	pub := priv.Public()
	_, want := baseRequest()
	for _, tt := range []struct {
		name, token string
		reason      Reason
	}{
		{"genuine", vec.Genuine, ""},
		{"small-order component in R", vec.SmallOrderR, BadSignature},
		{"identity R encoded non-canonically", vec.NoncanonicalIdentityR, BadSignature},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			alone := NewVerifier(keySet(pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
			if got := verifyLease(t, alone, []string{tt.token}, []Expect{want})[0]; got != tt.reason {
				t.Fatalf("Verify(%s) alone = %q, want %q", tt.name, got, tt.reason)
			}
			for n := 2; n <= 6; n++ {
				for pos := range n {
					toks := make([]string, n)
					exps := make([]Expect, n)
					for i := range n {
						r, e := baseRequest()
						r.JobID = fmt.Sprintf("job-%d-%d-%d", n, pos, i)
						e.JobID = r.JobID
						toks[i], _ = mustSign(t, priv, r, t0)
						exps[i] = e
					}
					toks[pos], exps[pos] = tt.token, want
					v := NewVerifier(keySet(pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
					got := verifyLease(t, v, toks, exps)
					for i, r := range got {
						w := Reason("")
						if i == pos {
							w = tt.reason
						}
						if r != w {
							t.Fatalf("Verify(lease of %d, %s at %d)[%d] = %q, want %q (the verdict alone)", n, tt.name, pos, i, r, w)
						}
					}
				}
			}
		})
	}
}

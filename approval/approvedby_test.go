package approval

import (
	"strings"
	"testing"
)

// TestApprovedByRoundTrip: the approved_by claim Sign writes is signed with the rest and
// comes back from Verify and Inspect unchanged.
func TestApprovedByRoundTrip(t *testing.T) {
	t.Parallel()
	priv, pub := newKey(t, "approver-1")
	for _, by := range []ApprovedBy{{Rule: "read-only-lookups"}, {Person: "alice@example.com"}, {Person: strings.Repeat("é", MaxApprovedByBytes/2)}} {
		r, want := baseRequest()
		in := by
		r.ApprovedBy = &in
		tok, signed := mustSign(t, priv, r, t0)
		in.Rule, in.Person = "changed", "after signing" // Sign keeps its own copy
		_, payload, _ := tokenParts(t, tok)
		if m, ok := payload["approved_by"].(map[string]any); !ok || len(m) != 1 {
			t.Fatalf("Sign(ApprovedBy %+v) payload approved_by = %v, want an object with one member", by, payload["approved_by"])
		}
		v := NewVerifier(keySet(pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
		got, err := v.Verify(t.Context(), tok, want)
		if err != nil {
			t.Fatalf("Verify(token approved by %+v) = %v", by, err)
		}
		if got.ApprovedBy == nil || *got.ApprovedBy != by || *signed.ApprovedBy != by {
			t.Fatalf("Verify(token approved by %+v).ApprovedBy = %+v (Sign returned %+v), want %+v", by, got.ApprovedBy, signed.ApprovedBy, by)
		}
		if c, _, err := Inspect(tok); err != nil || c.ApprovedBy == nil || *c.ApprovedBy != by {
			t.Fatalf("Inspect(token approved by %+v) = %+v, %v", by, c.ApprovedBy, err)
		}
	}
}

// TestApprovedByAbsentStillVerifies: tokens signed before the claim existed keep verifying,
// and Sign without ApprovedBy writes no approved_by member.
func TestApprovedByAbsentStillVerifies(t *testing.T) {
	t.Parallel()
	priv, pub := newKey(t, "approver-1")
	r, want := baseRequest()
	tok, _ := mustSign(t, priv, r, t0)
	if _, payload, _ := tokenParts(t, tok); payload["approved_by"] != nil {
		t.Fatalf("Sign(no ApprovedBy) payload has approved_by = %v", payload["approved_by"])
	}
	// A payload byte-for-byte as the previous signer wrote it.
	c := claimsMap(t, mustClaims(t, tok))
	delete(c, "approved_by")
	old := mustSignPayload(t, priv, string(mustJSON(t, c)))
	v := NewVerifier(keySet(pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
	for _, tk := range []string{tok, old} {
		got, err := v.Verify(t.Context(), tk, want)
		if err != nil || got.ApprovedBy != nil {
			t.Fatalf("Verify(token without approved_by) = %+v, %v, want success with no ApprovedBy", got.ApprovedBy, err)
		}
		want.Attempt++
	}
}

// TestApprovedBySignRefuses: Sign refuses an approved_by that a worker would refuse, so no
// signer makes a token that cannot verify.
func TestApprovedBySignRefuses(t *testing.T) {
	t.Parallel()
	priv, _ := newKey(t, "approver-1")
	for _, tt := range []struct {
		name string
		by   ApprovedBy
		want string
	}{
		{"both", ApprovedBy{Rule: "r", Person: "alice"}, "both a rule and a person"},
		{"neither", ApprovedBy{}, "neither"},
		{"too long", ApprovedBy{Person: strings.Repeat("a", MaxApprovedByBytes+1)}, "at most 128"},
		{"control character", ApprovedBy{Rule: "a\x00b"}, "control character"},
	} {
		r, _ := baseRequest()
		r.ApprovedBy = &tt.by
		if _, _, err := signAt(priv, r, t0); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Sign(ApprovedBy %s) = %v, want an error mentioning %q", tt.name, err, tt.want)
		}
	}
}

// TestApprovedByAltered: approved_by is covered by the signature like every claim; turning
// a person's approval into a rule's (or back) breaks it.
func TestApprovedByAltered(t *testing.T) {
	t.Parallel()
	e := newVerifyEnv(t)
	r := e.req
	r.ApprovedBy = &ApprovedBy{Person: "alice"}
	tok, c := mustSign(t, e.priv, r, t0)
	parts := strings.Split(tok, ".")
	m := claimsMap(t, c)
	m["approved_by"] = map[string]any{"rule": "read-only-lookups"}
	altered := parts[0] + "." + b64(mustJSON(t, m)) + "." + parts[2]
	_, want := baseRequest()
	v := NewVerifier(keySet(e.pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
	_, err := v.Verify(t.Context(), altered, want)
	wantReason(t, "Verify(altered approved_by)", err, BadSignature, altered)
}

func mustClaims(t testing.TB, tok string) Claims {
	t.Helper()
	c, _, err := Inspect(tok)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

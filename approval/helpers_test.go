package approval

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/outcome"
)

// t0 is the fixed "now" of the tests: signing and verifying use explicit clocks, never
// the wall clock, so expiry tests cannot flake.
var t0 = time.Unix(1_800_000_000, 0)

func clockAt(t time.Time) func() time.Time { return func() time.Time { return t } }

func newKey(t testing.TB, kid string) (priv, pub jose.JSONWebKey) {
	t.Helper()
	priv, pub, err := GenerateKey(kid)
	if err != nil {
		t.Fatalf("GenerateKey(%q) = %v", kid, err)
	}
	return priv, pub
}

func keySet(keys ...jose.JSONWebKey) *jose.JSONWebKeySet {
	return &jose.JSONWebKeySet{Keys: keys}
}

// baseRequest is an approval request and the matching expectation for attempt 1.
func baseRequest() (Request, Expect) {
	input := []byte(`{"account":"acct-9","amount":12.5,"tags":["refund","eu"]}`)
	r := Request{JobID: "job-1", Task: "refund", TaskVersion: "3", Pool: "payments", Input: input,
		TTL: 15 * time.Minute, MaxAttempts: 2, Approver: "alice@example.com"}
	e := Expect{JobID: "job-1", Task: "refund", TaskVersion: "3", Pool: "payments", Input: input, Attempt: 1}
	return r, e
}

func mustSign(t testing.TB, key jose.JSONWebKey, r Request, now time.Time) (string, Claims) {
	t.Helper()
	tok, c, err := signAt(key, r, now)
	if err != nil {
		t.Fatalf("signAt(%q, %+v) = %v", key.KeyID, r, err)
	}
	return tok, c
}

func mustSignPayload(t testing.TB, key jose.JSONWebKey, payload string) string {
	t.Helper()
	tok, err := signPayload(key, []byte(payload))
	if err != nil {
		t.Fatalf("signPayload(%s) = %v", payload, err)
	}
	return tok
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tokenParts splits a compact token and decodes its header and payload into maps.
func tokenParts(t testing.TB, token string) (header, payload map[string]any, sig string) {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	for i, dst := range []*map[string]any{&header, &payload} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, dst); err != nil {
			t.Fatal(err)
		}
	}
	return header, payload, parts[2]
}

// claimsJSON returns c as a JSON object map, for building payloads Sign would not make.
func claimsMap(t testing.TB, c Claims) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(mustJSON(t, c), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// hs256 builds an HS256 token with the given secret, as an attacker who knows a public key
// would in the classic algorithm-confusion attack.
func hs256(header, payload []byte, secret []byte) string {
	input := b64(header) + "." + b64(payload)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(input))
	return input + "." + b64(m.Sum(nil))
}

// wantReason fails unless err is a rejection with reason want, reachable both as an
// *outcome.Error with Code Rejected and as a *RejectError, and its text holds no part of
// the token's signature.
func wantReason(t testing.TB, call string, err error, want Reason, token string) {
	t.Helper()
	var re *RejectError
	var oe *outcome.Error
	switch {
	case err == nil:
		t.Fatalf("%s = nil, want rejection %s", call, want)
	case !errors.As(err, &re) || re.Reason != want:
		t.Fatalf("%s = %v, want rejection %s", call, err, want)
	case !errors.As(err, &oe) || oe.Code != outcome.Rejected:
		t.Fatalf("%s = %v, want an *outcome.Error with code %s", call, err, outcome.Rejected)
	case outcome.CodeOf(err) != outcome.Rejected || outcome.CodeOf(err).Retryable():
		t.Fatalf("outcome.CodeOf(%s) = %s, want non-retryable %s", call, outcome.CodeOf(err), outcome.Rejected)
	}
	if parts := strings.Split(token, "."); len(parts) == 3 && len(parts[2]) > 8 {
		if strings.Contains(err.Error(), parts[2]) || strings.Contains(outcome.Message(err), parts[2]) {
			t.Fatalf("%s error %q contains the token's signature", call, err)
		}
	}
	if token != "" && strings.Contains(err.Error(), token) {
		t.Fatalf("%s error %q contains the token", call, err)
	}
}

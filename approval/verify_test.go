package approval

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/outcome"
)

type verifyEnv struct {
	priv, pub    jose.JSONWebKey // the trusted approver
	evil         jose.JSONWebKey // an attacker's key, with the same kid as the trusted one
	other        jose.JSONWebKey // a key nobody trusts, with its own kid
	req          Request
	token        string // a genuine approval for req, signed at t0
	claims       Claims
	alteredClaim func(t *testing.T, mutate func(map[string]any)) string
}

func newVerifyEnv(t *testing.T) verifyEnv {
	t.Helper()
	var e verifyEnv
	e.priv, e.pub = newKey(t, "alice-2026")
	e.evil, _ = newKey(t, "alice-2026")
	e.other, _ = newKey(t, "mallory")
	e.req, _ = baseRequest()
	e.token, e.claims = mustSign(t, e.priv, e.req, t0)
	// alteredClaim re-encodes the genuine payload after mutate, keeping header and signature.
	e.alteredClaim = func(t *testing.T, mutate func(map[string]any)) string {
		parts := strings.Split(e.token, ".")
		m := claimsMap(t, e.claims)
		mutate(m)
		return parts[0] + "." + b64(mustJSON(t, m)) + "." + parts[2]
	}
	return e
}

func TestVerify(t *testing.T) {
	t.Parallel()
	header := func(alg, kid string) []byte {
		h := map[string]string{"alg": alg, "typ": TokenType}
		if kid != "" {
			h["kid"] = kid
		}
		b, _ := json.Marshal(h)
		return b
	}
	signed := func(e verifyEnv, t *testing.T, mutate func(map[string]any)) string {
		m := claimsMap(t, e.claims)
		mutate(m)
		return mustSignPayload(t, e.priv, string(mustJSON(t, m)))
	}
	withOpts := func(key jose.JSONWebKey, opts *jose.SignerOptions, payload []byte) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: key}, opts)
		if err != nil {
			t.Fatal(err)
		}
		obj, err := s.Sign(payload)
		if err != nil {
			t.Fatal(err)
		}
		tok, err := obj.CompactSerialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}

	tests := []struct {
		name   string
		token  func(*testing.T, verifyEnv) string
		expect func(*Expect)    // adjusts the worker's expectation; nil keeps it
		opts   []VerifierOption // appended after the default clock (t0)
		reason Reason           // "" means the approval must be accepted
		detail string           // a substring the rejection detail must contain
	}{
		{name: "genuine approval", token: func(t *testing.T, e verifyEnv) string { return e.token }},
		{name: "genuine approval with surrounding whitespace", token: func(t *testing.T, e verifyEnv) string { return "\n" + e.token + " \n" }, reason: Malformed, detail: "whitespace"},

		// Unsigned.
		{name: "empty token", token: func(*testing.T, verifyEnv) string { return "" }, reason: Unsigned},
		{name: "whitespace token", token: func(*testing.T, verifyEnv) string { return " \n\t" }, reason: Unsigned},
		{name: "plain JSON claims", token: func(t *testing.T, e verifyEnv) string { return string(mustJSON(t, e.claims)) }, reason: Unsigned},
		{name: "alg none", token: func(t *testing.T, e verifyEnv) string {
			return b64(header("none", "alice-2026")) + "." + b64(mustJSON(t, e.claims)) + "."
		}, reason: Unsigned},
		{name: "alg NONE with a signature", token: func(t *testing.T, e verifyEnv) string {
			parts := strings.Split(e.token, ".")
			return b64(header("NONE", "alice-2026")) + "." + parts[1] + "." + parts[2]
		}, reason: Unsigned},
		{name: "EdDSA header with empty signature", token: func(t *testing.T, e verifyEnv) string {
			parts := strings.Split(e.token, ".")
			return parts[0] + "." + parts[1] + "."
		}, reason: Unsigned},
		{name: "HS256 keyed with the public key bytes", token: func(t *testing.T, e verifyEnv) string {
			return hs256(header("HS256", "alice-2026"), mustJSON(t, e.claims), e.pub.Key.(ed25519.PublicKey))
		}, reason: BadAlgorithm},
		{name: "HS256 keyed with the public JWK JSON", token: func(t *testing.T, e verifyEnv) string {
			return hs256(header("HS256", "alice-2026"), mustJSON(t, e.claims), mustJSON(t, e.pub))
		}, reason: BadAlgorithm},
		{name: "RS256", token: func(t *testing.T, e verifyEnv) string {
			parts := strings.Split(e.token, ".")
			return b64(header("RS256", "alice-2026")) + "." + parts[1] + "." + parts[2]
		}, reason: BadAlgorithm},
		{name: "lower-case eddsa", token: func(t *testing.T, e verifyEnv) string {
			parts := strings.Split(e.token, ".")
			return b64(header("eddsa", "alice-2026")) + "." + parts[1] + "." + parts[2]
		}, reason: BadAlgorithm},

		// Malformed structure and headers.
		{name: "two parts", token: func(t *testing.T, e verifyEnv) string { return e.token[:strings.LastIndex(e.token, ".")] }, reason: Malformed},
		{name: "four parts", token: func(t *testing.T, e verifyEnv) string { return e.token + ".x" }, reason: Malformed},
		{name: "padded base64 header", token: func(t *testing.T, e verifyEnv) string {
			parts := strings.Split(e.token, ".")
			return parts[0] + "==." + parts[1] + "." + parts[2]
		}, reason: Malformed},
		{name: "JWS JSON serialization", token: func(t *testing.T, e verifyEnv) string {
			s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: e.priv}, (&jose.SignerOptions{}).WithType(TokenType))
			if err != nil {
				t.Fatal(err)
			}
			obj, err := s.Sign(mustJSON(t, e.claims))
			if err != nil {
				t.Fatal(err)
			}
			return obj.FullSerialize()
		}, reason: Malformed, detail: "JSON serialization"},
		{name: "two signatures (JSON serialization)", token: func(t *testing.T, e verifyEnv) string {
			s, err := jose.NewMultiSigner([]jose.SigningKey{{Algorithm: jose.EdDSA, Key: e.priv}, {Algorithm: jose.EdDSA, Key: e.other}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			obj, err := s.Sign(mustJSON(t, e.claims))
			if err != nil {
				t.Fatal(err)
			}
			return obj.FullSerialize()
		}, reason: Malformed},
		{name: "missing kid", token: func(t *testing.T, e verifyEnv) string {
			k := e.priv
			k.KeyID = ""
			return withOpts(k, (&jose.SignerOptions{}).WithType(TokenType), mustJSON(t, e.claims))
		}, reason: Malformed, detail: "no kid"},
		{name: "wrong typ", token: func(t *testing.T, e verifyEnv) string {
			return withOpts(e.priv, (&jose.SignerOptions{}).WithType("JWT"), mustJSON(t, e.claims))
		}, reason: Malformed, detail: "typ"},
		{name: "missing typ", token: func(t *testing.T, e verifyEnv) string {
			return withOpts(e.priv, &jose.SignerOptions{}, mustJSON(t, e.claims))
		}, reason: Malformed, detail: "typ"},
		{name: "crit header, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return withOpts(e.priv, (&jose.SignerOptions{}).WithType(TokenType).WithCritical("exp").WithHeader("exp", 1), mustJSON(t, e.claims))
		}, reason: Malformed, detail: `"crit"`},
		{name: "b64=false header, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return withOpts(e.priv, (&jose.SignerOptions{}).WithType(TokenType).WithBase64(false), mustJSON(t, e.claims))
		}, reason: Malformed},
		{name: "embedded jwk of an attacker key", token: func(t *testing.T, e verifyEnv) string {
			return withOpts(e.evil, (&jose.SignerOptions{EmbedJWK: true}).WithType(TokenType), mustJSON(t, e.claims))
		}, reason: Malformed},
		{name: "jku header, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return withOpts(e.priv, (&jose.SignerOptions{}).WithType(TokenType).WithHeader("jku", "https://keys.invalid/jwks"), mustJSON(t, e.claims))
		}, reason: Malformed, detail: `"jku"`},
		{name: "duplicate header parameter", token: func(t *testing.T, e verifyEnv) string {
			parts := strings.Split(e.token, ".")
			h := `{"alg":"EdDSA","kid":"alice-2026","typ":"` + TokenType + `","kid":"mallory"}`
			return b64([]byte(h)) + "." + parts[1] + "." + parts[2]
		}, reason: Malformed, detail: "duplicate"},
		{name: "header not an object", token: func(t *testing.T, e verifyEnv) string {
			parts := strings.Split(e.token, ".")
			return b64([]byte(`["EdDSA"]`)) + "." + parts[1] + "." + parts[2]
		}, reason: Malformed},

		// Keys and signatures.
		{name: "unknown kid", token: func(t *testing.T, e verifyEnv) string {
			tok, _ := mustSign(t, e.other, e.req, t0)
			return tok
		}, reason: UnknownKey, detail: `"mallory"`},
		{name: "right kid, wrong key", token: func(t *testing.T, e verifyEnv) string {
			tok, _ := mustSign(t, e.evil, e.req, t0)
			return tok
		}, reason: BadSignature},
		{name: "altered payload: pool flipped", token: func(t *testing.T, e verifyEnv) string {
			return e.alteredClaim(t, func(m map[string]any) { m["pool"] = "admin" })
		}, expect: func(w *Expect) { w.Pool = "admin" }, reason: BadSignature},
		{name: "altered payload: max_attempts raised", token: func(t *testing.T, e verifyEnv) string {
			return e.alteredClaim(t, func(m map[string]any) { m["max_attempts"] = 1000 })
		}, reason: BadSignature},
		{name: "altered payload: expiry extended", token: func(t *testing.T, e verifyEnv) string {
			return e.alteredClaim(t, func(m map[string]any) { m["exp"] = t0.Add(20 * time.Hour).Unix() })
		}, opts: []VerifierOption{WithClock(clockAt(t0.Add(time.Hour)))}, reason: BadSignature},
		{name: "altered signature", token: func(t *testing.T, e verifyEnv) string {
			parts := strings.Split(e.token, ".")
			sig := []byte(parts[2])
			if sig[3] == 'A' {
				sig[3] = 'B'
			} else {
				sig[3] = 'A'
			}
			return parts[0] + "." + parts[1] + "." + string(sig)
		}, reason: BadSignature},
		{name: "truncated signature", token: func(t *testing.T, e verifyEnv) string {
			parts := strings.Split(e.token, ".")
			sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
			return parts[0] + "." + parts[1] + "." + b64(sig[:60])
		}, reason: BadSignature},
		{name: "header swapped to another trusted kid", token: func(t *testing.T, e verifyEnv) string {
			parts := strings.Split(e.token, ".")
			return b64(header("EdDSA", "bob")) + "." + parts[1] + "." + parts[2]
		}, reason: BadSignature},

		// Claims decoding.
		{name: "unknown claim, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return signed(e, t, func(m map[string]any) { m["scope"] = "read-only" })
		}, reason: UnknownClaim, detail: `"scope"`},
		{name: "claim name in other case, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return signed(e, t, func(m map[string]any) { m["JOB"] = m["job"]; delete(m, "job") })
		}, reason: UnknownClaim, detail: `"JOB"`},
		{name: "duplicate claim, properly signed", token: func(t *testing.T, e verifyEnv) string {
			m := string(mustJSON(t, e.claims))
			return mustSignPayload(t, e.priv, strings.TrimSuffix(m, "}")+`,"pool":"admin"}`)
		}, reason: Malformed, detail: "duplicate"},
		{name: "missing nonce, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return signed(e, t, func(m map[string]any) { delete(m, "nonce") })
		}, reason: Malformed, detail: "nonce"},
		{name: "short nonce, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return signed(e, t, func(m map[string]any) { m["nonce"] = "AAAA" })
		}, reason: Malformed, detail: "nonce"},
		{name: "max_attempts 0, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return signed(e, t, func(m map[string]any) { m["max_attempts"] = 0 })
		}, reason: Malformed, detail: "max_attempts"},
		{name: "missing exp, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return signed(e, t, func(m map[string]any) { delete(m, "exp") })
		}, reason: Malformed, detail: "exp"},
		{name: "exp as string, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return signed(e, t, func(m map[string]any) { m["exp"] = "never" })
		}, reason: Malformed},
		{name: "upper-case input hash, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return signed(e, t, func(m map[string]any) { m["input_sha256"] = strings.ToUpper(e.claims.InputSHA256) })
		}, reason: Malformed, detail: "input_sha256"},
		{name: "payload is an array, properly signed", token: func(t *testing.T, e verifyEnv) string {
			return mustSignPayload(t, e.priv, `[1]`)
		}, reason: Malformed},

		// Time.
		{name: "expired", token: func(t *testing.T, e verifyEnv) string { return e.token },
			opts: []VerifierOption{WithClock(clockAt(t0.Add(15*time.Minute + DefaultLeeway + time.Second)))}, reason: Expired},
		{name: "expired but within leeway", token: func(t *testing.T, e verifyEnv) string { return e.token },
			opts: []VerifierOption{WithClock(clockAt(t0.Add(15*time.Minute + DefaultLeeway)))}},
		{name: "expired with zero leeway", token: func(t *testing.T, e verifyEnv) string { return e.token },
			opts: []VerifierOption{WithLeeway(0), WithClock(clockAt(t0.Add(15*time.Minute + time.Second)))}, reason: Expired},
		{name: "issued in the future beyond leeway", token: func(t *testing.T, e verifyEnv) string { return e.token },
			opts: []VerifierOption{WithClock(clockAt(t0.Add(-DefaultLeeway - time.Second)))}, reason: NotYetValid},
		{name: "issued in the future within leeway", token: func(t *testing.T, e verifyEnv) string { return e.token },
			opts: []VerifierOption{WithClock(clockAt(t0.Add(-DefaultLeeway)))}},
		{name: "huge leeway is clamped", token: func(t *testing.T, e verifyEnv) string { return e.token },
			opts: []VerifierOption{WithLeeway(1000 * time.Hour), WithClock(clockAt(t0.Add(15*time.Minute + MaxLeeway + time.Second)))}, reason: Expired},
		{name: "TTL above the default maximum", token: func(t *testing.T, e verifyEnv) string {
			r := e.req
			r.TTL = DefaultMaxTTL + time.Second
			tok, _ := mustSign(t, e.priv, r, t0)
			return tok
		}, reason: TTLTooLong},
		{name: "TTL at the default maximum", token: func(t *testing.T, e verifyEnv) string {
			r := e.req
			r.TTL = DefaultMaxTTL
			tok, _ := mustSign(t, e.priv, r, t0)
			return tok
		}},
		{name: "TTL above a configured maximum", token: func(t *testing.T, e verifyEnv) string { return e.token },
			opts: []VerifierOption{WithMaxTTL(10 * time.Minute)}, reason: TTLTooLong},
		{name: "TTL within a raised maximum", token: func(t *testing.T, e verifyEnv) string {
			r := e.req
			r.TTL = 48 * time.Hour
			tok, _ := mustSign(t, e.priv, r, t0)
			return tok
		}, opts: []VerifierOption{WithMaxTTL(72 * time.Hour)}},

		// Context binding.
		{name: "wrong job", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) { w.JobID = "job-2" }, reason: WrongJob, detail: `"job-2"`},
		{name: "wrong task", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) { w.Task = "delete-account" }, reason: WrongTask},
		{name: "wrong task version", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) { w.TaskVersion = "4" }, reason: WrongVersion},
		{name: "wrong pool", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) { w.Pool = "admin" }, reason: WrongPool},
		{name: "empty expectation never matches", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) { w.Pool = "" }, reason: WrongPool},

		// Input.
		{name: "input changed by a field", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) { w.Input = []byte(`{"account":"acct-9","amount":1250,"tags":["refund","eu"]}`) }, reason: InputMismatch},
		{name: "input with an added field", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) {
				w.Input = []byte(`{"account":"acct-9","amount":12.5,"tags":["refund","eu"],"to":"acct-666"}`)
			}, reason: InputMismatch},
		{name: "input with array order changed", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) { w.Input = []byte(`{"account":"acct-9","amount":12.5,"tags":["eu","refund"]}`) }, reason: InputMismatch},
		{name: "input with key order changed", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) { w.Input = []byte(`{"tags":["refund","eu"],"amount":12.5,"account":"acct-9"}`) }},
		{name: "input with whitespace changed", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) {
				w.Input = []byte("{\n  \"account\": \"acct-9\",\n  \"amount\": 12.5,\n  \"tags\": [ \"refund\", \"eu\" ]\n}\n")
			}},
		{name: "input with number spelled differently", token: func(t *testing.T, e verifyEnv) string {
			r := e.req
			r.Input = []byte(`{"n":1.0,"m":2.50}`)
			tok, _ := mustSign(t, e.priv, r, t0)
			return tok
		}, expect: func(w *Expect) { w.Input = []byte(`{"m":25e-1,"n":1}`) }},
		{name: "input that is not JSON", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) { w.Input = []byte(`{"account":`) }, reason: InputMismatch},
		{name: "input with a duplicate key", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) {
				w.Input = []byte(`{"account":"acct-9","amount":12.5,"tags":["refund","eu"],"account":"acct-666"}`)
			}, reason: InputMismatch},

		// Attempts.
		{name: "second attempt within max_attempts", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) { w.Attempt = 2 }},
		{name: "attempt beyond max_attempts", token: func(t *testing.T, e verifyEnv) string { return e.token },
			expect: func(w *Expect) { w.Attempt = 3 }, reason: AttemptsExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newVerifyEnv(t)
			_, bobPub := newKey(t, "bob")
			_, want := baseRequest()
			if tt.expect != nil {
				tt.expect(&want)
			}
			store := NewMemoryReplayStore()
			v := NewVerifier(keySet(e.pub, bobPub), store, append([]VerifierOption{WithClock(clockAt(t0))}, tt.opts...)...)
			token := tt.token(t, e)
			got, err := v.Verify(t.Context(), token, want)
			if tt.reason == "" {
				if err != nil {
					t.Fatalf("Verify(%s) = %v, want success", tt.name, err)
				}
				if got.JobID != want.JobID || got.Nonce == "" || got.Approver != "alice@example.com" {
					t.Fatalf("Verify(%s) claims = %+v, want the signed claims", tt.name, got)
				}
				if store.Len() != 1 {
					t.Fatalf("after Verify(%s) the replay store holds %d approvals, want 1", tt.name, store.Len())
				}
				return
			}
			wantReason(t, "Verify("+tt.name+")", err, tt.reason, token)
			if !reflect.DeepEqual(got, Claims{}) {
				t.Errorf("Verify(%s) claims = %+v on rejection, want zero Claims", tt.name, got)
			}
			if tt.detail != "" && !strings.Contains(err.Error(), tt.detail) {
				t.Errorf("Verify(%s) = %v, want the detail to mention %s", tt.name, err, tt.detail)
			}
			// A rejected approval never consumes an attempt, except when the store itself
			// refused it.
			if tt.reason != Replayed && store.Len() != 0 {
				t.Errorf("after rejected Verify(%s) the replay store holds %d approvals, want 0", tt.name, store.Len())
			}
		})
	}
}

// The replay store is consulted only after every other check: a rejected attempt does not
// burn the approval, and each (nonce, attempt) runs once.
func TestVerifyReplay(t *testing.T) {
	t.Parallel()
	e := newVerifyEnv(t)
	_, want := baseRequest()
	v := NewVerifier(keySet(e.pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
	ctx := t.Context()

	wrong := want
	wrong.Pool = "elsewhere"
	_, err := v.Verify(ctx, e.token, wrong)
	wantReason(t, "Verify(wrong pool)", err, WrongPool, e.token)

	if _, err := v.Verify(ctx, e.token, want); err != nil {
		t.Fatalf("Verify(attempt 1) = %v, want success after a rejected try", err)
	}
	_, err = v.Verify(ctx, e.token, want)
	wantReason(t, "Verify(attempt 1 again)", err, Replayed, e.token)

	want.Attempt = 2
	if _, err := v.Verify(ctx, e.token, want); err != nil {
		t.Fatalf("Verify(attempt 2) = %v, want success (max_attempts 2)", err)
	}
	_, err = v.Verify(ctx, e.token, want)
	wantReason(t, "Verify(attempt 2 again)", err, Replayed, e.token)
	want.Attempt = 3
	_, err = v.Verify(ctx, e.token, want)
	wantReason(t, "Verify(attempt 3)", err, AttemptsExhausted, e.token)

	// A fresh approval for the same job is a new nonce and runs again.
	tok2, _ := mustSign(t, e.priv, e.req, t0)
	want.Attempt = 1
	if _, err := v.Verify(ctx, tok2, want); err != nil {
		t.Fatalf("Verify(new approval, attempt 1) = %v, want success", err)
	}
}

func TestVerifyConfigurationErrors(t *testing.T) {
	t.Parallel()
	e := newVerifyEnv(t)
	_, want := baseRequest()

	v := NewVerifier(keySet(e.pub), nil, WithClock(clockAt(t0)))
	if _, err := v.Verify(t.Context(), e.token, want); outcome.CodeOf(err) != outcome.Internal || ReasonOf(err) != "" {
		t.Errorf("Verify with no replay store = %v, want an %s error that is not a rejection", err, outcome.Internal)
	}
	v = NewVerifier(keySet(e.pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
	want.Attempt = 0
	if _, err := v.Verify(t.Context(), e.token, want); outcome.CodeOf(err) != outcome.Internal {
		t.Errorf("Verify(attempt 0) = %v, want %s", err, outcome.Internal)
	}
	// A trusted set with a key that cannot verify EdDSA: tokens naming it are refused, and
	// an HS256 token keyed with that secret is refused before any key is used.
	secret := []byte("0123456789abcdef0123456789abcdef")
	v = NewVerifier(keySet(jose.JSONWebKey{Key: secret, KeyID: "shared"}), NewMemoryReplayStore(), WithClock(clockAt(t0)))
	want.Attempt = 1
	k := e.priv
	k.KeyID = "shared"
	tok, _ := mustSign(t, k, e.req, t0)
	_, err := v.Verify(t.Context(), tok, want)
	wantReason(t, "Verify(kid of a symmetric trusted key)", err, UnknownKey, tok)
	hs := hs256(mustJSON(t, map[string]string{"alg": "HS256", "kid": "shared", "typ": TokenType}), mustJSON(t, e.claims), secret)
	_, err = v.Verify(t.Context(), hs, want)
	wantReason(t, "Verify(HS256 with the trusted secret)", err, BadAlgorithm, hs)
}

type failingStore struct{ err error }

func (s failingStore) Consume(context.Context, string, string, int, int, time.Time) error {
	return s.err
}

func TestVerifyStoreFailure(t *testing.T) {
	t.Parallel()
	e := newVerifyEnv(t)
	_, want := baseRequest()
	v := NewVerifier(keySet(e.pub), failingStore{errors.New("disk full")}, WithClock(clockAt(t0)))
	_, err := v.Verify(t.Context(), e.token, want)
	if outcome.CodeOf(err) != outcome.Internal || !outcome.CodeOf(err).Retryable() || ReasonOf(err) != "" {
		t.Fatalf("Verify with a failing store = %v (code %s), want retryable %s", err, outcome.CodeOf(err), outcome.Internal)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	v = NewVerifier(keySet(e.pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
	if _, err := v.Verify(ctx, e.token, want); !errors.Is(err, context.Canceled) || outcome.CodeOf(err) != outcome.Cancelled {
		t.Fatalf("Verify(cancelled ctx) = %v, want %s", err, outcome.Cancelled)
	}
}

// Many workers goroutines racing with the same token on one durable store: exactly one wins.
func TestVerifyConcurrentReplay(t *testing.T) {
	t.Parallel()
	e := newVerifyEnv(t)
	_, want := baseRequest()
	store, err := OpenReplayStore(t.TempDir()+"/replay.db", WithStoreClock(clockAt(t0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	v := NewVerifier(keySet(e.pub), store, WithClock(clockAt(t0)))

	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { _, errs[i] = v.Verify(t.Context(), e.token, want) })
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case ReasonOf(err) != Replayed:
			t.Errorf("concurrent Verify = %v, want success or %s", err, Replayed)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d concurrent Verify calls succeeded, want exactly 1", ok, n)
	}
}

func TestSignRequestValidation(t *testing.T) {
	t.Parallel()
	priv, pub := newKey(t, "k")
	good, _ := baseRequest()
	tests := []struct {
		name   string
		key    jose.JSONWebKey
		mutate func(*Request)
		want   string
	}{
		{"public key", pub, nil, "not an Ed25519 private key"},
		{"no kid", func() jose.JSONWebKey { k := priv; k.KeyID = ""; return k }(), nil, "no kid"},
		{"no job", priv, func(r *Request) { r.JobID = "" }, "JobID"},
		{"no task", priv, func(r *Request) { r.Task = "" }, "Task"},
		{"no version", priv, func(r *Request) { r.TaskVersion = "" }, "TaskVersion"},
		{"no pool", priv, func(r *Request) { r.Pool = "" }, "Pool"},
		{"negative TTL", priv, func(r *Request) { r.TTL = -time.Minute }, "TTL"},
		{"negative attempts", priv, func(r *Request) { r.MaxAttempts = -1 }, "MaxAttempts"},
		{"invalid input", priv, func(r *Request) { r.Input = []byte(`{"a":1,"a":2}`) }, "duplicate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := good
			if tt.mutate != nil {
				tt.mutate(&r)
			}
			tok, _, err := Sign(tt.key, r)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Sign(%s) = %q, %v, want an error mentioning %q", tt.name, tok, err, tt.want)
			}
		})
	}
}

func TestSignDefaultsAndHeader(t *testing.T) {
	t.Parallel()
	priv, _ := newKey(t, "k1")
	r := Request{JobID: "j", Task: "t", TaskVersion: "1", Pool: "p", Auto: true}
	before := time.Now().Unix()
	tok, c, err := Sign(priv, r)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxAttempts != 1 || c.Expiry-c.IssuedAt != int64(DefaultTTL/time.Second) || c.IssuedAt < before || !c.Auto {
		t.Errorf("Sign(%+v) claims = %+v, want max_attempts 1, TTL %s, iat now, auto", r, c, DefaultTTL)
	}
	nullHash, _ := InputHash(nil)
	if c.InputSHA256 != nullHash {
		t.Errorf("Sign(no input) input_sha256 = %s, want the hash of null %s", c.InputSHA256, nullHash)
	}
	h, p, _ := tokenParts(t, tok)
	if len(h) != 3 || h["alg"] != "EdDSA" || h["kid"] != "k1" || h["typ"] != TokenType {
		t.Errorf("Sign header = %v, want exactly alg EdDSA, kid k1, typ %s", h, TokenType)
	}
	if _, ok := p["sub"]; ok {
		t.Errorf("Sign payload = %v, want no sub when Approver is empty", p)
	}
	_, c2, _ := Sign(priv, r)
	if c2.Nonce == c.Nonce {
		t.Errorf("two Sign calls gave the same nonce %q", c.Nonce)
	}
}

func TestInspect(t *testing.T) {
	t.Parallel()
	e := newVerifyEnv(t)
	c, kid, err := Inspect(e.token)
	if err != nil || kid != "alice-2026" || !reflect.DeepEqual(c, e.claims) {
		t.Fatalf("Inspect(token) = %+v, %q, %v, want %+v, alice-2026", c, kid, err, e.claims)
	}
	// Inspect does not verify: an altered token still decodes. That is its documented
	// contract, and why it must never gate execution.
	altered := e.alteredClaim(t, func(m map[string]any) { m["pool"] = "admin" })
	if c, _, err := Inspect(altered); err != nil || c.Pool != "admin" {
		t.Fatalf("Inspect(altered) = %+v, %v, want the unverified claims", c, err)
	}
	for _, bad := range []string{"", "{}", "a.b", e.token + ".x"} {
		if _, _, err := Inspect(bad); ReasonOf(err) == "" {
			t.Errorf("Inspect(%q) = %v, want a rejection", bad, err)
		}
	}
}

func TestRejectErrorText(t *testing.T) {
	t.Parallel()
	err := (&RejectError{Reason: Expired, Detail: "the approval expired at X"}).outcome()
	if got, want := err.Error(), "rejected: approval rejected (expired): the approval expired at X"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := outcome.Message(err), "approval rejected (expired): the approval expired at X"; got != want {
		t.Errorf("outcome.Message = %q, want %q", got, want)
	}
	if got := ReasonOf(errors.New("x")); got != "" {
		t.Errorf("ReasonOf(plain error) = %q, want empty", got)
	}
	if len(Reasons()) != 16 {
		t.Errorf("len(Reasons()) = %d, want 16", len(Reasons()))
	}
}

// TestTokensInteroperate checks approvals against tokens minted independently: go-jose's
// own signer and verifier, and a token built with crypto/ed25519 alone.
func TestTokensInteroperate(t *testing.T) {
	t.Parallel()
	priv, pub := newKey(t, "approver-1")
	r, e := baseRequest()
	tok, c := mustSign(t, priv, r, t0)
	jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatalf("go-jose ParseSignedCompact(Sign(...)) = %v", err)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		t.Fatalf("go-jose Verify(Sign(...)) = %v", err)
	}
	if want := mustJSON(t, c); string(payload) != string(want) {
		t.Errorf("go-jose payload = %s, want %s", payload, want)
	}
	if got := jws.Signatures[0].Protected; got.KeyID != "approver-1" || got.ExtraHeaders["typ"] != TokenType {
		t.Errorf("go-jose header kid %q typ %v, want approver-1 and %s", got.KeyID, got.ExtraHeaders["typ"], TokenType)
	}

	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: priv}, (&jose.SignerOptions{}).WithType(TokenType))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := signer.Sign(mustJSON(t, c))
	if err != nil {
		t.Fatal(err)
	}
	joseTok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(keySet(pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
	if _, err := v.Verify(t.Context(), joseTok, e); err != nil {
		t.Errorf("Verify(go-jose token) = %v, want nil", err)
	}
	// A token made with crypto/ed25519 alone, no JOSE library, verifies too.
	signed := b64([]byte(`{"alg":"EdDSA","kid":"approver-1","typ":"`+TokenType+`"}`)) + "." + b64(mustJSON(t, c))
	raw := signed + "." + b64(ed25519.Sign(priv.Key.(ed25519.PrivateKey), []byte(signed)))
	if _, err := NewVerifier(keySet(pub), NewMemoryReplayStore(), WithClock(clockAt(t0))).Verify(t.Context(), raw, e); err != nil {
		t.Errorf("Verify(hand-made token) = %v, want nil", err)
	}
	// And a bit flipped in go-jose's signature is refused.
	bad := []byte(joseTok)
	bad[len(bad)-2] ^= 1
	if ReasonOf(func() error { _, err := v.Verify(t.Context(), string(bad), e); return err }()) == "" {
		t.Error("Verify(go-jose token with a flipped signature bit) = nil, want a rejection")
	}
}

package approval

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"math/big"
	"strings"
	"testing"
)

// signedSet is n Ed25519 signatures by one key over distinct messages, as parsed tokens.
func signedSet(t testing.TB, n int) (ed25519.PublicKey, []parsedToken) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	toks := make([]parsedToken, n)
	for i := range toks {
		msg := fmt.Sprintf("header.payload-%d", i)
		toks[i] = parsedToken{kid: "k", signed: msg, sig: ed25519.Sign(priv, []byte(msg))}
	}
	return pub, toks
}

func clone(toks []parsedToken) []parsedToken {
	out := make([]parsedToken, len(toks))
	for i, t := range toks {
		t.sig = append([]byte(nil), t.sig...)
		out[i] = t
	}
	return out
}

// TestBatchValid checks the batch equation against single verification: it holds for
// valid signatures and fails when any one signature, message or the key is wrong.
func TestBatchValid(t *testing.T) {
	t.Parallel()
	pub, toks := signedSet(t, 16)
	if !batchValid(pub, toks) {
		t.Fatal("batchValid(16 valid signatures) = false, want true")
	}
	otherPub, _ := signedSet(t, 1)
	// S + L: the same S modulo the group order, but not canonical (malleability).
	l, _ := new(big.Int).SetString("7237005577332262213973186563042994240857116996127867788358810720752593", 10)
	nonCanonical := func(sig []byte) {
		le := make([]byte, 32)
		for i := range 32 {
			le[31-i] = sig[32+i]
		}
		s := new(big.Int).SetBytes(le)
		s.Add(s, l)
		be := s.FillBytes(make([]byte, 32))
		for i := range 32 {
			sig[32+i] = be[31-i]
		}
	}
	for _, tt := range []struct {
		name   string
		change func(toks []parsedToken) ed25519.PublicKey
	}{
		{"a bit of one R", func(toks []parsedToken) ed25519.PublicKey { toks[5].sig[3] ^= 1; return pub }},
		{"a bit of one S", func(toks []parsedToken) ed25519.PublicKey { toks[9].sig[40] ^= 1; return pub }},
		{"S not canonical", func(toks []parsedToken) ed25519.PublicKey { nonCanonical(toks[0].sig); return pub }},
		{"one message", func(toks []parsedToken) ed25519.PublicKey { toks[15].signed += "x"; return pub }},
		{"two signatures swapped", func(toks []parsedToken) ed25519.PublicKey {
			toks[1].sig, toks[2].sig = toks[2].sig, toks[1].sig
			return pub
		}},
		{"another key", func(toks []parsedToken) ed25519.PublicKey { return otherPub }},
		{"short signature", func(toks []parsedToken) ed25519.PublicKey { toks[7].sig = toks[7].sig[:63]; return pub }},
	} {
		bad := clone(toks)
		key := tt.change(bad)
		if batchValid(key, bad) {
			t.Errorf("batchValid with %s changed = true, want false", tt.name)
		}
		// And the halving finds exactly the good ones.
		good := verifyGroup(key, bad, nil)
		for _, g := range good {
			if !g.verify(key) {
				t.Errorf("%s: verifyGroup kept a signature that single verification rejects", tt.name)
			}
		}
		want := 0
		for _, b := range bad {
			if b.verify(key) {
				want++
			}
		}
		if len(good) != want {
			t.Errorf("%s: verifyGroup kept %d, want the %d that verify singly", tt.name, len(good), want)
		}
	}
}

// TestPreverify runs Verify on tokens preverified in a batch that also holds forged ones:
// the good ones pass (their signature check skipped), each preverification is used once,
// and the forged ones fail exactly as without Preverify.
func TestPreverify(t *testing.T) {
	t.Parallel()
	priv, pub := newKey(t, "approver-1")
	v := NewVerifier(keySet(pub), NewMemoryReplayStore(), WithClock(clockAt(t0)))
	r, e := baseRequest()
	var toks []string
	var expects []Expect
	for i := range 12 {
		r.JobID, e.JobID = fmt.Sprintf("job-%d", i), fmt.Sprintf("job-%d", i)
		tok, _ := mustSign(t, priv, r, t0)
		toks = append(toks, tok)
		expects = append(expects, e)
	}
	// Forgeries: a payload swapped under a valid signature, and a token by an untrusted key.
	parts := strings.Split(toks[3], ".")
	other := strings.Split(toks[4], ".")
	forged := parts[0] + "." + other[1] + "." + parts[2]
	stranger, _ := newKey(t, "approver-1") // same kid, another key
	r.JobID = "job-x"
	strangerTok, _ := mustSign(t, stranger, r, t0)
	batch := append(append([]string{forged, strangerTok, "not a token"}, toks...), forged)

	v.Preverify(batch)
	if got := len(v.pre.m); got != len(toks) {
		t.Fatalf("Preverify marked %d tokens, want the %d genuine ones", got, len(toks))
	}
	for i, tok := range toks {
		if _, err := v.Verify(t.Context(), tok, expects[i]); err != nil {
			t.Errorf("Verify(genuine token %d) = %v, want nil", i, err)
		}
	}
	if got := len(v.pre.m); got != 0 {
		t.Errorf("%d preverifications left after every Verify, want 0 (each is used once)", got)
	}
	e.JobID = "job-4"
	if _, err := v.Verify(t.Context(), forged, e); ReasonOf(err) != BadSignature {
		t.Errorf("Verify(forged) = %v, want %s", err, BadSignature)
	}
	e.JobID = "job-x"
	if _, err := v.Verify(t.Context(), strangerTok, e); ReasonOf(err) != BadSignature {
		t.Errorf("Verify(token by another key with a trusted kid) = %v, want %s", err, BadSignature)
	}
}

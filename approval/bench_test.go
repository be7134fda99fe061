package approval

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

// BenchmarkVerify measures a whole approval check (structure, header, signature, strict
// claims, input hash, in-memory replay record) against its floor: ed25519.Verify of the
// same token, which no implementation can avoid. The ratio is the price of the checks.
func BenchmarkVerify(b *testing.B) {
	priv, pub := newKey(b, "approver-1")
	r, e := baseRequest()
	r.TTL = time.Hour
	now := time.Now()
	const n = 4096
	toks := make([]string, n)
	for i := range toks {
		toks[i], _ = mustSign(b, priv, r, now)
	}
	b.Run("ed25519-only", func(b *testing.B) {
		key := pub.Key.(ed25519.PublicKey)
		for i := 0; b.Loop(); i++ {
			tok := toks[i%n]
			dot := strings.LastIndexByte(tok, '.')
			sig, _ := base64.RawURLEncoding.DecodeString(tok[dot+1:])
			if !ed25519.Verify(key, []byte(tok[:dot]), sig) {
				b.Fatal("the signature does not verify")
			}
		}
	})
	b.Run("verify", func(b *testing.B) {
		v := NewVerifier(keySet(pub), NewMemoryReplayStore())
		ctx := context.Background()
		for i := 0; b.Loop(); i++ {
			// A fresh replay store per lap of the tokens: each (nonce, attempt) is new.
			if i%n == 0 {
				v.replay = NewMemoryReplayStore()
			}
			if _, err := v.Verify(ctx, toks[i%n], e); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkSign measures Sign against its floor, ed25519.Sign of a token-sized message.
func BenchmarkSign(b *testing.B) {
	priv, _ := newKey(b, "approver-1")
	r, _ := baseRequest()
	b.Run("ed25519-only", func(b *testing.B) {
		key := priv.Key.(ed25519.PrivateKey)
		msg := make([]byte, 400)
		for b.Loop() {
			_ = ed25519.Sign(key, msg)
		}
	})
	b.Run("sign", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := Sign(priv, r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

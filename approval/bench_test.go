package approval

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
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

// BenchmarkSQLiteReplayStore measures one Consume on the durable store, as a worker pays it
// before every job: "serial" is one job at a time (each pays a whole commit and its fsync),
// "parallel-32" is 32 jobs at once, whose consumes share commits (group commit).
func BenchmarkSQLiteReplayStore(b *testing.B) {
	exp := time.Now().Add(time.Hour)
	open := func(b *testing.B) *SQLiteReplayStore {
		s, err := OpenReplayStore(filepath.Join(b.TempDir(), "replay.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = s.Close() })
		return s
	}
	b.Run("serial", func(b *testing.B) {
		s := open(b)
		ctx := context.Background()
		defer reportCPU(b)()
		for i := 0; b.Loop(); i++ {
			if err := s.Consume(ctx, "n-"+strconv.Itoa(i), "job-"+strconv.Itoa(i), 1, 1, exp); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel-32", func(b *testing.B) {
		s := open(b)
		ctx := context.Background()
		var next atomic.Int64
		defer reportCPU(b)()
		b.SetParallelism(16) // 2 cores × 16 = 32 goroutines
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := strconv.FormatInt(next.Add(1), 10)
				if err := s.Consume(ctx, "n-"+i, "job-"+i, 1, 1, exp); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// reportCPU starts counting the process's CPU time; the function it returns reports it per
// op as cpu-µs/op. The disk's own time is in ns/op, not in it.
func reportCPU(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	c0 := cpu()
	return func() { b.ReportMetric(float64((cpu()-c0).Microseconds())/float64(b.N), "cpu-µs/op") }
}

package redact

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
)

// benchSet is ~10 secrets of realistic shapes (tokens, passwords with punctuation).
func benchSet(b testing.TB) (*Set, []string) {
	var secrets []string
	for i := range 10 {
		secrets = append(secrets, fmt.Sprintf("tok_%02d_f8Zq/9x+Lm3Np7Rt2Vw%d!", i, i*7919))
	}
	return mustSet(b, secrets...), allForms(secrets...)
}

// benchText is 1 MiB of JSON-ish printable text with no secret in it.
func benchText() []byte {
	rng := rand.New(rand.NewPCG(7, 7))
	const alphabet = `abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,:{}"[]-_/+=.`
	b := make([]byte, 1<<20)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return b
}

func BenchmarkRedact1MiB(b *testing.B) {
	s, forms := benchSet(b)
	text := benchText()
	b.Logf("%d forms", len(forms))
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		if out := s.Redact(text); len(out) != len(text) {
			b.Fatal("unexpected match")
		}
	}
}

func BenchmarkReader1MiB(b *testing.B) {
	s, _ := benchSet(b)
	text := benchText()
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		n, err := io.Copy(io.Discard, s.NewReader(bytes.NewReader(text)))
		if err != nil || n != int64(len(text)) {
			b.Fatalf("io.Copy = %d, %v", n, err)
		}
	}
}

// BenchmarkBaselineIndexLoop is the naive approach for comparison: one bytes.Index pass per
// form over the whole text (and it does not even replace anything).
func BenchmarkBaselineIndexLoop(b *testing.B) {
	_, forms := benchSet(b)
	text := benchText()
	pats := make([][]byte, len(forms))
	for i, f := range forms {
		pats[i] = []byte(f)
	}
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		for _, p := range pats {
			if bytes.Index(text, p) >= 0 {
				b.Fatal("unexpected match")
			}
		}
	}
}

// benchEscapedText is 1 MiB of JSON-ish text with an escape every few dozen bytes (\n, \",
// \/, \u00e9, %20, %2F), none of them part of a secret: every scan decodes views of it.
func benchEscapedText() []byte {
	rng := rand.New(rand.NewPCG(8, 8))
	const alphabet = `abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,:{}[]-_+=.`
	escapes := []string{`\n`, `\"`, `\/`, `\u00e9`, `%20`, `%2F`, `\\`}
	b := make([]byte, 0, 1<<20)
	for len(b) < 1<<20 {
		if rng.IntN(32) == 0 {
			b = append(b, escapes[rng.IntN(len(escapes))]...)
			continue
		}
		b = append(b, alphabet[rng.IntN(len(alphabet))])
	}
	return b[:1<<20]
}

// BenchmarkRedactEscaped1MiB is the cost of undoing percent-encoding and JSON escaping
// (one and two layers) on text full of escapes.
func BenchmarkRedactEscaped1MiB(b *testing.B) {
	s, _ := benchSet(b)
	text := benchEscapedText()
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		if out := s.Redact(text); len(out) != len(text) {
			b.Fatal("unexpected match")
		}
	}
}

func BenchmarkReaderEscaped1MiB(b *testing.B) {
	s, _ := benchSet(b)
	text := benchEscapedText()
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		n, err := io.Copy(io.Discard, s.NewReader(bytes.NewReader(text)))
		if err != nil || n != int64(len(text)) {
			b.Fatalf("io.Copy = %d, %v", n, err)
		}
	}
}

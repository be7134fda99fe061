package redact

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"net/url"
	"testing"
	"unicode/utf8"
)

// FuzzReaderMatchesRedact: for any input and any chunking, the streaming reader and writer
// agree byte for byte with Redact, and Redact agrees with the slow reference.
// Seeds: testdata/fuzz/FuzzReaderMatchesRedact.
func FuzzReaderMatchesRedact(f *testing.F) {
	f.Add(streamInput(), []byte{1, 7, 3})
	f.Add([]byte("abababababababababab"+secC), []byte{5})
	secrets := []string{secA, secB, secC}
	s := mustSet(f, secrets...)
	forms := allForms(secrets...)
	f.Fuzz(func(t *testing.T, in, splits []byte) {
		want := s.Redact(in)
		if ref, _ := reference(s, forms, in); !bytes.Equal(want, ref) {
			t.Fatalf("Redact(%q) = %q, want %q", in, want, ref)
		}
		sizes := make([]int, len(splits))
		for i, b := range splits {
			sizes[i] = int(b)
		}
		if got := readAll(t, s, &chunked{data: in, sizes: sizes}); !bytes.Equal(got, want) {
			t.Fatalf("reader(chunks %v) = %q, want %q", sizes, got, want)
		}
		if got := writeAll(t, s, in, sizes); !bytes.Equal(got, want) {
			t.Fatalf("writer(chunks %v) = %q, want %q", sizes, got, want)
		}
	})
}

// FuzzNoSecretSurvives plants one form of an arbitrary secret between arbitrary bytes and
// checks that the output holds no form of it outside a placeholder, that Redact agrees
// with the reference, and that the secret is still found after the encodings it claims to
// cover are applied to the whole surrounding text (so alignment and escaping of the
// neighbours cannot hide it). Seeds: testdata/fuzz/FuzzNoSecretSurvives.
func FuzzNoSecretSurvives(f *testing.F) {
	f.Add("correct horse battery staple", []byte("Basic dXNlcjo="), []byte("\r\n"), uint8(3))
	f.Add("abababab", []byte("ab"), []byte("aba"), uint8(0))
	f.Fuzz(func(t *testing.T, secret string, prefix, suffix []byte, which uint8) {
		if len(secret) < MinSecretLen {
			return
		}
		s := mustSet(t, secret)
		forms := Forms(secret)
		if forms[0] != secret {
			t.Fatalf("Forms(%q)[0] = %q, want the raw secret", secret, forms[0])
		}
		planted := forms[int(which)%len(forms)]
		in := append(append(append([]byte{}, prefix...), planted...), suffix...)
		out := s.Redact(in)
		ref, holes := reference(s, forms, in)
		if !bytes.Equal(out, ref) {
			t.Fatalf("Redact(%q) = %q, want %q", in, out, ref)
		}
		for _, f := range forms {
			for i := 0; i+len(f) <= len(out); i++ {
				if string(out[i:i+len(f)]) != f {
					continue
				}
				inHole := false
				for _, h := range holes {
					if i < h[1] && h[0] < i+len(f) {
						inHole = true
					}
				}
				if !inHole {
					t.Fatalf("Redact(%q) = %q: form %q survives at %d", in, out, f, i)
				}
			}
		}
		// The secret inside a longer text, encoded as a whole.
		whole := string(prefix) + secret + string(suffix)
		encoded := map[string]string{
			"base64 std":  base64.StdEncoding.EncodeToString([]byte(whole)),
			"base64 url":  base64.RawURLEncoding.EncodeToString([]byte(whole)),
			"query":       url.QueryEscape(whole),
			"path":        url.PathEscape(whole),
			"hex":         hex.EncodeToString([]byte(whole)),
			"hex upper":   string(bytes.ToUpper([]byte(hex.EncodeToString([]byte(whole))))),
			"json string": "",
		}
		if utf8.ValidString(whole) {
			j, _ := json.Marshal(whole)
			encoded["json string"] = string(j)
			j, _ = json.Marshal(map[string]string{"k": whole})
			encoded["base64 json"] = base64.StdEncoding.EncodeToString(j)
		} else {
			delete(encoded, "json string")
		}
		for name, e := range encoded {
			if !s.Contains([]byte(e)) {
				t.Errorf("Contains(%s of %q) = false, want true", name, whole)
			}
		}
	})
}

// FuzzEncoderChains: an arbitrary secret, encoded by the chain of at most two encoders
// that which selects from the table in encoders_test.go, with the free choices drawn from
// seed, is found by the output guard and leaves no byte that depends on the secret alone,
// streamed in chunks drawn from the same seed as well as whole.
// Seeds: testdata/fuzz/FuzzEncoderChains.
func FuzzEncoderChains(f *testing.F) {
	f.Add("s3cr3t?key=a&b/c+d==", uint16(0), uint64(1))
	f.Add("pässwörd/\"x\"🔑", uint16(30), uint64(2))
	cs := chains()
	f.Fuzz(func(t *testing.T, secret string, which uint16, seed uint64) {
		if len(secret) < MinSecretLen || len(secret) > 256 {
			return
		}
		s := mustSet(t, secret)
		c := cs[int(which)%len(cs)]
		rng := rand.New(rand.NewPCG(seed, uint64(which)))
		e := apply(c, secret, rng)
		if e.end-e.start < MinSecretLen {
			return // too little of it survives the alignment to be redactable
		}
		if msg := checkRedacted(t, s, e, rng, seed%4 == 0); msg != "" {
			t.Fatalf("secret %q, %s: %s", secret, chainName(c), msg)
		}
	})
}

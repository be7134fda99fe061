package redact

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"
)

// This file is the attacker's side of the redactor: a table of the encoders real software
// applies to a value it echoes, each able to make the free choices real encoders differ on
// (which characters to escape, the case of hex digits, base64 alphabet and padding, where in
// a longer byte string the value sits), and every composition of two of them. The tests
// below feed the results to the streaming redactor and to the output guard.

// encoded is a text with the span that depends on the secret alone: the bytes that must not
// survive redaction.
type encoded struct {
	text       string
	start, end int
}

type encoder struct {
	name string
	// textual encoders escape character by character, so a free choice per character keeps
	// the encoding a contiguous span of the output. The redactor undoes them.
	textual bool
	// enc encodes in.text, making its free choices with rng.
	enc func(in encoded, rng *rand.Rand) encoded
	// styles are the fixed escapings real libraries produce. A binary encoder (base64, hex)
	// applied on top of a textual one mixes all choices into every output character, so
	// there only these styles are claimed (see docs/threat-model.md, "Redaction").
	styles []func(string) string
}

// perChar encodes prefix, span and suffix separately with the same per-character encoder:
// for a character-by-character escaping the concatenation is a valid encoding of the whole
// and the span's encoding stays contiguous.
func perChar(in encoded, f func(string) string) encoded {
	a := f(in.text[:in.start])
	b := f(in.text[in.start:in.end])
	c := f(in.text[in.end:])
	return encoded{a + b + c, len(a), len(a) + len(b)}
}

// binaryWrap encodes in with a base64 or hex encoder after 0-2 bytes of context on each
// side (base64 packs 3 bytes into 4 characters, so the alignment matters), and keeps the
// characters that depend on the span alone.
func binaryWrap(in encoded, rng *rand.Rand, encode func([]byte) string, bitsPerChar int) encoded {
	pre := strings.Repeat("P", rng.IntN(3))
	suf := strings.Repeat("Q", rng.IntN(3))
	out := encode([]byte(pre + in.text + suf))
	from, to := 8*(len(pre)+in.start), 8*(len(pre)+in.end) // the span's bits
	first := (from + bitsPerChar - 1) / bitsPerChar
	last := to / bitsPerChar
	return encoded{out, first, max(first, last)}
}

func hexCase(rng *rand.Rand, upper int) func(string) string {
	// upper: 0 lower, 1 upper, 2 a coin per escape (which no library does, and which the
	// redactor accepts all the same)
	return func(h string) string {
		if upper == 1 || upper == 2 && rng.IntN(2) == 0 {
			return strings.ToUpper(h)
		}
		return h
	}
}

// pctAny percent-encodes a random subset of bytes. What every encoder escapes is escaped
// always: '%', a space (as '+' in query mode, where '+' itself is then escaped too), and a
// non-ASCII character either whole or not at all, and bytes that are not UTF-8 (a JSON
// encoder around it would otherwise destroy them).
func pctAny(rng *rand.Rand) func(string) string {
	p := rng.Float64()
	plus := rng.IntN(3) == 0
	hc := hexCase(rng, rng.IntN(3))
	return func(s string) string {
		var b strings.Builder
		for i := 0; i < len(s); {
			r, n := utf8.DecodeRuneInString(s[i:])
			c := s[i]
			switch {
			case plus && c == ' ':
				b.WriteByte('+')
			case c == '%' || c == ' ' || plus && c == '+' || r == utf8.RuneError || rng.Float64() < p:
				for _, c := range []byte(s[i : i+n]) {
					b.WriteString("%" + hc(fmt.Sprintf("%02x", c)))
				}
			default:
				b.WriteString(s[i : i+n])
			}
			i += n
		}
		return b.String()
	}
}

// pctKeep escapes every byte not in keep, with hex digits in the given case.
func pctKeep(keep string, upper bool) func(string) string {
	return func(s string) string {
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			c := s[i]
			if c < 0x80 && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(keep, c) >= 0) {
				b.WriteByte(c)
				continue
			}
			h := fmt.Sprintf("%%%02x", c)
			if upper {
				h = strings.ToUpper(h)
			}
			b.WriteString(h)
		}
		return b.String()
	}
}

func lowerEscapes(f func(string) string) func(string) string {
	return func(s string) string {
		e := []byte(f(s))
		for i := 0; i+2 < len(e); i++ {
			if e[i] == '%' {
				e[i+1], e[i+2] = bytes.ToLower(e[i+1 : i+2])[0], bytes.ToLower(e[i+2 : i+3])[0]
			}
		}
		return string(e)
	}
}

// jsonAny writes s as the body of a JSON string, escaping what JSON requires and a random
// subset of everything else (as \uXXXX in either case, \/ or a short escape), the way one
// encoder or another, or a hostile one, may.
func jsonAny(rng *rand.Rand) func(string) string {
	p := rng.Float64()
	hc := hexCase(rng, rng.IntN(3))
	fffd := rng.IntN(2) == 0 // an invalid byte: written as is, or replaced as Go does
	return jsonWith(func(rune) bool { return rng.Float64() < p }, func(rune) bool { return rng.IntN(2) == 0 }, hc, fffd)
}

// jsonWith is the JSON string escaper behind jsonAny and the fixed styles: esc says whether
// to escape an optional character, short whether to use a two-character escape where JSON
// has one (for '"' and ” always).
func jsonWith(esc func(rune) bool, short func(rune) bool, hc func(string) string, fffd bool) func(string) string {
	u := func(b *strings.Builder, r rune) {
		if r > 0xffff {
			r1, r2 := utf16Pair(r)
			b.WriteString(`\u` + hc(fmt.Sprintf("%04x", r1)) + `\u` + hc(fmt.Sprintf("%04x", r2)))
			return
		}
		b.WriteString(`\u` + hc(fmt.Sprintf("%04x", r)))
	}
	shorts := map[rune]string{'"': `\"`, '\\': `\\`, '/': `\/`, '\b': `\b`, '\f': `\f`, '\n': `\n`, '\r': `\r`, '\t': `\t`}
	return func(s string) string {
		var b strings.Builder
		for i := 0; i < len(s); {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				if fffd {
					b.WriteString(`\ufffd`)
				} else {
					b.WriteByte(s[i])
				}
				i++
				continue
			}
			i += n
			must := r == '"' || r == '\\' || r < 0x20
			if !must && !esc(r) {
				b.WriteRune(r)
				continue
			}
			if sh, ok := shorts[r]; ok && (r == '"' || r == '\\' || short(r)) {
				b.WriteString(sh)
				continue
			}
			u(&b, r)
		}
		return b.String()
	}
}

func utf16Pair(r rune) (rune, rune) {
	r -= 0x10000
	return 0xd800 + r>>10&0x3ff, 0xdc00 + r&0x3ff
}

func goJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

func never(rune) bool { return false }

func always(rune) bool { return true }

// encoders is the table. Every entry is something a library or a framework writes when it
// reflects a value: in a URL, a form body, a JSON document, a Basic auth header, a JWT, a
// Kubernetes secret, a hex dump.
func encoders() []encoder {
	id := func(s string) string { return s }
	nonASCII := func(r rune) bool { return r >= 0x80 }
	slashOrNonASCII := func(r rune) bool { return r == '/' || r >= 0x80 }
	all := func(rune) bool { return true }
	upper := strings.ToUpper
	textual := func(name string, anySubset func(*rand.Rand) func(string) string, styles ...func(string) string) encoder {
		return encoder{name: name, textual: true, styles: styles, enc: func(in encoded, rng *rand.Rand) encoded {
			return perChar(in, anySubset(rng))
		}}
	}
	binary := func(name string, f func([]byte) string, bits int) encoder {
		return encoder{name: name, enc: func(in encoded, rng *rand.Rand) encoded {
			return binaryWrap(in, rng, f, bits)
		}, styles: []func(string) string{func(s string) string { return f([]byte(s)) }}}
	}
	return []encoder{
		textual("percent", pctAny,
			url.QueryEscape, url.PathEscape, lowerEscapes(url.QueryEscape), lowerEscapes(url.PathEscape),
			pctKeep("-_.!~*'()", true), pctKeep("-_.!~*'()", false), // encodeURIComponent
			pctKeep("-_.~", true), pctKeep("-_.~", false), // RFC 3986 unreserved only
			pctKeep("", true), pctKeep("", false), // every byte but letters and digits
		),
		textual("json", jsonAny,
			jsonWith(func(rune) bool { return false }, always, id, false), // JavaScript, most encoders
			goJSON, // Go: <, >, & and invalid UTF-8 as \ufffd
			jsonWith(func(r rune) bool { return r == '/' }, always, id, false), // Jackson option, old PHP
			jsonWith(nonASCII, always, id, false),                              // Python ensure_ascii
			jsonWith(nonASCII, always, upper, false),                           // Java-style upper-case escapes
			jsonWith(slashOrNonASCII, always, id, false),                       // PHP json_encode
			jsonWith(all, never, id, false),                                    // every character escaped
			jsonWith(all, never, upper, false),
		),
		binary("base64", base64.StdEncoding.EncodeToString, 6),
		binary("base64-raw", base64.RawStdEncoding.EncodeToString, 6),
		binary("base64url", base64.URLEncoding.EncodeToString, 6),
		binary("base64url-raw", base64.RawURLEncoding.EncodeToString, 6),
		binary("hex", hex.EncodeToString, 4),
		binary("HEX", func(b []byte) string { return strings.ToUpper(hex.EncodeToString(b)) }, 4),
	}
}

// chains returns every encoder and every pair (inner, outer) of encoders.
func chains() [][]encoder {
	es := encoders()
	var out [][]encoder
	for _, e := range es {
		out = append(out, []encoder{e})
	}
	for _, in := range es {
		for _, outer := range es {
			out = append(out, []encoder{in, outer})
		}
	}
	return out
}

func chainName(c []encoder) string {
	var n []string
	for _, e := range c {
		n = append(n, e.name)
	}
	return strings.Join(n, "+")
}

// apply runs the chain on secret inside some context, choosing with rng. A textual encoder
// under a binary one uses one of its fixed styles.
func apply(c []encoder, secret string, rng *rand.Rand) encoded {
	pre := []string{"", "x=", "{\"v\":\"", "a b/c?"}[rng.IntN(4)]
	suf := []string{"", "&y=1", "\"}", " z"}[rng.IntN(4)]
	e := encoded{pre + secret + suf, len(pre), len(pre) + len(secret)}
	for i, enc := range c {
		if enc.textual && i+1 < len(c) && !c[i+1].textual {
			style := enc.styles[rng.IntN(len(enc.styles))]
			e = perChar(e, style)
			continue
		}
		e = enc.enc(e, rng)
	}
	return e
}

// genSecrets are shaped to hit every escaping rule: characters URLs, JSON and base64
// treat specially, a space, quotes and backslashes, a value that looks like escapes itself,
// control characters, non-ASCII up to outside the BMP, and invalid UTF-8.
var genSecrets = []string{
	"abcdefgh12345678",
	"s3cr3t?key=a&b/c+d==",
	"Tok/en+with\"quotes-and-é!",
	"correct horse battery staple",
	"pässwörd/\"x\"🔑",
	"back\\slash\\u0041'q\"",
	"100%25real%3f%",
	"\x01ctrl\ttab\nline\x7f",
	"\xff\xfeinvalid-utf8\x80",
	"<html>&amp;'tok'</html>",
}

// TestEncoderChainsAreRedacted: every secret under every encoder and every composition of two,
// with random free choices, is found by the output guard (Contains), and the streaming
// redactor, fed in random chunks (one byte at a time for part of the cases), removes every
// byte that depends on the secret alone.
func TestEncoderChainsAreRedacted(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(12, 6))
	trials := 4
	if testing.Short() {
		trials = 1
	}
	for _, secret := range genSecrets {
		s := mustSet(t, secret)
		failures := 0
		for _, c := range chains() {
			for trial := range trials {
				e := apply(c, secret, rng)
				if e.end-e.start < MinSecretLen {
					continue // too little of it survives the alignment to be redactable
				}
				if msg := checkRedacted(t, s, e, rng, trial == 0); msg != "" {
					failures++
					if failures <= 10 {
						t.Errorf("secret %q, %s: %s", secret, chainName(c), msg)
					}
				}
			}
		}
		if failures > 10 {
			t.Errorf("secret %q: %d failing cases in all", secret, failures)
		}
	}
}

// checkRedacted returns what is wrong with how s handles e, or "".
func checkRedacted(t *testing.T, s *Set, e encoded, rng *rand.Rand, oneByte bool) string {
	text := []byte(e.text)
	if !s.Contains(text) {
		return fmt.Sprintf("Contains(%q) = false, want true", e.text)
	}
	whole := s.Redact(text)
	sizes := []int{1}
	if !oneByte {
		sizes = []int{1 + rng.IntN(7), 1 + rng.IntN(300), 1 + rng.IntN(40)}
	}
	if got := readAll(t, s, &chunked{data: text, sizes: sizes}); !bytes.Equal(got, whole) {
		return fmt.Sprintf("reader(chunks %v) of %q = %q, want %q (Redact)", sizes, e.text, got, whole)
	}
	if got := writeAll(t, s, text, sizes); !bytes.Equal(got, whole) {
		return fmt.Sprintf("writer(chunks %v) of %q = %q, want %q (Redact)", sizes, e.text, got, whole)
	}
	return spanSurvives(s, e)
}

// spanSurvives returns a description of the bytes of e's secret span that Redact leaves, or "".
func spanSurvives(s *Set, e encoded) string {
	covered := make([]bool, len(e.text))
	for _, o := range s.occurrences([]byte(e.text)) {
		for i := o.s; i < o.e; i++ {
			covered[i] = true
		}
	}
	for i := e.start; i < e.end; i++ {
		if !covered[i] {
			return fmt.Sprintf("byte %d of the secret's span %q in %q survives", i-e.start, e.text[e.start:e.end], e.text)
		}
	}
	return ""
}

// TestStreamsMatchRedactOnLongMixedText: a long text of encoded secrets (every chain), plain
// filler longer than the longest occurrence, and stray escapes, cut at random: the reader and
// the writer give exactly what Redact gives, which agrees with the reference. Long plain
// stretches let a stream decide early (see searcher.scan); escapes near a cut make it wait.
func TestStreamsMatchRedactOnLongMixedText(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(3, 4))
	secrets := []string{genSecrets[1], genSecrets[2], genSecrets[5]}
	s := mustSet(t, secrets...)
	filler := strings.Repeat("plain words, numbers 12345 and {json: [1, 2]} ", 40)
	var b strings.Builder
	for i, c := range chains() {
		b.WriteString(apply(c, secrets[i%len(secrets)], rng).text)
		switch rng.IntN(4) {
		case 0:
			b.WriteString(filler[:rng.IntN(len(filler))])
		case 1:
			b.WriteString(`\n\"%20\\\u00e9%2f`)
		default:
			b.WriteString(" | ")
		}
	}
	in := []byte(b.String())
	want := s.Redact(in)
	if ref, _ := reference(s, allForms(secrets...), in); !bytes.Equal(want, ref) {
		t.Fatalf("Redact differs from the reference on a %d-byte text", len(in))
	}
	for range 40 {
		sizes := []int{1 + rng.IntN(3000), 1 + rng.IntN(50), 1 + rng.IntN(9000)}
		if got := readAll(t, s, &chunked{data: in, sizes: sizes}); !bytes.Equal(got, want) {
			t.Fatalf("reader(chunks %v) differs from Redact: %s", sizes, firstDiff(got, want))
		}
		if got := writeAll(t, s, in, sizes); !bytes.Equal(got, want) {
			t.Fatalf("writer(chunks %v) differs from Redact: %s", sizes, firstDiff(got, want))
		}
	}
}

func firstDiff(got, want []byte) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	lo := max(0, i-80)
	return fmt.Sprintf("at %d: got %q, want %q", i, got[lo:min(len(got), i+80)], want[lo:min(len(want), i+80)])
}

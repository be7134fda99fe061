package redact

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Forms returns the literal forms of secret: the strings the redactor looks for in text as
// it is, deduplicated, raw form first. Forms shorter than MinSecretLen are left out (they
// would match ordinary text); for a secret of at least MinSecretLen bytes the raw form is
// always present.
//
// The redactor finds more than these. Percent-encoding and JSON string escaping of any
// subset of characters, in either hex case, and any two of them composed, are undone
// before searching (see decode.go), so their forms are not listed here; the list holds what
// binary encodings make of the secret and of its fixed escapings, which no decoding of the
// text undoes (see literalForms).
func Forms(secret string) []string { return formsOf(secret).raw }

// secretForms are the forms of one secret by where they are searched: raw in the text as
// it is, one in the text with one layer of escaping undone, two with two layers undone.
// Each tier contains the next, so a view in which nothing was decoded need not be searched.
type secretForms struct {
	raw, one, two []string
}

// formsOf builds the three tiers from the table of encoders real software applies to a
// value it reflects:
//
//   - textual escapings, character by character: percent-encoding (query, path,
//     encodeURIComponent, RFC 3986 unreserved, everything; upper- and lower-case hex) and
//     JSON string escaping (minimal, Go's, "/" as "\/", non-ASCII as \uXXXX as Python, PHP
//     and Java write it, every character escaped; either hex case);
//   - binary encodings: base64 (standard and URL alphabets, padded and not, and the core
//     that depends on the value alone at each of the three byte alignments) and hex in
//     either case.
//
// Compositions of up to two: a textual escaping over anything is undone by decoding, so
// tiers one and two hold the secret and its binary encodings (tier two only the secret:
// deeper would be three layers); a binary encoding over a textual escaping or over another
// binary encoding mixes the inner encoder's choices into every output character, so those
// are listed literally, for the fixed escapings above.
func formsOf(secret string) secretForms {
	var f secretForms
	seen := make(map[string]bool)
	add := func(tier *[]string, s string) {
		if len(s) < MinSecretLen || seen[s] {
			return
		}
		seen[s] = true
		*tier = append(*tier, s)
	}
	plain := []string{secret}
	if !utf8.ValidString(secret) {
		// encoding/json writes each invalid byte as \ufffd, which decodes to U+FFFD.
		var b strings.Builder
		for i := 0; i < len(secret); {
			r, n := utf8.DecodeRuneInString(secret[i:])
			b.WriteRune(r)
			i += n
		}
		plain = append(plain, b.String())
	}
	for _, p := range plain {
		add(&f.two, p)
	}
	f.one = append(f.one, f.two...)
	var binaries []string
	for _, p := range plain {
		for _, b := range binaryForms(p) {
			if !seen[b] {
				binaries = append(binaries, b)
			}
			add(&f.one, b)
		}
	}
	f.raw = append(f.raw, f.one...)
	// A form body or a query string with nothing else to escape (in views where
	// percent-encoding was undone, a space and '+' are one byte).
	add(&f.raw, strings.ReplaceAll(secret, " ", "+"))
	// Binary encodings of the escaped secret and of its binary encodings (a Basic auth
	// header inside a Kubernetes secret, a JWT whose payload is JSON).
	inner := append(textualForms(secret), binaries...)
	for _, in := range inner {
		add(&f.raw, in)
	}
	for _, in := range inner {
		for _, b := range outerForms(in) {
			add(&f.raw, b)
		}
	}
	return f
}

// binaryForms are the base64 and hex encodings of v, whole and at each alignment.
func binaryForms(v string) []string {
	return encodedForms(v, base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding)
}

// outerForms are the binary encodings of an already encoded v. The unpadded full forms are
// prefixes of the padded ones and the cores cover every alignment, so fewer are needed than
// for the secret itself.
func outerForms(v string) []string {
	return encodedForms(v, base64.StdEncoding, base64.URLEncoding)
}

// encodedForms are v whole in each of the encodings whole, its unpadded base64 cores at each
// of the three alignments (a secret inside a longer encoded text), and its hex in both cases.
func encodedForms(v string, whole ...*base64.Encoding) []string {
	var out []string
	for _, enc := range whole {
		out = append(out, enc.EncodeToString([]byte(v)))
	}
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
		for shift := range 3 {
			out = append(out, base64Core(enc, v, shift))
		}
	}
	h := hex.EncodeToString([]byte(v))
	return append(out, h, strings.ToUpper(h))
}

// textualForms are the fixed escapings of secret that real libraries write.
func textualForms(secret string) []string {
	out := []string{url.QueryEscape(secret), url.PathEscape(secret)}
	out = append(out, lowerHexEscapes(out[0]), lowerHexEscapes(out[1]))
	for _, keep := range []string{
		"-_.!~*'()", // JavaScript's encodeURIComponent
		"-_.~",      // RFC 3986 unreserved characters only
		"",          // everything but letters and digits
	} {
		e := percentKeeping(secret, keep)
		out = append(out, e, lowerHexEscapes(e))
	}
	out = append(out, jsonEscape(secret, jsonStyle{})) // most encoders
	if j, err := json.Marshal(secret); err == nil {
		out = append(out, string(j[1:len(j)-1])) // Go's encoding/json: escapes <, >, &
	}
	for _, st := range []jsonStyle{
		{slash: true},              // encoders that escape "/" (Jackson option, older PHP)
		{ascii: true},              // Python json.dumps (ensure_ascii)
		{ascii: true, upper: true}, // Java-style upper-case \uXXXX
		{ascii: true, slash: true}, // PHP json_encode
		{all: true},                // every character escaped
		{all: true, upper: true},
	} {
		out = append(out, jsonEscape(secret, st))
	}
	return out
}

// percentKeeping percent-encodes every byte of s but ASCII letters, digits and keep, in
// upper-case hex.
func percentKeeping(s, keep string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c < utf8.RuneSelf && strings.IndexByte(keep, c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	return b.String()
}

// lowerHexEscapes rewrites the %XX escapes of s in lower case, as some encoders write them.
func lowerHexEscapes(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = toLowerASCII(b[i+1]), toLowerASCII(b[i+2])
			i += 2
		}
	}
	return string(b)
}

func toLowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// base64Core returns the characters of the base64 encoding of secret, placed shift bytes
// into a longer byte string, that depend on the secret's bytes only. Base64 packs 3 bytes
// into 4 characters, so a secret inside "user:secret" or inside a JSON document that is
// then base64-encoded shows up at one of three alignments, with its first and last
// characters blended with the neighbouring bytes. Character k covers bits [6k, 6k+6); it
// belongs to the secret iff 8*shift <= 6k and 6k+6 <= 8*(shift+len(secret)).
func base64Core(enc *base64.Encoding, secret string, shift int) string {
	buf := make([]byte, shift+len(secret))
	copy(buf[shift:], secret)
	s := enc.EncodeToString(buf)
	first := (8*shift + 5) / 6
	last := 8 * (shift + len(secret)) / 6 // exclusive
	if first >= last {
		return ""
	}
	return s[first:last]
}

type jsonStyle struct {
	slash bool // escape / as \/
	ascii bool // escape every non-ASCII rune as \uXXXX (UTF-16 surrogates above the BMP)
	all   bool // escape every rune as \uXXXX
	upper bool // upper-case hex digits
}

// jsonEscape returns secret as it appears between the quotes of a JSON string written by an
// encoder of the given style. Control characters use the short escapes where JSON has them
// and \u00XX otherwise, in lower-case hex, as Python and PHP do.
func jsonEscape(secret string, st jsonStyle) string {
	hexDigits := "0123456789abcdef"
	if st.upper {
		hexDigits = "0123456789ABCDEF"
	}
	var b strings.Builder
	u := func(r rune) {
		b.WriteString(`\u`)
		b.WriteByte(hexDigits[r>>12&0xf])
		b.WriteByte(hexDigits[r>>8&0xf])
		b.WriteByte(hexDigits[r>>4&0xf])
		b.WriteByte(hexDigits[r&0xf])
	}
	for i := 0; i < len(secret); {
		r, size := utf8.DecodeRuneInString(secret[i:])
		if r == utf8.RuneError && size == 1 {
			// Not UTF-8 on its own, but it may complete a rune with the bytes around the
			// secret (a secret ending in a lead byte), and encoders then write the rune
			// as is. On its own an encoder substitutes U+FFFD, which json.Marshal's
			// form covers.
			b.WriteByte(secret[i])
			i++
			continue
		}
		i += size
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case st.all && r <= 0xffff:
			u(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r < 0x20:
			u(r)
		case r == '/' && st.slash:
			b.WriteString(`\/`)
		case r >= 0x80 && (st.ascii || st.all):
			if r > 0xffff {
				r -= 0x10000
				u(0xd800 + r>>10&0x3ff)
				u(0xdc00 + r&0x3ff)
			} else {
				u(r)
			}
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

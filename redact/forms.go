package redact

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"strings"
	"unicode/utf8"
)

// Forms returns the encodings of secret that the redactor looks for, deduplicated, raw
// form first. Forms shorter than MinSecretLen are left out (they would match ordinary
// text); for a secret of at least MinSecretLen bytes the raw form is always present.
//
// The list: the raw bytes; base64 (standard and URL alphabets, padded and unpadded); the
// base64 "cores" at each of the three byte alignments; URL query- and path-escaping; hex in
// lower and upper case; and the bodies of JSON strings as common encoders write them,
// with their base64 cores when they differ from the raw secret.
func Forms(secret string) []string {
	var out []string
	seen := make(map[string]bool)
	add := func(f string) {
		if len(f) < MinSecretLen || seen[f] {
			return
		}
		seen[f] = true
		out = append(out, f)
	}
	add(secret)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		add(enc.EncodeToString([]byte(secret)))
	}
	addCores := func(v string) {
		for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.RawURLEncoding} {
			for shift := range 3 {
				add(base64Core(enc, v, shift))
			}
		}
	}
	addCores(secret)
	add(url.QueryEscape(secret))
	add(url.PathEscape(secret))
	h := hex.EncodeToString([]byte(secret))
	add(h)
	add(strings.ToUpper(h))
	// JSON bodies, and their base64 cores: a JSON document that is then base64-encoded
	// (a JWT payload, a Kubernetes secret, a webhook envelope) carries the escaped form.
	jsonForms := []string{jsonEscape(secret, jsonStyle{})} // most encoders
	if j, err := json.Marshal(secret); err == nil {
		jsonForms = append(jsonForms, string(j[1:len(j)-1])) // Go's encoding/json: escapes <, >, &
	}
	for _, st := range []jsonStyle{
		{slash: true},              // encoders that escape "/" (Jackson option, older PHP)
		{ascii: true},              // Python json.dumps (ensure_ascii)
		{ascii: true, slash: true}, // PHP json_encode
	} {
		jsonForms = append(jsonForms, jsonEscape(secret, st))
	}
	for _, j := range jsonForms {
		if !seen[j] {
			add(j)
			addCores(j)
		}
	}
	return out
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
}

// jsonEscape returns secret as it appears between the quotes of a JSON string written by an
// encoder of the given style. Control characters use the short escapes where JSON has them
// and \u00XX otherwise, in lower-case hex, as Python and PHP do.
func jsonEscape(secret string, st jsonStyle) string {
	const hexDigits = "0123456789abcdef"
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
		case r >= 0x80 && st.ascii:
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

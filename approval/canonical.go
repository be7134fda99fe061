package approval

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxDepth is how deeply arrays and objects may nest in an input. A job input is a small
// document written by a person or a program; anything deeper is more likely an attempt to
// exhaust the worker's stack than data.
const MaxDepth = 64

// CheckIJSON reports whether input is one I-JSON document (RFC 7493) that CanonicalJSON
// accepts, and if not, why: a *SyntaxError naming the byte offset and the JSON Pointer
// (RFC 6901) of the offending value, never the value itself. Control planes call it at
// submit so that an input the worker would refuse is refused at the door; CanonicalJSON
// and InputHash use the same parser, so a non-I-JSON input can never be hashed or approved.
//
// Refused: invalid JSON or trailing data; invalid UTF-8; surrogates, raw or escaped
// (\ud800), unless an escaped pair; Unicode noncharacters (U+FDD0-U+FDEF, U+xFFFE,
// U+xFFFF); duplicate member names (two parsers could pick different values); nesting
// deeper than MaxDepth; and numbers that do not round-trip through an IEEE-754 double:
// the number's decimal value must equal that of the double's shortest form, the form
// RFC 8785 writes. 9007199254740993, 12345678901234567890, 0.10000000000000001, 1e400 and
// 1e-400 are refused, as is -0 in any spelling: a double reader sees -0 and 0 as
// different values, but RFC 8785 writes both as 0, so one approval would cover both.
// Otherwise two inputs a task reads differently would have one canonical form and one
// approval. 1.0, 1E2 and 2.50 are accepted (the same value as 1, 100 and 2.5).
func CheckIJSON(input []byte) error {
	_, err := parseJSON(input)
	return err
}

// CanonicalJSON returns the RFC 8785 (JSON Canonicalization Scheme) form of input: object
// members sorted by the UTF-16 code units of their names, no insignificant whitespace,
// numbers in ECMAScript's shortest round-trip form, strings with only the escapes JCS
// requires. Two documents that differ only in key order, whitespace or number spelling
// ("1.0" and "1", "1E2" and "100") have the same canonical form, so an approver and a
// worker agree on the input hash however the control plane re-serialised the input.
// It refuses every input CheckIJSON refuses, with the same error.
func CanonicalJSON(input []byte) ([]byte, error) {
	v, err := parseJSON(input)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(input))
	return v.appendTo(out), nil
}

// parseJSON parses one JSON document with CanonicalJSON's rules and returns its tree.
func parseJSON(input []byte) (jsonValue, error) {
	p := parser{data: input}
	p.skipSpace()
	v, err := p.value(0)
	if err != nil {
		return jsonValue{}, err
	}
	p.skipSpace()
	if p.pos != len(p.data) {
		return jsonValue{}, p.errorf("unexpected data after the JSON value")
	}
	return v, nil
}

// InputHash returns the lowercase hex SHA-256 of the canonical form of input. An empty
// input (no bytes, or only whitespace) is hashed as JSON null, so that a job with no input
// can still be approved; a non-empty input must be valid JSON.
func InputHash(input []byte) (string, error) {
	if strings.TrimSpace(string(input)) == "" {
		input = []byte("null")
	}
	c, err := CanonicalJSON(input)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(c)
	return hex.EncodeToString(sum[:]), nil
}

// jsonValue is a parsed JSON value. Only objects need a tree (their members are sorted);
// every other kind is kept in its final, canonical text.
type jsonValue struct {
	text    string // canonical text of a scalar
	members []member
	items   []jsonValue
	kind    byte // 's' scalar, 'o' object, 'a' array
}

type member struct {
	name  string
	value jsonValue
}

// compareUTF16 orders two names by their UTF-16 code units, the JCS sort key, without
// converting them: code points below U+10000 are their own unit, and a supplementary code
// point's first unit is its high surrogate (0xD800-0xDBFF), which sorts below U+E000-U+FFFF
// although the code point is larger.
func compareUTF16(a, b string) int {
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			ha, la := utf16Units(ra)
			hb, lb := utf16Units(rb)
			if ha != hb {
				return int(ha) - int(hb)
			}
			return int(la) - int(lb)
		}
		a, b = a[na:], b[nb:]
	}
	return len(a) - len(b)
}

func utf16Units(r rune) (first, second rune) {
	if r < 0x10000 {
		return r, 0
	}
	return utf16.EncodeRune(r)
}

func (v jsonValue) appendTo(b []byte) []byte {
	switch v.kind {
	case 'o':
		b = append(b, '{')
		for i, m := range v.members {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, m.name)
			b = append(b, ':')
			b = m.value.appendTo(b)
		}
		return append(b, '}')
	case 'a':
		b = append(b, '[')
		for i, it := range v.items {
			if i > 0 {
				b = append(b, ',')
			}
			b = it.appendTo(b)
		}
		return append(b, ']')
	}
	return append(b, v.text...)
}

// stringValue returns the value of a JSON string; ok is false for any other kind.
func (v jsonValue) stringValue() (string, bool) {
	if v.kind != 's' || !strings.HasPrefix(v.text, `"`) {
		return "", false
	}
	// The text is canonical: only the escapes JCS writes, which strconv reads the same way.
	s, err := strconv.Unquote(v.text)
	return s, err == nil
}

// intValue returns the value of a JSON number that is an integer in int64's range.
func (v jsonValue) intValue() (int64, bool) {
	if v.kind != 's' || v.text == "" || !(v.text[0] == '-' || v.text[0] >= '0' && v.text[0] <= '9') {
		return 0, false
	}
	n, err := strconv.ParseInt(v.text, 10, 64) // canonical text: "1e3" is "1000", "1.5" fails
	return n, err == nil
}

func (v jsonValue) boolValue() (bool, bool) {
	if v.kind != 's' || (v.text != "true" && v.text != "false") {
		return false, false
	}
	return v.text == "true", true
}

// describe names the value's kind for error messages, never its content.
func (v jsonValue) describe() string {
	switch {
	case v.kind == 'o':
		return "an object"
	case v.kind == 'a':
		return "an array"
	case strings.HasPrefix(v.text, `"`):
		return "a string"
	case v.text == "true" || v.text == "false":
		return "a boolean"
	case v.text == "null":
		return "null"
	}
	return "a number that is not a whole number in range"
}

// SyntaxError reports where an input stopped being acceptable I-JSON.
type SyntaxError struct {
	Offset int    // byte offset into the input
	Path   string // JSON Pointer (RFC 6901) of the value holding the error; "" is the document
	Msg    string
}

func (e *SyntaxError) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("invalid JSON at byte %d: %s", e.Offset, e.Msg)
	}
	return fmt.Sprintf("invalid JSON at byte %d (%s): %s", e.Offset, e.Path, e.Msg)
}

// within prefixes the path of err (a *SyntaxError from a nested value) with one token: the
// pointer is built while the error unwinds, so accepted input pays nothing for it.
func within(err error, token string) error {
	if se, ok := err.(*SyntaxError); ok {
		token = strings.ReplaceAll(strings.ReplaceAll(token, "~", "~0"), "/", "~1")
		if len(se.Path)+len(token) < 256 {
			se.Path = "/" + token + se.Path
		} else if !strings.HasPrefix(se.Path, "/...") {
			se.Path = "/..." + se.Path
		}
	}
	return err
}

type parser struct {
	data []byte
	pos  int
}

func (p *parser) errorf(format string, args ...any) error {
	return &SyntaxError{Offset: p.pos, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) skipSpace() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) value(depth int) (jsonValue, error) {
	if p.pos >= len(p.data) {
		return jsonValue{}, p.errorf("unexpected end of input")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		return p.object(depth + 1)
	case c == '[':
		return p.array(depth + 1)
	case c == '"':
		s, err := p.string()
		if err != nil {
			return jsonValue{}, err
		}
		return jsonValue{kind: 's', text: string(appendString(nil, s))}, nil
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	default:
		return jsonValue{}, p.errorf("unexpected character %q", rune(c))
	}
}

func (p *parser) literal(word string) (jsonValue, error) {
	if !strings.HasPrefix(string(p.data[p.pos:min(len(p.data), p.pos+len(word))]), word) {
		return jsonValue{}, p.errorf("invalid literal (expected %s)", word)
	}
	p.pos += len(word)
	return jsonValue{kind: 's', text: word}, nil
}

func (p *parser) object(depth int) (jsonValue, error) {
	if depth > MaxDepth {
		return jsonValue{}, p.errorf("nesting deeper than %d levels", MaxDepth)
	}
	p.pos++ // '{'
	v := jsonValue{kind: 'o'}
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		return v, nil
	}
	// Duplicate names are found by a scan of the members so far: objects are small, and
	// a map per object cost more than the scan. Large objects switch to a map.
	var seen map[string]struct{}
	for {
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return jsonValue{}, p.errorf("expected a member name in double quotes")
		}
		at := p.pos
		name, err := p.string()
		if err != nil {
			return jsonValue{}, err
		}
		if seen == nil && len(v.members) >= 16 {
			seen = make(map[string]struct{}, 2*len(v.members))
			for _, m := range v.members {
				seen[m.name] = struct{}{}
			}
		}
		dup := false
		if seen != nil {
			_, dup = seen[name]
			seen[name] = struct{}{}
		} else {
			for _, m := range v.members {
				if m.name == name {
					dup = true
					break
				}
			}
		}
		if dup {
			return jsonValue{}, within(&SyntaxError{Offset: at, Msg: fmt.Sprintf("duplicate member name %q", name)}, name)
		}
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return jsonValue{}, p.errorf("expected ':' after a member name")
		}
		p.pos++
		p.skipSpace()
		val, err := p.value(depth)
		if err != nil {
			return jsonValue{}, within(err, name)
		}
		v.members = append(v.members, member{name: name, value: val})
		p.skipSpace()
		if p.pos >= len(p.data) {
			return jsonValue{}, p.errorf("unexpected end of input inside an object")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case '}':
			p.pos++
			slices.SortFunc(v.members, func(a, b member) int { return compareUTF16(a.name, b.name) })
			return v, nil
		default:
			return jsonValue{}, p.errorf("expected ',' or '}' in an object")
		}
	}
}

func (p *parser) array(depth int) (jsonValue, error) {
	if depth > MaxDepth {
		return jsonValue{}, p.errorf("nesting deeper than %d levels", MaxDepth)
	}
	p.pos++ // '['
	v := jsonValue{kind: 'a'}
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return v, nil
	}
	for {
		p.skipSpace()
		it, err := p.value(depth)
		if err != nil {
			return jsonValue{}, within(err, strconv.Itoa(len(v.items)))
		}
		v.items = append(v.items, it)
		p.skipSpace()
		if p.pos >= len(p.data) {
			return jsonValue{}, p.errorf("unexpected end of input inside an array")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return v, nil
		default:
			return jsonValue{}, p.errorf("expected ',' or ']' in an array")
		}
	}
}

// string parses a JSON string at p.pos (which holds '"') and returns its decoded value.
func (p *parser) string() (string, error) {
	p.pos++ // opening quote
	// Most strings are printable ASCII without escapes: take those as they are.
	start := p.pos
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		if c == '"' {
			p.pos++
			return string(p.data[start : p.pos-1]), nil
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
		p.pos++
	}
	var b strings.Builder
	b.Write(p.data[start:p.pos])
	for {
		if p.pos >= len(p.data) {
			return "", p.errorf("unterminated string")
		}
		c := p.data[p.pos]
		switch {
		case c == '"':
			p.pos++
			return b.String(), nil
		case c == '\\':
			at := p.pos
			r, err := p.escape()
			if err != nil {
				return "", err
			}
			if nonCharacter(r) {
				return "", &SyntaxError{Offset: at, Msg: fmt.Sprintf("escaped Unicode noncharacter U+%04X (I-JSON forbids noncharacters)", r)}
			}
			b.WriteRune(r)
		case c < 0x20:
			return "", p.errorf("control character %#02x in a string must be escaped", c)
		case c < utf8.RuneSelf:
			b.WriteByte(c)
			p.pos++
		default:
			r, size := utf8.DecodeRune(p.data[p.pos:])
			if r == utf8.RuneError && size <= 1 {
				return "", p.errorf("invalid UTF-8 in a string")
			}
			if nonCharacter(r) {
				return "", p.errorf("Unicode noncharacter U+%04X (I-JSON forbids noncharacters)", r)
			}
			b.WriteRune(r)
			p.pos += size
		}
	}
}

// escape decodes one escape sequence at p.pos (which holds '\'), joining a UTF-16
// surrogate pair into one rune. A lone surrogate is rejected: it has no UTF-8 form, and
// JCS (through I-JSON) forbids it.
func (p *parser) escape() (rune, error) {
	if p.pos+1 >= len(p.data) {
		return 0, p.errorf("unterminated escape sequence")
	}
	c := p.data[p.pos+1]
	if c != 'u' {
		p.pos += 2
		switch c {
		case '"', '\\', '/':
			return rune(c), nil
		case 'b':
			return '\b', nil
		case 'f':
			return '\f', nil
		case 'n':
			return '\n', nil
		case 'r':
			return '\r', nil
		case 't':
			return '\t', nil
		}
		p.pos -= 2
		return 0, p.errorf("invalid escape sequence \\%c", c)
	}
	r1, err := p.hex4()
	if err != nil {
		return 0, err
	}
	if !utf16.IsSurrogate(r1) {
		return r1, nil
	}
	if r1 >= 0xDC00 {
		return 0, p.errorf("lone low surrogate \\u%04x", r1)
	}
	if p.pos+1 >= len(p.data) || p.data[p.pos] != '\\' || p.data[p.pos+1] != 'u' {
		return 0, p.errorf("high surrogate \\u%04x not followed by a low surrogate", r1)
	}
	r2, err := p.hex4()
	if err != nil {
		return 0, err
	}
	r := utf16.DecodeRune(r1, r2)
	if r == utf8.RuneError {
		return 0, p.errorf("high surrogate \\u%04x not followed by a low surrogate", r1)
	}
	return r, nil
}

// hex4 parses "\uXXXX" at p.pos.
func (p *parser) hex4() (rune, error) {
	if p.pos+6 > len(p.data) {
		return 0, p.errorf("truncated \\u escape")
	}
	n, err := strconv.ParseUint(string(p.data[p.pos+2:p.pos+6]), 16, 16)
	if err != nil {
		return 0, p.errorf("invalid \\u escape")
	}
	p.pos += 6
	return rune(n), nil
}

func (p *parser) number() (jsonValue, error) {
	start := p.pos
	digits := func() int {
		n := 0
		for p.pos < len(p.data) && p.data[p.pos] >= '0' && p.data[p.pos] <= '9' {
			p.pos++
			n++
		}
		return n
	}
	if p.data[p.pos] == '-' {
		p.pos++
	}
	switch {
	case p.pos < len(p.data) && p.data[p.pos] == '0':
		p.pos++
	case digits() == 0:
		return jsonValue{}, p.errorf("invalid number")
	}
	if p.pos < len(p.data) && p.data[p.pos] == '.' {
		p.pos++
		if digits() == 0 {
			return jsonValue{}, p.errorf("invalid number: digits must follow '.'")
		}
	}
	if p.pos < len(p.data) && (p.data[p.pos] == 'e' || p.data[p.pos] == 'E') {
		p.pos++
		if p.pos < len(p.data) && (p.data[p.pos] == '+' || p.data[p.pos] == '-') {
			p.pos++
		}
		if digits() == 0 {
			return jsonValue{}, p.errorf("invalid number: digits must follow the exponent")
		}
	}
	lit := string(p.data[start:p.pos])
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil {
		return jsonValue{}, &SyntaxError{Offset: start, Msg: "number out of the range of an IEEE-754 double"}
	}
	text, err := formatNumber(f)
	if err != nil {
		return jsonValue{}, &SyntaxError{Offset: start, Msg: err.Error()}
	}
	if f == 0 && math.Signbit(f) {
		return jsonValue{}, &SyntaxError{Offset: start, Msg: "negative zero: RFC 8785 writes it as 0, so it would hash like 0; write 0"}
	}
	if !sameDecimal(lit, text) {
		return jsonValue{}, &SyntaxError{Offset: start, Msg: fmt.Sprintf("number of %d characters does not round-trip through an IEEE-754 double (it would hash like its neighbours); write it as the double's shortest form, or carry it as a string", len(lit))}
	}
	return jsonValue{kind: 's', text: text}, nil
}

// sameDecimal reports whether two JSON number texts have the same decimal value.
func sameDecimal(a, b string) bool {
	na, da, ea, oka := decimal(a)
	nb, db, eb, okb := decimal(b)
	return oka && okb && na == nb && da == db && ea == eb
}

// decimal splits a JSON number's text into sign, significant digits (no leading or trailing
// zeros) and exponent, so that its value is 0.digits × 10^exp; zero has no digits and
// exponent 0. ok is false for an exponent too large to matter for a double.
func decimal(s string) (neg bool, digits string, exp int, ok bool) {
	neg = strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	mant, e, hasExp := strings.Cut(strings.ToLower(s), "e")
	intPart, frac, _ := strings.Cut(mant, ".")
	all := intPart + frac
	trimmed := strings.TrimLeft(all, "0")
	digits = strings.TrimRight(trimmed, "0")
	if digits == "" {
		return neg, "", 0, true
	}
	n := 0
	if hasExp {
		var err error
		if n, err = strconv.Atoi(strings.TrimPrefix(e, "+")); err != nil || n > 1<<20 || n < -(1<<20) {
			return neg, "", 0, false
		}
	}
	return neg, digits, len(intPart) - (len(all) - len(trimmed)) + n, true
}

// nonCharacter reports whether r is one of the 66 Unicode noncharacters.
func nonCharacter(r rune) bool {
	return r >= 0xFDD0 && r <= 0xFDEF || r&0xFFFE == 0xFFFE
}

// formatNumber renders f as ECMAScript's Number.prototype.toString does, which is what
// JCS prescribes: fixed notation for magnitudes in [1e-6, 1e21), exponent notation with
// no padded exponent digits otherwise, always the shortest digits that round-trip.
func formatNumber(f float64) (string, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "", fmt.Errorf("%v is not a JSON number", f)
	}
	if f == 0 {
		return "0", nil // also for -0
	}
	sign := ""
	if f < 0 {
		sign, f = "-", -f
	}
	format := byte('e')
	if f >= 1e-6 && f < 1e21 {
		format = 'f'
	}
	s := strconv.FormatFloat(f, format, -1, 64)
	// Go writes at least two exponent digits ("1e-07"); ECMAScript writes "1e-7".
	if i := strings.IndexByte(s, 'e'); i > 0 && s[i+2] == '0' {
		s = s[:i+2] + s[i+3:]
	}
	return sign + s, nil
}

// appendString writes s as a JCS string: only '"', '\\' and control characters are
// escaped, the five with short forms (\b \t \n \f \r) as such, the others as \u00xx.
func appendString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c >= 0x20:
			b = append(b, c)
		case c == '\b':
			b = append(b, '\\', 'b')
		case c == '\t':
			b = append(b, '\\', 't')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\f':
			b = append(b, '\\', 'f')
		case c == '\r':
			b = append(b, '\\', 'r')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
	}
	return append(b, '"')
}

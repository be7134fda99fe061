package redact

import (
	"bytes"
	"slices"
	"unicode/utf16"
	"unicode/utf8"
)

// Escapings that encoders apply character by character (percent-encoding, JSON string
// escaping) have a free choice per character: which characters to escape, in which case the
// hex digits are written, whether "/" becomes "\/". The forms of one secret under them are
// exponentially many, so instead of listing them the redactor undoes the escaping: it
// decodes the text into a view, searches the view for the secret's forms, and maps every
// occurrence back to the escaped bytes it came from. Valid escaping decodes to what was
// escaped whichever subset was chosen, because the characters an encoder cannot leave as
// they are ('%' in a URL, '"' and '\' in JSON) are exactly those that start an escape.

// view is text decoded by one layer, with where each escape came from in its source (the
// original text, or the view below for a second layer). Between escapes the view and its
// source are byte for byte the same, so only the escapes are recorded, and decoding costs
// little more than a copy.
type view struct {
	b      []byte
	breaks []escape // in order
	parent *view    // the source, when it is itself a view
}

// escape says that b[d:d+n] was decoded from source[s:e].
type escape struct{ d, n, s, e int32 }

// srcExtent returns the extent in the source of the byte b[i].
func (v *view) srcExtent(i int) (int, int) {
	k, found := slices.BinarySearchFunc(v.breaks, int32(i), func(x escape, t int32) int { return int(x.d - t) })
	if !found {
		k-- // the last escape before i
	}
	if k < 0 {
		return i, i + 1
	}
	x := v.breaks[k]
	if int32(i) < x.d+x.n {
		return int(x.s), int(x.e)
	}
	off := int(x.e) + i - int(x.d+x.n)
	return off, off + 1
}

// extent returns the extent in the original text of b[i:j].
func (v *view) extent(i, j int) (int, int) {
	s, _ := v.srcExtent(i)
	_, e := v.srcExtent(j - 1)
	if v.parent != nil {
		s, _ = v.parent.extent(s, s+1)
		_, e = v.parent.extent(e-1, e)
	}
	return s, e
}

// layer decodes one escape at src[i:], returning the decoded bytes appended to dst and how
// many source bytes the escape takes (0 for a byte that starts no escape).
type layer func(dst, src []byte, i int) ([]byte, int)

// percentLayer decodes %XX in either case. '+' is left alone: only form bodies and query
// strings write spaces as '+', and a value that contains '+' is looked for in both spellings
// (see viewForms).
func percentLayer(dst, src []byte, i int) ([]byte, int) {
	if src[i] != '%' || i+2 >= len(src) {
		return dst, 0
	}
	h, l := unhex(src[i+1]), unhex(src[i+2])
	if h < 0 || l < 0 {
		return dst, 0
	}
	return append(dst, byte(h<<4|l)), 3
}

// jsonLayer decodes the escapes of a JSON string body (RFC 8259 §7): the two-character ones
// and \uXXXX in either case, UTF-16 surrogate pairs joined into one rune. A lone surrogate
// becomes U+FFFD, as Go's encoding/json and most decoders do.
func jsonLayer(dst, src []byte, i int) ([]byte, int) {
	if src[i] != '\\' || i+1 >= len(src) {
		return dst, 0
	}
	switch c := src[i+1]; c {
	case '"', '\\', '/':
		return append(dst, c), 2
	case 'b':
		return append(dst, '\b'), 2
	case 'f':
		return append(dst, '\f'), 2
	case 'n':
		return append(dst, '\n'), 2
	case 'r':
		return append(dst, '\r'), 2
	case 't':
		return append(dst, '\t'), 2
	case 'u':
		r := hex4(src, i+2)
		if r < 0 {
			return dst, 0
		}
		if utf16.IsSurrogate(r) {
			if i+7 < len(src) && src[i+6] == '\\' && src[i+7] == 'u' {
				if r2 := hex4(src, i+8); r2 >= 0 {
					if j := utf16.DecodeRune(r, r2); j != utf8.RuneError {
						return utf8.AppendRune(dst, j), 12
					}
				}
			}
			r = utf8.RuneError
		}
		return utf8.AppendRune(dst, r), 6
	}
	return dst, 0
}

func hex4(src []byte, i int) rune {
	if i+4 > len(src) {
		return -1
	}
	var r rune
	for _, c := range src[i : i+4] {
		d := unhex(c)
		if d < 0 {
			return -1
		}
		r = r<<4 | rune(d)
	}
	return r
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return int(c - 'A' + 10)
	}
	return -1
}

// maxEscape bounds how many source bytes one escape of a layer spans (a surrogate pair).
const maxEscape = 12

// expansion bounds how many source bytes one decoded byte comes from: "\u0041" is six bytes
// for one. Two layers multiply.
const expansion = 6

// decode applies l, whose escapes start with the byte trigger, to src (parent is src's
// view, nil for the original text) into v. It reports whether anything was decoded; if
// not, the view is src itself. A decoded text is never longer than its source.
func decode(l layer, trigger byte, src []byte, parent *view, v *view) bool {
	v.b = slices.Grow(v.b[:0], len(src))
	v.breaks = v.breaks[:0]
	v.parent = parent
	for i := 0; i < len(src); {
		j := bytes.IndexByte(src[i:], trigger)
		if j < 0 {
			v.b = append(v.b, src[i:]...)
			break
		}
		j += i
		v.b = append(v.b, src[i:j]...)
		d := len(v.b)
		var n int
		if v.b, n = l(v.b, src, j); n == 0 {
			v.b = append(v.b, src[j]) // not an escape after all
			i = j + 1
			continue
		}
		v.breaks = append(v.breaks, escape{int32(d), int32(len(v.b) - d), int32(j), int32(j + n)})
		i = j + n
	}
	return len(v.breaks) > 0
}

// hasEscapes reports whether text can hold an escape of either layer.
func hasEscapes(text []byte) (pct, json bool) {
	return bytes.IndexByte(text, '%') >= 0, bytes.IndexByte(text, '\\') >= 0
}

// syncWindow is how far back from a position an escape that covers it can start, through
// two layers: a second-layer escape of maxEscape bytes, each written by the first layer
// in up to maxEscape bytes.
const syncWindow = maxEscape * maxEscape

// syncBefore returns the latest position t in [max(0, p-maxBack), p] at which decoding can
// start and split text into the same escapes as decoding from the start: the byte before t
// cannot be inside an escape ('%', '\\', 'u' and hex digits are the only bytes an escape has
// before its last), or no escape starts in the syncWindow bytes before t. A stream keeps
// text[t:p] as context so that a chunk boundary does not cut an escape in two, nor a run
// of backslashes (whose parity decides which of them start an escape).
func syncBefore(text []byte, p, maxBack int) int {
	lo := max(0, p-maxBack)
	// Only escapes that can reach past lo matter.
	from := max(0, lo-syncWindow)
	last := max(bytes.LastIndexByte(text[from:p], '%'), bytes.LastIndexByte(text[from:p], '\\'))
	if last < 0 {
		return p
	}
	last += from
	for t := p; t > lo; t-- {
		if t > last+syncWindow || !inEscape(text[t-1]) {
			return t
		}
	}
	return lo
}

func inEscape(c byte) bool {
	return c == '%' || c == '\\' || c == 'u' || unhex(c) >= 0
}

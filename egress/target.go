package egress

import (
	"errors"
	"strings"
)

// MaxTargetBytes bounds a task's target (path plus query). Longer targets are denied: no
// internal API needs them, and some servers truncate or mis-parse very long request lines.
const MaxTargetBytes = 8 << 10

// ValidateTarget checks a task's target ("/path?query") and splits it. It is deliberately
// stricter than RFC 3986: anything a server, proxy or framework could read differently from
// how the rules read it is refused, because the rules are only as good as the agreement
// between this parser and the upstream's.
//
// segments are the decoded path segments ("/a/b%20c/" gives ["a", "b c", ""]), rawPath is
// the path exactly as it will go on the wire, and rawQuery is what followed the first "?"
// (without it). The error text never repeats the target.
func ValidateTarget(target string) (segments []string, rawPath, rawQuery string, err error) {
	if len(target) > MaxTargetBytes {
		return nil, "", "", errors.New("target is longer than 8 KiB")
	}
	if !strings.HasPrefix(target, "/") {
		return nil, "", "", errors.New("target must start with \"/\" (a path, never a URL)")
	}
	rawPath, rawQuery, _ = strings.Cut(target, "?")
	if strings.Contains(rawPath, "//") {
		// Also catches "//host/x", which a URL parser reads as a network-path reference.
		return nil, "", "", errors.New("target contains an empty segment (\"//\")")
	}
	rest := rawPath[1:]
	segments = make([]string, 0, strings.Count(rest, "/")+1)
	for more := true; more; {
		// Cut splits exactly as strings.Split(rest, "/") would, without its slice.
		var seg string
		seg, rest, more = strings.Cut(rest, "/")
		dec, err := checkSegment(seg)
		if err != nil {
			return nil, "", "", err
		}
		segments = append(segments, dec)
	}
	if err := checkQuery(rawQuery); err != nil {
		return nil, "", "", err
	}
	return segments, rawPath, rawQuery, nil
}

// checkSegment validates one raw path segment and returns it decoded.
func checkSegment(seg string) (string, error) {
	var b strings.Builder
	escaped := false
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case c == '%':
			d, ok := unhex2(seg, i)
			if !ok {
				return "", errors.New("target contains an invalid percent-escape")
			}
			switch {
			case d == '/' || d == '\\':
				return "", errors.New("target contains an encoded slash or backslash")
			case d == '.':
				return "", errors.New("target contains an encoded \".\"")
			case d == '%':
				return "", errors.New("target contains an encoded \"%\" (double encoding)")
			case d == ';':
				return "", errors.New("target contains an encoded \";\"")
			case d < 0x20 || d == 0x7f:
				return "", errors.New("target contains an encoded control character")
			}
			escaped = true
			i += 2
		case c == ';':
			// Tomcat, Jetty and Spring strip ";params" from segments: "/a/..;/b" is "/b" to them.
			return "", errors.New("target contains \";\" (path parameters are not allowed)")
		case c == '\\':
			return "", errors.New("target contains \"\\\"")
		case c == '@':
			return "", errors.New("target contains \"@\"")
		case c == '#':
			return "", errors.New("target contains \"#\"")
		case c == ' ' || c == '\t':
			return "", errors.New("target contains white space")
		case c < 0x20 || c == 0x7f:
			return "", errors.New("target contains a control character")
		case c >= 0x80:
			return "", errors.New("target contains a non-ASCII byte (percent-encode it)")
		case !isPathChar(c):
			return "", errors.New("target contains a character that must be percent-encoded")
		}
	}
	if seg == "." || seg == ".." {
		return "", errors.New("target contains a \".\" or \"..\" segment")
	}
	if !escaped {
		return seg, nil
	}
	b.Grow(len(seg))
	for i := 0; i < len(seg); i++ {
		if seg[i] == '%' {
			d, _ := unhex2(seg, i)
			b.WriteByte(d)
			i += 2
			continue
		}
		b.WriteByte(seg[i])
	}
	return b.String(), nil
}

// checkQuery accepts RFC 3986 query characters and valid percent-escapes. Encoded control
// characters are data here (a search string may hold a newline) and stay encoded on the wire.
func checkQuery(q string) error {
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '%':
			if _, ok := unhex2(q, i); !ok {
				return errors.New("query contains an invalid percent-escape")
			}
			i += 2
		case c == '#':
			return errors.New("query contains \"#\"")
		case c < 0x20 || c == 0x7f:
			return errors.New("query contains a control character")
		case c == ' ' || c >= 0x80:
			return errors.New("query contains white space or a non-ASCII byte (percent-encode it)")
		case !isPathChar(c) && c != '?' && c != '@' && c != ';':
			return errors.New("query contains a character that must be percent-encoded")
		}
	}
	return nil
}

// isPathChar reports RFC 3986 pchar minus "@", ";" and "%" (handled by the callers), plus "/".
func isPathChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	switch c {
	case '-', '.', '_', '~', '!', '$', '&', '\'', '(', ')', '*', '+', ',', '=', ':', '/':
		return true
	}
	return false
}

func unhex2(s string, i int) (byte, bool) {
	if i+2 >= len(s) {
		return 0, false
	}
	h, ok1 := unhex(s[i+1])
	l, ok2 := unhex(s[i+2])
	return h<<4 | l, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// allowedBy reports whether a target passes ValidateTarget and one of rules allows method on
// it. It is the whole path policy in one place, so the fuzz test can check the composition.
func allowedBy(rules []Rule, method, target string) bool {
	segs, _, _, err := ValidateTarget(target)
	if err != nil {
		return false
	}
	return matchAny(rules, method, segs)
}

func matchAny(rules []Rule, method string, segs []string) bool {
	for _, r := range rules {
		if r.Match(method, segs) {
			return true
		}
	}
	return false
}

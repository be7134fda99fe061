package egress

import (
	"fmt"
	"net/url"
	"strings"
)

// Rule allows a set of methods on a path pattern, written "GET /api/customers/*" or
// "GET,POST /api/tickets/**". Patterns work on whole path segments, so a rule can never be
// satisfied by a request that escapes its prefix:
//   - a literal segment matches itself (percent-encodings in the rule are decoded once);
//   - "*" matches exactly one non-empty segment;
//   - "**", only as the last segment, matches one or more segments.
//
// Partial-segment globs such as "cust*" are refused: they make rules hard to review.
type Rule struct {
	methods  []string // nil means any method ("*")
	segments []string // decoded pattern segments, without the leading empty one
	text     string
}

// ParseRule parses "METHODS /path/pattern".
func ParseRule(s string) (Rule, error) {
	methodPart, pathPart, ok := strings.Cut(strings.TrimSpace(s), " ")
	pathPart = strings.TrimSpace(pathPart)
	if !ok || methodPart == "" || pathPart == "" {
		return Rule{}, fmt.Errorf("rule %q: want \"METHOD /path\" such as \"GET /api/customers/*\"", s)
	}
	r := Rule{text: methodPart + " " + pathPart}
	if methodPart != "*" {
		for _, m := range strings.Split(methodPart, ",") {
			if !isMethodToken(m) {
				return Rule{}, fmt.Errorf("rule %q: method %q must be an upper-case HTTP method or \"*\"", s, m)
			}
			r.methods = append(r.methods, m)
		}
	}
	if !strings.HasPrefix(pathPart, "/") {
		return Rule{}, fmt.Errorf("rule %q: path must start with \"/\"", s)
	}
	if strings.ContainsAny(pathPart, "?#\\@ \t\r\n") {
		return Rule{}, fmt.Errorf("rule %q: path may not contain a query, fragment, backslash, \"@\" or white space", s)
	}
	raw := strings.Split(pathPart[1:], "/")
	for i, seg := range raw {
		dec, err := url.PathUnescape(seg)
		if err != nil {
			return Rule{}, fmt.Errorf("rule %q: segment %q: bad percent-encoding", s, seg)
		}
		switch {
		case dec == "." || dec == "..":
			return Rule{}, fmt.Errorf("rule %q: \".\" and \"..\" segments are not allowed", s)
		case dec == "" && i != len(raw)-1:
			return Rule{}, fmt.Errorf("rule %q: empty segment (\"//\") is not allowed", s)
		case dec == "**" && i != len(raw)-1:
			return Rule{}, fmt.Errorf("rule %q: \"**\" is only allowed as the last segment", s)
		case dec != "*" && dec != "**" && strings.Contains(dec, "*"):
			return Rule{}, fmt.Errorf("rule %q: segment %q: \"*\" must be a whole segment", s, seg)
		case strings.ContainsAny(dec, "/\\%") || hasControl(dec):
			return Rule{}, fmt.Errorf("rule %q: segment %q decodes to a forbidden character", s, seg)
		}
		r.segments = append(r.segments, dec)
	}
	return r, nil
}

// MustParseRule is ParseRule for tests and literals; it panics on error.
func MustParseRule(s string) Rule {
	r, err := ParseRule(s)
	if err != nil {
		panic(err)
	}
	return r
}

// String returns the rule as written (normalised spacing).
func (r Rule) String() string { return r.text }

// Methods returns the allowed methods, or nil for any method.
func (r Rule) Methods() []string { return append([]string(nil), r.methods...) }

// Wildcard reports whether the rule allows any method or uses "*"/"**" segments (an audit
// finding: wildcards deserve a second look).
func (r Rule) Wildcard() bool {
	if r.methods == nil {
		return true
	}
	for _, s := range r.segments {
		if s == "*" || s == "**" {
			return true
		}
	}
	return false
}

// Match reports whether the rule allows method on a path given as its decoded segments
// (the path "/a/b" is []string{"a", "b"}; a trailing slash adds an empty last segment).
func (r Rule) Match(method string, segments []string) bool {
	if r.methods != nil {
		found := false
		for _, m := range r.methods {
			if m == method {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	for i, p := range r.segments {
		if p == "**" {
			return len(segments) > i && allNonEmpty(segments[i:])
		}
		if i >= len(segments) {
			return false
		}
		switch p {
		case "*":
			if segments[i] == "" {
				return false
			}
		default:
			if segments[i] != p {
				return false
			}
		}
	}
	return len(segments) == len(r.segments)
}

func allNonEmpty(ss []string) bool {
	for i, s := range ss {
		// A trailing slash under "**" ("/a/b/") is fine; an empty inner segment never is.
		if s == "" && i != len(ss)-1 {
			return false
		}
	}
	return ss[0] != ""
}

func isMethodToken(m string) bool {
	if m == "" || len(m) > 16 {
		return false
	}
	for _, c := range m {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

package egress

import (
	"net/url"
	"path"
	"strings"
	"testing"
)

var fuzzTargetSeeds = []string{
	"/", "/a/b", "/a/b/", "/a%20b", "/caf%C3%A9?x=1&y=%0A", "/a..b", "/x:y", "/a?b?c",
	"//evil", "http://evil/", "/a/../b", "/a/%2e%2e/b", "/a/%2E./b", "/a/..;/b", "/a%2fb", "/a%252e",
	"/a\\b", "/a@b", "/a#b", "/a b", "/a\r\nb", "/a\x00", "/caf\xc3\xa9", "/a%", "/a?x=%zz",
}

// FuzzValidateTarget: whatever ValidateTarget accepts joins onto the base URL without
// changing its host, without "//" and without dot segments, and the decoded path is exactly
// the base path plus the returned segments.
func FuzzValidateTarget(f *testing.F) {
	for _, s := range fuzzTargetSeeds {
		f.Add(s)
	}
	ep, err := prepare(&Endpoint{Name: "api", BaseURL: &url.URL{Scheme: "http", Host: "api.internal:8080", Path: "/base"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, target string) {
		segs, raw, q, err := ValidateTarget(target)
		if err != nil {
			return
		}
		if target != raw+"?"+q && (q != "" || target != raw) {
			t.Fatalf("ValidateTarget(%q) raw %q query %q do not reassemble the target", target, raw, q)
		}
		for _, s := range segs {
			if s == "." || s == ".." || strings.ContainsAny(s, "/\\") {
				t.Fatalf("ValidateTarget(%q) segment %q is a dot segment or holds a slash", target, s)
			}
		}
		u, err := ep.buildURL(raw, q)
		if err != nil {
			t.Fatalf("buildURL(%q) = %v for an accepted target", target, err)
		}
		s := u.String()
		back, err := url.Parse(s)
		if err != nil {
			t.Fatalf("url.Parse(%q) = %v", s, err)
		}
		if u.Host != "api.internal:8080" || back.Host != "api.internal:8080" || back.User != nil || back.Scheme != "http" {
			t.Fatalf("ValidateTarget(%q) joined to %q: host %q, want api.internal:8080", target, s, back.Host)
		}
		// "//" may appear in a query value ("?next=http://x"), where it cannot move the host.
		if noQuery, _, _ := strings.Cut(s, "?"); strings.Contains(strings.TrimPrefix(noQuery, "http://"), "//") {
			t.Fatalf("ValidateTarget(%q) joined to %q, which holds \"//\" before the query", target, s)
		}
		if want := "/base/" + strings.Join(segs, "/"); back.Path != want {
			t.Fatalf("ValidateTarget(%q) joined path %q, want %q", target, back.Path, want)
		}
		if c := path.Clean(back.Path); c != strings.TrimSuffix(back.Path, "/") {
			t.Fatalf("ValidateTarget(%q) joined path %q is not clean (%q)", target, back.Path, c)
		}
		wire := "/base" + raw
		if q != "" {
			wire += "?" + q
		}
		if got := u.RequestURI(); got != wire {
			t.Fatalf("ValidateTarget(%q) request line %q, want %q", target, got, wire)
		}
		if back.EscapedPath() != "/base"+raw || back.RawQuery != q {
			t.Fatalf("ValidateTarget(%q) wire form %q?%q, want %q?%q", target, back.EscapedPath(), back.RawQuery, "/base"+raw, q)
		}
	})
}

// FuzzRuleMatch: matching never panics, and no target with a dot segment, however it is
// encoded or decorated with ";params", ever passes the gateway's path policy.
func FuzzRuleMatch(f *testing.F) {
	for _, s := range []struct{ rule, method, target string }{
		{"GET /api/*", "GET", "/api/x"},
		{"GET /api/*/x", "GET", "/api/../x"},
		{"* /api/**", "POST", "/api/%2e%2e/admin"},
		{"GET,POST /a/**", "GET", "/a/..;/b"},
		{"GET /", "GET", "/"},
		{"GET /a%20b/*", "GET", "/a%20b/.%2E"},
		{"* /**", "DELETE", "/%252e%252e/x"},
	} {
		f.Add(s.rule, s.method, s.target)
	}
	f.Fuzz(func(t *testing.T, rule, method, target string) {
		r, err := ParseRule(rule)
		if err != nil {
			return
		}
		p, _, _ := strings.Cut(target, "?")
		raw := strings.Split(strings.TrimPrefix(p, "/"), "/")
		r.Match(method, raw) // must not panic on any segments
		r.Match(method, nil)
		if hasDotSegment(raw) && allowedBy([]Rule{r}, method, target) {
			t.Fatalf("rule %q allows %s %q, which has a dot segment", rule, method, target)
		}
	})
}

// hasDotSegment reports whether any segment is "." or ".." after stripping ";params" and
// decoding up to three times, the way a lenient server might see it.
func hasDotSegment(raw []string) bool {
	for _, s := range raw {
		for range 4 {
			if b, _, _ := strings.Cut(s, ";"); b == "." || b == ".." {
				return true
			}
			d, err := url.PathUnescape(s)
			if err != nil || d == s {
				break
			}
			s = d
		}
	}
	return false
}

package egress

import (
	"slices"
	"testing"
)

func TestValidateTargetRejects(t *testing.T) {
	t.Parallel()
	for _, target := range []string{
		"", "api", "http://evil.example/x", "https://evil.example", "//evil.example/x", "///x",
		"/a//b", "/a/b//", "/a\\b", "/\\evil.example", "/a@b", "/@evil.example",
		"/a#frag", "/a b", "/a\tb", "/a\rb", "/a\nb", "/a\r\nHost: evil", "/a\x00", "/a\x7f",
		"/a\x01", "/caf\xc3\xa9", "/a%", "/a%2", "/a%zz", "/a%g0", "/a%2f", "/a%2F", "/a%5c",
		"/a%5C", "/a%2e", "/a%2E%2e", "/%2e%2e/admin", "/a/%2e%2e/b", "/a%252e", "/a%25",
		"/a%00", "/a%0d%0a", "/a%0A", "/a%7f", "/.", "/..", "/a/.", "/a/..", "/a/../b",
		"/a/./b", "/./a", "/a/..;/b", "/a;jsessionid=1", "/a;", "/a%3b/b", "/a%3B",
		"/a\"b", "/a<b>", "/a[0]", "/a{b}", "/a|b", "/a^b", "/a`b",
		"/a?x=1#f", "/a?x=\x00", "/a?x=\r\n", "/a?x= y", "/a?x=%zz", "/a?x=%", "/a?x=\xff",
		"/a?x=<y>", "/a?x=\"", "/" + string(make([]byte, MaxTargetBytes)),
	} {
		if segs, raw, q, err := ValidateTarget(target); err == nil {
			t.Errorf("ValidateTarget(%q) = %q, %q, %q, nil; want an error", target, segs, raw, q)
		}
	}
}

func TestValidateTargetAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		target, raw, query string
		segs               []string
	}{
		{"/", "/", "", []string{""}},
		{"/a/b", "/a/b", "", []string{"a", "b"}},
		{"/a/b/", "/a/b/", "", []string{"a", "b", ""}},
		{"/a%20b/c", "/a%20b/c", "", []string{"a b", "c"}},
		{"/caf%C3%A9", "/caf%C3%A9", "", []string{"café"}},
		{"/a..b/...", "/a..b/...", "", []string{"a..b", "..."}},
		{"/v1/x:batch", "/v1/x:batch", "", []string{"v1", "x:batch"}},
		{"/a+b", "/a+b", "", []string{"a+b"}},
		{"/a%3F%23", "/a%3F%23", "", []string{"a?#"}},
		{"/a?x=1&y=%0A;z=@/?", "/a", "x=1&y=%0A;z=@/?", []string{"a"}},
		{"/a?", "/a", "", []string{"a"}},
		{"/a?b?c", "/a", "b?c", []string{"a"}},
	}
	for _, tt := range tests {
		segs, raw, q, err := ValidateTarget(tt.target)
		if err != nil || raw != tt.raw || q != tt.query || !slices.Equal(segs, tt.segs) {
			t.Errorf("ValidateTarget(%q) = %q, %q, %q, %v; want %q, %q, %q, nil",
				tt.target, segs, raw, q, err, tt.segs, tt.raw, tt.query)
		}
	}
}

func TestValidateTargetErrorOmitsTarget(t *testing.T) {
	t.Parallel()
	const marker = "MARKER-in-target"
	for _, target := range []string{"/" + marker + "/..", "/" + marker + "\r\n", "http://" + marker} {
		_, _, _, err := ValidateTarget(target)
		if err == nil || contains(err.Error(), marker) {
			t.Errorf("ValidateTarget(%q) error = %v; want an error that does not repeat the target", target, err)
		}
	}
}

func TestBuildURLJoinsBasePath(t *testing.T) {
	t.Parallel()
	ep, err := prepare(&Endpoint{Name: "crm", BaseURL: mustURL(t, "https://crm.internal:8443/api/v2/")})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ target, want string }{
		{"/customers/42", "https://crm.internal:8443/api/v2/customers/42"},
		{"/a%20b?q=1", "https://crm.internal:8443/api/v2/a%20b?q=1"},
		{"/x:y/caf%C3%A9/", "https://crm.internal:8443/api/v2/x:y/caf%C3%A9/"},
		{"/", "https://crm.internal:8443/api/v2/"},
	} {
		_, raw, q, err := ValidateTarget(tt.target)
		if err != nil {
			t.Fatalf("ValidateTarget(%q) = %v", tt.target, err)
		}
		u, err := ep.buildURL(raw, q)
		if err != nil || u.String() != tt.want {
			t.Errorf("buildURL(%q) = %v, %v; want %s", tt.target, u, err, tt.want)
		}
	}
}

func TestAllowedByNeverMatchesDotSegments(t *testing.T) {
	t.Parallel()
	rules := []Rule{MustParseRule("GET /api/*/x"), MustParseRule("* /api/**")}
	for _, target := range []string{"/api/../x", "/api/%2e%2e/x", "/api/.%2E/x", "/api/./x", "/api/..", "/api/..;/x"} {
		if allowedBy(rules, "GET", target) {
			t.Errorf("allowedBy(%q) = true, want false", target)
		}
	}
	if !allowedBy(rules, "GET", "/api/a/x") {
		t.Errorf("allowedBy(/api/a/x) = false, want true")
	}
}

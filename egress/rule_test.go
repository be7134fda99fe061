package egress

import "testing"

func TestParseRuleErrors(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		"", "GET", "/api", "get /api", "GET api", "GET /api/../x", "GET /api/%2e%2e/x",
		"GET /a//b", "GET /a/**/b", "GET /a/cust*", "GET /a?x=1", "GET /a#f", `GET /a\b`,
		"GET /a/%2F", "GET /a/%zz", "GET /u@h", "GET,  /a",
	} {
		if _, err := ParseRule(s); err == nil {
			t.Errorf("ParseRule(%q) = nil error, want error", s)
		}
	}
}

func TestRuleMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		rule, method string
		segs         []string
		want         bool
	}{
		{"GET /api/customers/*", "GET", []string{"api", "customers", "42"}, true},
		{"GET /api/customers/*", "POST", []string{"api", "customers", "42"}, false},
		{"GET /api/customers/*", "GET", []string{"api", "customers"}, false},
		{"GET /api/customers/*", "GET", []string{"api", "customers", ""}, false},
		{"GET /api/customers/*", "GET", []string{"api", "customers", "42", "x"}, false},
		{"GET /api/customers/*", "GET", []string{"api", "customersx", "42"}, false},
		{"GET,POST /api/t/**", "POST", []string{"api", "t", "a", "b"}, true},
		{"GET,POST /api/t/**", "POST", []string{"api", "t"}, false},
		{"GET,POST /api/t/**", "POST", []string{"api", "t", "", "b"}, false},
		{"GET,POST /api/t/**", "DELETE", []string{"api", "t", "a"}, false},
		{"* /health", "HEAD", []string{"health"}, true},
		{"GET /a%20b", "GET", []string{"a b"}, true},
		{"GET /", "GET", []string{""}, true},
		{"GET /", "GET", []string{"x"}, false},
	}
	for _, tt := range tests {
		got := MustParseRule(tt.rule).Match(tt.method, tt.segs)
		if got != tt.want {
			t.Errorf("%q.Match(%q, %q) = %v, want %v", tt.rule, tt.method, tt.segs, got, tt.want)
		}
	}
}

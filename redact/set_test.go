package redact

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestContainsFold(t *testing.T) {
	t.Parallel()
	s := NewSet()
	if s.ContainsFold("anything at all, long enough") {
		t.Fatal("ContainsFold on an empty set = true, want false")
	}
	const secret = "tok-Zq8vN3xR7pL2mK9wY4"
	if err := s.Add(secret); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{"X-" + secret, true},
		{"X-Tok-Zq8vn3xr7pl2mk9wy4", true}, // as net/http canonicalises it
		{strings.ToUpper(secret), true},
		{"X-" + base64.StdEncoding.EncodeToString([]byte(secret)), true},
		{"X-%54ok-Zq8vN3xR7pL2mK9wY4", true}, // percent-escaped, upper-case letter
		{"X-%74ok-zq8vn3xr7pl2mk9wy4", true}, // percent-escaped, lower-case hex
		{"X-tok-%5a%71%38vn3xr7pl2mk9wy4", true},
		{"X-Tok-Zq8vN3xR7pL2mK9wY", false}, // one character short
		{"Content-Type", false},
	} {
		if got := s.ContainsFold(tt.in); got != tt.want {
			t.Errorf("ContainsFold(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

package approval

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

// RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical text.
func TestFormatNumberRFC8785(t *testing.T) {
	t.Parallel()
	tests := []struct {
		bits uint64
		want string
	}{
		{0x0000000000000000, "0"},
		{0x8000000000000000, "0"}, // minus zero
		{0x0000000000000001, "5e-324"},
		{0x8000000000000001, "-5e-324"},
		{0x7fefffffffffffff, "1.7976931348623157e+308"},
		{0xffefffffffffffff, "-1.7976931348623157e+308"},
		{0x4340000000000000, "9007199254740992"},
		{0xc340000000000000, "-9007199254740992"},
		{0x4430000000000000, "295147905179352830000"},
		{0x44b52d02c7e14af5, "9.999999999999997e+22"},
		{0x44b52d02c7e14af6, "1e+23"},
		{0x44b52d02c7e14af7, "1.0000000000000001e+23"},
		{0x444b1ae4d6e2ef4e, "999999999999999700000"},
		{0x444b1ae4d6e2ef4f, "999999999999999900000"},
		{0x444b1ae4d6e2ef50, "1e+21"},
		{0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"},
		{0x3eb0c6f7a0b5ed8d, "0.000001"},
		{0x41b3de4355555553, "333333333.3333332"},
		{0x41b3de4355555554, "333333333.33333325"},
		{0x41b3de4355555555, "333333333.3333333"},
		{0x41b3de4355555556, "333333333.3333334"},
		{0x41b3de4355555557, "333333333.33333343"},
		{0xbecbf647612f3696, "-0.0000033333333333333333"},
		{0x43143ff3c1cb0959, "1424953923781206.2"},
	}
	for _, tt := range tests {
		got, err := formatNumber(math.Float64frombits(tt.bits))
		if err != nil || got != tt.want {
			t.Errorf("formatNumber(%#016x) = %q, %v, want %q", tt.bits, got, err, tt.want)
		}
	}
	for _, bits := range []uint64{0x7fffffffffffffff, 0x7ff0000000000000, 0xfff0000000000000} {
		if got, err := formatNumber(math.Float64frombits(bits)); err == nil {
			t.Errorf("formatNumber(%#016x) = %q, nil, want an error (NaN and Infinity are not JSON)", bits, got)
		}
	}
}

func TestCanonicalJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in, want string
	}{
		{
			// RFC 8785 section 3.2.2, with 333333333.3333333 for the RFC's 333333333.33333329:
			// the RFC's spelling has more digits than its double holds, which I-JSON refuses
			// (TestCheckIJSON).
			name: "rfc8785 primitives",
			in: `{
  "numbers": [333333333.3333333, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}`,
			want: `{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`,
		},
		{
			// RFC 8785 section 3.2.3: sorting by UTF-16 code units puts U+1F600 (a surrogate
			// pair starting 0xD83D) before U+FB33, which UTF-8 or code-point order would not.
			name: "rfc8785 sorting",
			in: `{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}`,
			want: "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}",
		},
		{name: "nested objects sorted", in: `{"b":{"z":1,"a":[{"y":2,"x":1}]},"a":null}`, want: `{"a":null,"b":{"a":[{"x":1,"y":2}],"z":1}}`},
		{name: "whitespace everywhere", in: " \t\r\n{ \"a\" :\n[ 1 , 2 ] }\n", want: `{"a":[1,2]}`},
		{name: "number spellings", in: `[1.0, 1, 1e0, 10E-1, 0, 0.0, 1E2, 100, 0.1e1, 123456789012345690000000, 1.2345678901234569e+23]`, want: `[1,1,1,1,0,0,100,100,1,1.2345678901234569e+23,1.2345678901234569e+23]`},
		{name: "big integer below 1e21 stays fixed", in: `[1e20, 1000000000000000000000, 1e21]`, want: `[100000000000000000000,1e+21,1e+21]`},
		{name: "control characters", in: `"\u0000\u0001\b\t\n\u000b\f\r\u001f \u007f"`, want: "\"\\u0000\\u0001\\b\\t\\n\\u000b\\f\\r\\u001f \u007f\""},
		{name: "no escaping of non-ASCII, slash or html", in: `"\u2028<>&\/é"`, want: "\"\u2028<>&/é\""},
		{name: "raw UTF-8 kept", in: `"😀"`, want: `"😀"`},
		{name: "empty containers", in: `[{},[],""]`, want: `[{},[],""]`},
		{name: "scalar document", in: ` true `, want: `true`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := CanonicalJSON([]byte(tt.in))
			if err != nil || string(got) != tt.want {
				t.Fatalf("CanonicalJSON(%s) = %s, %v, want %s", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestCanonicalJSONRejects(t *testing.T) {
	t.Parallel()
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	deepObj := func(n int) string { return strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n) }
	// wide has n distinct members and then a repeat of the first and of the last: objects
	// past 16 members find duplicates with a map, smaller ones by a scan.
	wide := func(n int, repeat string) string {
		var b strings.Builder
		b.WriteString("{")
		for i := range n {
			fmt.Fprintf(&b, `"k%d":%d,`, i, i)
		}
		b.WriteString(`"` + repeat + `":0}`)
		return b.String()
	}
	tests := []struct {
		name, in, wantMsg string
	}{
		{"empty", ``, "end of input"},
		{"only space", `   `, "end of input"},
		{"duplicate key", `{"a":1,"a":2}`, "duplicate member name"},
		{"duplicate key after unescaping", `{"a":1,"\u0061":2}`, "duplicate member name"},
		{"nested duplicate", `{"x":{"a":1,"b":2,"a":3}}`, "duplicate member name"},
		{"duplicate in a wide object, first name", wide(40, "k0"), "duplicate member name"},
		{"duplicate in a wide object, last name", wide(40, "k39"), "duplicate member name"},
		{"duplicate at the switch to a map", wide(16, "k15"), "duplicate member name"},
		{"trailing data", `{"a":1} {"a":2}`, "after the JSON value"},
		{"trailing garbage", `1 x`, "after the JSON value"},
		{"too deep arrays", deep(MaxDepth + 1), "nesting deeper"},
		{"too deep objects", deepObj(MaxDepth + 1), "nesting deeper"},
		{"trailing comma", `[1,2,]`, "unexpected character"},
		{"single quotes", `{'a':1}`, "member name"},
		{"unquoted key", `{a:1}`, "member name"},
		{"leading zero", `01`, "after the JSON value"},
		{"plus sign", `+1`, "unexpected character"},
		{"bare dot", `1.`, "digits must follow"},
		{"bare exponent", `1e`, "digits must follow"},
		{"NaN", `NaN`, "unexpected character"},
		{"infinity literal", `Infinity`, "unexpected character"},
		{"overflow", `1e400`, "out of the range"},
		{"negative overflow", `-1e309`, "out of the range"},
		{"lone high surrogate", `"\ud800"`, "not followed by a low surrogate"},
		{"lone low surrogate", `"\udc00"`, "lone low surrogate"},
		{"high surrogate then letter", `"\ud800\u0041"`, "not followed by a low surrogate"},
		{"invalid UTF-8", "\"\xff\"", "invalid UTF-8"},
		{"overlong UTF-8", "\"\xc0\xaf\"", "invalid UTF-8"},
		{"raw control character", "\"a\nb\"", "control character"},
		{"bad escape", `"\x41"`, "invalid escape"},
		{"short unicode escape", `"\u12"`, "\\u escape"},
		{"bad literal", `tru`, "invalid literal"},
		{"BOM", "\ufeff{}", "unexpected character"},
		{"unterminated string", `"abc`, "unterminated string"},
		{"unterminated object", `{"a":1`, "end of input"},
		{"comment", `{"a":1 /* no */}`, "expected ','"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := CanonicalJSON([]byte(tt.in))
			var se *SyntaxError
			if !errors.As(err, &se) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("CanonicalJSON(%q) = %q, %v, want a *SyntaxError containing %q", tt.in, got, err, tt.wantMsg)
			}
		})
	}
	// The bound is exact: MaxDepth levels are fine.
	for _, in := range []string{deep(MaxDepth), deepObj(MaxDepth)} {
		if _, err := CanonicalJSON([]byte(in)); err != nil {
			t.Errorf("CanonicalJSON(%d levels) = %v, want success", MaxDepth, err)
		}
	}
}

func TestInputHash(t *testing.T) {
	t.Parallel()
	base, err := InputHash([]byte(`{"amount":1,"to":"acct-9","tags":["a","b"]}`))
	if err != nil {
		t.Fatal(err)
	}
	same := []string{
		`{"tags":["a","b"],"to":"acct-9","amount":1}`,
		"{\n  \"amount\": 1.0,\n  \"to\": \"acct-9\",\n  \"tags\": [\"a\", \"b\"]\n}",
		`{"amount":1e0,"to":"\u0061cct-9","tags":["a","b"]}`,
	}
	for _, in := range same {
		if got, err := InputHash([]byte(in)); err != nil || got != base {
			t.Errorf("InputHash(%s) = %s, %v, want %s (same document)", in, got, err, base)
		}
	}
	different := []string{
		`{"amount":2,"to":"acct-9","tags":["a","b"]}`,
		`{"amount":1,"to":"acct-9","tags":["b","a"]}`,
		`{"amount":"1","to":"acct-9","tags":["a","b"]}`,
		`{"amount":1,"to":"acct-9","tags":["a","b"],"extra":null}`,
	}
	for _, in := range different {
		if got, err := InputHash([]byte(in)); err != nil || got == base {
			t.Errorf("InputHash(%s) = %s, %v, want a hash other than %s", in, got, err, base)
		}
	}
	nullHash, _ := InputHash([]byte("null"))
	for _, in := range []string{"", " \n"} {
		if got, err := InputHash([]byte(in)); err != nil || got != nullHash {
			t.Errorf("InputHash(%q) = %s, %v, want the hash of null %s", in, got, err, nullHash)
		}
	}
	// sha256("null"), computed independently.
	if want := "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"; nullHash != want {
		t.Errorf("InputHash(null) = %s, want %s", nullHash, want)
	}
	if got, err := InputHash([]byte(`{"a":1,"a":1}`)); err == nil {
		t.Errorf("InputHash(duplicate keys) = %s, nil, want an error", got)
	}
}

// FuzzCanonicalJSON checks that canonical output is a fixed point and that it agrees with
// encoding/json about what a document means.
func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range []string{
		`{"b":1,"a":[true,false,null]}`, `[1.0,1e21,1e-7,-0,0.1]`, `"\u00e9\ud83d\ude00\u001f"`,
		`{"\u20ac":1,"\r":2,"\ufb33":3}`, `123456789012345678901234567890`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := CanonicalJSON(in)
		if err != nil {
			return
		}
		c2, err := CanonicalJSON(c)
		if err != nil || !bytes.Equal(c, c2) {
			t.Fatalf("CanonicalJSON(CanonicalJSON(%q)) = %q, %v, want %q", in, c2, err, c)
		}
		if !json.Valid(c) {
			t.Fatalf("CanonicalJSON(%q) = %q, which encoding/json says is invalid", in, c)
		}
		var v any
		if err := json.Unmarshal(in, &v); err != nil {
			t.Fatalf("CanonicalJSON accepted %q but encoding/json rejects it: %v", in, err)
		}
		m, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("json.Marshal(%#v) = %v", v, err)
		}
		cm, err := CanonicalJSON(m)
		if err != nil || !bytes.Equal(cm, c) {
			t.Fatalf("CanonicalJSON(json.Marshal(json.Unmarshal(%q))) = %q, %v, want %q", in, cm, err, c)
		}
	})
}

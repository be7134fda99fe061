package approval

import (
	"encoding/json"
	"errors"
	"math"
	"math/big"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// TestCheckIJSON: inputs that are JSON but not I-JSON (RFC 7493) are refused with the
// position and the path of the offending value; CanonicalJSON and InputHash refuse them too.
func TestCheckIJSON(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, in string
		path     string // "" means accepted; otherwise the JSON Pointer the error names ("-" for the document)
		msg      string
	}{
		{"plain object", `{"a":[1,2.5,"x",true,null]}`, "", ""},
		{"integer spelled 1.0, 1E2, 2.50", `[1.0,1E2,2.50,1e0,0.1e1]`, "", ""},
		{"2^53", `9007199254740992`, "", ""},
		{"2^53 + 1", `9007199254740993`, "-", "round-trip"},
		{"twenty digits", `12345678901234567890`, "-", "round-trip"},
		{"2^53 + 1 negative, nested", `{"x":[0,{"y":-9007199254740993}]}`, "/x/1/y", "round-trip"},
		{"more digits than a double holds", `0.10000000000000001`, "-", "round-trip"},
		{"0.1", `0.1`, "", ""},
		{"1e23 (shortest form of its double)", `1e23`, "", ""},
		{"2^60 written out", `1152921504606846976`, "-", "round-trip"},
		{"2^60 as its shortest form", `1152921504606847000`, "", ""},
		{"smallest subnormal", `5e-324`, "", ""},
		{"smallest subnormal, more digits", `4.9406564584124654e-324`, "-", "round-trip"},
		{"largest double", `1.7976931348623157e308`, "", ""},
		{"overflow", `1e400`, "-", "out of the range"},
		{"underflow", `[1e-400]`, "/0", "round-trip"},
		{"zero with a huge exponent", `0e99999999999999999999`, "", ""},
		{"0.0", `0.0`, "", ""},
		{"-0", `-0`, "-", "negative zero"},
		{"-0.0 in an object", `{"a":-0.0}`, "/a", "negative zero"},
		{"-0e5", `[-0e5]`, "/0", "negative zero"},
		{"invalid UTF-8 in a value", "{\"a\":\"\xff\"}", "/a", "invalid UTF-8"},
		{"invalid UTF-8 in a name", "{\"\xc3\":1}", "-", "invalid UTF-8"},
		{"UTF-8 encoded surrogate (CESU-8)", "[\"\xed\xa0\x80\"]", "/0", "invalid UTF-8"},
		{"escaped lone high surrogate", `{"a":"\ud800"}`, "/a", "surrogate"},
		{"escaped lone low surrogate", `["\udc00"]`, "/0", "surrogate"},
		{"escaped surrogate pair", `"\ud83d\ude00"`, "", ""},
		{"escaped noncharacter U+FDD0", `{"a~/b":"\ufdd0"}`, "/a~0~1b", "noncharacter"},
		{"raw noncharacter U+FFFE", "[\"\uFFFE\"]", "/0", "noncharacter"},
		{"escaped noncharacter U+1FFFF", `"\ud83f\udfff"`, "-", "noncharacter"},
		{"duplicate member", `{"a":{"b":1,"b":2}}`, "/a/b", "duplicate"},
		{"duplicate member after unescaping", `{"a":1,"\u0061":2}`, "/a", "duplicate"},
		{"trailing data", `{} {}`, "-", "after the JSON value"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := CheckIJSON([]byte(tt.in))
			_, cerr := CanonicalJSON([]byte(tt.in))
			_, herr := InputHash([]byte(tt.in))
			if tt.path == "" {
				if err != nil || cerr != nil || herr != nil {
					t.Fatalf("CheckIJSON(%q) = %v, CanonicalJSON: %v, InputHash: %v; want all nil", tt.in, err, cerr, herr)
				}
				return
			}
			var se *SyntaxError
			if !errors.As(err, &se) || !strings.Contains(se.Msg, tt.msg) {
				t.Fatalf("CheckIJSON(%q) = %v, want a *SyntaxError about %q", tt.in, err, tt.msg)
			}
			if want := strings.TrimPrefix(tt.path, "-"); se.Path != want {
				t.Errorf("CheckIJSON(%q) path = %q, want %q", tt.in, se.Path, want)
			}
			if cerr == nil || herr == nil {
				t.Errorf("CheckIJSON(%q) refuses, but CanonicalJSON: %v, InputHash: %v", tt.in, cerr, herr)
			}
			if strings.Contains(tt.in, "9007199254740993") && strings.Contains(err.Error(), "9007199254740993") {
				t.Errorf("CheckIJSON(%q) = %v: the message echoes the input's value", tt.in, err)
			}
		})
	}
}

// TestCheckIJSONIntegersAround2to53 generates integers near and beyond 2^53 and checks
// each against an oracle that does not use the package's code: an integer is accepted
// exactly when strconv's shortest form of its double is the integer itself.
func TestCheckIJSONIntegersAround2to53(t *testing.T) {
	t.Parallel()
	var ins []*big.Int
	for k := 52; k <= 70; k++ {
		p := new(big.Int).Lsh(big.NewInt(1), uint(k))
		for d := int64(-3); d <= 3; d++ {
			ins = append(ins, new(big.Int).Add(p, big.NewInt(d)))
		}
	}
	for _, s := range []string{"12345678901234567890", "99999999999999999999", "100000000000000000000", "18446744073709551615", "18446744073709551616"} {
		n, _ := new(big.Int).SetString(s, 10)
		ins = append(ins, n)
	}
	accepted := 0
	for _, n := range ins {
		for _, neg := range []bool{false, true} {
			v := new(big.Int).Set(n)
			if neg {
				v.Neg(v)
			}
			lit := v.String()
			f, _ := strconv.ParseFloat(lit, 64)
			want := strconv.FormatFloat(f, 'f', -1, 64) == lit
			err := CheckIJSON([]byte(lit))
			if (err == nil) != want {
				t.Errorf("CheckIJSON(%s) = %v, want accepted %v", lit, err, want)
			}
			if err == nil {
				accepted++
			}
		}
	}
	if accepted == 0 || accepted == 2*len(ins) {
		t.Fatalf("%d of %d generated integers accepted: the table does not exercise both sides", accepted, 2*len(ins))
	}
}

// exactValue returns v (decoded with UseNumber) with every number replaced by its exact
// rational value as a string, so that DeepEqual compares decimal values, not spellings.
func exactValue(t *testing.T, v any) any {
	switch x := v.(type) {
	case json.Number:
		if len(x) > 400 {
			t.Skip("number too long for the exact comparison")
		}
		r, ok := new(big.Rat).SetString(string(x))
		if !ok {
			t.Fatalf("big.Rat cannot read %q", x)
		}
		return r.RatString()
	case []any:
		for i := range x {
			x[i] = exactValue(t, x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = exactValue(t, x[k])
		}
	}
	return v
}

func decodeExact(t *testing.T, b []byte) (exact, floats any) {
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.UseNumber()
	if err := d.Decode(&exact); err != nil {
		t.Fatalf("encoding/json cannot decode %q: %v", b, err)
	}
	if err := json.Unmarshal(b, &floats); err != nil {
		t.Fatalf("encoding/json cannot decode %q: %v", b, err)
	}
	return exactValue(t, exact), floats
}

// sameFloats compares decoded documents with numbers as float64 bit patterns (so -0 and 0
// differ).
func sameFloats(a, b any) bool {
	switch x := a.(type) {
	case float64:
		y, ok := b.(float64)
		return ok && math.Float64bits(x) == math.Float64bits(y)
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameFloats(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k := range x {
			if !sameFloats(x[k], y[k]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}

// FuzzCheckIJSON: whatever CheckIJSON accepts, parse -> canonicalise -> parse gives the
// same values, exactly (decimal values and double bit patterns alike); and two accepted
// inputs with the same hash hold the same values.
func FuzzCheckIJSON(f *testing.F) {
	for _, p := range [][2]string{
		{`{"a":[1,2.5,"x",true,null]}`, `{"a":[1.0,25e-1,"x",true,null]}`},
		{`9007199254740992`, `9007199254740993`},
		{`12345678901234567890`, `12345678901234567000`},
		{`[0,-0]`, `[0,0]`},
		{`1152921504606847000`, `1152921504606846976`},
		{`0.1`, `0.10000000000000001`},
		{`{"\ud83d\ude00":"\u00e9"}`, `{"😀":"é"}`},
		{`[1e-400]`, `[0]`},
	} {
		f.Add([]byte(p[0]), []byte(p[1]))
	}
	f.Fuzz(func(t *testing.T, a, b []byte) {
		if CheckIJSON(a) != nil {
			return
		}
		ca, err := CanonicalJSON(a)
		if err != nil {
			t.Fatalf("CheckIJSON(%q) = nil but CanonicalJSON: %v", a, err)
		}
		exactA, floatsA := decodeExact(t, a)
		exactC, floatsC := decodeExact(t, ca)
		if !reflect.DeepEqual(exactA, exactC) {
			t.Fatalf("CanonicalJSON(%q) = %q: exact values %v, want %v", a, ca, exactC, exactA)
		}
		if !sameFloats(floatsA, floatsC) {
			t.Fatalf("CanonicalJSON(%q) = %q: double values %v, want %v", a, ca, floatsC, floatsA)
		}
		if CheckIJSON(b) != nil {
			return
		}
		ha, _ := InputHash(a)
		hb, _ := InputHash(b)
		if ha != hb {
			return
		}
		exactB, floatsB := decodeExact(t, b)
		if !reflect.DeepEqual(exactA, exactB) || !sameFloats(floatsA, floatsB) {
			t.Fatalf("InputHash(%q) = InputHash(%q) = %s, but their values differ: %v and %v", a, b, ha, exactA, exactB)
		}
	})
}

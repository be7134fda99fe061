package approval

import (
	stdjson "encoding/json"
	"reflect"
	"strings"
	"testing"
)

const claimsOK = `{"job":"j-1","task":"echo","task_version":"v1","input_sha256":"74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b","pool":"acme","iat":1789990000,"exp":1790000000,"nonce":"AAAAAAAAAAAAAAAAAAAAAA","max_attempts":3,"sub":"alice"}`

// withClaim returns claimsOK with the member name's value text replaced by value.
func withClaim(name, value string) string {
	i := strings.Index(claimsOK, `"`+name+`":`)
	j := i + len(name) + 3
	k := j + strings.IndexAny(claimsOK[j:], ",}")
	if claimsOK[j] == '"' {
		k = j + 1 + strings.IndexByte(claimsOK[j+1:], '"') + 1
	}
	return claimsOK[:j] + value + claimsOK[k:]
}

// TestDecodeClaimsStrict: the claims have one reading. Each payload below is refused with
// the reason given, whatever another JSON reader would make of it.
func TestDecodeClaimsStrict(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, payload string
		reason        Reason // "" means accepted
		detail        string
	}{
		{"plain", claimsOK, "", ""},
		{"whitespace between tokens", strings.ReplaceAll(claimsOK, ",", " ,\n\t"), "", ""},
		{"auto true", strings.TrimSuffix(claimsOK, "}") + `,"auto":true}`, "", ""},
		{"duplicate claim", strings.TrimSuffix(claimsOK, "}") + `,"pool":"admin"}`, Malformed, "duplicate"},
		{"claim name in other case", strings.Replace(claimsOK, `"job"`, `"JOB"`, 1), UnknownClaim, `"JOB"`},
		{"claim name with a different Unicode case fold", strings.Replace(claimsOK, `"task"`, `"tas\u212a"`, 1), UnknownClaim, ""},
		{"unknown claim", strings.TrimSuffix(claimsOK, "}") + `,"scope":"read-only"}`, UnknownClaim, `"scope"`},
		{"iat in exponent form", withClaim("iat", "1.78999e9"), Malformed, `"iat"`},
		{"exp with a fraction part", withClaim("exp", "1790000000.0"), Malformed, `"exp"`},
		{"max_attempts in exponent form", withClaim("max_attempts", "3e0"), Malformed, `"max_attempts"`},
		{"iat beyond int64", withClaim("iat", "9223372036854775808"), Malformed, `"iat"`},
		{"max_attempts as string", withClaim("max_attempts", `"3"`), Malformed, `"max_attempts"`},
		{"auto as string", strings.TrimSuffix(claimsOK, "}") + `,"auto":"true"}`, Malformed, `"auto"`},
		{"task as array", withClaim("task", `["echo"]`), Malformed, `"task"`},
		{"job null", withClaim("job", "null"), Malformed, `"job"`},
		{"invalid UTF-8 in a claim", withClaim("sub", "\"al\xffce\""), Malformed, ""},
		{"lone surrogate in a claim", withClaim("sub", `"\ud800"`), Malformed, ""},
		{"trailing data", claimsOK + "x", Malformed, ""},
		{"array", `[1]`, Malformed, "object"},
		{"approved_by a rule", withApprovedBy(`{"rule":"read-only-lookups"}`), "", ""},
		{"approved_by a person", withApprovedBy(`{"person":"alice@example.com"}`), "", ""},
		{"approved_by null is absent", withApprovedBy(`null`), "", ""},
		{"approved_by as string", withApprovedBy(`"alice"`), Malformed, `"approved_by" is a string`},
		{"approved_by as array", withApprovedBy(`["alice"]`), Malformed, `"approved_by" is an array`},
		{"approved_by rule as number", withApprovedBy(`{"rule":7}`), Malformed, `"approved_by.rule"`},
		{"approved_by both set", withApprovedBy(`{"rule":"r","person":"alice"}`), Malformed, "both a rule and a person"},
		{"approved_by empty object", withApprovedBy(`{}`), Malformed, "neither"},
		{"approved_by empty rule", withApprovedBy(`{"rule":""}`), Malformed, "neither"},
		{"approved_by duplicate member", withApprovedBy(`{"rule":"r","rule":"s"}`), Malformed, "duplicate"},
		{"approved_by unknown member", withApprovedBy(`{"team":"ops"}`), UnknownClaim, `"approved_by.team"`},
		{"approved_by member in other case", withApprovedBy(`{"Rule":"r"}`), UnknownClaim, `"approved_by.Rule"`},
		{"approved_by too long", withApprovedBy(`{"person":"` + strings.Repeat("a", MaxApprovedByBytes+1) + `"}`), Malformed, "at most 128"},
		{"approved_by longest", withApprovedBy(`{"person":"` + strings.Repeat("a", MaxApprovedByBytes) + `"}`), "", ""},
		{"approved_by control character", withApprovedBy(`{"person":"alice\nbob"}`), Malformed, "control character"},
		{"approved_by C1 control character", withApprovedBy(`{"person":"alice\u0085"}`), Malformed, "control character"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, rej := decodeClaims([]byte(tt.payload))
			switch {
			case tt.reason == "" && rej != nil:
				t.Fatalf("decodeClaims(%s) = %v, want success", tt.payload, rej)
			case tt.reason == "" && c.JobID != "j-1":
				t.Fatalf("decodeClaims(%s) = %+v, want job j-1", tt.payload, c)
			case tt.reason != "" && (rej == nil || rej.Reason != tt.reason):
				t.Fatalf("decodeClaims(%s) = %+v, %v, want rejection %s", tt.payload, c, rej, tt.reason)
			case rej != nil && !strings.Contains(rej.Detail, tt.detail):
				t.Fatalf("decodeClaims(%s) = %v, want the detail to mention %s", tt.payload, rej, tt.detail)
			}
		})
	}
}

func withApprovedBy(v string) string {
	return strings.TrimSuffix(claimsOK, "}") + `,"approved_by":` + v + `}`
}

// FuzzDecodeClaims: whatever decodeClaims accepts is an I-JSON object of known claims under
// their exact names, and encoding/json reads the same values from it.
func FuzzDecodeClaims(f *testing.F) {
	f.Add([]byte(claimsOK))
	f.Add([]byte(strings.TrimSuffix(claimsOK, "}") + `,"auto":true}`))
	f.Add([]byte(withClaim("iat", "1.78999e9")))
	f.Add([]byte(strings.Replace(claimsOK, `"job"`, `"JOB"`, 1)))
	f.Add([]byte(withApprovedBy(`{"rule":"r"}`)))
	f.Add([]byte(withApprovedBy(`{"person":"p","rule":""}`)))
	f.Fuzz(func(t *testing.T, payload []byte) {
		c, rej := decodeClaims(payload)
		if rej != nil {
			return
		}
		if err := CheckIJSON(payload); err != nil {
			t.Fatalf("decodeClaims accepted %q, which is not I-JSON: %v", payload, err)
		}
		var m map[string]stdjson.RawMessage
		if err := stdjson.Unmarshal(payload, &m); err != nil {
			t.Fatalf("decodeClaims accepted %q; encoding/json: %v", payload, err)
		}
		known := map[string]bool{"job": true, "task": true, "task_version": true, "input_sha256": true, "pool": true,
			"iat": true, "exp": true, "nonce": true, "max_attempts": true, "sub": true, "auto": true, "approved_by": true,
			"plan": true, "steps": true}
		for name := range m {
			if !known[name] {
				t.Fatalf("decodeClaims accepted %q with member %q", payload, name)
			}
		}
		var std Claims
		if err := stdjson.Unmarshal(payload, &std); err != nil || !reflect.DeepEqual(std, c) {
			t.Fatalf("decodeClaims(%q) = %+v; encoding/json reads %+v, %v", payload, c, std, err)
		}
	})
}

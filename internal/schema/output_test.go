package schema

import (
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestValidateBlindNeverEchoesValues: for each kind of rule an output can break, the issue
// names the place and the rule but never the value. The library's own messages quote
// values ("'x' does not match pattern ..."), which here could be customer data. The
// marker stands for that data; every case puts it where the failing value is.
func TestValidateBlindNeverEchoesValues(t *testing.T) {
	t.Parallel()
	const m = "SECRETVALUE"
	tests := []struct {
		name, schema, doc, want string
	}{
		{"pattern", `{"properties":{"a":{"pattern":"^x$"}}}`, `{"a":"` + m + `"}`, `at /a: fails "pattern"`},
		{"const", `{"properties":{"a":{"const":"x"}}}`, `{"a":"` + m + `"}`, `at /a: fails "const"`},
		{"enum", `{"properties":{"a":{"enum":["x","y"]}}}`, `{"a":"` + m + `"}`, `at /a: fails "enum"`},
		{"maxLength", `{"properties":{"a":{"maxLength":2}}}`, `{"a":"` + m + `"}`, `at /a: fails "maxLength"`},
		{"minLength", `{"properties":{"a":{"minLength":50}}}`, `{"a":"` + m + `"}`, `at /a: fails "minLength"`},
		{"maximum", `{"properties":{"a":{"maximum":1}}}`, `{"a":987654321}`, `at /a: fails "maximum"`},
		{"multipleOf", `{"properties":{"a":{"multipleOf":7}}}`, `{"a":987654321}`, `at /a: fails "multipleOf"`},
		{"type", `{"properties":{"a":{"type":"integer"}}}`, `{"a":"` + m + `"}`, `at /a: got string, want integer`},
		{"uniqueItems", `{"uniqueItems":true}`, `["` + m + `","` + m + `"]`, `fails "uniqueItems"`},
		{"additionalProperties", `{"additionalProperties":false}`, `{"x":"` + m + `"}`, `at : fails "additionalProperties"`},
		{"propertyNames", `{"propertyNames":{"maxLength":1}}`, `{"ab":"` + m + `"}`, `fails`},
		{"not", `{"properties":{"a":{"not":{"type":"string"}}}}`, `{"a":"` + m + `"}`, `at /a: fails "not"`},
		{"oneOf", `{"properties":{"a":{"oneOf":[{"type":"integer"},{"type":"boolean"}]}}}`, `{"a":"` + m + `"}`, `/a`},
		{"required", `{"required":["id"]}`, `{"x":"` + m + `"}`, `at : missing required id`},
		{"contains", `{"contains":{"const":1}}`, `["` + m + `"]`, `at /0: fails "const"`},
		{"minItems", `{"minItems":3}`, `["` + m + `"]`, `fails "minItems"`},
		{"false schema", `{"properties":{"a":false}}`, `{"a":"` + m + `"}`, `at /a: not allowed by the schema`},
		{"dependentRequired", `{"dependentRequired":{"a":["b"]}}`, `{"a":"` + m + `"}`, `fails "dependentRequired`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sch, err := Compile([]byte(tt.schema))
			if err != nil {
				t.Fatal(err)
			}
			issues, err := ValidateBlind(sch, []byte(tt.doc))
			if err != nil {
				t.Fatal(err)
			}
			if len(issues) == 0 {
				t.Fatalf("ValidateBlind(%s, %s) found nothing", tt.schema, tt.doc)
			}
			all := joinIssues(issues)
			if strings.Contains(all, m) || strings.Contains(all, "987654321") {
				t.Errorf("issues %q echo the value", all)
			}
			if !strings.Contains(all, tt.want) {
				t.Errorf("issues %q do not contain %q", all, tt.want)
			}
			// The library's own messages do echo it: this test would catch a regression to them.
			plain, _ := Validate(sch, []byte(tt.doc))
			t.Logf("library message: %s", joinIssues(plain))
		})
	}
}

func joinIssues(issues []api.SchemaIssue) string {
	var b strings.Builder
	for _, is := range issues {
		b.WriteString("at " + is.Location + ": " + is.Message + "; ")
	}
	return b.String()
}

package schema

import (
	"fmt"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// ValidateBlind is Validate for documents whose values must not be repeated: a task's
// output, checked on the worker. Each issue names where (a JSON Pointer) and which keyword
// failed, never the value found: the library's own messages quote it ("'x' does not match
// pattern ..."), and an output may hold customer data that the control plane must only ever
// receive as the task's result. Type names and the schema's own required property names are
// kept: they come from the schema or describe, not repeat, the value.
func ValidateBlind(sch *jsonschema.Schema, doc []byte) ([]api.SchemaIssue, error) {
	return validate(sch, doc, blindMessage)
}

func blindMessage(k jsonschema.ErrorKind) string {
	switch k := k.(type) {
	case *kind.Type:
		return fmt.Sprintf("got %s, want %s", k.Got, strings.Join(k.Want, " or "))
	case *kind.Required:
		return fmt.Sprintf("missing required %s", strings.Join(k.Missing, ", "))
	case *kind.FalseSchema:
		return "not allowed by the schema"
	case *kind.Not:
		return `fails "not"`
	}
	if kw := k.KeywordPath(); len(kw) > 0 {
		return fmt.Sprintf("fails %q", strings.Join(kw, "/"))
	}
	return "does not match the schema"
}

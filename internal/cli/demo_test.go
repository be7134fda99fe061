package cli

import (
	"os"
	"testing"
)

// The demo writes the crm-lookup schemas from constants (the examples package embeds only
// the module and the policy); they must stay equal to the files operators use.
func TestDemoSchemasMatchExamples(t *testing.T) {
	t.Parallel()
	for file, want := range map[string]string{
		"../../examples/crm-lookup/input.schema.json":  crmLookupInputSchema,
		"../../examples/crm-lookup/output.schema.json": crmLookupOutputSchema,
	} {
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("ReadFile(%s) differs from the demo's constant; copy one to the other", file)
		}
	}
}

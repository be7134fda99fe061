package outcome

import "testing"

func TestInvalidOutputIsAStableFinalCode(t *testing.T) {
	if InvalidOutput != "invalid_output" {
		t.Fatalf("InvalidOutput = %q; codes are API and must not be renamed", InvalidOutput)
	}
	found := false
	for _, c := range Codes() {
		found = found || c == InvalidOutput
	}
	if !found {
		t.Error("InvalidOutput is missing from Codes: control planes would refuse the outcome")
	}
	if InvalidOutput.Retryable() {
		t.Error("InvalidOutput is retryable; the same module and input give the same output")
	}
	if got := CodeOf(New(InvalidOutput, "x")); got != InvalidOutput {
		t.Errorf("CodeOf = %s", got)
	}
}

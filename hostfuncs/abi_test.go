package hostfuncs

import (
	"slices"
	"testing"
)

// TestWASIFunctionsIsACopy: an importer that changes the list it was given does not widen the
// allow-list the import check uses.
func TestWASIFunctionsIsACopy(t *testing.T) {
	t.Parallel()
	got := WASIFunctions()
	got[0] = "path_open"
	if slices.Contains(WASIFunctions(), "path_open") {
		t.Fatalf("WASIFunctions() = %v after the caller changed its copy, want no path_open", WASIFunctions())
	}
}

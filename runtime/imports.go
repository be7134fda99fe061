package runtime

import (
	"strings"

	"github.com/castellan-dev/castellan/hostfuncs"
)

// IsHTTPImport reports whether imp is one of the sandbox's scoped HTTP functions, in either
// ABI the runtime runs: castellan_v1.http_* for native modules, extism:host/user
// castellan_http_request for Extism plugins. Load decides which ABI a module uses and refuses
// anything outside it; callers that check a grant against a module's imports ask this
// function rather than keep their own list, so that what they accept is what runs.
func IsHTTPImport(imp hostfuncs.Import) bool {
	switch imp.Module {
	case hostfuncs.ModuleName:
		return strings.HasPrefix(imp.Name, "http_")
	case ExtismUserModule:
		return imp.Name == ExtismHTTPRequest
	}
	return false
}

package plugins

import (
	"github.com/castellan-dev/castellan/hostfuncs"
	"github.com/castellan-dev/castellan/runtime"
)

// CheckImports returns the imports of a loaded module that its grant does not allow, each
// with the reason. It checks only what depends on the grant: a module that imports a scoped
// HTTP function (runtime.IsHTTPImport: castellan_v1.http_* or, for an Extism plugin,
// castellan_http_request) needs at least one endpoint. Whether an import exists in the
// sandbox at all is decided by runtime.Engine.Load alone, native or Extism, so pass the
// imports of a module that Load accepted (runtime.Module.Imports). Refusing at load, not at
// the first call, keeps the audit truthful: a module that cannot link cannot run.
func CheckImports(imports []hostfuncs.Import, endpoints []string) []string {
	if len(endpoints) > 0 {
		return nil
	}
	var bad []string
	for _, imp := range imports {
		if runtime.IsHTTPImport(imp) {
			bad = append(bad, imp.String()+": HTTP import without an endpoint grant (request an endpoint in the manifest and have the policy grant it, or drop the import)")
		}
	}
	return bad
}

// UsesHTTP reports whether a module imports any scoped HTTP function (runtime.IsHTTPImport).
func UsesHTTP(imports []hostfuncs.Import) bool {
	for _, imp := range imports {
		if runtime.IsHTTPImport(imp) {
			return true
		}
	}
	return false
}

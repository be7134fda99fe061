package plugins

import (
	"strings"

	"github.com/castellan-dev/castellan/hostfuncs"
)

// CheckImports returns the imports a task may not have under its grant, each with the
// reason. The runtime already refuses anything outside the ABI (unknown modules, WASI
// functions beyond hostfuncs.WASIFunctions, wrong signatures); this adds what depends on the
// grant: a module that imports any castellan_v1.http_* function needs at least one endpoint.
// Refusing at load, not at the first call, keeps the audit truthful: a module that cannot
// link cannot run.
func CheckImports(imports []hostfuncs.Import, endpoints []string) []string {
	var bad []string
	wasi := map[string]bool{}
	for _, n := range hostfuncs.WASIFunctions {
		wasi[n] = true
	}
	for _, imp := range imports {
		switch {
		case imp.Module == hostfuncs.ModuleName && strings.HasPrefix(imp.Name, "http_"):
			if len(endpoints) == 0 {
				bad = append(bad, imp.String()+": HTTP import without an endpoint grant (request an endpoint in the manifest and have the policy grant it, or drop the import)")
			}
		case imp.Module == hostfuncs.ModuleName:
		case imp.Module == "wasi_snapshot_preview1" && wasi[imp.Name]:
		default:
			bad = append(bad, imp.String()+": not offered by the sandbox")
		}
	}
	return bad
}

// UsesHTTP reports whether a module imports any castellan_v1.http_* function.
func UsesHTTP(imports []hostfuncs.Import) bool {
	for _, imp := range imports {
		if imp.Module == hostfuncs.ModuleName && strings.HasPrefix(imp.Name, "http_") {
			return true
		}
	}
	return false
}

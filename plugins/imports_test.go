package plugins

import (
	"os"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/runtime"
)

// TestCheckImports loads real modules as the worker does, then applies the grant check: what
// the runtime accepts (native or Extism) is never refused for its ABI here, and an HTTP import
// of either ABI needs an endpoint grant.
func TestCheckImports(t *testing.T) {
	t.Parallel()
	engine, err := runtime.NewEngine(runtime.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = engine.Close(t.Context()) })
	tests := []struct {
		module    string
		entry     string
		endpoints []string
		want      string // substring of the only refusal; "" means none
	}{
		{"testdata/echo.wasm", "", nil, ""},
		{"testdata/echo.wasm", "", []string{"crm"}, ""},
		{"testdata/http_probe.wasm", "", nil, "castellan_v1.http_body_read(i32, i32, i32) -> (i32): HTTP import without an endpoint grant"},
		{"testdata/http_probe.wasm", "", []string{"crm"}, ""},
		// A PDK-built Extism plugin: imports only extism:host/env kernel functions.
		{"testdata/extism_hello.wasm", "run_test", nil, ""},
		{"testdata/extism_hello.wasm", "run_test", []string{"crm"}, ""},
		// An Extism plugin that imports castellan_http_request.
		{"../runtime/testdata/extism_probe.wasm", "", nil, "extism:host/user.castellan_http_request(i64) -> (i64): HTTP import without an endpoint grant"},
		{"../runtime/testdata/extism_probe.wasm", "", []string{"crm"}, ""},
	}
	for _, tt := range tests {
		t.Run(strings.TrimSuffix(tt.module[strings.LastIndex(tt.module, "/")+1:], ".wasm")+"/endpoints="+strings.Join(tt.endpoints, ","), func(t *testing.T) {
			t.Parallel()
			wasm, err := os.ReadFile(tt.module)
			if err != nil {
				t.Fatal(err)
			}
			m, err := engine.Load(t.Context(), runtime.ModuleConfig{Name: "t", Wasm: wasm, Entry: tt.entry, NoPool: true})
			if err != nil {
				t.Fatalf("Load(%s) error = %v", tt.module, err)
			}
			defer m.Close(t.Context())
			bad := CheckImports(m.Imports(), tt.endpoints)
			switch {
			case tt.want == "" && len(bad) != 0:
				t.Errorf("CheckImports(%s, %q) = %q, want none", tt.module, tt.endpoints, bad)
			case tt.want != "" && (len(bad) == 0 || !strings.Contains(bad[0], tt.want)):
				t.Errorf("CheckImports(%s, %q) = %q, want a first refusal containing %q", tt.module, tt.endpoints, bad, tt.want)
			}
			for _, b := range bad {
				if !strings.Contains(b, "HTTP import without an endpoint grant") {
					t.Errorf("CheckImports(%s, %q) refuses %q; only HTTP imports without a grant may be refused here", tt.module, tt.endpoints, b)
				}
			}
			if got, want := UsesHTTP(m.Imports()), strings.Contains(tt.module, "http") || strings.Contains(tt.module, "extism_probe"); got != want {
				t.Errorf("UsesHTTP(%s) = %t, want %t", tt.module, got, want)
			}
		})
	}
}

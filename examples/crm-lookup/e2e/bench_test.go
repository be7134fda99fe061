package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/castellan-dev/castellan/internal/wasmbuild"
	cr "github.com/castellan-dev/castellan/runtime"
)

// BenchmarkPerJobOverhead measures one job on a fresh instance (the pool is off, so each
// iteration instantiates, runs _initialize where there is one, and calls the entry) for the
// crm-lookup module of every language, with an input that fails validation so no HTTP call
// is made; and the same for an Extism plugin (runtime/testdata/extism_probe, echoing its
// input) through the go-sdk. Run:
//
//	go test -run '^$' -bench PerJobOverhead -benchmem ./examples/crm-lookup/e2e/
func BenchmarkPerJobOverhead(b *testing.B) {
	type mod struct {
		name, entry string
		wasm        []byte
		input       string
	}
	var mods []mod
	for _, l := range languages() {
		w := l.committed(b)
		if l.name == "go" {
			w = wasmbuild.Go(b, "examples/crm-lookup")
		}
		mods = append(mods, mod{name: l.name, wasm: w, input: `{}`})
	}
	ext, err := os.ReadFile(filepath.Join(exampleDir(b), "..", "..", "runtime", "testdata", "extism_probe.wasm"))
	if err != nil {
		b.Fatal(err)
	}
	mods = append(mods, mod{name: "extism", wasm: ext, input: "eok"})

	e := newEngine(b)
	for _, md := range mods {
		m, err := e.Load(b.Context(), cr.ModuleConfig{Name: md.name, Wasm: md.wasm, NoPool: true})
		if err != nil {
			b.Fatalf("Load(%s) = %v", md.name, err)
		}
		b.Run(md.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if res := m.Run(b.Context(), cr.Job{ID: "bench", Input: []byte(md.input)}); res.Err == nil && md.name != "extism" {
					b.Fatalf("Run(%s) succeeded, want the validation failure", md.name)
				} else if md.name == "extism" && res.Err != nil {
					b.Fatalf("Run(extism) = %v", res.Err)
				}
			}
		})
	}
}

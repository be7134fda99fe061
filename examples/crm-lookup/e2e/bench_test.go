package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	goruntime "runtime"
	"testing"
	"time"

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

// BenchmarkCRMLookupJob is the CPU one crm-lookup job costs the worker's process: the shipped
// Go module (committed crm-lookup.wasm) looking customer 42 up in the demo CRM through the
// egress gateway, with the CRM in the same process. "native" is the floor: the same request
// made with net/http, so the CRM's own share is in every row. The rows with
// "initialize" run _initialize in every instance (ModuleConfig.NoSnapshot), the rows with
// "snapshot" start every instance from the snapshot of it; "cold" instantiates on the job's
// path, "pool" runs jobs back to back with the default pool, whose refills are part of the
// CPU. Run the binary several times so the rows alternate on a noisy machine:
//
//	go test -c -o /tmp/crm.test ./examples/crm-lookup/e2e/ && cd examples/crm-lookup/e2e && \
//	  for i in 1 2 3 4 5; do /tmp/crm.test -test.run '^$' -test.bench CRMLookupJob -test.benchtime 300x; done
func BenchmarkCRMLookupJob(b *testing.B) {
	c := startCRM(b)
	wasm, err := os.ReadFile(filepath.Join(exampleDir(b), "crm-lookup.wasm"))
	if err != nil {
		b.Fatal(err)
	}
	in := []byte(`{"customer_id":"42"}`)
	cpu := func(b *testing.B, f func()) {
		b.ReportAllocs()
		b.ResetTimer()
		start := processCPU()
		for b.Loop() {
			f()
		}
		b.ReportMetric(float64((processCPU()-start).Microseconds())/float64(b.N), "cpu-µs/op")
	}
	b.Run("native", func(b *testing.B) {
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
		req, _ := http.NewRequest("GET", c.base+"/api/customers/42", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		cpu(b, func() {
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	})
	for _, v := range []struct {
		name       string
		noPool     bool
		noSnapshot bool
	}{
		{"initialize/cold", true, true},
		{"initialize/pool", false, true},
		{"snapshot/cold", true, false},
		{"snapshot/pool", false, false},
	} {
		var m *cr.Module // loaded once, by the first run of the sub-benchmark
		b.Run(v.name, func(b *testing.B) {
			if m == nil {
				e := newEngine(b)
				var err error
				m, err = e.Load(b.Context(), cr.ModuleConfig{
					Name: "crm-lookup", Wasm: wasm, NoPool: v.noPool, NoSnapshot: v.noSnapshot,
					Limits: cr.Limits{MemoryPages: 256, Timeout: 20 * time.Second, HTTPCalls: 3},
					HTTP:   c.gw, Guard: c.red,
				})
				if err != nil {
					b.Fatal(err)
				}
				goruntime.GC() // the garbage of loading is not the job's
			}
			before := m.PoolStats()
			cpu(b, func() {
				if res := m.Run(b.Context(), cr.Job{ID: "bench", Input: in}); res.Err != nil {
					b.Fatalf("Run = %v", res.Err)
				}
			})
			if !v.noPool {
				st := m.PoolStats()
				hits, misses := st.Hits-before.Hits, st.Misses-before.Misses
				b.ReportMetric(100*float64(hits)/float64(max(hits+misses, 1)), "hit-%")
			}
		})
	}
}

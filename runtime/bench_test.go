package runtime_test

// Benchmarks recorded in docs/benchmarks.md. Each pair is measured in the same run so that the
// ratio, not the absolute number, is what the noisy 2-core machine reports.

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/wasmbuild"
	"github.com/castellan-dev/castellan/runtime"
	"github.com/tetratelabs/wazero"
)

func benchJobs(b *testing.B, wasm []byte, pool int, noSnapshot bool) {
	e := newEngine(b)
	m, err := e.Load(context.Background(), runtime.ModuleConfig{Name: "bench", Wasm: wasm, PoolSize: max(pool, 0), NoPool: pool < 0, NoSnapshot: noSnapshot})
	if err != nil {
		b.Fatal(err)
	}
	in := []byte(`{"customer_id":"42"}`)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if pool > 0 {
			// Latency with a warm pool: the job arrives when an instance is ready, as it
			// does for a worker that is not saturated. Refilling is off the clock.
			b.StopTimer()
			for m.PoolReady() < pool {
				time.Sleep(50 * time.Microsecond)
			}
			b.StartTimer()
		}
		if res := m.Run(ctx, runtime.Job{ID: "b", Input: in}); res.Err != nil {
			b.Fatal(res.Err)
		}
	}
}

// benchBackToBack runs jobs one after the other with the default pool: each arrives when the
// previous one has ended, and the pool refills meanwhile. hit-% is the share of jobs that
// found an instance ready.
func benchBackToBack(b *testing.B, wasm []byte, noSnapshot bool) {
	e := newEngine(b)
	m, err := e.Load(context.Background(), runtime.ModuleConfig{Name: "bench", Wasm: wasm, NoSnapshot: noSnapshot})
	if err != nil {
		b.Fatal(err)
	}
	in := []byte(`{"customer_id":"42"}`)
	before := m.PoolStats()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if res := m.Run(context.Background(), runtime.Job{ID: "b", Input: in}); res.Err != nil {
			b.Fatal(res.Err)
		}
	}
	st := m.PoolStats()
	hits, misses := st.Hits-before.Hits, st.Misses-before.Misses
	b.ReportMetric(100*float64(hits)/float64(max(hits+misses, 1)), "hit-%")
}

// BenchmarkJob is the per-job cost: a fresh instance plus a trivial task, for a small WAT
// module and for a Go module, with and without the pre-initialised pool ("cold" instantiates
// and initialises on the job's path).
func BenchmarkJob(b *testing.B) {
	echo := fixture(b, "echo")
	goecho := wasmbuild.Go(b, "runtime/testdata/goecho")
	b.Run("small/cold", func(b *testing.B) { benchJobs(b, echo, -1, false) })
	b.Run("small/pool", func(b *testing.B) { benchJobs(b, echo, 4, false) })
	b.Run("go/cold", func(b *testing.B) { benchJobs(b, goecho, -1, true) })
	b.Run("go/snapshot-cold", func(b *testing.B) { benchJobs(b, goecho, -1, false) })
	b.Run("go/pool", func(b *testing.B) { benchJobs(b, goecho, 4, true) })
	b.Run("go/snapshot-pool", func(b *testing.B) { benchJobs(b, goecho, 4, false) })
	b.Run("go/back-to-back", func(b *testing.B) { benchBackToBack(b, goecho, true) })
	b.Run("go/snapshot-back-to-back", func(b *testing.B) { benchBackToBack(b, goecho, false) })
}

// BenchmarkSnapshotImage compares the two ways a Go module's instance starts from its
// snapshot: mapping the image copy-on-write (Linux) and copying it into a buffer. Run with
// -count so that the two alternate:
//
//	go test -run '^$' -bench SnapshotImage -benchtime 2000x -count 4 ./runtime/
func BenchmarkSnapshotImage(b *testing.B) {
	goecho := wasmbuild.Go(b, "runtime/testdata/goecho")
	for _, copying := range []bool{false, true} {
		name := "mapped"
		if copying {
			name = "copied"
		}
		b.Run(name, func(b *testing.B) {
			e := newEngine(b)
			if copying {
				runtime.CopyImages(e)
			}
			m, err := e.Load(context.Background(), runtime.ModuleConfig{Name: "bench", Wasm: goecho, NoPool: true})
			if err != nil {
				b.Fatal(err)
			}
			if runtime.ImageMapped(m) == copying && runtime.MapsImages {
				b.Fatalf("ImageMapped = %v with copying %v", !copying, copying)
			}
			in := []byte(`{"customer_id":"42"}`)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if res := m.Run(context.Background(), runtime.Job{ID: "b", Input: in}); res.Err != nil {
					b.Fatal(res.Err)
				}
			}
		})
	}
}

// BenchmarkHTTPCall compares one scoped HTTP call made by a task through the host (policy
// checks, credential injection, streamed redaction, audit) with the same request made by
// native Go net/http against the same loopback server. The sandbox side makes 100 calls per job
// so the instance cost is amortised; ns/op is per call on both sides.
func BenchmarkHTTPCall(b *testing.B) {
	const perJob = 100
	up := newUpstream(b)
	b.Run("native", func(b *testing.B) {
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
		req, _ := http.NewRequest("GET", up.URL+"/api/customers/42", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		b.ReportAllocs()
		for b.Loop() {
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	b.Run("sandbox", func(b *testing.B) {
		s := newSandbox(b, up.URL, runtime.Limits{HTTPCalls: perJob}, "http_loop")
		in := []byte(strings.Repeat("x", perJob))
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i += perJob {
			if res := s.m.Run(ctx, runtime.Job{ID: "b", Input: in}); res.Err != nil {
				b.Fatal(res.Err)
			}
		}
	})
}

// BenchmarkHTTPCallInterleaved is BenchmarkHTTPCall with the sides taking turns: 100 native
// calls, one sandbox job of 100 calls, and 100 native calls with a deadline, each timed on its
// own. On a shared machine whose load drifts over seconds, both sides then see the same
// conditions, and the ratio it reports is steadier than that of two sub-benchmarks run one
// after the other. The upstream answers at once, or after 1 ms as a nearby internal API
// would.
func BenchmarkHTTPCallInterleaved(b *testing.B) {
	for _, delay := range []time.Duration{0, time.Millisecond} {
		b.Run("upstream="+delay.String(), func(b *testing.B) { benchInterleaved(b, delay) })
	}
}

func benchInterleaved(b *testing.B, delay time.Duration) {
	const perJob = 100
	up := newUpstream(b)
	base := up.URL
	if delay > 0 {
		slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(delay) // the upstream's own latency, not a wait for a condition
			up.Config.Handler.ServeHTTP(w, r)
		}))
		b.Cleanup(slow.Close)
		base = slow.URL
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	req, _ := http.NewRequest("GET", base+"/api/customers/42", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	s := newSandbox(b, base, runtime.Limits{HTTPCalls: perJob}, "http_loop")
	in := []byte(strings.Repeat("x", perJob))
	ctx := context.Background()
	// The sandbox's request carries a deadline (the endpoint's timeout); so does the third
	// side, native with a per-request deadline, as a careful native client would set one.
	call := func(c *http.Client, deadline bool) {
		r := req
		if deadline {
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			r = req.WithContext(dctx)
		}
		resp, err := c.Do(r)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	var native, nativeDeadline, sandbox time.Duration
	var rounds []float64 // sandbox/native of each round: a load burst spoils one round, not the median
	calls := 0
	b.ResetTimer()
	for ; calls < b.N; calls += perJob {
		t0 := time.Now()
		for range perJob {
			call(client, false)
		}
		t1 := time.Now()
		if res := s.m.Run(ctx, runtime.Job{ID: "b", Input: in}); res.Err != nil {
			b.Fatal(res.Err)
		}
		t2 := time.Now()
		for range perJob {
			call(client, true)
		}
		native += t1.Sub(t0)
		sandbox += t2.Sub(t1)
		nativeDeadline += time.Since(t2)
		rounds = append(rounds, float64(t2.Sub(t1))/float64(t1.Sub(t0)))
	}
	slices.Sort(rounds)
	b.ReportMetric(rounds[len(rounds)/2], "ratio-median-round")
	b.ReportMetric(float64(native.Nanoseconds())/float64(calls)/1e3, "native-µs/call")
	b.ReportMetric(float64(nativeDeadline.Nanoseconds())/float64(calls)/1e3, "native-deadline-µs/call")
	b.ReportMetric(float64(sandbox.Nanoseconds())/float64(calls)/1e3, "sandbox-µs/call")
	b.ReportMetric(float64(sandbox)/float64(native), "ratio")
	b.ReportMetric(float64(sandbox)/float64(nativeDeadline), "ratio-vs-deadline")
}

// BenchmarkCompile compares compiling the Go module from scratch with loading it from a warm
// compilation cache directory (a new runtime each time, as a restarted worker would).
func BenchmarkCompile(b *testing.B) {
	wasm := wasmbuild.Go(b, "runtime/testdata/goecho")
	ctx := context.Background()
	b.Run("cold", func(b *testing.B) {
		for b.Loop() {
			r := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfig().WithCompilationCache(wazero.NewCompilationCache()))
			if _, err := r.CompileModule(ctx, wasm); err != nil {
				b.Fatal(err)
			}
			_ = r.Close(ctx)
		}
	})
	b.Run("warm-cache-dir", func(b *testing.B) {
		cache, err := wazero.NewCompilationCacheWithDir(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		defer cache.Close(ctx)
		warm := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfig().WithCompilationCache(cache))
		if _, err := warm.CompileModule(ctx, wasm); err != nil {
			b.Fatal(err)
		}
		_ = warm.Close(ctx)
		b.ResetTimer()
		for b.Loop() {
			r := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfig().WithCompilationCache(cache))
			if _, err := r.CompileModule(ctx, wasm); err != nil {
				b.Fatal(err)
			}
			_ = r.Close(ctx)
		}
	})
}

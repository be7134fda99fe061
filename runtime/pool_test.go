package runtime_test

import (
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/wasmbuild"
	"github.com/castellan-dev/castellan/runtime"
)

// TestPoolFollowsArrivalRate: jobs arriving faster than the configured two instances cover
// make the pool grow, within its bound; when they stop, it shrinks back to two and closes
// the instances over that and drops its cached memory buffers, so an idle worker does not
// keep a burst's memory.
func TestPoolFollowsArrivalRate(t *testing.T) {
	t.Parallel()
	wasm := wasmbuild.Go(t, "runtime/testdata/goecho")
	e := newEngine(t)
	m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "goecho", Wasm: wasm, PoolSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if res := m.Run(t.Context(), runtime.Job{ID: "p", Input: []byte("x")}); res.Err != nil {
					t.Error(res.Err)
					return
				}
			}
		}()
	}
	var grew int
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && grew <= 2; time.Sleep(10 * time.Millisecond) {
		grew = m.PoolStats().Target
	}
	close(stop)
	wg.Wait()
	if grew <= 2 {
		t.Fatalf("under load the pool's target stayed at %d, want it above the configured 2", grew)
	}
	// A Go instance here holds about 3 MiB: the 64 MiB bound allows about 20.
	if grew > 64 {
		t.Errorf("target %d exceeds the bound", grew)
	}
	st := m.PoolStats()
	t.Logf("under load: target reached %d; %d jobs found an instance ready, %d did not", grew, st.Hits, st.Misses)

	var target int
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		target = m.PoolStats().Target
		if target == 2 && m.PoolReady() <= 2 && runtime.CachedMemory(m) == 0 {
			return
		}
	}
	t.Errorf("30s after the load stopped: target %d, %d instances ready, %d bytes of memory buffers cached; want 2, at most 2 and none",
		target, m.PoolReady(), runtime.CachedMemory(m))
}

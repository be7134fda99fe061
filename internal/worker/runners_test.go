package worker

import (
	"sync"
	"testing"
	"time"
)

// TestRunnersReuseGoroutines: jobs run one after another reuse one goroutine, jobs run at
// once each get one, and stop lets the idle ones exit.
func TestRunnersReuseGoroutines(t *testing.T) {
	t.Parallel()
	rn := newRunners()
	for range 50 {
		done := make(chan struct{})
		rn.run(func() { close(done) })
		<-done
		waitFor(t, "the runner to wait for work", func() bool { return rn.idle.Load() >= 1 })
	}
	// A runner counts itself idle just before it waits, so a job can rarely start a new
	// goroutine anyway; without reuse there would be 50.
	if n := rn.live.Load(); n > 3 {
		t.Errorf("after 50 sequential jobs: %d runner goroutines, want them reused (1, rarely 2 or 3)", n)
	}
	live := rn.live.Load()
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for range 8 {
		wg.Add(1)
		rn.run(func() { <-gate; wg.Done() }) // never blocks, even with every runner busy
	}
	// Each of 8 jobs at once has a goroutine: idle runners take some, new ones start for
	// the rest.
	waitFor(t, "a goroutine for each of 8 jobs at once", func() bool { return rn.live.Load() >= 8 && rn.live.Load() <= live+8 })
	close(gate)
	wg.Wait()
	rn.stop()
	waitFor(t, "every runner goroutine to exit after stop", func() bool { return rn.live.Load() == 0 })
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

package worker

import (
	goruntime "runtime"
	"sync"
	"testing"
	"time"
)

// TestRunnersReuseGoroutines: jobs run one after another reuse one goroutine, jobs run at
// once each get one, and stop lets the idle ones exit.
func TestRunnersReuseGoroutines(t *testing.T) {
	before := goruntime.NumGoroutine()
	rn := newRunners()
	for range 50 {
		done := make(chan struct{})
		rn.run(func() { close(done) })
		<-done
		time.Sleep(time.Millisecond) // let the goroutine get back to waiting for work
	}
	if n := goruntime.NumGoroutine() - before; n > 2 {
		t.Errorf("50 sequential jobs left %d extra goroutines, want 1 reused", n)
	}
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for range 8 {
		wg.Add(1)
		rn.run(func() { <-gate; wg.Done() }) // never blocks, even with every runner busy
	}
	close(gate)
	wg.Wait()
	rn.stop()
	deadline := time.Now().Add(5 * time.Second)
	for goruntime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines still running after stop, want %d", goruntime.NumGoroutine(), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

package worker_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/castellan-dev/castellan/internal/worker"
	rt "github.com/castellan-dev/castellan/runtime"
)

// goroutineID is the id runtime.Stack prints in its first line ("goroutine 42 [running]:").
func goroutineID() int {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := bytes.Fields(buf)
	id, _ := strconv.Atoi(string(f[1]))
	return id
}

// liveGoroutines lists the ids of every goroutine of the process.
func liveGoroutines() map[int]bool {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	ids := map[int]bool{}
	for _, line := range bytes.Split(buf, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("goroutine ")); ok {
			if id, err := strconv.Atoi(string(bytes.Fields(rest)[0])); err == nil {
				ids[id] = true
			}
		}
	}
	return ids
}

// Jobs one after the other run on goroutines kept from job to job (so that the stack a
// job grew in the sandbox is not grown again by the next), and none of those goroutines
// outlives Run.
func TestJobsReuseRunGoroutines(t *testing.T) {
	t.Parallel()
	s := newSigner(t)
	q := newFakeQueue("default")
	var mu sync.Mutex
	ran := map[int]int{} // goroutine id -> jobs run on it
	r := funcRunner(func(_ context.Context, _, _ string, in []byte) rt.Result {
		mu.Lock()
		ran[goroutineID()]++
		mu.Unlock()
		return rt.Result{Output: in}
	})
	rw := startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Pool: "default", Verifier: s.verifier(), Concurrency: 4})
	const n = 40
	for i := range n {
		q.push(s.job(t, fmt.Sprintf("job-%d", i), "echo", "1.0.0", "default"))
		q.waitUntil(t, "the report", func(q *fakeQueue) bool { return len(q.reports) == i+1 })
	}
	mu.Lock()
	used := len(ran)
	mu.Unlock()
	if used > n/2 {
		t.Errorf("%d jobs one after the other ran on %d goroutines, want them reused (at most %d)", n, used, n/2)
	}
	rw.stopLease()
	rw.cancelJobs()
	if err := <-rw.done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	rw.done <- nil // for the cleanup's wait
	poll(t, "the run goroutines to end after Run returned", func() bool {
		live := liveGoroutines()
		mu.Lock()
		defer mu.Unlock()
		for id := range ran {
			if live[id] {
				return false
			}
		}
		return true
	})
}

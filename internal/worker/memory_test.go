package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/runtime"
)

// TestIdleWorkerReleasesMemory: once a spell of jobs is over and the worker has been idle for
// a second, it gives the heap back to the operating system (a burst of Go guests otherwise
// leaves hundreds of MiB resident); once per spell, and again after the next one.
func TestIdleWorkerReleasesMemory(t *testing.T) {
	t.Parallel()
	s := newSigner(t)
	q := newFakeQueue("default")
	r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		return runtime.Result{Output: in}
	})
	rw := startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Pool: "default", Verifier: s.verifier()})
	if n := rw.w.MemoryReleases(); n != 0 {
		t.Fatalf("before any job: %d releases, want 0", n)
	}
	waitReleases := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); rw.w.MemoryReleases() < want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("10s after the jobs: %d releases, want %d", rw.w.MemoryReleases(), want)
			}
		}
	}
	q.push(s.job(t, "j1", "echo", "1.0.0", "default"), s.job(t, "j2", "echo", "1.0.0", "default"))
	q.waitUntil(t, "two reports", func(q *fakeQueue) bool { return len(q.reports) >= 2 })
	waitReleases(1)
	q.push(s.job(t, "j3", "echo", "1.0.0", "default"))
	q.waitUntil(t, "three reports", func(q *fakeQueue) bool { return len(q.reports) >= 3 })
	waitReleases(2)
	if n := rw.w.MemoryReleases(); n != 2 {
		t.Errorf("after two spells of jobs: %d releases, want 2", n)
	}
}

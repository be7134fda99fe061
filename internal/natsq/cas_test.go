package natsq_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/castellan-dev/castellan/internal/natsq"
)

// TestConcurrentUpdatesOnReplicatedBucket: on a 3-node cluster (R3 buckets) many writers
// change one job's record at once; every change lands exactly once. A replicated stream
// refuses a compare-and-set on a key that has another write in flight with its own code
// (10164, not 10071), which is a conflict to retry like the other, not a failure.
func TestConcurrentUpdatesOnReplicatedBucket(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3-node cluster: skipped with -short")
	}
	t.Parallel()
	_, url := startCluster(t, 3)
	s := newSigner(t)
	var ds []*natsq.Dispatcher
	for range 2 {
		d, _, _ := startDispatcher(t, url, natsq.Options{Replicas: 3})
		ds = append(ds, d)
	}
	if _, err := ds[0].Dispatch(t.Context(), s.envelope(t, "raced", `{"n":1}`, 1)); err != nil {
		t.Fatal(err)
	}
	const writers = 24
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := ds[i%2].Update(context.Background(), "raced", func(r *natsq.Record) (bool, error) {
				r.Job.ErrorMessage += "x"
				return true, nil
			})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Update = %v", err)
		}
	}
	j, err := ds[0].Get(t.Context(), "raced")
	if err != nil || j.ErrorMessage != strings.Repeat("x", writers) {
		t.Fatalf("record after %d updates: %q, %v", writers, j.ErrorMessage, err)
	}
}

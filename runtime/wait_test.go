package runtime_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

// runWithin runs one job and fails the test if it has not returned within limit: a host-side
// wait that ignores the job's deadline would otherwise hang the test for as long as the guest
// asked (an hour here).
func runWithin(t *testing.T, m *runtime.Module, ctx context.Context, limit time.Duration) runtime.Result {
	t.Helper()
	done := make(chan runtime.Result, 1)
	go func() { done <- m.Run(ctx, runtime.Job{ID: "w"}) }()
	select {
	case res := <-done:
		return res
	case <-time.After(limit):
		t.Fatalf("Run() has not returned %s after its deadline: a host-side wait ignores it", limit)
		return runtime.Result{}
	}
}

// TestBlockingWASIEndsAtDeadline: a guest that sleeps for an hour in WASI poll_oneoff (from
// its entry, from _initialize, as a native module and as an Extism plugin) ends at the job's
// deadline as timeout, or at its cancellation as cancelled.
func TestBlockingWASIEndsAtDeadline(t *testing.T) {
	t.Parallel()
	tests := []struct {
		fixture string
		pool    int
	}{
		{"sleep", -1},
		{"sleep", 2},
		{"sleep_init", -1},
		{"sleep_init", 2},
		{"extism_sleep", 0},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			t.Parallel()
			e := newEngine(t)
			m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: tt.fixture, Wasm: fixture(t, tt.fixture), PoolSize: max(tt.pool, 0), NoPool: tt.pool < 0,
				Limits: runtime.Limits{Timeout: 200 * time.Millisecond}})
			if err != nil {
				t.Fatal(err)
			}
			res := runWithin(t, m, t.Context(), 10*time.Second)
			if res.Code() != outcome.Timeout || !errors.Is(res.Err, context.DeadlineExceeded) {
				t.Errorf("Run(%s) = %s (%v), want timeout", tt.fixture, res.Code(), res.Err)
			}

			// Cancellation ends the wait as well, long before the job's own deadline.
			m2, err := e.Load(t.Context(), runtime.ModuleConfig{Name: tt.fixture, Wasm: fixture(t, tt.fixture), NoPool: true,
				Limits: runtime.Limits{Timeout: time.Hour}})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			res = runWithin(t, m2, ctx, 10*time.Second)
			if c := res.Code(); c != outcome.Timeout && c != outcome.Cancelled {
				t.Errorf("Run(%s) with a cancelled context = %s (%v), want timeout or cancelled", tt.fixture, c, res.Err)
			}
			// Closing the module returns too: no pool goroutine is stuck in a sleep.
			closed := make(chan error, 1)
			go func() { closed <- m.Close(context.Background()) }()
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatal("Module.Close() has not returned after 10s: a pre-initialising instance is stuck in a sleep")
			}
		})
	}
}

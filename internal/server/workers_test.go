package server

import (
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestWorkerSeenThrottled: leases and heartbeats record that a worker was seen, but write
// its last_seen_at at most once per api.PresenceInterval: an idle worker's parked lease
// re-queries every RecheckInterval, and each would otherwise be a write.
func TestWorkerSeenThrottled(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	seen := func() time.Time {
		t.Helper()
		var ms int64
		if err := e.s.store.rdb.QueryRowContext(t.Context(), `SELECT last_seen_at FROM workers WHERE name = 'worker'`).Scan(&ms); err != nil {
			t.Fatal(err)
		}
		return msTime(ms)
	}
	registered := seen()
	for _, step := range []struct {
		advance time.Duration
		moved   bool
	}{
		{time.Second, false},
		{api.PresenceInterval - 2*time.Second, false},
		{time.Second, true}, // exactly PresenceInterval after the last write
		{time.Second, false},
		{time.Hour, true},
	} {
		before := seen()
		e.clock.Advance(step.advance)
		if _, err := e.worker.Lease(t.Context(), 1, 0); err != nil {
			t.Fatal(err)
		}
		after := seen()
		if moved := !after.Equal(before); moved != step.moved {
			t.Fatalf("after +%v: last_seen_at %v -> %v (registered %v), want moved=%v", step.advance, before, after, registered, step.moved)
		}
		if step.moved && !after.Equal(e.clock.Now()) {
			t.Fatalf("last_seen_at = %v, want now %v", after, e.clock.Now())
		}
	}
}

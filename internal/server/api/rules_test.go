package api

import (
	"strings"
	"testing"
	"time"
)

func TestNamesAndIDs(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
		got  bool
	}{
		{"pool of 63", true, ValidPoolName(strings.Repeat("p", 63))},
		{"pool of 64", false, ValidPoolName(strings.Repeat("p", 64))},
		{"pool starting with a digit", true, ValidPoolName("1a")},
		{"pool *", false, ValidPoolName(AllPools)},
		{"pool with ~", false, ValidPoolName("a~b")},
		{"task of 64", true, ValidTaskName("e" + strings.Repeat("c", 63))},
		{"task of 65", false, ValidTaskName("e" + strings.Repeat("c", 64))},
		{"task starting with a digit", false, ValidTaskName("1e")},
		{"version with +", true, ValidTaskVersion("1.0.0+build")},
		{"version with a space", false, ValidTaskVersion("1 0")},
		{"job id upper case", false, ValidJobID("JOB_" + strings.Repeat("0", 24))},
		{"job id of 25 digits", false, ValidJobID("job_" + strings.Repeat("0", 25))},
		{"idempotency key of 200", true, ValidIdempotencyKey(strings.Repeat("k", 200))},
		{"idempotency key of 201", false, ValidIdempotencyKey(strings.Repeat("k", 201))},
	} {
		if c.got != c.ok {
			t.Errorf("%s: valid = %v, want %v", c.name, c.got, c.ok)
		}
	}
	seen := map[string]bool{}
	for range 1000 {
		id := NewJobID()
		if !ValidJobID(id) || seen[id] {
			t.Fatalf("NewJobID() = %q: invalid or repeated", id)
		}
		seen[id] = true
	}
}

func TestRetryDelay(t *testing.T) {
	for _, c := range []struct {
		attempt int
		want    time.Duration
	}{{1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {9, 256 * time.Second}, {10, 5 * time.Minute}, {1000, 5 * time.Minute}} {
		if got := RetryCeiling(c.attempt, RetryBase, RetryCap); got != c.want {
			t.Errorf("RetryCeiling(%d) = %s, want %s", c.attempt, got, c.want)
		}
	}
	// Full jitter: in [0, ceiling), and spread over it (not the ceiling every time).
	var low, high int
	for range 2000 {
		d := RetryDelay(3, RetryBase, RetryCap)
		if d < 0 || d >= 4*time.Second {
			t.Fatalf("RetryDelay(3) = %s, want in [0, 4s)", d)
		}
		if d < 2*time.Second {
			low++
		} else {
			high++
		}
	}
	if low < 800 || high < 800 {
		t.Fatalf("RetryDelay(3) halves: %d under 2s, %d over; want about even", low, high)
	}
	if d := FullJitter(0); d != 0 {
		t.Fatalf("FullJitter(0) = %s", d)
	}
}

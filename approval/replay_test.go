package approval

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// storeUnderTest opens a fresh store of each kind; reopen returns a store over the same
// records (a new process, for SQLite), or nil where that is meaningless.
type storeUnderTest struct {
	name string
	open func(t *testing.T, now func() time.Time) (ReplayStore, func(now func() time.Time) ReplayStore)
}

var stores = []storeUnderTest{
	{"memory", func(t *testing.T, now func() time.Time) (ReplayStore, func(func() time.Time) ReplayStore) {
		s := NewMemoryReplayStore()
		s.now = now
		return s, nil
	}},
	{"sqlite", func(t *testing.T, now func() time.Time) (ReplayStore, func(func() time.Time) ReplayStore) {
		path := filepath.Join(t.TempDir(), "replay dir", "replay.db")
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			t.Fatal(err)
		}
		s, err := OpenReplayStore(path, WithStoreClock(now))
		if err != nil {
			t.Fatal(err)
		}
		current := s
		t.Cleanup(func() { _ = current.Close() })
		return s, func(now func() time.Time) ReplayStore {
			if err := current.Close(); err != nil {
				t.Fatalf("Close() = %v", err)
			}
			s, err := OpenReplayStore(path, WithStoreClock(now))
			if err != nil {
				t.Fatalf("OpenReplayStore(reopen) = %v", err)
			}
			current = s
			return s
		}
	}},
}

func TestReplayStoreConsume(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			s, _ := st.open(t, clockAt(t0))
			exp := t0.Add(time.Hour)
			steps := []struct {
				nonce, job  string
				attempt     int
				maxAttempts int
				want        Reason // "" = accepted
			}{
				{"n1", "job-1", 1, 3, ""},
				{"n1", "job-1", 1, 3, Replayed},
				{"n1", "job-1", 2, 3, ""},
				{"n1", "job-1", 3, 3, ""},
				{"n1", "job-1", 4, 3, AttemptsExhausted},
				{"n1", "job-1", 3, 3, Replayed},
				{"n1", "job-2", 1, 3, Replayed}, // nonce reused for another job
				{"n2", "job-1", 1, 1, ""},
				{"n2", "job-1", 1, 1, Replayed},
				{"n3", "job-1", 2, 1, AttemptsExhausted},
				{"n3", "job-1", 1, 1, ""}, // an exhausted attempt did not record anything
			}
			for i, st := range steps {
				err := s.Consume(ctx, st.nonce, st.job, st.attempt, st.maxAttempts, exp)
				if got := ReasonOf(err); got != st.want || (st.want == "" && err != nil) {
					t.Fatalf("step %d: Consume(%s, %s, %d, %d) = %v, want %q", i, st.nonce, st.job, st.attempt, st.maxAttempts, err, st.want)
				}
			}
			if err := s.Consume(ctx, "n9", "job-1", 0, 1, exp); err == nil || ReasonOf(err) != "" {
				t.Fatalf("Consume(attempt 0) = %v, want a non-rejection error", err)
			}
		})
	}
}

// A restarted worker must still refuse an approval it used before the restart.
func TestSQLiteReplayStoreDurable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "replay.db")
	e := newVerifyEnv(t)
	_, want := baseRequest()

	s, err := OpenReplayStore(path, WithStoreClock(clockAt(t0)))
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(keySet(e.pub), s, WithClock(clockAt(t0)))
	if _, err := v.Verify(t.Context(), e.token, want); err != nil {
		t.Fatalf("Verify(first use) = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("replay store mode = %o, want 600", fi.Mode().Perm())
	}

	s, err = OpenReplayStore(path, WithStoreClock(clockAt(t0.Add(time.Minute))))
	if err != nil {
		t.Fatalf("OpenReplayStore(reopen) = %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	v = NewVerifier(keySet(e.pub), s, WithClock(clockAt(t0.Add(time.Minute))))
	_, err = v.Verify(t.Context(), e.token, want)
	wantReason(t, "Verify(after restart)", err, Replayed, e.token)
	want.Attempt = 2
	if _, err := v.Verify(t.Context(), e.token, want); err != nil {
		t.Fatalf("Verify(attempt 2 after restart) = %v, want success", err)
	}
}

// Records are dropped once the token they protect would be rejected as expired anyway,
// and not before.
func TestReplayStorePrunes(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			var mu sync.Mutex
			now := t0
			clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			setNow := func(t time.Time) { mu.Lock(); now = t; mu.Unlock() }
			s, reopen := st.open(t, clock)

			if err := s.Consume(ctx, "short", "job-1", 1, 1, t0.Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
			if err := s.Consume(ctx, "long", "job-1", 1, 1, t0.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			// Past the short record's expiry and the prune interval: the next Consume
			// (or, for SQLite, the next open) prunes it.
			setNow(t0.Add(pruneInterval + time.Minute))
			wantLen := 1 // "long"
			if reopen != nil {
				s = reopen(clock)
			} else {
				if err := s.Consume(ctx, "trigger", "job-1", 1, 1, t0.Add(time.Hour)); err != nil {
					t.Fatal(err)
				}
				wantLen++
			}
			if got := storeLen(t, s); got != wantLen {
				t.Fatalf("after pruning the store holds %d records, want %d (the unexpired ones)", got, wantLen)
			}
			// The unexpired record still protects its token; the pruned one is gone.
			if err := s.Consume(ctx, "long", "job-1", 1, 1, t0.Add(time.Hour)); ReasonOf(err) != Replayed {
				t.Fatalf("Consume(long, again) = %v, want %s", err, Replayed)
			}
			if err := s.Consume(ctx, "short", "job-1", 1, 1, t0.Add(time.Minute)); err != nil {
				t.Fatalf("Consume(short, after pruning) = %v, want success (its record expired)", err)
			}
		})
	}
}

func storeLen(t *testing.T, s ReplayStore) int {
	t.Helper()
	switch s := s.(type) {
	case *MemoryReplayStore:
		return s.Len()
	case *SQLiteReplayStore:
		n, err := s.Len(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	t.Fatalf("unknown store %T", s)
	return 0
}

func TestOpenReplayStoreErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if _, err := OpenReplayStore(filepath.Join(dir, "missing", "replay.db")); err == nil {
		t.Errorf("OpenReplayStore(in a missing directory) = nil, want an error")
	}
	junk := filepath.Join(dir, "junk.db")
	if err := os.WriteFile(junk, []byte("this is not a database, just some text that is long enough to look like a header"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := OpenReplayStore(junk); err == nil {
		_ = s.Close()
		t.Errorf("OpenReplayStore(not a database) = nil, want an error")
	}
	// A database from a newer schema is refused rather than misread.
	path := filepath.Join(dir, "newer.db")
	s, err := OpenReplayStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	if s, err := OpenReplayStore(path); err == nil {
		_ = s.Close()
		t.Errorf("OpenReplayStore(schema 99) = nil, want an error")
	}
}

// Two stores over one file (two worker processes on a host) see each other's records.
func TestSQLiteReplayStoreShared(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "replay.db")
	a, err := OpenReplayStore(path, WithStoreClock(clockAt(t0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	b, err := OpenReplayStore(path, WithStoreClock(clockAt(t0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })

	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, 2*n)
	for i := range 2 * n {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() { errs[i] = s.Consume(t.Context(), "shared-nonce", "job-1", 1, 1, t0.Add(time.Hour)) })
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case ReasonOf(err) != Replayed:
			t.Errorf("Consume on a shared file = %v, want success or %s", err, Replayed)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d Consume calls across two stores succeeded, want exactly 1", ok, 2*n)
	}
}

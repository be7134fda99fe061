package approval

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Consumes that arrive together share one transaction (group commit). Within one batch the
// same approval must still authorise each attempt once: two jobs carrying the same token
// in one batch must not both run, nor may a nonce serve two jobs because both uses were in
// the same transaction.
func TestSQLiteReplayStoreBatch(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "replay.db")
	s, err := OpenReplayStore(path, WithStoreClock(clockAt(t0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	exp := t0.Add(time.Hour)
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	batch := []struct {
		ctx          context.Context
		nonce, job   string
		attempt      int
		want         Reason // "" = accepted
		wantCanceled bool
	}{
		{t.Context(), "n1", "job-1", 1, "", false},
		{t.Context(), "n1", "job-1", 1, Replayed, false}, // the same token twice in one batch
		{t.Context(), "n1", "job-2", 1, Replayed, false}, // its nonce for another job
		{t.Context(), "n1", "job-2", 2, Replayed, false},
		{t.Context(), "n1", "job-1", 2, "", false}, // the next attempt of the same job
		{t.Context(), "n2", "job-3", 1, "", false},
		{cancelled, "n3", "job-4", 1, "", true}, // given up before its turn: not recorded
		{t.Context(), "n2", "job-3", 1, Replayed, false},
	}
	reqs := make([]consumeReq, len(batch))
	for i, b := range batch {
		reqs[i] = consumeReq{ctx: b.ctx, nonce: b.nonce, jobID: b.job, attempt: b.attempt, expiry: exp, now: t0, result: make(chan error, 1)}
	}
	s.commit(reqs) // one batch, as the writer forms it from consumes waiting together
	for i, b := range batch {
		err := <-reqs[i].result
		switch {
		case b.wantCanceled:
			if err == nil || ReasonOf(err) != "" {
				t.Errorf("batch[%d] (cancelled) = %v, want the context's error", i, err)
			}
		case ReasonOf(err) != b.want || (b.want == "" && err != nil):
			t.Errorf("batch[%d] Consume(%s, %s, %d) = %v, want %q", i, b.nonce, b.job, b.attempt, err, b.want)
		}
	}
	if n, err := s.Len(t.Context()); err != nil || n != 3 {
		t.Fatalf("Len() = %d, %v; want the 3 accepted uses", n, err)
	}
	// Each accepted use is committed: refused after a reopen; the cancelled one was never
	// recorded.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenReplayStore(path, WithStoreClock(clockAt(t0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	for _, b := range batch {
		err := s.Consume(t.Context(), b.nonce, b.job, b.attempt, 3, exp)
		if b.wantCanceled {
			if err != nil {
				t.Errorf("after reopen: Consume(%s, %s, %d) = %v, want success (it was never recorded)", b.nonce, b.job, b.attempt, err)
			}
		} else if ReasonOf(err) != Replayed {
			t.Errorf("after reopen: Consume(%s, %s, %d) = %v, want %s", b.nonce, b.job, b.attempt, err, Replayed)
		}
	}
}

// A batch whose transaction fails accepts none of its consumes, not even those recorded
// before the failure inside it: their uses were rolled back, so their jobs must not start.
// The store goes on working.
func TestSQLiteReplayStoreBatchFailure(t *testing.T) {
	t.Parallel()
	s, err := OpenReplayStore(filepath.Join(t.TempDir(), "replay.db"), WithStoreClock(clockAt(t0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	// The disk failing mid-batch, for one record.
	if _, err := s.db.ExecContext(t.Context(), `CREATE TEMP TRIGGER fail_boom BEFORE INSERT ON used_approvals
		WHEN NEW.nonce = 'boom' BEGIN SELECT RAISE(ABORT, 'injected failure'); END`); err != nil {
		t.Fatal(err)
	}
	exp := t0.Add(time.Hour)
	var reqs []consumeReq
	for _, nonce := range []string{"a", "boom", "b"} {
		reqs = append(reqs, consumeReq{ctx: t.Context(), nonce: nonce, jobID: "job-" + nonce, attempt: 1, expiry: exp, now: t0, result: make(chan error, 1)})
	}
	s.commit(reqs)
	for i, r := range reqs {
		if err := <-r.result; err == nil || ReasonOf(err) != "" {
			t.Errorf("batch[%d] (%s) = %v, want a store error", i, r.nonce, err)
		}
	}
	if n, err := s.Len(t.Context()); err != nil || n != 0 {
		t.Fatalf("Len() = %d, %v after a failed batch; want 0", n, err)
	}
	for _, nonce := range []string{"a", "b"} {
		if err := s.Consume(t.Context(), nonce, "job-"+nonce, 1, 1, exp); err != nil {
			t.Errorf("Consume(%s) after the failed batch = %v, want success", nonce, err)
		}
	}
}

// A worker killed right after Consume returned (no Close, no clean exit) must still
// refuse the approval when it comes back: Consume returns only once the use is committed.
func TestSQLiteReplayStoreSurvivesKill(t *testing.T) {
	if path := os.Getenv("CASTELLAN_REPLAY_KILL_PATH"); path != "" {
		// The child: consume, say so, and wait to be killed.
		s, err := OpenReplayStore(path, WithStoreClock(clockAt(t0)))
		if err != nil {
			fmt.Println("open:", err)
			os.Exit(1)
		}
		for i := range 8 {
			if err := s.Consume(context.Background(), fmt.Sprintf("n%d", i), "job-1", 1, 1, t0.Add(time.Hour)); err != nil {
				fmt.Println("consume:", err)
				os.Exit(1)
			}
		}
		fmt.Println("consumed")
		select {}
	}
	t.Parallel()
	path := filepath.Join(t.TempDir(), "replay.db")
	cmd := exec.Command(os.Args[0], "-test.run", "^TestSQLiteReplayStoreSurvivesKill$")
	cmd.Env = append(os.Environ(), "CASTELLAN_REPLAY_KILL_PATH="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 64)
	n, _ := out.Read(line)
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if got := strings.TrimSpace(string(line[:n])); got != "consumed" {
		t.Fatalf("child said %q, want consumed", got)
	}
	s, err := OpenReplayStore(path, WithStoreClock(clockAt(t0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	for i := range 8 {
		if err := s.Consume(t.Context(), fmt.Sprintf("n%d", i), "job-1", 1, 1, t0.Add(time.Hour)); ReasonOf(err) != Replayed {
			t.Errorf("after the kill: Consume(n%d) = %v, want %s", i, err, Replayed)
		}
	}
}

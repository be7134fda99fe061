package server

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// holdWriter runs a transaction that holds the writer until release is called, so that the
// writes queued meanwhile share the next commit.
func holdWriter(t *testing.T, st *Store) (release func()) {
	t.Helper()
	hold, held, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		_ = st.tx(context.Background(), func(tx *txn) error {
			close(held)
			<-hold
			return nil
		})
	}()
	<-held
	return func() { close(hold); <-done }
}

// TestGroupCommitFailingBodiesTakeOnlyThemselves: one commit carries bodies that succeed,
// bodies that fail after writing (an error, a panic, a constraint violation), and bodies
// that write the audit chain around them. Each failing body gets its own error and leaves
// nothing behind; every other body commits; the audit chain still verifies (a failed body's
// entry was the head for a moment, inside the transaction, and must not be chained to).
func TestGroupCommitFailingBodiesTakeOnlyThemselves(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, err := OpenStore(ctx, filepath.Join(t.TempDir(), "cp.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	errBody := errors.New("body refused")
	bodies := []struct {
		name string
		fn   func(tx *txn) error
		want string // "" commits; otherwise the error must contain it
	}{
		{"ok-1", func(tx *txn) error { return audit(ctx, tx, time.Now(), "t", "t", "ok", "1", "") }, ""},
		{"error after writing", func(tx *txn) error {
			if err := audit(ctx, tx, time.Now(), "t", "t", "failed", "2", ""); err != nil {
				return err
			}
			return errBody
		}, "body refused"},
		{"ok-3", func(tx *txn) error { return audit(ctx, tx, time.Now(), "t", "t", "ok", "3", "") }, ""},
		{"panic after writing", func(tx *txn) error {
			if err := audit(ctx, tx, time.Now(), "t", "t", "failed", "4", ""); err != nil {
				return err
			}
			panic("boom")
		}, "panic"},
		{"constraint violation", func(tx *txn) error {
			if err := audit(ctx, tx, time.Now(), "t", "t", "failed", "5", ""); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO workers(token_id, pool, name, agent_version, registered_at, last_seen_at) VALUES ('tok_none', 'p', 'n', 'v', 0, 0)`)
			return err // FOREIGN KEY constraint failed: no such token
		}, "FOREIGN KEY"},
		{"ok-6", func(tx *txn) error { return audit(ctx, tx, time.Now(), "t", "t", "ok", "6", "") }, ""},
	}
	release := holdWriter(t, st)
	errs := make([]error, len(bodies))
	var wg sync.WaitGroup
	for i, b := range bodies {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = st.tx(ctx, b.fn) }()
	}
	eventually(t, "every body to queue behind the held one", func() bool { return st.queued() == len(bodies) })
	release()
	wg.Wait()
	for i, b := range bodies {
		switch {
		case b.want == "" && errs[i] != nil:
			t.Errorf("%s = %v, want committed", b.name, errs[i])
		case b.want != "" && (errs[i] == nil || !strings.Contains(errs[i].Error(), b.want)):
			t.Errorf("%s = %v, want an error containing %q", b.name, errs[i], b.want)
		}
	}
	var ok, failed int
	_ = st.db.QueryRow(`SELECT COUNT(*) FROM audit WHERE action = 'ok'`).Scan(&ok)
	_ = st.db.QueryRow(`SELECT COUNT(*) FROM audit WHERE action = 'failed'`).Scan(&failed)
	if ok != 3 || failed != 0 {
		t.Errorf("audit rows: %d ok, %d of failed bodies; want 3 and 0", ok, failed)
	}
	var chain api.AuditChain
	if err := st.WalkAudit(ctx, chain.Add); err != nil {
		t.Errorf("the audit chain after the batch: %v", err)
	}
}

// TestGroupCommitNoCallerReturnsBeforeTheCommit: while a batch runs, none of its callers has
// returned and another connection (another process) sees none of its writes; they appear
// together when the batch commits. A crash before the commit therefore loses only writes
// whose callers were never told they succeeded.
func TestGroupCommitNoCallerReturnsBeforeTheCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cp.db")
	st, err := OpenStore(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	other, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })

	const n = 8
	release := holdWriter(t, st)
	inLast, finish := make(chan struct{}), make(chan struct{})
	returned := make(chan int, n+1)
	for i := range n {
		go func() {
			_ = st.tx(ctx, func(tx *txn) error {
				return audit(ctx, tx, time.Now(), "t", "t", "batch", fmt.Sprint(i), "")
			})
			returned <- i
		}()
	}
	eventually(t, "the bodies to queue", func() bool { return st.queued() == n })
	go func() {
		_ = st.tx(ctx, func(tx *txn) error {
			close(inLast)
			<-finish
			return nil
		})
		returned <- n
	}()
	eventually(t, "the last body to queue", func() bool { return st.queued() == n+1 })
	release()
	<-inLast // the batch's other bodies have run; its commit waits for this one
	select {
	case i := <-returned:
		t.Fatalf("caller %d returned before its batch committed", i)
	default:
	}
	var seen int
	if err := other.QueryRow(`SELECT COUNT(*) FROM audit WHERE action = 'batch'`).Scan(&seen); err != nil || seen != 0 {
		t.Fatalf("another connection sees %d rows of the uncommitted batch (%v), want 0", seen, err)
	}
	close(finish)
	for range n + 1 {
		<-returned
	}
	if err := other.QueryRow(`SELECT COUNT(*) FROM audit WHERE action = 'batch'`).Scan(&seen); err != nil || seen != n {
		t.Fatalf("after the commit another connection sees %d rows (%v), want %d", seen, err, n)
	}
}

// TestGroupCommitLeasesAJobOnce: workers asking for the same, only job at once have their
// leases in one commit; the job is leased once, to one of them, with one attempt.
func TestGroupCommitLeasesAJobOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	var workers []Principal
	for i := range 6 {
		e.newWorker(fmt.Sprintf("w%d", i), "alpha", echoTask())
	}
	toks, err := e.s.store.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range toks {
		if tk.Role == api.RoleWorker {
			workers = append(workers, Principal{TokenID: tk.ID, Role: tk.Role, Pool: tk.Pool, Name: tk.Name})
		}
	}
	j, err := e.client.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{"n":1}`), Approval: fakeJWS("x")})
	if err != nil {
		t.Fatal(err)
	}
	release := holdWriter(t, e.s.store)
	got := make([][]api.LeasedJob, len(workers))
	errs := make([]error, len(workers))
	var wg sync.WaitGroup
	for i, p := range workers {
		wg.Add(1)
		go func() { defer wg.Done(); got[i], errs[i] = e.s.leaseOnce(ctx, p, 5) }()
	}
	eventually(t, "every lease to queue in one batch", func() bool { return e.s.store.queued() == len(workers) })
	release()
	wg.Wait()
	leased := 0
	for i := range workers {
		if errs[i] != nil {
			t.Errorf("lease %d = %v", i, errs[i])
		}
		for _, lj := range got[i] {
			if lj.JobID != j.ID || lj.Attempt != 1 {
				t.Errorf("lease %d got %s attempt %d", i, lj.JobID, lj.Attempt)
			}
			leased++
		}
	}
	if leased != 1 {
		t.Fatalf("the job was handed out %d times, want once", leased)
	}
	if n := e.count(`SELECT COUNT(*) FROM job_attempts WHERE job_id = ?`, j.ID); n != 1 {
		t.Fatalf("attempts recorded = %d, want 1", n)
	}
}

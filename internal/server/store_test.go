package server

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestGroupCommitSurvivesACancelledCaller: the writes queued behind one transaction are
// committed together, each in its own savepoint. A caller whose request is cancelled while
// its body runs (a client that hangs up) must not take the others down with it: every
// other write of the group commits, and none is lost. The cancelled body is cancelled at
// each point a body can be: before its first statement, between statements, and while a
// statement runs. A body the writer has started runs to its end: its caller's cancellation
// no longer reaches its statements.
func TestGroupCommitSurvivesACancelledCaller(t *testing.T) {
	t.Parallel()
	for _, when := range []string{"before", "between", "during"} {
		t.Run(when, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			st, err := OpenStore(ctx, filepath.Join(t.TempDir(), "cp.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			const others = 16
			// The first transaction holds the writer until every other write is queued, so
			// that they share the next commit.
			hold, held := make(chan struct{}), make(chan struct{})
			go func() {
				_ = st.tx(ctx, func(tx *txn) error {
					close(held)
					<-hold
					return nil
				})
			}()
			<-held
			var wg sync.WaitGroup
			errs := make([]error, others)
			for i := range others {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs[i] = st.tx(ctx, func(tx *txn) error {
						return audit(ctx, tx, time.Now(), "t", "t", "other", fmt.Sprint(i), "")
					})
				}()
			}
			cctx, cancel := context.WithCancel(ctx)
			var cerr error
			wg.Add(1)
			go func() {
				defer wg.Done()
				cerr = st.tx(cctx, func(tx *txn) error {
					if when == "before" {
						cancel()
					}
					if err := audit(cctx, tx, time.Now(), "t", "t", "cancelled", "c", ""); err != nil {
						return err
					}
					if when == "between" {
						cancel()
					}
					if when == "during" {
						// A write long enough to be interrupted: SQLite rolls back the whole
						// transaction when a write statement in it is interrupted.
						time.AfterFunc(time.Millisecond, cancel)
						_, err := tx.ExecContext(cctx, `INSERT INTO audit(at, actor, role, action, job_id, detail)
							WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 20000)
							SELECT x, 't', 't', 'cancelled', 'c', '' FROM c`)
						return err
					}
					return audit(cctx, tx, time.Now(), "t", "t", "cancelled", "c", "")
				})
			}()
			eventually(t, "every write to queue behind the held one", func() bool { return st.queued() == others+1 })
			close(hold)
			wg.Wait()
			cancel()
			for i, err := range errs {
				if err != nil {
					t.Errorf("write %d of the group = %v, want committed", i, err)
				}
			}
			var n int
			if err := st.db.QueryRow(`SELECT COUNT(*) FROM audit WHERE action = 'other'`).Scan(&n); err != nil || n != others {
				t.Errorf("committed rows of the group = %d, %v; want %d", n, err, others)
			}
			var c int
			_ = st.db.QueryRow(`SELECT COUNT(*) FROM audit WHERE action = 'cancelled'`).Scan(&c)
			want := 2
			if when == "during" {
				want = 1 + 20000
			}
			if cerr == nil && c != want || cerr != nil && c != 0 {
				t.Errorf("cancelled write = %v with %d rows: want all %d of it or none", cerr, c, want)
			}
			t.Logf("cancelled write = %v", cerr)
		})
	}
}

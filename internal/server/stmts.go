package server

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// Hot-path statements are prepared once when the store opens and reused in every
// transaction: parsing SQL is the largest cost of a lease or completion otherwise. They
// must be prepared before any transaction runs, because the pool's single connection is
// busy during one.
var hotQueries []string

func hot(q string) string {
	hotQueries = append(hotQueries, q)
	return q
}

func (s *Store) prepareHot(ctx context.Context) error {
	s.stmts = make(map[string]*sql.Stmt, len(hotQueries))
	s.rstmts = make(map[string]*sql.Stmt, len(hotQueries))
	for _, q := range hotQueries {
		st, err := s.db.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("prepare %q: %w", q, err)
		}
		s.stmts[q] = st
		if strings.HasPrefix(strings.TrimSpace(q), "SELECT") {
			if st, err = s.rdb.PrepareContext(ctx, q); err != nil {
				return fmt.Errorf("prepare %q: %w", q, err)
			}
			s.rstmts[q] = st
		}
	}
	return nil
}

// txn is a transaction that uses the prepared hot statements.
//
// Its statements run without the caller's cancellation (context.WithoutCancel): a body
// shares its transaction with the other bodies of its group commit, and SQLite rolls the
// whole transaction back when a write statement in it is interrupted, which a cancelled
// context does. One client hanging up would fail every write of the group ("no such
// savepoint") and lose them. A body the writer has started therefore runs to its end; a
// caller cancelled before that is not run at all (see run).
type txn struct {
	tx *sql.Tx
	s  *Store
}

func (t *txn) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	ctx = context.WithoutCancel(ctx)
	if st, ok := t.s.stmts[q]; ok {
		return t.tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return t.tx.ExecContext(ctx, q, args...)
}

func (t *txn) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	ctx = context.WithoutCancel(ctx)
	if st, ok := t.s.stmts[q]; ok {
		return t.tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return t.tx.QueryRowContext(ctx, q, args...)
}

func (t *txn) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	ctx = context.WithoutCancel(ctx)
	if st, ok := t.s.stmts[q]; ok {
		return t.tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return t.tx.QueryContext(ctx, q, args...)
}

// queryRow runs a read outside a transaction on the read pool, prepared if hot. In WAL mode
// readers do not wait for the writer, so authenticating a request or reading a job never
// queues behind a commit's fsync; a read sees every transaction committed before it began.
func (s *Store) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	if st, ok := s.rstmts[q]; ok {
		return st.QueryRowContext(ctx, args...)
	}
	return s.rdb.QueryRowContext(ctx, q, args...)
}

func (t *txn) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	return t.QueryRowContext(ctx, q, args...)
}

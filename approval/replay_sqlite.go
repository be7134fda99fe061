package approval

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// replaySchemaVersion is stored in PRAGMA user_version, so that an older worker refuses a
// database laid out by a newer one instead of misreading it.
const replaySchemaVersion = 1

const replaySchema = `
CREATE TABLE IF NOT EXISTS used_approvals (
	nonce      TEXT    NOT NULL,
	attempt    INTEGER NOT NULL,
	job        TEXT    NOT NULL,
	keep_until INTEGER NOT NULL, -- Unix seconds; after it the token is rejected as expired anyway
	used_at    INTEGER NOT NULL, -- Unix seconds, for operators reading the file
	PRIMARY KEY (nonce, attempt)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS used_approvals_keep_until ON used_approvals (keep_until);
`

// SQLiteReplayStore is a ReplayStore kept in a SQLite file, so that a restarted worker
// still refuses approvals it used before the restart. Every Consume is committed with
// synchronous=FULL before it returns: a job never starts on an approval whose use could be
// lost by a crash. Consumes that arrive together share one transaction and one fsync (group
// commit), so a busy worker pays one disk flush per batch, not per job. Several processes
// may share one file; SQLite serialises their writes.
type SQLiteReplayStore struct {
	db   *sql.DB
	path string
	now  func() time.Time

	// The writer's statements, prepared once: parsing them again in every batch cost about
	// as much CPU as the rest of a consume.
	insert, otherJob *sql.Stmt

	mu        sync.Mutex // guards lastPrune
	lastPrune time.Time

	reqs      chan consumeReq
	closed    chan struct{}
	closeOnce sync.Once
	done      chan struct{}
}

type consumeReq struct {
	ctx          context.Context
	nonce, jobID string
	attempt      int
	expiry, now  time.Time
	result       chan error
}

var _ ReplayStore = (*SQLiteReplayStore)(nil)

// StoreOption configures OpenReplayStore.
type StoreOption func(*SQLiteReplayStore)

// WithStoreClock sets the clock used to decide which records have expired. Optional;
// default time.Now. Give it the same clock as the Verifier.
func WithStoreClock(now func() time.Time) StoreOption {
	return func(s *SQLiteReplayStore) {
		if now != nil {
			s.now = now
		}
	}
}

// OpenReplayStore opens (creating if needed, mode 0600) the replay database at path, and
// drops records whose expiry has passed. The directory must exist.
func OpenReplayStore(path string, opts ...StoreOption) (*SQLiteReplayStore, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("approval: replay store path %q: %w", path, err)
	}
	// Create the file ourselves so that its mode does not depend on the umask; SQLite gives
	// the -wal and -shm files the same mode.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("approval: opening replay store %s: %w", abs, err)
	}
	_ = f.Close()

	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Set("_txlock", "immediate") // take the write lock at BEGIN: no upgrade deadlocks
	dsn := "file:" + (&url.URL{Path: abs}).EscapedPath() + "?" + q.Encode()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("approval: opening replay store %s: %w", abs, err)
	}
	s := &SQLiteReplayStore{db: db, path: abs, now: time.Now,
		reqs: make(chan consumeReq), closed: make(chan struct{}), done: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	if err := s.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if s.insert, err = db.Prepare(insertUse); err == nil {
		s.otherJob, err = db.Prepare(selectOtherJob)
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("approval: replay store %s: preparing statements: %w", abs, err)
	}
	go s.writer()
	return s, nil
}

func (s *SQLiteReplayStore) init() error {
	ctx := context.Background()
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("approval: replay store %s is not a usable SQLite database: %w", s.path, err)
	}
	if mode != "wal" {
		return fmt.Errorf("approval: replay store %s: journal mode is %q, want wal (is the file on a filesystem that supports it?)", s.path, mode)
	}
	var version int
	if err := s.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("approval: replay store %s: reading schema version: %w", s.path, err)
	}
	if version > replaySchemaVersion {
		return fmt.Errorf("approval: replay store %s has schema version %d; this worker understands up to %d (was it written by a newer castellan?)", s.path, version, replaySchemaVersion)
	}
	if _, err := s.db.ExecContext(ctx, replaySchema); err != nil {
		return fmt.Errorf("approval: replay store %s: creating tables: %w", s.path, err)
	}
	if _, err := s.db.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", replaySchemaVersion)); err != nil {
		return fmt.Errorf("approval: replay store %s: writing schema version: %w", s.path, err)
	}
	return s.prune(ctx)
}

// Consume implements ReplayStore.
func (s *SQLiteReplayStore) Consume(ctx context.Context, nonce, jobID string, attempt, maxAttempts int, expiry time.Time) error {
	if err := checkAttempt(attempt, maxAttempts); err != nil {
		return err
	}
	now := s.now()
	err := s.consume(ctx, nonce, jobID, attempt, expiry, now)
	if err == nil {
		s.mu.Lock()
		due := now.Sub(s.lastPrune) >= pruneInterval
		s.mu.Unlock()
		if due {
			// A failed prune only keeps stale rows a little longer; the next one retries.
			_ = s.prune(ctx)
		}
	}
	return err
}

func (s *SQLiteReplayStore) consume(ctx context.Context, nonce, jobID string, attempt int, expiry, now time.Time) error {
	r := consumeReq{ctx: ctx, nonce: nonce, jobID: jobID, attempt: attempt, expiry: expiry, now: now, result: make(chan error, 1)}
	select {
	case s.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.closed:
		return fmt.Errorf("approval: replay store %s is closed", s.path)
	}
	return <-r.result
}

// writer commits the consumes waiting at each moment in one transaction.
func (s *SQLiteReplayStore) writer() {
	defer close(s.done)
	for {
		var batch []consumeReq
		select {
		case r := <-s.reqs:
			batch = append(batch, r)
		case <-s.closed:
			return
		}
	more:
		for len(batch) < 128 {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			default:
				break more
			}
		}
		s.commit(batch)
	}
}

// insertUse records one use unless the nonce is recorded for another job; ON CONFLICT makes
// a use recorded already a no-op. (WHERE true: SQLite's parser needs it before ON CONFLICT
// in an INSERT ... SELECT.)
const insertUse = `INSERT INTO used_approvals (nonce, attempt, job, keep_until, used_at)
	SELECT ?1, ?2, ?3, ?4, ?5 WHERE true
	AND NOT EXISTS (SELECT 1 FROM used_approvals WHERE nonce = ?1 AND job <> ?3)
	ON CONFLICT (nonce, attempt) DO NOTHING`

const selectOtherJob = "SELECT job FROM used_approvals WHERE nonce = ? AND job <> ? LIMIT 1"

// commit records a batch. A refused consume (replayed, nonce reused) writes nothing, so it
// needs no savepoint; a database error fails the whole batch, since a use that was not
// recorded must not run.
func (s *SQLiteReplayStore) commit(batch []consumeReq) {
	results := make([]error, len(batch))
	fail := func(err error) {
		for i, r := range batch {
			if results[i] == nil {
				results[i] = err
			}
			r.result <- results[i]
		}
	}
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		fail(fmt.Errorf("approval: replay store %s: %w", s.path, err))
		return
	}
	insert, otherJob := tx.StmtContext(ctx, s.insert), tx.StmtContext(ctx, s.otherJob)
	var ok []int
	for i, r := range batch {
		if err := r.ctx.Err(); err != nil {
			results[i] = err
			continue
		}
		// One statement records a new use; it records nothing when this (nonce, attempt) is
		// recorded already, or when the nonce is recorded for another job (the statement
		// sees the uses this batch recorded before it: same transaction). Only then is the
		// record read again, to say which.
		res, err := insert.ExecContext(ctx, r.nonce, r.attempt, r.jobID, r.expiry.Unix()+1, r.now.Unix())
		var n int64
		if err == nil {
			n, err = res.RowsAffected()
		}
		if err != nil {
			_ = tx.Rollback()
			fail(fmt.Errorf("approval: replay store %s: %w", s.path, err))
			return
		}
		if n == 1 {
			ok = append(ok, i)
			continue
		}
		var other string
		switch err := otherJob.QueryRowContext(ctx, r.nonce, r.jobID).Scan(&other); {
		case err == nil:
			results[i] = nonceReused(r.jobID, other)
		case errors.Is(err, sql.ErrNoRows):
			results[i] = replayed(r.jobID, r.attempt)
		default:
			_ = tx.Rollback()
			fail(fmt.Errorf("approval: replay store %s: %w", s.path, err))
			return
		}
	}
	if err := tx.Commit(); err != nil {
		for _, i := range ok {
			results[i] = fmt.Errorf("approval: replay store %s: committing: %w", s.path, err)
		}
	}
	for i, r := range batch {
		r.result <- results[i]
	}
}

// prune deletes records that no token can need any more.
func (s *SQLiteReplayStore) prune(ctx context.Context) error {
	now := s.now()
	if _, err := s.db.ExecContext(ctx, "DELETE FROM used_approvals WHERE keep_until < ?", now.Unix()); err != nil {
		return fmt.Errorf("approval: replay store %s: pruning: %w", s.path, err)
	}
	s.mu.Lock()
	s.lastPrune = now
	s.mu.Unlock()
	return nil
}

// Len returns how many (nonce, attempt) records the store holds.
func (s *SQLiteReplayStore) Len(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM used_approvals").Scan(&n)
	return n, err
}

// Close stops the writer and closes the database.
func (s *SQLiteReplayStore) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	<-s.done
	_ = s.insert.Close()
	_ = s.otherJob.Close()
	return s.db.Close()
}

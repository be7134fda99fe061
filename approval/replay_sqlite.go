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
// lost by a crash. Several processes may share one file; SQLite serialises their writes.
type SQLiteReplayStore struct {
	db   *sql.DB
	path string
	now  func() time.Time

	mu        sync.Mutex // guards lastPrune
	lastPrune time.Time
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
	s := &SQLiteReplayStore{db: db, path: abs, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	if err := s.init(); err != nil {
		_ = db.Close()
		return nil, err
	}
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
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("approval: replay store %s: %w", s.path, err)
	}
	defer func() { _ = tx.Rollback() }()

	var other string
	switch err := tx.QueryRowContext(ctx,
		"SELECT job FROM used_approvals WHERE nonce = ? AND job <> ? LIMIT 1", nonce, jobID).Scan(&other); {
	case err == nil:
		return nonceReused(jobID, other)
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("approval: replay store %s: %w", s.path, err)
	}
	res, err := tx.ExecContext(ctx,
		`INSERT INTO used_approvals (nonce, attempt, job, keep_until, used_at) VALUES (?, ?, ?, ?, ?)
		 ON CONFLICT (nonce, attempt) DO NOTHING`,
		nonce, attempt, jobID, expiry.Unix()+1, now.Unix())
	if err != nil {
		return fmt.Errorf("approval: replay store %s: %w", s.path, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("approval: replay store %s: %w", s.path, err)
	}
	if n == 0 {
		return replayed(jobID, attempt)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("approval: replay store %s: committing: %w", s.path, err)
	}
	return nil
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

// Close closes the database.
func (s *SQLiteReplayStore) Close() error { return s.db.Close() }

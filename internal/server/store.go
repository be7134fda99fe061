package server

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
	_ "modernc.org/sqlite" // registers the pure-Go "sqlite" driver
)

// Store is the server's SQLite state. It is safe for concurrent use: the pool holds one
// connection, so writes are serialised by database/sql itself.
type Store struct {
	db    *sql.DB
	stmts map[string]*sql.Stmt // prepared hot statements, read-only after OpenStore

	rdb    *sql.DB              // read pool (query_only), beside the single writer connection
	rstmts map[string]*sql.Stmt // hot SELECTs prepared on rdb

	toks tokenCache // tokens verified lately (tokens.go)

	writes     chan write    // transactions waiting for the writer (unbuffered)
	waiting    atomic.Int32  // senders blocked on writes
	closed     chan struct{} // closed by Close
	closeOnce  sync.Once
	writerDone chan struct{}
}

// migrations are applied in order; each runs once, recorded in schema_migrations. Never
// edit a released entry: append a new one.
var migrations = []string{
	// 1: initial schema.
	`
CREATE TABLE tokens (
	id         TEXT PRIMARY KEY,
	hash       BLOB NOT NULL UNIQUE,
	role       TEXT NOT NULL,
	pool       TEXT NOT NULL,
	name       TEXT NOT NULL DEFAULT '',
	created_at INTEGER NOT NULL,
	revoked_at INTEGER
);
CREATE TABLE workers (
	token_id      TEXT PRIMARY KEY REFERENCES tokens(id),
	pool          TEXT NOT NULL,
	name          TEXT NOT NULL,
	agent_version TEXT NOT NULL,
	registered_at INTEGER NOT NULL,
	last_seen_at  INTEGER NOT NULL
);
CREATE TABLE tasks (
	pool          TEXT NOT NULL,
	name          TEXT NOT NULL,
	version       TEXT NOT NULL,
	description   TEXT NOT NULL,
	input_schema  TEXT NOT NULL,
	output_schema TEXT,
	published_at  INTEGER NOT NULL,
	PRIMARY KEY (pool, name, version)
);
CREATE TABLE worker_tasks (
	token_id TEXT NOT NULL REFERENCES workers(token_id),
	pool     TEXT NOT NULL,
	name     TEXT NOT NULL,
	version  TEXT NOT NULL,
	PRIMARY KEY (token_id, name, version)
);
CREATE TABLE jobs (
	seq               INTEGER PRIMARY KEY AUTOINCREMENT,
	id                TEXT NOT NULL UNIQUE,
	task              TEXT NOT NULL,
	task_version      TEXT NOT NULL,
	pool              TEXT NOT NULL,
	input             BLOB NOT NULL,
	approval          TEXT NOT NULL DEFAULT '',
	state             TEXT NOT NULL,
	attempt           INTEGER NOT NULL DEFAULT 0,
	max_attempts      INTEGER NOT NULL,
	not_before        INTEGER NOT NULL DEFAULT 0,
	lease_hash        BLOB,
	lease_expires_at  INTEGER,
	leased_by         TEXT,
	outcome           TEXT NOT NULL DEFAULT '',
	output            BLOB,
	error_message     TEXT NOT NULL DEFAULT '',
	duration_ms       INTEGER NOT NULL DEFAULT 0,
	module_digest     TEXT NOT NULL DEFAULT '',
	idempotency_key   TEXT,
	request_hash      BLOB NOT NULL,
	submitted_by      TEXT NOT NULL,
	created_at        INTEGER NOT NULL,
	updated_at        INTEGER NOT NULL,
	finished_at       INTEGER
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs(pool, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_queue ON jobs(pool, state, seq);
CREATE INDEX jobs_lease ON jobs(lease_hash);
CREATE INDEX jobs_expiry ON jobs(state, lease_expires_at);
CREATE TABLE job_attempts (
	job_id        TEXT NOT NULL REFERENCES jobs(id),
	attempt       INTEGER NOT NULL,
	leased_by     TEXT NOT NULL,
	leased_at     INTEGER NOT NULL,
	finished_at   INTEGER,
	end_reason    TEXT,
	outcome       TEXT,
	error_message TEXT,
	duration_ms   INTEGER,
	module_digest TEXT,
	PRIMARY KEY (job_id, attempt)
);
CREATE TABLE audit (
	id      INTEGER PRIMARY KEY AUTOINCREMENT,
	at      INTEGER NOT NULL,
	actor   TEXT NOT NULL,
	role    TEXT NOT NULL,
	action  TEXT NOT NULL,
	job_id  TEXT NOT NULL DEFAULT '',
	detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_job ON audit(job_id);
`,
	// 2: the job's W3C trace context, stored at submit and handed out with each lease.
	`ALTER TABLE jobs ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';`,
	// 3: the newest audit-log head each worker reported (see audithead.go).
	`CREATE TABLE audit_heads (
	worker_id   TEXT PRIMARY KEY,
	seq         INTEGER NOT NULL,
	hash        TEXT NOT NULL,
	reported_at INTEGER NOT NULL
);`,
	// 4: a task's title and the policy's annotations (JSON), which the newest publication of
	// a version replaces (they are not part of its identity; see catalog.go).
	`ALTER TABLE tasks ADD COLUMN title TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN annotations TEXT;`,
	// 5: who denied a job (the approver token's name, or its id), for POST /v1/jobs/{id}/deny.
	`ALTER TABLE jobs ADD COLUMN denied_by TEXT NOT NULL DEFAULT '';`,
	// 6: a token's expiry (NULL: never), see tokens.go.
	`ALTER TABLE tokens ADD COLUMN expires_at INTEGER;`,
	// 7: the audit table becomes a hash chain (api.AuditHash); the rows already there are
	// chained by migrationHooks[7], in the same transaction.
	`ALTER TABLE audit ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE audit ADD COLUMN hash TEXT NOT NULL DEFAULT '';`,
	// 8: plans (plans.go): a plan's steps are jobs; this is the plan record and which plan
	// each step belongs to.
	`CREATE TABLE plans (
	id              TEXT PRIMARY KEY,
	pool            TEXT NOT NULL,
	steps           TEXT NOT NULL, -- JSON array of job ids, in order
	approval        TEXT NOT NULL DEFAULT '',
	idempotency_key TEXT,
	request_hash    BLOB,
	created_by      TEXT NOT NULL,
	created_at      INTEGER NOT NULL,
	ended           INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX plans_idem ON plans(pool, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX plans_active ON plans(ended);
CREATE TABLE plan_steps (
	job_id  TEXT PRIMARY KEY,
	plan_id TEXT NOT NULL
);`,
	// 9: the submitting token's name as it was at submit (api.Job.SubmittedByName), so
	// that an approver, which may not list tokens, can read who asked.
	`ALTER TABLE jobs ADD COLUMN submitted_by_name TEXT NOT NULL DEFAULT '';`,
}

// migrationHooks run in a migration's transaction after its SQL, for what SQL cannot do.
var migrationHooks = map[int]func(context.Context, *txn) error{7: chainExistingAudit}

// chainExistingAudit chains the audit rows written before migration 7, oldest first. It runs
// once, with the migration: rows with an empty hash found later are a broken chain, never
// rechained (that would bless an edit).
func chainExistingAudit(ctx context.Context, tx *txn) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, at, actor, role, action, job_id, detail FROM audit ORDER BY id`)
	if err != nil {
		return err
	}
	var all []api.AuditEntry
	for rows.Next() {
		e, err := scanAudit(rows, false)
		if err != nil {
			rows.Close()
			return err
		}
		all = append(all, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	prev := ""
	for _, e := range all {
		e.PrevHash = prev
		h, err := api.AuditHash(e)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?`, prev, h, e.ID); err != nil {
			return err
		}
		prev = h
	}
	return nil
}

// OpenStore opens (creating if needed) the SQLite database at path and applies pending
// migrations. The CLI uses it directly for `castellan token create`.
func OpenStore(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("server: database path is empty: set Config.DBPath (e.g. /var/lib/castellan/server.db)")
	}
	if err := createPrivate(path); err != nil {
		return nil, fmt.Errorf("server: open database %s: %w", path, err)
	}
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(10000)", "foreign_keys(1)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("server: open database %s: %w", path, err)
	}
	// One connection: SQLite has one writer anyway, and this makes every transaction
	// serialised without busy retries. Reads are short; long-polls never hold it.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	rq := url.Values{}
	for _, p := range []string{"busy_timeout(10000)", "query_only(1)"} {
		rq.Add("_pragma", p)
	}
	rdb, err := sql.Open("sqlite", "file:"+path+"?"+rq.Encode())
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("server: open database %s: %w", path, err)
	}
	rdb.SetMaxOpenConns(4)
	rdb.SetMaxIdleConns(4)
	s := &Store{db: db, rdb: rdb, writes: make(chan write), closed: make(chan struct{}), writerDone: make(chan struct{}),
		toks: tokenCache{now: time.Now}}
	go s.writer()
	if err := s.migrate(ctx); err != nil {
		rdb.Close()
		db.Close()
		return nil, fmt.Errorf("server: database %s: %w", path, err)
	}
	if err := s.prepareHot(ctx); err != nil {
		rdb.Close()
		db.Close()
		return nil, fmt.Errorf("server: database %s: %w", path, err)
	}
	return s, nil
}

// createPrivate creates the database file for its owner only before SQLite opens it: SQLite
// would create it 0644, and it holds token hashes and every job's input and output. SQLite
// gives the -wal and -shm files the database file's mode; leftovers from before are
// tightened too.
func createPrivate(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_ = f.Close()
	for _, aux := range []string{path + "-wal", path + "-shm"} {
		if err := os.Chmod(aux, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	<-s.writerDone
	_ = s.rdb.Close()
	return s.db.Close()
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	var have int
	if err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if have > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this binary knows (%d): upgrade castellan", have, len(migrations))
	}
	for v := have + 1; v <= len(migrations); v++ {
		err := s.tx(ctx, func(tx *txn) error {
			if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
				return err
			}
			if hook := migrationHooks[v]; hook != nil {
				if err := hook(ctx, tx); err != nil {
					return err
				}
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(version, applied_at) VALUES (?, ?)`, v, time.Now().UnixMilli())
			return err
		})
		if err != nil {
			return fmt.Errorf("apply migration %d: %w", v, err)
		}
	}
	return nil
}

// SchemaVersion returns the highest applied migration.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v)
	return v, err
}

// tx runs fn in one immediate transaction, committing when fn returns nil.
func (s *Store) tx(ctx context.Context, fn func(*txn) error) error {
	w := write{ctx: ctx, fn: fn, done: make(chan error, 1)}
	s.waiting.Add(1)
	select {
	case s.writes <- w:
		s.waiting.Add(-1)
	case <-ctx.Done():
		s.waiting.Add(-1)
		return ctx.Err()
	case <-s.closed:
		s.waiting.Add(-1)
		return errStoreClosed
	}
	return <-w.done
}

// queued is how many transactions wait for the writer to take them.
func (s *Store) queued() int { return int(s.waiting.Load()) }

var errStoreClosed = errors.New("server: database closed")

// write is one transaction body waiting for the writer.
type write struct {
	ctx  context.Context
	fn   func(*txn) error
	done chan error
}

// maxBatch bounds how many transactions share one commit.
const maxBatch = 64

// writer is group commit: every fsync'd COMMIT costs about a millisecond on ordinary disks,
// so the transactions that arrive while one commits are run together in the next, each in
// its own SAVEPOINT so that one failing body rolls back only itself, and share one COMMIT
// (one fsync). Each caller still returns only after its changes are durable.
func (s *Store) writer() {
	defer close(s.writerDone)
	for {
		var batch []write
		select {
		case w := <-s.writes:
			batch = append(batch, w)
		case <-s.closed:
			return
		}
	more:
		for len(batch) < maxBatch {
			select {
			case w := <-s.writes:
				batch = append(batch, w)
			default:
				break more
			}
		}
		s.commit(batch)
	}
}

func (s *Store) commit(batch []write) {
	answer := func(errs []error) {
		for i, w := range batch {
			w.done <- errs[i]
		}
	}
	errs := make([]error, len(batch))
	tx, err := s.db.BeginTx(context.Background(), nil)
	if err != nil {
		for i := range errs {
			errs[i] = err
		}
		answer(errs)
		return
	}
	t := &txn{tx: tx, s: s}
	bg := context.Background()
	if len(batch) == 1 { // no savepoint needed: the transaction is the body
		if err := run(batch[0], t); err != nil {
			_ = tx.Rollback()
			answer([]error{err})
			return
		}
		answer([]error{tx.Commit()})
		return
	}
	for i, w := range batch {
		if _, err := t.ExecContext(bg, qSavepoint); err != nil {
			errs[i] = err
			continue
		}
		if err := run(w, t); err != nil {
			errs[i] = err
			if _, rerr := t.ExecContext(bg, qRollbackTo); rerr != nil {
				// The transaction is unusable: fail the whole batch rather than commit a
				// half-undone body.
				_ = tx.Rollback()
				for j := range errs {
					if errs[j] == nil {
						errs[j] = rerr
					}
				}
				answer(errs)
				return
			}
		}
		_, _ = t.ExecContext(bg, qRelease)
	}
	cerr := tx.Commit()
	for i := range errs {
		if errs[i] == nil {
			errs[i] = cerr
		}
	}
	answer(errs)
}

// The savepoint statements of a batch, prepared like the hot path's (stmts.go).
var (
	qSavepoint  = hot(`SAVEPOINT w`)
	qRollbackTo = hot(`ROLLBACK TO w`)
	qRelease    = hot(`RELEASE w`)
)

// run runs one body, turning a panic into an error so that the writer survives it.
func run(w write, t *txn) (err error) {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("server: panic in a transaction: %v", r)
		}
	}()
	return w.fn(t)
}

var (
	qAuditHead = hot(`SELECT hash FROM audit ORDER BY id DESC LIMIT 1`)
	qAudit     = hot(`INSERT INTO audit(at, actor, role, action, job_id, detail, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?)`)
)

// audit appends one entry to the hash-chained audit table, in the caller's transaction:
// the writer runs one transaction at a time (and SQLite one writer across processes), so
// the head read here is still the head at the insert, and a body rolled back takes its
// entry with it.
func audit(ctx context.Context, tx *txn, at time.Time, actor, role, action, jobID, detail string) error {
	var prev string
	if err := tx.QueryRowContext(ctx, qAuditHead).Scan(&prev); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	e := api.AuditEntry{At: msTime(at.UnixMilli()), Actor: actor, Role: role, Action: action, JobID: jobID, PrevHash: prev}
	if detail != "" {
		e.Detail = json.RawMessage(detail)
	}
	h, err := api.AuditHash(e)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, qAudit, at.UnixMilli(), actor, role, action, jobID, detail, prev, h)
	return err
}

// auditDetail encodes an audit entry's detail ("" for none).
func auditDetail(d map[string]any) string {
	if d == nil {
		return ""
	}
	b, err := json.Marshal(d)
	if err != nil {
		return ""
	}
	return string(b)
}

const auditColumns = `id, at, actor, role, action, job_id, detail, prev_hash, hash`

// scanAudit reads one row of auditColumns (without the hashes unless chainedRow).
func scanAudit(sc scanner, chainedRow bool) (api.AuditEntry, error) {
	var e api.AuditEntry
	var at int64
	var detail string
	dst := []any{&e.ID, &at, &e.Actor, &e.Role, &e.Action, &e.JobID, &detail}
	if chainedRow {
		dst = append(dst, &e.PrevHash, &e.Hash)
	}
	if err := sc.Scan(dst...); err != nil {
		return e, err
	}
	e.At = msTime(at)
	if detail != "" {
		e.Detail = []byte(detail)
	}
	return e, nil
}

// WalkAudit calls fn with every audit entry, oldest first, until fn returns an error.
func (s *Store) WalkAudit(ctx context.Context, fn func(api.AuditEntry) error) error {
	rows, err := s.rdb.QueryContext(ctx, `SELECT `+auditColumns+` FROM audit ORDER BY id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		e, err := scanAudit(rows, true)
		if err != nil {
			return err
		}
		if err := fn(e); err != nil {
			return err
		}
	}
	return rows.Err()
}

// ListAudit is one page of GET /v1/audit: newest first, at most limit, before cursor (an
// entry id; 0 for the newest).
func (s *Store) ListAudit(ctx context.Context, jobID, action string, limit int, cursor int64) (api.AuditList, error) {
	return s.listAudit(ctx, jobID, action, limit, cursor)
}

func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func msTimePtr(ms sql.NullInt64) *time.Time {
	if !ms.Valid {
		return nil
	}
	t := msTime(ms.Int64)
	return &t
}

type sqlTx = txn

func (s *Store) listAudit(ctx context.Context, jobID, action string, limit int, cursor int64) (api.AuditList, error) {
	q := `SELECT ` + auditColumns + ` FROM audit WHERE 1=1`
	var args []any
	if jobID != "" {
		q += ` AND job_id = ?`
		args = append(args, jobID)
	}
	if action != "" {
		q += ` AND action = ?`
		args = append(args, action)
	}
	if cursor > 0 {
		q += ` AND id < ?`
		args = append(args, cursor)
	}
	q += ` ORDER BY id DESC LIMIT ?`
	args = append(args, limit+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return api.AuditList{}, err
	}
	defer rows.Close()
	out := api.AuditList{Entries: []api.AuditEntry{}}
	for rows.Next() {
		e, err := scanAudit(rows, true)
		if err != nil {
			return api.AuditList{}, err
		}
		if len(out.Entries) == limit {
			out.NextCursor = fmt.Sprint(out.Entries[limit-1].ID)
			break
		}
		out.Entries = append(out.Entries, e)
	}
	return out, rows.Err()
}

// Counts is a summary of the database, for operators and for tests that must prove every
// job completed exactly once.
type Counts struct {
	Jobs        map[api.State]int // jobs by state
	Completions int               // attempts whose result a worker reported (not expired ones)
	Attempts    int               // attempts leased
}

// Count summarises the jobs table and the attempts recorded.
func (s *Store) Count(ctx context.Context) (Counts, error) {
	c := Counts{Jobs: map[api.State]int{}}
	rows, err := s.db.QueryContext(ctx, `SELECT state, COUNT(*) FROM jobs GROUP BY state`)
	if err != nil {
		return c, err
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return c, err
		}
		c.Jobs[api.State(st)] = n
	}
	if err := rows.Err(); err != nil {
		return c, err
	}
	err = s.db.QueryRowContext(ctx, `SELECT COUNT(*), COUNT(CASE WHEN end_reason = 'completed' THEN 1 END) FROM job_attempts`).Scan(&c.Attempts, &c.Completions)
	return c, err
}

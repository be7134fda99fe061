package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	auditlog "github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/tracing"
)

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) //nolint:errcheck // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}

func newLeaseToken() string {
	b := make([]byte, 32)
	rand.Read(b) //nolint:errcheck
	return "lease_" + base64.RawURLEncoding.EncodeToString(b)
}

func hashLease(tok string) []byte {
	s := sha256.Sum256([]byte(tok))
	return s[:]
}

var qJobByID = hot(`SELECT ` + jobColumns + ` FROM jobs WHERE id = ?`)

// jobColumns must match scanJob.
const jobColumns = `seq, id, task, task_version, pool, state, input, approval, attempt, max_attempts,
	not_before, outcome, output, error_message, duration_ms, module_digest, idempotency_key,
	submitted_by, created_at, updated_at, finished_at, denied_by, submitted_by_name`

type jobRow struct {
	api.Job
	seq      int64
	approval string
}

type scanner interface{ Scan(...any) error }

func scanJob(sc scanner) (jobRow, error) {
	var j jobRow
	var input, output []byte
	var notBefore, created, updated int64
	var finished sql.NullInt64
	var idem sql.NullString
	err := sc.Scan(&j.seq, &j.ID, &j.Task, &j.TaskVersion, &j.Pool, &j.State, &input, &j.approval,
		&j.Attempt, &j.MaxAttempts, &notBefore, &j.Outcome, &output, &j.ErrorMessage, &j.DurationMS,
		&j.ModuleDigest, &idem, &j.SubmittedBy, &created, &updated, &finished, &j.DeniedBy, &j.SubmittedByName)
	if err != nil {
		return j, err
	}
	j.Input = input
	if output != nil {
		j.Output = output
	}
	j.HasApproval = j.approval != ""
	if notBefore > 0 && j.State == api.StateQueued {
		t := msTime(notBefore)
		j.NotBefore = &t
	}
	j.IdempotencyKey = idem.String
	j.CreatedAt = msTime(created)
	j.UpdatedAt = msTime(updated)
	j.FinishedAt = msTimePtr(finished)
	return j, nil
}

type queryRower interface {
	queryRow(context.Context, string, ...any) *sql.Row
}

// readJob loads a job; controlplane.ErrNoJob when there is none. Who may see it is the
// caller's check (controlplane.Visible).
func readJob(ctx context.Context, q queryRower, id string) (jobRow, error) {
	j, err := scanJob(q.queryRow(ctx, qJobByID, id))
	if errors.Is(err, sql.ErrNoRows) {
		return jobRow{}, controlplane.ErrNoJob
	}
	return j, err
}

// visibleJob is readJob for a principal: a job in another pool is "not found".
func visibleJob(ctx context.Context, q queryRower, p Principal, id string) (jobRow, error) {
	j, err := readJob(ctx, q, id)
	if errors.Is(err, controlplane.ErrNoJob) {
		return jobRow{}, controlplane.NoJob(id)
	}
	if err == nil {
		err = controlplane.Visible(p, j.Job)
	}
	return j, err
}

// submit records a job the layer validated, or returns the job an earlier submit with the
// same idempotency key made.
func (s *Server) submit(ctx context.Context, p Principal, sub controlplane.Submission) (api.Job, bool, error) {
	existing := func(q queryRower) (api.Job, bool, error) {
		if sub.IdempotencyKey == "" {
			return api.Job{}, false, nil
		}
		var id string
		var h []byte
		err := q.queryRow(ctx, qIdemLookup, sub.Pool, sub.IdempotencyKey).Scan(&id, &h)
		if errors.Is(err, sql.ErrNoRows) {
			return api.Job{}, false, nil
		}
		if err != nil {
			return api.Job{}, false, err
		}
		if !bytes.Equal(h, sub.RequestHash) {
			return api.Job{}, true, controlplane.IdempotencyConflict(sub.IdempotencyKey, sub.Pool, id)
		}
		j, err := readJob(ctx, q, id)
		return j.Job, true, err
	}
	if j, found, err := existing(s.store); found || err != nil {
		return j, false, err
	}

	id, pool, auto := sub.ID, sub.Pool, sub.Auto
	ctx, span := s.startSpan(ctx, "submit", sub.TraceParent, id, sub.Task)
	defer span.End()
	traceparent := tracing.TraceParent(ctx)
	state := api.StatePendingApproval
	if sub.Approval != "" {
		state = api.StateQueued
	}
	now := s.cfg.Now().UnixMilli()
	var out api.Job
	created := false
	err := s.store.tx(ctx, func(tx *txn) error {
		j, found, err := existing(tx)
		if found || err != nil {
			out = j
			return err
		}
		var idem any
		if sub.IdempotencyKey != "" {
			idem = sub.IdempotencyKey
		}
		_, err = tx.ExecContext(ctx, qInsertJob,
			id, sub.Task, sub.TaskVersion, pool, sub.Input, sub.Approval, string(state), sub.MaxAttempts, idem, sub.RequestHash, p.TokenID, now, now, traceparent, sub.SubmittedByName)
		if err != nil {
			return err
		}
		detail, _ := json.Marshal(map[string]any{"task": sub.Task, "task_version": sub.TaskVersion, "pool": pool, "state": state})
		if err := audit(ctx, tx, msTime(now), p.TokenID, string(p.Role), "job.submit", id, string(detail)); err != nil {
			return err
		}
		if auto {
			if err := audit(ctx, tx, msTime(now), "server", "server", "job.auto_approve", id, ""); err != nil {
				return err
			}
		}
		// The job as a read of its row would return it, without the read.
		out = api.Job{ID: id, Task: sub.Task, TaskVersion: sub.TaskVersion, Pool: pool, State: state, Input: sub.Input,
			HasApproval: sub.Approval != "", MaxAttempts: sub.MaxAttempts, IdempotencyKey: sub.IdempotencyKey,
			SubmittedBy: p.TokenID, SubmittedByName: sub.SubmittedByName, CreatedAt: msTime(now), UpdatedAt: msTime(now)}
		created = true
		return nil
	})
	if err != nil {
		return api.Job{}, false, err
	}
	if created {
		s.record(auditlog.Action{Type: auditlog.ActionSubmitted, Job: id, Task: sub.Task, Pool: pool, Actor: p.TokenID, Role: string(p.Role), State: string(state)})
		s.cfg.Metrics.Submitted(sub.Task)
		if auto {
			s.record(auditlog.Action{Type: auditlog.ActionApproved, Job: id, Task: sub.Task, Pool: pool, Actor: "server", Role: "server"})
			s.cfg.Metrics.Approved(sub.Task)
		}
	}
	if created && state == api.StateQueued {
		s.queued.broadcast()
	}
	if created {
		s.changed.broadcast()
	}
	return out, created, nil
}

func (s *Server) approve(ctx context.Context, p Principal, id, token string) (api.Job, error) {
	var out api.Job
	err := s.store.tx(ctx, func(tx *txn) error {
		j, err := visibleJob(ctx, tx, p, id)
		if err != nil {
			return err
		}
		next := j.Job
		if err := controlplane.Approve(&next); err != nil {
			return err
		}
		now := s.cfg.Now().UnixMilli()
		if _, err := tx.ExecContext(ctx, qApprove,
			token, now, id); err != nil {
			return err
		}
		if err := audit(ctx, tx, msTime(now), p.TokenID, string(p.Role), "job.approve", id, auditDetail(controlplane.ApprovalAuditDetail(token))); err != nil {
			return err
		}
		j, err = readJob(ctx, tx, id)
		out = j.Job
		return err
	})
	if err == nil {
		s.step(ctx, "approve", id, out.Task)
		s.record(auditlog.Action{Type: auditlog.ActionApproved, Job: id, Task: out.Task, Pool: out.Pool, Actor: p.TokenID, Role: string(p.Role)})
		s.cfg.Metrics.Approved(out.Task)
		s.queued.broadcast()
		s.changed.broadcast()
	}
	return out, err
}

// deny ends a pending_approval job as denied with the approver's reason. Nothing reaches a
// worker: only a queued job is ever leased.
func (s *Server) deny(ctx context.Context, p Principal, id, reason string) (api.Job, error) {
	var out api.Job
	err := s.store.tx(ctx, func(tx *txn) error {
		j, err := visibleJob(ctx, tx, p, id)
		if err != nil {
			return err
		}
		next := j.Job
		at := s.cfg.Now()
		if err := controlplane.Deny(&next, p.Who(), reason, at); err != nil {
			return err
		}
		now := at.UnixMilli()
		res, err := tx.ExecContext(ctx, qDeny, next.Outcome, next.ErrorMessage, next.DeniedBy, now, now, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return errf(http.StatusConflict, api.CodeInvalidState, "job %s is no longer pending_approval", id)
		}
		detail, _ := json.Marshal(map[string]string{"reason": reason, "denied_by": p.Who()})
		if err := audit(ctx, tx, msTime(now), p.TokenID, string(p.Role), "job.deny", id, string(detail)); err != nil {
			return err
		}
		j, err = readJob(ctx, tx, id)
		out = j.Job
		return err
	})
	if err == nil {
		s.step(ctx, "deny", id, out.Task)
		s.record(auditlog.Action{Type: auditlog.ActionDenied, Job: id, Task: out.Task, Pool: out.Pool, Actor: p.TokenID, Role: string(p.Role), State: string(out.State)})
		s.finished.Fire(id)
		s.changed.broadcast()
	}
	return out, err
}

func (s *Server) cancel(ctx context.Context, p Principal, id string) (api.Job, error) {
	var out api.Job
	var done bool
	err := s.store.tx(ctx, func(tx *txn) error {
		j, err := visibleJob(ctx, tx, p, id)
		if err != nil {
			return err
		}
		at := s.cfg.Now()
		now := at.UnixMilli()
		next := j.Job
		changed, err := controlplane.Cancel(&next, at)
		if err != nil {
			return err
		}
		if !changed {
			out = j.Job
			return nil // already asked; cancelling twice is not an error
		}
		if next.State == api.StateCancelled {
			_, err = tx.ExecContext(ctx, qCancelNow, now, now, id)
			done = true
		} else {
			_, err = tx.ExecContext(ctx, qCancelRequest, now, id)
		}
		if err != nil {
			return err
		}
		if err := audit(ctx, tx, msTime(now), p.TokenID, string(p.Role), "job.cancel", id, fmt.Sprintf(`{"from":%q}`, j.State)); err != nil {
			return err
		}
		j, err = readJob(ctx, tx, id)
		out = j.Job
		return err
	})
	if err == nil {
		s.record(auditlog.Action{Type: auditlog.ActionCancelled, Job: id, Task: out.Task, Pool: out.Pool, Actor: p.TokenID, Role: string(p.Role), State: string(out.State)})
		s.changed.broadcast()
	}
	if err == nil && done {
		s.finished.Fire(id)
	}
	return out, err
}

// listJobs returns one page, newest first. Its cursor is the last listed job's seq.
func (s *Server) listJobs(ctx context.Context, f controlplane.ListQuery) (api.JobList, error) {
	q := `SELECT ` + jobColumns + ` FROM jobs WHERE 1=1`
	var args []any
	if f.State != "" {
		q += ` AND state = ?`
		args = append(args, string(f.State))
	}
	if f.Task != "" {
		q += ` AND task = ?`
		args = append(args, f.Task)
	}
	if f.Pool != "" {
		q += ` AND pool = ?`
		args = append(args, f.Pool)
	}
	if f.Cursor != "" {
		n, err := strconv.ParseInt(f.Cursor, 10, 64)
		if err != nil || n < 1 {
			return api.JobList{}, controlplane.BadCursor(f.Cursor)
		}
		q += ` AND seq < ?`
		args = append(args, n)
	}
	q += ` ORDER BY seq DESC LIMIT ?`
	args = append(args, f.Limit+1)
	rows, err := s.store.db.QueryContext(ctx, q, args...)
	if err != nil {
		return api.JobList{}, err
	}
	defer rows.Close()
	out := api.JobList{Jobs: []api.Job{}}
	var last int64
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return api.JobList{}, err
		}
		if len(out.Jobs) == f.Limit {
			out.NextCursor = fmt.Sprint(last)
			break
		}
		j.Input, j.Output = nil, nil
		out.Jobs = append(out.Jobs, j.Job)
		last = j.seq
	}
	return out, rows.Err()
}

// leaseOnce hands out up to max due, queued jobs of the worker's pool whose task version
// is in the worker's own catalog, oldest first.
func (s *Server) leaseOnce(ctx context.Context, p Principal, max int) ([]api.LeasedJob, error) {
	var out []api.LeasedJob
	var waits, leasedWaits []time.Duration
	err := s.store.tx(ctx, func(tx *txn) error {
		waits, leasedWaits = waits[:0], leasedWaits[:0]
		now := s.cfg.Now()
		rows, err := tx.QueryContext(ctx, qDueJobs, p.Pool, now.UnixMilli(), p.TokenID, max)
		if err != nil {
			return err
		}
		var ids []string
		for rows.Next() {
			var id string
			var since int64
			if err := rows.Scan(&id, &since); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, id)
			waits = append(waits, now.Sub(msTime(since)))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		expires := now.Add(s.cfg.LeaseTTL)
		for i, id := range ids {
			tok := newLeaseToken()
			var lj api.LeasedJob
			var input []byte
			err := tx.QueryRowContext(ctx, qLeaseJob, hashLease(tok), expires.UnixMilli(), p.TokenID, now.UnixMilli(), id).
				Scan(&lj.JobID, &lj.Task, &lj.TaskVersion, &lj.Pool, &input, &lj.Approval, &lj.Attempt, &lj.MaxAttempts, &lj.TraceParent)
			if errors.Is(err, sql.ErrNoRows) {
				continue // no longer queued
			}
			if err != nil {
				return err
			}
			lj.Input = input
			lj.LeaseToken = tok
			lj.LeaseExpiresAt = msTime(expires.UnixMilli())
			if _, err := tx.ExecContext(ctx, qInsertAttempt,
				id, lj.Attempt, p.TokenID, now.UnixMilli()); err != nil {
				return err
			}
			if err := audit(ctx, tx, now, p.TokenID, string(p.Role), "job.lease", id, fmt.Sprintf(`{"attempt":%d}`, lj.Attempt)); err != nil {
				return err
			}
			out = append(out, lj)
			leasedWaits = append(leasedWaits, waits[i])
		}
		_, err = tx.ExecContext(ctx, qWorkerSeen, now.UnixMilli(), p.TokenID)
		return err
	})
	if err != nil {
		return nil, err
	}
	for i, lj := range out {
		s.stepFrom(ctx, "lease", lj.TraceParent, lj.JobID, lj.Task)
		s.record(auditlog.Action{Type: auditlog.ActionLeased, Job: lj.JobID, Task: lj.Task, Pool: lj.Pool, Actor: p.TokenID, Role: string(p.Role), Attempt: lj.Attempt})
		s.cfg.Metrics.Leased(lj.Task, leasedWaits[i])
	}
	if len(out) > 0 {
		s.changed.broadcast()
	}
	return out, nil
}

func (s *Server) heartbeat(ctx context.Context, p Principal, leaseTok string) (api.HeartbeatResponse, error) {
	lost := controlplane.LeaseLost()
	var out api.HeartbeatResponse
	err := s.store.tx(ctx, func(tx *txn) error {
		var id, pool string
		var state api.State
		var expires sql.NullInt64
		var leasedBy sql.NullString
		err := tx.QueryRowContext(ctx, qJobByLease, hashLease(leaseTok)).
			Scan(&id, &pool, &state, &expires, &leasedBy)
		// A lease is the worker's that took it: another worker of the same pool holding
		// the token (leaked, logged, or shared by a hostile peer) cannot extend it.
		if errors.Is(err, sql.ErrNoRows) || (err == nil && (pool != p.Pool || leasedBy.String != p.TokenID)) {
			return lost
		}
		if err != nil {
			return err
		}
		now := s.cfg.Now()
		if state == api.StateCancelled {
			return errf(http.StatusConflict, api.CodeJobCancelled, "job %s was cancelled: stop it", id)
		}
		if (state != api.StateRunning && state != api.StateCancelRequested) || !expires.Valid || expires.Int64 <= now.UnixMilli() {
			return lost
		}
		newExp := now.Add(s.cfg.LeaseTTL)
		if _, err := tx.ExecContext(ctx, qExtendLease, newExp.UnixMilli(), now.UnixMilli(), id); err != nil {
			return err
		}
		out = api.HeartbeatResponse{JobID: id, LeaseExpiresAt: msTime(newExp.UnixMilli()), CancelRequested: state == api.StateCancelRequested}
		_, err = tx.ExecContext(ctx, qWorkerSeen, now.UnixMilli(), p.TokenID)
		return err
	})
	return out, err
}

// complete records a completion the layer checked, fenced to the current lease.
func (s *Server) complete(ctx context.Context, p Principal, id string, c controlplane.Completion) (api.CompleteResponse, error) {
	req, code, output := c.CompleteRequest, c.Code, c.Output
	var out api.CompleteResponse
	var task, pool string
	var ended api.Job // the job as the completion left it
	err := s.store.tx(ctx, func(tx *txn) error {
		// Only what the completion needs: the whole row carries the input, copied for nothing.
		var j api.Job
		err := tx.QueryRowContext(ctx, qJobToComplete, id).Scan(&j.Pool, &j.Task, &j.State, &j.Attempt, &j.MaxAttempts)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.CanPool(j.Pool)) {
			return controlplane.NoJob(id)
		}
		if err != nil {
			return err
		}
		now := s.cfg.Now()
		nowMS := now.UnixMilli()
		next := controlplane.CompleteState(j.State, code, c.Retryable, j.Attempt, j.MaxAttempts)
		var notBefore int64
		if next == api.StateQueued {
			notBefore = controlplane.RetryAt(now, j.Attempt, s.cfg.RetryBase, s.cfg.RetryCap, s.cfg.Jitter).UnixMilli()
		}
		var finished any
		if next.Terminal() {
			finished = nowMS
		}
		// The fence: only the current lease token and attempt of a leased job, from the
		// worker that took it, once.
		jr, err := scanJob(tx.QueryRowContext(ctx, qCompleteJob,
			string(next), string(code), output, req.ErrorMessage, req.DurationMS, req.ModuleDigest, notBefore, nowMS, finished,
			string(next), id, hashLease(req.LeaseToken), req.Attempt, p.TokenID, nowMS))
		if errors.Is(err, sql.ErrNoRows) {
			return errf(http.StatusConflict, api.CodeLeaseConflict, "job %s: lease token or attempt %d is not this worker's current lease (expired, re-leased, taken by another worker, or already completed); nothing was recorded", id, req.Attempt)
		}
		if err != nil {
			return err
		}
		ended = jr.Job
		res, err := tx.ExecContext(ctx, qCompleteAttempt,
			nowMS, string(code), req.ErrorMessage, req.DurationMS, req.ModuleDigest, id, req.Attempt)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return errf(http.StatusConflict, api.CodeLeaseConflict, "job %s attempt %d already has a result", id, req.Attempt)
		}
		detail, _ := json.Marshal(map[string]any{"attempt": req.Attempt, "outcome": code, "state": next})
		if err := audit(ctx, tx, now, p.TokenID, string(p.Role), "job.complete", id, string(detail)); err != nil {
			return err
		}
		if err := recordAuditHead(ctx, tx, p.TokenID, req.AuditHead, nowMS); err != nil {
			return err
		}
		out = api.CompleteResponse{JobID: id, State: next, Attempt: req.Attempt}
		task, pool = j.Task, j.Pool
		if next == api.StateQueued {
			t := msTime(notBefore)
			out.NotBefore = &t
		}
		return nil
	})
	if err != nil {
		return api.CompleteResponse{}, err
	}
	s.step(ctx, "complete", id, task)
	s.record(auditlog.Action{Type: auditlog.ActionCompleted, Job: id, Task: task, Pool: pool, Actor: p.TokenID, Role: string(p.Role),
		Attempt: req.Attempt, Outcome: string(code), State: string(out.State)})
	s.cfg.Metrics.Completed(task, string(out.State))
	if out.State == api.StateQueued {
		s.queued.broadcast()
	} else {
		s.ended.put(ended) // before the wake-up: the waits read it from there
		s.finished.Fire(id)
	}
	s.changed.broadcast()
	return out, nil
}

// reap requeues (or ends) jobs whose lease expired without a completion.
func (s *Server) reap(ctx context.Context) (int, error) {
	var n int
	var requeued bool
	var ended []string
	var expired []auditlog.Action
	err := s.store.tx(ctx, func(tx *txn) error {
		expired, ended, requeued = expired[:0], ended[:0], false
		now := s.cfg.Now().UnixMilli()
		rows, err := tx.QueryContext(ctx, qExpiredLeases, now)
		if err != nil {
			return err
		}
		type exp struct {
			id            string
			state         api.State
			attempt, maxA int
		}
		var list []exp
		for rows.Next() {
			var e exp
			if err := rows.Scan(&e.id, &e.state, &e.attempt, &e.maxA); err != nil {
				rows.Close()
				return err
			}
			list = append(list, e)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, e := range list {
			var q string
			next := controlplane.ExpireState(e.state, e.attempt, e.maxA)
			switch next {
			case api.StateCancelled:
				q = `UPDATE jobs SET state = 'cancelled', lease_expires_at = NULL, updated_at = ?, finished_at = ? WHERE id = ?`
			case api.StateDead:
				q = `UPDATE jobs SET state = 'dead', outcome = 'timeout', error_message = 'lease expired: no completion or heartbeat from the worker in time',
					lease_expires_at = NULL, updated_at = ?, finished_at = ? WHERE id = ?`
			default:
				q = `UPDATE jobs SET state = 'queued', lease_hash = NULL, lease_expires_at = NULL, not_before = 0, updated_at = ? WHERE id = ?`
			}
			args := []any{now, now, e.id}
			if next == api.StateQueued {
				args = []any{now, e.id}
				requeued = true
			} else {
				ended = append(ended, e.id)
			}
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, qExpireAttempt, now, e.id, e.attempt); err != nil {
				return err
			}
			detail := fmt.Sprintf(`{"attempt":%d,"state":%q}`, e.attempt, next)
			if err := audit(ctx, tx, msTime(now), "server", "server", "lease.expire", e.id, detail); err != nil {
				return err
			}
			expired = append(expired, auditlog.Action{Type: auditlog.ActionLeaseExpiry, Job: e.id, Actor: "server", Role: "server",
				Attempt: e.attempt, State: string(next)})
			n++
		}
		return nil
	})
	if err == nil {
		for _, a := range expired {
			s.record(a)
		}
		s.cfg.Metrics.LeaseExpired(len(expired))
	}
	if requeued {
		s.queued.broadcast()
	}
	if err == nil {
		s.finished.Fire(ended...)
	}
	if n > 0 {
		s.changed.broadcast()
	}
	return n, err
}

// Hot-path statements (see stmts.go).
var qIdemLookup = hot(`SELECT id, request_hash FROM jobs WHERE pool = ? AND idempotency_key = ?`)
var qInsertJob = hot(`INSERT INTO jobs(id, task, task_version, pool, input, approval, state, max_attempts,
			idempotency_key, request_hash, submitted_by, created_at, updated_at, traceparent, submitted_by_name) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`)
var qApprove = hot(`UPDATE jobs SET approval = ?, state = 'queued', updated_at = ? WHERE id = ? AND state = 'pending_approval'`)
var qDeny = hot(`UPDATE jobs SET state = 'denied', outcome = ?, error_message = ?, denied_by = ?, updated_at = ?, finished_at = ?
			WHERE id = ? AND state = 'pending_approval'`)
var qCancelNow = hot(`UPDATE jobs SET state = 'cancelled', updated_at = ?, finished_at = ? WHERE id = ?`)
var qCancelRequest = hot(`UPDATE jobs SET state = 'cancel_requested', updated_at = ? WHERE id = ?`)
var qDueJobs = hot(`SELECT id, MAX(j.updated_at, j.not_before) FROM jobs j WHERE j.pool = ? AND j.state = 'queued' AND j.not_before <= ?
			AND EXISTS (SELECT 1 FROM worker_tasks wt WHERE wt.token_id = ? AND wt.name = j.task AND wt.version = j.task_version)
			ORDER BY j.seq LIMIT ?`)

// qLeaseJob leases a job and returns what the worker is handed, in one statement.
var qLeaseJob = hot(`UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_hash = ?,
				lease_expires_at = ?, leased_by = ?, updated_at = ? WHERE id = ? AND state = 'queued'
				RETURNING id, task, task_version, pool, input, approval, attempt, max_attempts, traceparent`)
var qInsertAttempt = hot(`INSERT INTO job_attempts(job_id, attempt, leased_by, leased_at) VALUES (?,?,?,?)`)
var qJobToComplete = hot(`SELECT pool, task, state, attempt, max_attempts FROM jobs WHERE id = ?`)
var qJobByLease = hot(`SELECT id, pool, state, lease_expires_at, leased_by FROM jobs WHERE lease_hash = ?`)
var qExtendLease = hot(`UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE id = ?`)

// qCompleteJob is the fence: only the current lease token and attempt of a leased job, from
// the worker (token) that took the lease, once.
var qCompleteJob = hot(`UPDATE jobs SET state = ?, outcome = ?, output = ?, error_message = ?,
			duration_ms = ?, module_digest = ?, not_before = ?, updated_at = ?, finished_at = ?,
			lease_expires_at = NULL,
			lease_hash = CASE WHEN ? = 'queued' THEN NULL ELSE lease_hash END
			WHERE id = ? AND lease_hash = ? AND attempt = ? AND leased_by = ? AND state IN ('running', 'cancel_requested') AND lease_expires_at > ?
			RETURNING ` + jobColumns)
var qCompleteAttempt = hot(`UPDATE job_attempts SET finished_at = ?, end_reason = 'completed', outcome = ?, error_message = ?,
			duration_ms = ?, module_digest = ? WHERE job_id = ? AND attempt = ? AND finished_at IS NULL`)
var qExpiredLeases = hot(`SELECT id, state, attempt, max_attempts FROM jobs
			WHERE state IN ('running', 'cancel_requested') AND lease_expires_at <= ?`)
var qExpireAttempt = hot(`UPDATE job_attempts SET finished_at = ?, end_reason = 'lease_expired', outcome = 'timeout'
				WHERE job_id = ? AND attempt = ? AND finished_at IS NULL`)
var (
	qTaskNewest  = hot(`SELECT version, input_schema FROM tasks WHERE pool = ? AND name = ? ORDER BY published_at DESC, version DESC LIMIT 1`)
	qTaskVersion = hot(`SELECT version, input_schema FROM tasks WHERE pool = ? AND name = ? AND version = ?`)
)

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
	"slices"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/approval"
	auditlog "github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/tracing"
	"github.com/castellan-dev/castellan/outcome"
)

const (
	maxErrorMessage = api.MaxErrorMessage
	maxLeaseBatch   = api.MaxLeaseBatch
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
	submitted_by, created_at, updated_at, finished_at`

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
		&j.ModuleDigest, &idem, &j.SubmittedBy, &created, &updated, &finished)
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

// getJobRow loads a job the principal may see; a job in another pool is "not found" so
// that ids in other pools cannot be probed.
func getJobRow(ctx context.Context, q interface {
	queryRow(context.Context, string, ...any) *sql.Row
}, p Principal, id string) (jobRow, error) {
	if !api.ValidJobID(id) {
		return jobRow{}, errf(http.StatusNotFound, api.CodeNotFound, "no job %q (job ids look like job_ and 24 hex digits)", id)
	}
	j, err := scanJob(q.queryRow(ctx, qJobByID, id))
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.canPool(j.Pool)) {
		return jobRow{}, errf(http.StatusNotFound, api.CodeNotFound, "no job %q in the pools your token may see", id)
	}
	return j, err
}

// resolvePool picks the pool a request acts on: the one named, or the token's own.
func resolvePool(p Principal, pool string) (string, error) {
	if pool == "" {
		if p.Pool == api.AllPools {
			return "", errf(http.StatusBadRequest, api.CodeInvalidField, "pool is required: your token is not bound to one pool")
		}
		return p.Pool, nil
	}
	if !api.ValidPoolName(pool) {
		return "", errf(http.StatusBadRequest, api.CodeInvalidField, "pool %q is invalid: use 1-63 of a-z 0-9 _ . -", pool)
	}
	if !p.canPool(pool) {
		return "", errf(http.StatusForbidden, api.CodeForbidden, "your token is for pool %q, not %q", p.Pool, pool)
	}
	return pool, nil
}

func (s *Server) autoApproves(task string) bool {
	return s.cfg.AutoApprover != nil && (slices.Contains(s.cfg.AutoApproveTasks, task) || slices.Contains(s.cfg.AutoApproveTasks, "*"))
}

// submit creates a job, or returns the existing one for a repeated idempotent request.
func (s *Server) submit(ctx context.Context, p Principal, req api.SubmitRequest) (api.Job, bool, error) {
	if !api.ValidTaskName(req.Task) {
		return api.Job{}, false, errf(http.StatusBadRequest, api.CodeInvalidField, "task %q is invalid: a task name is 1-64 of a-z 0-9 _ . - starting with a letter", req.Task)
	}
	if req.TaskVersion != "" && !api.ValidTaskVersion(req.TaskVersion) {
		return api.Job{}, false, errf(http.StatusBadRequest, api.CodeInvalidField, "task_version %q is invalid", req.TaskVersion)
	}
	pool, err := resolvePool(p, req.Pool)
	if err != nil {
		return api.Job{}, false, err
	}
	if !validRawJSON(req.Input) {
		return api.Job{}, false, errf(http.StatusBadRequest, api.CodeInvalidField, "input is required: the task's JSON input (use {} for none)")
	}
	if err := approval.CheckIJSON(req.Input); err != nil {
		return api.Job{}, false, errf(http.StatusBadRequest, api.CodeInvalidField, "input is not I-JSON (RFC 7493), so it cannot be approved: %v", err)
	}
	input := compactJSON(req.Input)
	if len(input) > s.cfg.MaxInputBytes {
		return api.Job{}, false, errf(http.StatusRequestEntityTooLarge, api.CodeInputTooLarge, "input is %d bytes, the cap is %d", len(input), s.cfg.MaxInputBytes)
	}
	if req.MaxAttempts == 0 {
		req.MaxAttempts = s.cfg.DefaultMaxAttempts
	}
	if req.MaxAttempts < 1 || req.MaxAttempts > maxAttemptsLimit {
		return api.Job{}, false, errf(http.StatusBadRequest, api.CodeInvalidField, "max_attempts is %d, want 1..%d", req.MaxAttempts, maxAttemptsLimit)
	}
	if req.IdempotencyKey != "" && !api.ValidIdempotencyKey(req.IdempotencyKey) {
		return api.Job{}, false, errf(http.StatusBadRequest, api.CodeInvalidField, "idempotency_key must be 1-200 printable ASCII characters without spaces")
	}
	if req.Approval != "" {
		if err := approval.CheckShape(req.Approval); err != nil {
			return api.Job{}, false, errf(http.StatusBadRequest, api.CodeInvalidField, "approval: %v", err)
		}
	}

	// Find the task definition: the version asked for, or the newest published.
	var version string
	var schemaText []byte
	q := qTaskNewest
	args := []any{pool, req.Task}
	if req.TaskVersion != "" {
		q = qTaskVersion
		args = append(args, req.TaskVersion)
	}
	err = s.store.queryRow(ctx, q, args...).Scan(&version, &schemaText)
	if errors.Is(err, sql.ErrNoRows) {
		v := ""
		if req.TaskVersion != "" {
			v = " version " + req.TaskVersion
		}
		return api.Job{}, false, errf(http.StatusBadRequest, api.CodeUnknownTask, "task %q%s is not published in pool %q: a worker must publish it first (GET /v1/catalog)", req.Task, v, pool)
	}
	if err != nil {
		return api.Job{}, false, err
	}
	sch, err := s.schemas.Get(schemaText)
	if err != nil {
		return api.Job{}, false, fmt.Errorf("compile stored schema of %s@%s: %w", req.Task, version, err)
	}
	issues, err := schema.Validate(sch, input)
	if err != nil {
		return api.Job{}, false, errf(http.StatusBadRequest, api.CodeInvalidField, "input: %v", err)
	}
	if len(issues) > 0 {
		e := errf(http.StatusBadRequest, api.CodeInputInvalid, "%s", schema.Message(issues))
		e.details = issues
		return api.Job{}, false, e
	}

	hashed, _ := json.Marshal(struct {
		Task, Version, Pool string
		Input               json.RawMessage
		Max                 int
		Approval            string
	}{req.Task, req.TaskVersion, pool, input, req.MaxAttempts, req.Approval})
	reqHash := sha256.Sum256(hashed)

	existing := func(q interface {
		queryRow(context.Context, string, ...any) *sql.Row
	}) (api.Job, bool, error) {
		if req.IdempotencyKey == "" {
			return api.Job{}, false, nil
		}
		var id string
		var h []byte
		err := q.queryRow(ctx, qIdemLookup, pool, req.IdempotencyKey).Scan(&id, &h)
		if errors.Is(err, sql.ErrNoRows) {
			return api.Job{}, false, nil
		}
		if err != nil {
			return api.Job{}, false, err
		}
		if !bytes.Equal(h, reqHash[:]) {
			return api.Job{}, true, errf(http.StatusConflict, api.CodeIdempotency, "idempotency_key %q was already used in pool %q for a different request (job %s)", req.IdempotencyKey, pool, id)
		}
		j, err := getJobRow(ctx, q, p, id)
		return j.Job, true, err
	}
	if j, found, err := existing(s.store); found || err != nil {
		return j, false, err
	}

	id := api.NewJobID()
	ctx, span := s.startSpan(ctx, "submit", req.TraceParent, id, req.Task)
	defer span.End()
	traceparent := tracing.TraceParent(ctx)
	approval := req.Approval
	auto := false
	if approval == "" && s.autoApproves(req.Task) {
		tok, err := s.cfg.AutoApprover.Approve(ctx, ApprovalSubject{JobID: id, Task: req.Task, TaskVersion: version, Pool: pool, Input: input})
		if err != nil {
			s.log.Error("auto-approve failed", zapErr(err), zapJob(id))
			return api.Job{}, false, errf(http.StatusBadGateway, api.CodeAutoApproveFailed, "the server's auto-approver failed; see the server log")
		}
		approval, auto = tok, true
	}
	state := api.StatePendingApproval
	if approval != "" {
		state = api.StateQueued
	}
	now := s.cfg.Now().UnixMilli()
	var out api.Job
	created := false
	err = s.store.tx(ctx, func(tx *txn) error {
		j, found, err := existing(tx)
		if found || err != nil {
			out = j
			return err
		}
		var idem any
		if req.IdempotencyKey != "" {
			idem = req.IdempotencyKey
		}
		_, err = tx.ExecContext(ctx, qInsertJob,
			id, req.Task, version, pool, input, approval, string(state), req.MaxAttempts, idem, reqHash[:], p.TokenID, now, now, traceparent)
		if err != nil {
			return err
		}
		detail, _ := json.Marshal(map[string]any{"task": req.Task, "task_version": version, "pool": pool, "state": state})
		if err := audit(ctx, tx, msTime(now), p.TokenID, string(p.Role), "job.submit", id, string(detail)); err != nil {
			return err
		}
		if auto {
			if err := audit(ctx, tx, msTime(now), "server", "server", "job.auto_approve", id, ""); err != nil {
				return err
			}
		}
		jr, err := getJobRow(ctx, tx, p, id)
		out, created = jr.Job, true
		return err
	})
	if err != nil {
		return api.Job{}, false, err
	}
	if created {
		s.record(auditlog.Action{Type: auditlog.ActionSubmitted, Job: id, Task: req.Task, Pool: pool, Actor: p.TokenID, Role: string(p.Role), State: string(state)})
		s.cfg.Metrics.Submitted(req.Task)
		if auto {
			s.record(auditlog.Action{Type: auditlog.ActionApproved, Job: id, Task: req.Task, Pool: pool, Actor: "server", Role: "server"})
			s.cfg.Metrics.Approved(req.Task)
		}
	}
	if created && state == api.StateQueued {
		s.queued.broadcast()
	}
	return out, created, nil
}

func (s *Server) approve(ctx context.Context, p Principal, id, token string) (api.Job, error) {
	if err := approval.CheckShape(token); err != nil {
		return api.Job{}, errf(http.StatusBadRequest, api.CodeInvalidField, "token: %v", err)
	}
	var out api.Job
	err := s.store.tx(ctx, func(tx *txn) error {
		j, err := getJobRow(ctx, tx, p, id)
		if err != nil {
			return err
		}
		if j.State != api.StatePendingApproval {
			return errf(http.StatusConflict, api.CodeInvalidState, "job %s is %s; only a pending_approval job takes an approval", id, j.State)
		}
		now := s.cfg.Now().UnixMilli()
		if _, err := tx.ExecContext(ctx, qApprove,
			token, now, id); err != nil {
			return err
		}
		if err := audit(ctx, tx, msTime(now), p.TokenID, string(p.Role), "job.approve", id, ""); err != nil {
			return err
		}
		j, err = getJobRow(ctx, tx, p, id)
		out = j.Job
		return err
	})
	if err == nil {
		s.step(ctx, "approve", id, out.Task)
		s.record(auditlog.Action{Type: auditlog.ActionApproved, Job: id, Task: out.Task, Pool: out.Pool, Actor: p.TokenID, Role: string(p.Role)})
		s.cfg.Metrics.Approved(out.Task)
		s.queued.broadcast()
	}
	return out, err
}

func (s *Server) cancel(ctx context.Context, p Principal, id string) (api.Job, error) {
	var out api.Job
	var done bool
	err := s.store.tx(ctx, func(tx *txn) error {
		j, err := getJobRow(ctx, tx, p, id)
		if err != nil {
			return err
		}
		now := s.cfg.Now().UnixMilli()
		switch j.State {
		case api.StatePendingApproval, api.StateQueued:
			_, err = tx.ExecContext(ctx, qCancelNow, now, now, id)
			done = true
		case api.StateRunning:
			_, err = tx.ExecContext(ctx, qCancelRequest, now, id)
		case api.StateCancelRequested:
			out = j.Job
			return nil // already asked; cancelling twice is not an error
		default:
			return errf(http.StatusConflict, api.CodeInvalidState, "job %s is already %s", id, j.State)
		}
		if err != nil {
			return err
		}
		if err := audit(ctx, tx, msTime(now), p.TokenID, string(p.Role), "job.cancel", id, fmt.Sprintf(`{"from":%q}`, j.State)); err != nil {
			return err
		}
		j, err = getJobRow(ctx, tx, p, id)
		out = j.Job
		return err
	})
	if err == nil {
		s.record(auditlog.Action{Type: auditlog.ActionCancelled, Job: id, Task: out.Task, Pool: out.Pool, Actor: p.TokenID, Role: string(p.Role), State: string(out.State)})
	}
	if err == nil && done {
		s.finished.broadcast()
	}
	return out, err
}

type jobFilter struct {
	state, task, pool string
	limit             int
	cursor            int64
}

func (s *Server) listJobs(ctx context.Context, p Principal, f jobFilter) (api.JobList, error) {
	q := `SELECT ` + jobColumns + ` FROM jobs WHERE 1=1`
	var args []any
	if f.state != "" {
		q += ` AND state = ?`
		args = append(args, f.state)
	}
	if f.task != "" {
		q += ` AND task = ?`
		args = append(args, f.task)
	}
	if f.pool != "" {
		q += ` AND pool = ?`
		args = append(args, f.pool)
	} else if p.Role != api.RoleAdmin && p.Pool != api.AllPools {
		q += ` AND pool = ?`
		args = append(args, p.Pool)
	}
	if f.cursor > 0 {
		q += ` AND seq < ?`
		args = append(args, f.cursor)
	}
	q += ` ORDER BY seq DESC LIMIT ?`
	args = append(args, f.limit+1)
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
		if len(out.Jobs) == f.limit {
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
			res, err := tx.ExecContext(ctx, qLeaseJob,
				hashLease(tok), expires.UnixMilli(), p.TokenID, now.UnixMilli(), id)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n != 1 {
				continue
			}
			var lj api.LeasedJob
			var input []byte
			if err := tx.QueryRowContext(ctx, qLeasedJob, id).
				Scan(&lj.JobID, &lj.Task, &lj.TaskVersion, &lj.Pool, &input, &lj.Approval, &lj.Attempt, &lj.MaxAttempts, &lj.TraceParent); err != nil {
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
	return out, nil
}

func (s *Server) heartbeat(ctx context.Context, p Principal, leaseTok string) (api.HeartbeatResponse, error) {
	lost := errf(http.StatusConflict, api.CodeLeaseLost, "this lease is no longer yours (expired, re-leased or finished): stop the job and do not complete it")
	if !strings.HasPrefix(leaseTok, "lease_") || len(leaseTok) > 64 {
		return api.HeartbeatResponse{}, lost
	}
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

// backoff is full jitter: uniform in [0, min(cap, base*2^(attempt-1))), as in NATS mode.
func (s *Server) backoff(attempt int) time.Duration {
	return s.cfg.Jitter(api.RetryCeiling(attempt, s.cfg.RetryBase, s.cfg.RetryCap))
}

func (s *Server) complete(ctx context.Context, p Principal, id string, req api.CompleteRequest) (api.CompleteResponse, error) {
	bad := func(format string, args ...any) error {
		return errf(http.StatusBadRequest, api.CodeInvalidField, format, args...)
	}
	code := outcome.Code(req.Outcome)
	switch {
	case req.LeaseToken == "":
		return api.CompleteResponse{}, bad("lease_token is required")
	case req.Attempt < 1:
		return api.CompleteResponse{}, bad("attempt is %d, want the attempt number from the lease (>= 1)", req.Attempt)
	case !code.Known():
		return api.CompleteResponse{}, bad("outcome %q is not an outcome code (see the outcome codes in docs/api.md)", req.Outcome)
	case len(req.ErrorMessage) > maxErrorMessage:
		return api.CompleteResponse{}, bad("error_message is %d bytes, at most %d", len(req.ErrorMessage), maxErrorMessage)
	case req.DurationMS < 0:
		return api.CompleteResponse{}, bad("duration_ms is negative")
	case len(req.ModuleDigest) > 128:
		return api.CompleteResponse{}, bad("module_digest is over 128 bytes")
	case req.Retryable != nil && *req.Retryable && (code == outcome.OK || code == outcome.Rejected):
		return api.CompleteResponse{}, bad("outcome %q cannot be retryable", code)
	}
	if e := checkAuditHead(req.AuditHead); e != nil {
		return api.CompleteResponse{}, e
	}
	var output []byte
	if len(req.Output) > 0 && string(bytes.TrimSpace(req.Output)) != "null" {
		output = compactJSON(req.Output)
		if len(output) > s.cfg.MaxOutputBytes {
			return api.CompleteResponse{}, errf(http.StatusRequestEntityTooLarge, api.CodeOutputTooLarge, "output is %d bytes, the cap is %d", len(output), s.cfg.MaxOutputBytes)
		}
	}
	retryable := code.Retryable()
	if req.Retryable != nil {
		retryable = *req.Retryable
	}

	var out api.CompleteResponse
	var task, pool string
	err := s.store.tx(ctx, func(tx *txn) error {
		j, err := getJobRow(ctx, tx, p, id)
		if err != nil {
			return err
		}
		now := s.cfg.Now()
		nowMS := now.UnixMilli()
		var next api.State
		var notBefore int64
		switch {
		case j.State == api.StateCancelRequested:
			next = api.StateCancelled
		case code == outcome.OK:
			next = api.StateSucceeded
		case code == outcome.Rejected:
			next = api.StateRejected
		case retryable && j.Attempt < j.MaxAttempts:
			next = api.StateQueued
			notBefore = now.Add(s.backoff(j.Attempt)).UnixMilli()
		case retryable:
			next = api.StateDead
		default:
			next = api.StateFailed
		}
		var finished any
		if next.Terminal() {
			finished = nowMS
		}
		// The fence: only the current lease token and attempt of a leased job, from the
		// worker that took it, once.
		res, err := tx.ExecContext(ctx, qCompleteJob,
			string(next), string(code), output, req.ErrorMessage, req.DurationMS, req.ModuleDigest, notBefore, nowMS, finished,
			string(next), id, hashLease(req.LeaseToken), req.Attempt, p.TokenID, nowMS)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return errf(http.StatusConflict, api.CodeLeaseConflict, "job %s: lease token or attempt %d is not this worker's current lease (expired, re-leased, taken by another worker, or already completed); nothing was recorded", id, req.Attempt)
		}
		res, err = tx.ExecContext(ctx, qCompleteAttempt,
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
		s.finished.broadcast()
	}
	return out, nil
}

// reap requeues (or ends) jobs whose lease expired without a completion.
func (s *Server) reap(ctx context.Context) (int, error) {
	var n int
	var requeued, ended bool
	var expired []auditlog.Action
	err := s.store.tx(ctx, func(tx *txn) error {
		expired = expired[:0]
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
			var next api.State
			switch {
			case e.state == api.StateCancelRequested:
				next = api.StateCancelled
				q = `UPDATE jobs SET state = 'cancelled', lease_expires_at = NULL, updated_at = ?, finished_at = ? WHERE id = ?`
			case e.attempt >= e.maxA:
				next = api.StateDead
				q = `UPDATE jobs SET state = 'dead', outcome = 'timeout', error_message = 'lease expired: no completion or heartbeat from the worker in time',
					lease_expires_at = NULL, updated_at = ?, finished_at = ? WHERE id = ?`
			default:
				next = api.StateQueued
				q = `UPDATE jobs SET state = 'queued', lease_hash = NULL, lease_expires_at = NULL, not_before = 0, updated_at = ? WHERE id = ?`
			}
			args := []any{now, now, e.id}
			if next == api.StateQueued {
				args = []any{now, e.id}
				requeued = true
			} else {
				ended = true
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
	if ended {
		s.finished.broadcast()
	}
	return n, err
}

// Hot-path statements (see stmts.go).
var qIdemLookup = hot(`SELECT id, request_hash FROM jobs WHERE pool = ? AND idempotency_key = ?`)
var qInsertJob = hot(`INSERT INTO jobs(id, task, task_version, pool, input, approval, state, max_attempts,
			idempotency_key, request_hash, submitted_by, created_at, updated_at, traceparent) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)`)
var qApprove = hot(`UPDATE jobs SET approval = ?, state = 'queued', updated_at = ? WHERE id = ? AND state = 'pending_approval'`)
var qCancelNow = hot(`UPDATE jobs SET state = 'cancelled', updated_at = ?, finished_at = ? WHERE id = ?`)
var qCancelRequest = hot(`UPDATE jobs SET state = 'cancel_requested', updated_at = ? WHERE id = ?`)
var qDueJobs = hot(`SELECT id, MAX(j.updated_at, j.not_before) FROM jobs j WHERE j.pool = ? AND j.state = 'queued' AND j.not_before <= ?
			AND EXISTS (SELECT 1 FROM worker_tasks wt WHERE wt.token_id = ? AND wt.name = j.task AND wt.version = j.task_version)
			ORDER BY j.seq LIMIT ?`)
var qLeaseJob = hot(`UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_hash = ?,
				lease_expires_at = ?, leased_by = ?, updated_at = ? WHERE id = ? AND state = 'queued'`)
var qLeasedJob = hot(`SELECT id, task, task_version, pool, input, approval, attempt, max_attempts, traceparent FROM jobs WHERE id = ?`)
var qInsertAttempt = hot(`INSERT INTO job_attempts(job_id, attempt, leased_by, leased_at) VALUES (?,?,?,?)`)
var qJobByLease = hot(`SELECT id, pool, state, lease_expires_at, leased_by FROM jobs WHERE lease_hash = ?`)
var qExtendLease = hot(`UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE id = ?`)

// qCompleteJob is the fence: only the current lease token and attempt of a leased job, from
// the worker (token) that took the lease, once.
var qCompleteJob = hot(`UPDATE jobs SET state = ?, outcome = ?, output = ?, error_message = ?,
			duration_ms = ?, module_digest = ?, not_before = ?, updated_at = ?, finished_at = ?,
			lease_expires_at = NULL,
			lease_hash = CASE WHEN ? = 'queued' THEN NULL ELSE lease_hash END
			WHERE id = ? AND lease_hash = ? AND attempt = ? AND leased_by = ? AND state IN ('running', 'cancel_requested') AND lease_expires_at > ?`)
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

package server

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// The plan records of POST /v1/plans (internal/controlplane/plans.go): one row per plan,
// one per step. The steps themselves are ordinary jobs.

var _ controlplane.Plans = sqlBackend{}

const planCols = `id, pool, steps, approval, idempotency_key, request_hash, created_by, created_at, ended`

type rowScanner interface{ Scan(dest ...any) error }

func scanPlan(r rowScanner) (controlplane.PlanRecord, error) {
	var (
		rec   controlplane.PlanRecord
		steps string
		key   sql.NullString
		at    int64
	)
	if err := r.Scan(&rec.ID, &rec.Pool, &steps, &rec.Approval, &key, &rec.RequestHash, &rec.CreatedBy, &at, &rec.Ended); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return rec, controlplane.ErrNoPlan
		}
		return rec, err
	}
	rec.IdempotencyKey, rec.CreatedAt = key.String, msTime(at)
	return rec, json.Unmarshal([]byte(steps), &rec.Steps)
}

func (b sqlBackend) CreatePlan(ctx context.Context, rec controlplane.PlanRecord) (controlplane.PlanRecord, bool, error) {
	out, created := rec, true
	err := b.s.store.tx(ctx, func(tx *txn) error {
		if rec.IdempotencyKey != "" {
			old, err := scanPlan(tx.QueryRowContext(ctx, `SELECT `+planCols+` FROM plans WHERE pool = ? AND idempotency_key = ?`, rec.Pool, rec.IdempotencyKey))
			switch {
			case err == nil && !bytes.Equal(old.RequestHash, rec.RequestHash):
				return controlplane.Refuse(http.StatusConflict, api.CodeIdempotency, "idempotency_key %q was already used in pool %q for a different plan (%s)", rec.IdempotencyKey, rec.Pool, old.ID)
			case err == nil:
				out, created = old, false
				return nil
			case !errors.Is(err, controlplane.ErrNoPlan):
				return err
			}
		}
		steps, _ := json.Marshal(rec.Steps)
		var key any
		if rec.IdempotencyKey != "" {
			key = rec.IdempotencyKey
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO plans (`+planCols+`) VALUES (?, ?, ?, '', ?, ?, ?, ?, 0)`,
			rec.ID, rec.Pool, string(steps), key, rec.RequestHash, rec.CreatedBy, rec.CreatedAt.UnixMilli()); err != nil {
			return err
		}
		for _, id := range rec.Steps {
			if _, err := tx.ExecContext(ctx, `INSERT INTO plan_steps (job_id, plan_id) VALUES (?, ?)`, id, rec.ID); err != nil {
				return err
			}
		}
		return audit(ctx, tx, rec.CreatedAt, rec.CreatedBy, "", "plan.submit", "", auditDetail(map[string]any{"plan": rec.ID, "steps": rec.Steps}))
	})
	if err == nil && created {
		b.s.plans.created()
		b.s.changed.broadcast() // a move made between the commit and created() skipped it
	}
	return out, created, err
}

func (b sqlBackend) Plan(ctx context.Context, id string) (controlplane.PlanRecord, error) {
	return scanPlan(b.s.store.queryRow(ctx, `SELECT `+planCols+` FROM plans WHERE id = ?`, id))
}

func (b sqlBackend) PlanOfJob(ctx context.Context, jobID string) (string, error) {
	var plan string
	err := b.s.store.queryRow(ctx, `SELECT plan_id FROM plan_steps WHERE job_id = ?`, jobID).Scan(&plan)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return plan, err
}

func (b sqlBackend) AttachPlanApproval(ctx context.Context, p controlplane.Principal, id, token string) (controlplane.PlanRecord, error) {
	var out controlplane.PlanRecord
	err := b.s.store.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `UPDATE plans SET approval = ? WHERE id = ? AND approval = ''`, token, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			if err == nil {
				err = controlplane.Refuse(http.StatusConflict, api.CodeInvalidState, "plan %s already has an approval", id)
			}
			return err
		}
		if out, err = scanPlan(tx.QueryRowContext(ctx, `SELECT `+planCols+` FROM plans WHERE id = ?`, id)); err != nil {
			return err
		}
		return audit(ctx, tx, b.s.cfg.Now(), p.TokenID, string(p.Role), "plan.approve", "", auditDetail(controlplane.ApprovalAuditDetail(token)))
	})
	if err == nil {
		b.s.changed.broadcast()
	}
	return out, err
}

func (b sqlBackend) ActivePlans(ctx context.Context) ([]string, error) {
	none, gen := b.s.plans.noneActive()
	if none {
		return nil, nil
	}
	ids, err := b.activePlans(ctx)
	if err == nil && len(ids) == 0 {
		b.s.plans.foundNone(gen)
	}
	return ids, err
}

var qActivePlans = hot(`SELECT id FROM plans WHERE ended = 0 ORDER BY created_at`)

func (b sqlBackend) activePlans(ctx context.Context) ([]string, error) {
	rows, err := b.s.store.rstmts[qActivePlans].QueryContext(ctx)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

func (b sqlBackend) EndPlan(ctx context.Context, id string) error {
	return b.s.store.tx(ctx, func(tx *txn) error {
		_, err := tx.ExecContext(ctx, `UPDATE plans SET ended = 1 WHERE id = ?`, id)
		return err
	})
}

package server

import (
	"context"
	"database/sql"
	"errors"
	"net/http"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// The control plane keeps the newest audit head each worker reported with its results, so
// that the worker's log can be checked from off its host (`castellan audit verify --head`):
// whoever can rewrite the log there, key included, cannot reach this copy.

// recordAuditHead keeps h if it is further along the worker's chain than the one held. A
// lower seq is not taken: the held head stays, and a log rolled back below it fails against it.
func recordAuditHead(ctx context.Context, tx *txn, workerID string, h *api.AuditHead, nowMS int64) error {
	if h == nil {
		return nil
	}
	_, err := tx.ExecContext(ctx, qRecordAuditHead, workerID, int64(h.Seq), h.Hash, nowMS)
	return err
}

// qRecordAuditHead runs with every completion that carries a head (see stmts.go).
var qRecordAuditHead = hot(`INSERT INTO audit_heads(worker_id, seq, hash, reported_at) VALUES (?,?,?,?)
		ON CONFLICT(worker_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, reported_at = excluded.reported_at
		WHERE excluded.seq > audit_heads.seq`)

// workerAuditHead is GET /v1/workers/{id}/audit-head; id is the worker id or its name.
func (s *Server) workerAuditHead(ctx context.Context, id string) (api.WorkerAuditHead, error) {
	rows, err := s.store.rdb.QueryContext(ctx, `SELECT h.worker_id, COALESCE(wk.name, ''), h.seq, h.hash, h.reported_at
		FROM audit_heads h LEFT JOIN workers wk ON wk.token_id = h.worker_id
		WHERE h.worker_id = ? OR wk.name = ? ORDER BY h.worker_id = ? DESC LIMIT 2`, id, id, id)
	if err != nil {
		return api.WorkerAuditHead{}, err
	}
	defer rows.Close()
	var found []api.WorkerAuditHead
	for rows.Next() {
		var h api.WorkerAuditHead
		var seq, at int64
		if err := rows.Scan(&h.WorkerID, &h.Name, &seq, &h.Hash, &at); err != nil {
			return api.WorkerAuditHead{}, err
		}
		h.Seq, h.ReportedAt = uint64(seq), msTime(at)
		found = append(found, h)
	}
	if err := rows.Err(); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return api.WorkerAuditHead{}, err
	}
	switch {
	case len(found) == 0:
		return api.WorkerAuditHead{}, errf(http.StatusNotFound, api.CodeNotFound, "no audit head reported by a worker with id or name %q", id)
	case len(found) > 1 && found[0].WorkerID != id:
		return api.WorkerAuditHead{}, errf(http.StatusBadRequest, api.CodeInvalidField, "more than one worker is named %q: ask by worker id", id)
	}
	return found[0], nil
}

package server

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
)

const maxCatalogTasks = schema.MaxCatalogTasks

// register records the worker (the layer checked the request).
func (s *Server) register(ctx context.Context, p Principal, req api.RegisterRequest) (api.RegisterResponse, error) {
	err := s.store.tx(ctx, func(tx *txn) error {
		now := s.cfg.Now()
		_, err := tx.ExecContext(ctx, `INSERT INTO workers(token_id, pool, name, agent_version, registered_at, last_seen_at)
			VALUES (?,?,?,?,?,?) ON CONFLICT(token_id) DO UPDATE SET name = excluded.name,
			agent_version = excluded.agent_version, last_seen_at = excluded.last_seen_at`,
			p.TokenID, p.Pool, req.Name, req.AgentVersion, now.UnixMilli(), now.UnixMilli())
		if err != nil {
			return err
		}
		detail, _ := json.Marshal(map[string]string{"name": req.Name, "agent_version": req.AgentVersion})
		return audit(ctx, tx, now, p.TokenID, string(p.Role), "worker.register", "", string(detail))
	})
	if err != nil {
		return api.RegisterResponse{}, err
	}
	return api.RegisterResponse{WorkerID: p.TokenID, Pool: p.Pool,
		LeaseTTLSeconds: int(s.cfg.LeaseTTL.Seconds()), MaxWaitSeconds: api.MaxWaitSeconds}, nil
}

// checkTask validates one task definition (the rules both modes share, internal/schema)
// and returns its schemas compacted.
func checkTask(i int, t api.TaskDef) (in, out []byte, err error) {
	in, out, err = schema.CheckTask(i, t)
	if err != nil {
		return nil, nil, errf(http.StatusBadRequest, api.CodeInvalidField, "%v", err)
	}
	return in, out, nil
}

// publishCatalog replaces the worker's catalog. A name+version already published in the
// pool must keep its exact definition: versions are immutable, so a client's input is
// always validated against what the worker that runs it published.
func (s *Server) publishCatalog(ctx context.Context, p Principal, req api.CatalogRequest) (api.CatalogResponse, error) {
	if req.Tasks == nil {
		return api.CatalogResponse{}, errf(http.StatusBadRequest, api.CodeInvalidField, "tasks is required (an array, may be empty)")
	}
	if len(req.Tasks) > maxCatalogTasks {
		return api.CatalogResponse{}, errf(http.StatusBadRequest, api.CodeInvalidField, "tasks has %d entries, at most %d", len(req.Tasks), maxCatalogTasks)
	}
	type def struct {
		api.TaskDef
		in, out []byte
		ann     any // annotations as JSON text, or nil
	}
	defs := make([]def, len(req.Tasks))
	seen := map[string]bool{}
	for i, t := range req.Tasks {
		in, out, err := checkTask(i, t)
		if err != nil {
			return api.CatalogResponse{}, err
		}
		key := t.Name + "@" + t.Version
		if seen[key] {
			return api.CatalogResponse{}, errf(http.StatusBadRequest, api.CodeInvalidField, "tasks[%d]: %s is listed twice", i, key)
		}
		seen[key] = true
		var ann any
		if t.Annotations != nil {
			b, err := json.Marshal(t.Annotations)
			if err != nil {
				return api.CatalogResponse{}, err
			}
			ann = string(b)
		}
		defs[i] = def{t, in, out, ann}
	}
	err := s.store.tx(ctx, func(tx *txn) error {
		var one int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM workers WHERE token_id = ?`, p.TokenID).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return errf(http.StatusConflict, api.CodeNotRegistered, "register first: POST /v1/workers/register")
		}
		if err != nil {
			return err
		}
		now := s.cfg.Now()
		var conflicts []api.SchemaIssue
		for i, d := range defs {
			var desc string
			var in []byte
			var out sql.Null[[]byte]
			err := tx.QueryRowContext(ctx, `SELECT description, input_schema, output_schema FROM tasks WHERE pool = ? AND name = ? AND version = ?`,
				p.Pool, d.Name, d.Version).Scan(&desc, &in, &out)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				var outV any
				if d.out != nil {
					outV = d.out
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO tasks(pool, name, version, description, input_schema, output_schema, published_at, title, annotations)
					VALUES (?,?,?,?,?,?,?,?,?)`, p.Pool, d.Name, d.Version, d.Description, d.in, outV, now.UnixMilli(), d.Title, d.ann); err != nil {
					return err
				}
			case err != nil:
				return err
			case desc != d.Description || !bytes.Equal(in, d.in) || !bytes.Equal(out.V, d.out):
				// Every conflicting entry is named, by its index in the request, so that a
				// worker can publish the rest instead of being refused for one plugin.
				conflicts = append(conflicts, controlplane.ConflictIssue(i, d.TaskDef, p.Pool))
			default:
				// Title and annotations are presentation and policy, not the version's
				// contract: the newest publication wins, as on the JetStream control plane.
				if _, err := tx.ExecContext(ctx, `UPDATE tasks SET title = ?, annotations = ? WHERE pool = ? AND name = ? AND version = ?`,
					d.Title, d.ann, p.Pool, d.Name, d.Version); err != nil {
					return err
				}
			}
		}
		if len(conflicts) > 0 {
			return controlplane.CatalogConflict(conflicts)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM worker_tasks WHERE token_id = ?`, p.TokenID); err != nil {
			return err
		}
		for _, d := range defs {
			if _, err := tx.ExecContext(ctx, `INSERT INTO worker_tasks(token_id, pool, name, version) VALUES (?,?,?,?)`,
				p.TokenID, p.Pool, d.Name, d.Version); err != nil {
				return err
			}
		}
		return audit(ctx, tx, now, p.TokenID, string(p.Role), "catalog.publish", "", fmt.Sprintf(`{"tasks":%d}`, len(defs)))
	})
	if err != nil {
		return api.CatalogResponse{}, err
	}
	s.queued.broadcast() // jobs for newly published tasks may now be leasable
	return s.catalog(ctx, p.Pool)
}

// catalog lists every task version published in pool.
func (s *Server) catalog(ctx context.Context, pool string) (api.CatalogResponse, error) {
	rows, err := s.store.db.QueryContext(ctx, `SELECT name, version, description, input_schema, output_schema, title, annotations FROM tasks
		WHERE pool = ? ORDER BY name, published_at, version`, pool)
	if err != nil {
		return api.CatalogResponse{}, err
	}
	defer rows.Close()
	out := api.CatalogResponse{Pool: pool, Tasks: []api.TaskDef{}}
	for rows.Next() {
		var t api.TaskDef
		var in []byte
		var o sql.Null[[]byte]
		var ann sql.NullString
		if err := rows.Scan(&t.Name, &t.Version, &t.Description, &in, &o, &t.Title, &ann); err != nil {
			return api.CatalogResponse{}, err
		}
		if ann.Valid {
			if err := json.Unmarshal([]byte(ann.String), &t.Annotations); err != nil {
				return api.CatalogResponse{}, fmt.Errorf("task %s@%s: stored annotations: %w", t.Name, t.Version, err)
			}
		}
		t.InputSchema = in
		if o.Valid {
			t.OutputSchema = o.V
		}
		out.Tasks = append(out.Tasks, t)
	}
	return out, rows.Err()
}

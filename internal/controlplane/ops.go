package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"github.com/castellan-dev/castellan/approval"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// The routes of this file are served in both modes where the backend has the storage:
// whoami always, GET /v1/workers with a WorkerLister, POST /v1/register/exchange with a
// RegistrationExchanger.

// registrationRole may call POST /v1/register/exchange and nothing else.
var registrationRole = []api.Role{api.RoleRegistration}

func (s *Server) opsRoutes(m *http.ServeMux) {
	m.Handle("GET /v1/whoami", s.auth(anyRole, s.hWhoami))
	if wl, ok := s.b.(WorkerLister); ok {
		m.Handle("GET /v1/workers", s.auth(approvers, func(w http.ResponseWriter, r *http.Request, p Principal) error {
			return s.hWorkers(w, r, p, wl)
		}))
	}
	if rx, ok := s.b.(RegistrationExchanger); ok {
		m.Handle("POST /v1/register/exchange", s.auth(registrationRole, func(w http.ResponseWriter, r *http.Request, p Principal) error {
			return s.hRegisterExchange(w, r, p, rx)
		}))
	}
}

// hWhoami is GET /v1/whoami: the caller's own token, for any role.
func (s *Server) hWhoami(w http.ResponseWriter, r *http.Request, p Principal) error {
	if err := OnlyParams(r); err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusOK, p.Token())
	return nil
}

// workerListPool is the pool filter of GET /v1/workers for p: an approver bound to a pool
// sees only that pool's workers; "" is every pool.
func workerListPool(p Principal, pool string) (string, error) {
	if pool == "" && p.Pool != api.AllPools && p.Role != api.RoleAdmin {
		return p.Pool, nil
	}
	if pool == "" {
		return "", nil
	}
	return ResolvePool(p, pool)
}

// hWorkers is GET /v1/workers[?pool=P] (admin; approvers for their pool).
func (s *Server) hWorkers(w http.ResponseWriter, r *http.Request, p Principal, wl WorkerLister) error {
	if err := OnlyParams(r, "pool"); err != nil {
		return err
	}
	pool, err := workerListPool(p, r.URL.Query().Get("pool"))
	if err != nil {
		return err
	}
	list, err := wl.ListWorkers(r.Context(), pool, s.cfg.Now())
	if err != nil {
		return err
	}
	if list.Workers == nil {
		list.Workers = []api.WorkerInfo{}
	}
	api.WriteJSON(w, http.StatusOK, list)
	return nil
}

// hRegisterExchange is POST /v1/register/exchange (registration tokens only).
func (s *Server) hRegisterExchange(w http.ResponseWriter, r *http.Request, p Principal, rx RegistrationExchanger) error {
	var req api.RegisterExchangeRequest
	if err := Decode(w, r, smallBody, &req, false); err != nil {
		return err
	}
	if req.Name == "" || len(req.Name) > MaxWorkerName {
		return Refuse(http.StatusBadRequest, api.CodeInvalidField, "name is required (the worker's name), at most %d bytes", MaxWorkerName)
	}
	t, err := rx.ExchangeRegistration(r.Context(), p, req.Name, s.cfg.Now())
	if errors.Is(err, ErrRegistrationUsed) {
		return Refuse(http.StatusUnauthorized, api.CodeUnauthenticated, "the registration token was already used: create a new one (castellan token create --role registration)")
	}
	if err != nil {
		return err
	}
	api.WriteJSON(w, http.StatusCreated, t)
	return nil
}

// expiredRefusal is the 401 of a known token past its expiry: told apart from an unknown
// one, so that its holder knows to ask for a new one. It names the token's id, never its
// secret.
func expiredRefusal(p Principal) error {
	e := &api.TokenExpiredError{ID: p.TokenID, At: *p.ExpiresAt}
	return Refuse(http.StatusUnauthorized, api.CodeUnauthenticated, "%s", e.Error())
}

// record appends an API action to the audit log of a backend that does not audit its own
// writes (AuditAppender). A failed append is logged, not returned: the action happened.
func (s *Server) record(ctx context.Context, p Principal, action, jobID string, detail any) {
	ap, ok := s.b.(AuditAppender)
	if !ok {
		return
	}
	e := api.AuditEntry{At: s.cfg.Now().UTC(), Actor: p.TokenID, Role: string(p.Role), Action: action, JobID: jobID}
	if detail != nil {
		if b, err := json.Marshal(detail); err == nil {
			e.Detail = b
		}
	}
	if err := ap.AppendAudit(context.WithoutCancel(ctx), e); err != nil {
		s.log.Error("audit log append failed", zap.String("action", action), zap.String("job_id", jobID), zap.Error(err))
	}
}

// ApprovedByNote says in an approval's audit detail what its approved_by is worth here.
const ApprovedByNote = "the approval's approved_by claim as presented; the control plane holds no keys and has not verified it (each worker verifies the approval)"

// ApprovalAuditDetail is the audit detail of approval token attached to a job or a plan, in
// both modes: who approved it, by the token's approved_by claim read without verification
// (approval.Inspect), said so in the detail, and the plan a plan approval is for. It is nil
// when the claims name neither (or cannot be read: the job route checks only the token's
// shape).
func ApprovalAuditDetail(token string) map[string]any {
	c, _, err := approval.Inspect(token)
	if err != nil {
		return nil
	}
	d := map[string]any{}
	if c.Plan != "" {
		d["plan"] = c.Plan
	}
	if c.ApprovedBy != nil {
		d["approved_by"] = *c.ApprovedBy
		d["approved_by_note"] = ApprovedByNote
	}
	if len(d) == 0 {
		return nil
	}
	return d
}

// TokenAuditDetail is the audit detail of a created token, in both modes and for direct
// creation: never its secret.
func TokenAuditDetail(t api.Token) map[string]any {
	d := map[string]any{"id": t.ID, "role": t.Role, "pool": t.Pool}
	if t.ExpiresAt != nil {
		d["expires_at"] = t.ExpiresAt.UTC().Format(time.RFC3339Nano)
	}
	return d
}

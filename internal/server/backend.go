package server

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"time"

	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// sqlBackend is the SQLite store and queue under the /v1 layer (internal/controlplane):
// each method is one transaction of jobs.go, catalog.go or tokens.go. It serves the HTTP
// worker routes too, since workers of this mode lease over HTTP.
type sqlBackend struct{ s *Server }

var (
	_ controlplane.Backend      = sqlBackend{}
	_ controlplane.Workers      = sqlBackend{}
	_ controlplane.Auditor      = sqlBackend{}
	_ controlplane.AuditHeads   = sqlBackend{}
	_ controlplane.TokenCreator = sqlBackend{}

	_ controlplane.WorkerLister          = sqlBackend{}
	_ controlplane.RegistrationExchanger = sqlBackend{}
)

func (b sqlBackend) Authenticate(ctx context.Context, secret string) (Principal, error) {
	p, err := b.s.store.Authenticate(ctx, secret)
	if errors.Is(err, ErrTokenInvalid) {
		return Principal{}, controlplane.ErrTokenInvalid
	}
	return p, err
}

func (b sqlBackend) Ready(ctx context.Context) error {
	var one int
	return b.s.store.rdb.QueryRowContext(ctx, "SELECT 1").Scan(&one)
}

func (b sqlBackend) Catalog(ctx context.Context, pool string) ([]api.TaskDef, error) {
	c, err := b.s.catalog(ctx, pool)
	return c.Tasks, err
}

func (b sqlBackend) FindTask(ctx context.Context, pool, name, version string) (api.TaskDef, bool, error) {
	q, args := qTaskNewest, []any{pool, name}
	if version != "" {
		q, args = qTaskVersion, append(args, version)
	}
	t := api.TaskDef{Name: name}
	var in []byte
	err := b.s.store.queryRow(ctx, q, args...).Scan(&t.Version, &in)
	if errors.Is(err, sql.ErrNoRows) {
		return api.TaskDef{}, false, nil
	}
	t.InputSchema = in
	return t, err == nil, err
}

func (b sqlBackend) Submit(ctx context.Context, p Principal, sub controlplane.Submission) (api.Job, bool, error) {
	return b.s.submit(ctx, p, sub)
}

func (b sqlBackend) Job(ctx context.Context, id string) (api.Job, error) {
	if j, ok := b.s.ended.get(id); ok {
		return j, nil
	}
	j, err := readJob(ctx, b.s.store, id)
	return j.Job, err
}

func (b sqlBackend) Approve(ctx context.Context, p Principal, id, token string) (api.Job, error) {
	return b.s.approve(ctx, p, id, token)
}

func (b sqlBackend) Deny(ctx context.Context, p Principal, id, reason string) (api.Job, error) {
	return b.s.deny(ctx, p, id, reason)
}

func (b sqlBackend) Cancel(ctx context.Context, p Principal, id string) (api.Job, error) {
	return b.s.cancel(ctx, p, id)
}

func (b sqlBackend) ListJobs(ctx context.Context, q controlplane.ListQuery) (api.JobList, error) {
	return b.s.listJobs(ctx, q)
}

func (b sqlBackend) Next(e controlplane.Event, id string) <-chan struct{} {
	switch e {
	case controlplane.JobEnded:
		return b.s.finished.Wait(id)
	case controlplane.WorkQueued:
		return b.s.queued.wait()
	}
	return b.s.changed.wait()
}

func (b sqlBackend) ListTokens(ctx context.Context) ([]api.Token, error) {
	return b.s.store.ListTokens(ctx)
}

func (b sqlBackend) RevokeToken(ctx context.Context, p Principal, id string) (bool, error) {
	return b.s.store.revokeTokenAudited(ctx, id, p.TokenID, string(p.Role), b.s.cfg.Now())
}

func (b sqlBackend) CreateToken(ctx context.Context, p Principal, req api.TokenCreateRequest) (api.Token, error) {
	t, err := b.s.store.createTokenAudited(ctx, req, p.TokenID, string(p.Role), b.s.cfg.Now())
	var bad tokenRequestError
	if errors.As(err, &bad) {
		return api.Token{}, errf(http.StatusBadRequest, api.CodeInvalidField, "%v", bad.error)
	}
	return t, err
}

func (b sqlBackend) ListWorkers(ctx context.Context, pool string, now time.Time) (api.WorkerList, error) {
	return b.s.store.ListWorkers(ctx, pool, api.OnlineWindow(b.s.cfg.LeaseTTL), now)
}

func (b sqlBackend) ExchangeRegistration(ctx context.Context, p Principal, name string, now time.Time) (api.Token, error) {
	return b.s.store.ExchangeRegistration(ctx, p, name, now)
}

func (b sqlBackend) ListAudit(ctx context.Context, jobID, action string, limit int, cursor int64) (api.AuditList, error) {
	return b.s.store.listAudit(ctx, jobID, action, limit, cursor)
}

func (b sqlBackend) WorkerAuditHead(ctx context.Context, id string) (api.WorkerAuditHead, error) {
	return b.s.workerAuditHead(ctx, id)
}

func (b sqlBackend) Register(ctx context.Context, p Principal, req api.RegisterRequest) (api.RegisterResponse, error) {
	return b.s.register(ctx, p, req)
}

func (b sqlBackend) PublishCatalog(ctx context.Context, p Principal, req api.CatalogRequest) (api.CatalogResponse, error) {
	return b.s.publishCatalog(ctx, p, req)
}

func (b sqlBackend) Registered(ctx context.Context, p Principal) error {
	var one int
	if err := b.s.store.queryRow(ctx, qWorkerExists, p.TokenID).Scan(&one); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return errf(http.StatusConflict, api.CodeNotRegistered, "register and publish a catalog first: POST /v1/workers/register, PUT /v1/catalog")
		}
		return err
	}
	return nil
}

func (b sqlBackend) LeaseOnce(ctx context.Context, p Principal, max int) ([]api.LeasedJob, error) {
	return b.s.leaseOnce(ctx, p, max)
}

func (b sqlBackend) Heartbeat(ctx context.Context, p Principal, leaseToken string) (api.HeartbeatResponse, error) {
	return b.s.heartbeat(ctx, p, leaseToken)
}

func (b sqlBackend) Complete(ctx context.Context, p Principal, id string, c controlplane.Completion) (api.CompleteResponse, error) {
	return b.s.complete(ctx, p, id, c)
}

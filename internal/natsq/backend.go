package natsq

import (
	"context"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// natsBackend is the JetStream store under the /v1 layer (internal/controlplane): the job,
// token, idempotency, catalog and presence buckets and the audit stream. It has no worker
// routes (workers talk to NATS) and no registration tokens (a worker's NATS credentials
// are minted with the account's signing key, which the control plane does not hold).
type natsBackend struct{ s *APIServer }

var (
	_ controlplane.Backend      = natsBackend{}
	_ controlplane.AuditHeads   = natsBackend{}
	_ controlplane.TokenCreator = natsBackend{}
	_ controlplane.ListWaker    = natsBackend{}

	_ controlplane.Auditor       = natsBackend{}
	_ controlplane.AuditAppender = natsBackend{}
	_ controlplane.WorkerLister  = natsBackend{}
)

func (b natsBackend) Authenticate(ctx context.Context, secret string) (controlplane.Principal, error) {
	p, err := authenticate(ctx, b.s.d.nc, secret)
	if errors.Is(err, errTokenInvalid) {
		return controlplane.Principal{}, controlplane.ErrTokenInvalid
	}
	return controlplane.Principal{TokenID: p.tokenID, Name: p.name, Role: p.role, Pool: p.pool,
		CreatedAt: p.createdAt, ExpiresAt: p.expiresAt}, err
}

// Ready: the job bucket's status is one round trip to JetStream.
func (b natsBackend) Ready(ctx context.Context) error {
	_, err := b.s.d.jobs.Status(ctx)
	return err
}

func (b natsBackend) Catalog(_ context.Context, pool string) ([]api.TaskDef, error) {
	return b.s.poolCatalog(pool), nil
}

func (b natsBackend) FindTask(_ context.Context, pool, name, version string) (api.TaskDef, bool, error) {
	var def api.TaskDef
	found := false
	for _, t := range b.s.poolCatalog(pool) {
		if t.Name == name && (version == "" || t.Version == version) {
			def, found = t, true // the newest published wins when no version is asked for
		}
	}
	return def, found, nil
}

func (b natsBackend) Submit(ctx context.Context, p controlplane.Principal, sub controlplane.Submission) (api.Job, bool, error) {
	return b.s.submit(ctx, p, sub)
}

func (b natsBackend) Job(ctx context.Context, id string) (api.Job, error) {
	if j, ok := b.s.d.final.get(id); ok {
		return j, nil // written terminal by this replica: final (final.go)
	}
	j, err := b.s.d.Get(ctx, id)
	if client.IsCode(err, api.CodeNotFound) {
		return api.Job{}, controlplane.ErrNoJob
	}
	return j, err
}

func (b natsBackend) Approve(ctx context.Context, _ controlplane.Principal, id, token string) (api.Job, error) {
	return b.s.d.approve(ctx, id, token)
}

func (b natsBackend) Deny(ctx context.Context, p controlplane.Principal, id, reason string) (api.Job, error) {
	return b.s.d.deny(ctx, id, p.Who(), reason)
}

func (b natsBackend) Cancel(ctx context.Context, _ controlplane.Principal, id string) (api.Job, error) {
	return b.s.d.cancel(ctx, id, true)
}

func (b natsBackend) ListJobs(ctx context.Context, q controlplane.ListQuery) (api.JobList, error) {
	f := jobFilter{ListQuery: q}
	if q.Cursor != "" {
		var ok bool
		if f.after, ok = parseCursor(q.Cursor); !ok {
			return api.JobList{}, controlplane.BadCursor(q.Cursor)
		}
	}
	return b.s.listJobs(ctx, f)
}

func (b natsBackend) Next(e controlplane.Event, id string) <-chan struct{} {
	if e != controlplane.JobEnded {
		id = ""
	}
	return b.s.feed.next(id)
}

func (b natsBackend) NextMatch(q controlplane.ListQuery) (<-chan struct{}, func()) {
	return b.s.feed.nextMatch(q)
}

func (b natsBackend) ListTokens(ctx context.Context) ([]api.Token, error) {
	return listTokens(ctx, b.s.tokens)
}

func (b natsBackend) RevokeToken(ctx context.Context, p controlplane.Principal, id string) (bool, error) {
	ok, err := revokeToken(ctx, b.s.tokens, id, b.s.d.o.Now())
	if ok && err == nil {
		b.s.log.Info("token revoked", zap.String("token_id", id), zap.String("by", p.TokenID))
	}
	return ok, err
}

func (b natsBackend) WorkerAuditHead(ctx context.Context, id string) (api.WorkerAuditHead, error) {
	return b.s.workerAuditHead(ctx, id)
}

func (b natsBackend) CreateToken(ctx context.Context, p controlplane.Principal, req api.TokenCreateRequest) (api.Token, error) {
	t, err := newToken(ctx, b.s.tokens, req, b.s.d.o.Now())
	var bad tokenRequestError
	if errors.As(err, &bad) {
		return api.Token{}, controlplane.Refuse(http.StatusBadRequest, api.CodeInvalidField, "%v", bad.error)
	}
	if err == nil {
		b.s.log.Info("token created", zap.String("token_id", t.ID), zap.String("role", string(t.Role)), zap.String("by", p.TokenID))
	}
	return t, err
}

func (b natsBackend) ListAudit(ctx context.Context, jobID, action string, limit int, cursor int64) (api.AuditList, error) {
	return listAudit(ctx, b.s.d.js, jobID, action, limit, cursor)
}

func (b natsBackend) AppendAudit(ctx context.Context, e api.AuditEntry) error {
	return b.s.audit.append(ctx, e)
}

func (b natsBackend) ListWorkers(ctx context.Context, pool string, now time.Time) (api.WorkerList, error) {
	return listWorkers(ctx, b.s.workers, pool, api.OnlineWindow(b.s.d.o.AckWait), now)
}

package controlplane

import (
	"context"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
)

// Backend is what the layer needs from a store and queue: reads, writes and the
// transitions of state.go applied atomically. It checks nothing the layer checks (names,
// sizes, schemas, roles); what it refuses is what only its data can tell (an unknown job,
// a lost race, an idempotency key used for another request), with the refusals of this
// package. internal/server (SQLite) and internal/natsq (JetStream) implement it.
type Backend interface {
	// Authenticate resolves a bearer token, or returns ErrTokenInvalid.
	Authenticate(ctx context.Context, secret string) (Principal, error)
	// Ready reports whether the backend's store answers (GET /readyz).
	Ready(ctx context.Context) error

	// Catalog returns the tasks published in pool (none: an empty slice or nil).
	Catalog(ctx context.Context, pool string) ([]api.TaskDef, error)
	// FindTask returns task name's definition in pool: version, or the newest published
	// when version is "". Only Name, Version and InputSchema need be set.
	FindTask(ctx context.Context, pool, name, version string) (api.TaskDef, bool, error)

	// Submit records a validated job, or returns the job an earlier submit with the same
	// idempotency key made (created false). A key used with another RequestHash is
	// refused with IdempotencyConflict.
	Submit(ctx context.Context, p Principal, s Submission) (api.Job, bool, error)
	// Job returns a job, or ErrNoJob (or NoJob). Pool visibility is the layer's.
	Job(ctx context.Context, id string) (api.Job, error)
	// Approve, Deny and Cancel apply the transition of the same name in state.go to job
	// id, after Visible(p, job), atomically with the read.
	Approve(ctx context.Context, p Principal, id, token string) (api.Job, error)
	Deny(ctx context.Context, p Principal, id, reason string) (api.Job, error)
	Cancel(ctx context.Context, p Principal, id string) (api.Job, error)
	// ListJobs returns one page, newest first. The cursor is the backend's own (it refuses
	// one it did not make with BadCursor).
	ListJobs(ctx context.Context, q ListQuery) (api.JobList, error)
	// Next returns a channel that is closed when e may have happened (for JobEnded, to job
	// id). Take it before reading, then wait on it: a change between the two is not missed.
	// The layer also rechecks every Config.RecheckInterval, so a backend may be late.
	Next(e Event, id string) <-chan struct{}

	// ListTokens lists every token (no secrets); RevokeToken revokes one (false: no
	// active token with that id).
	ListTokens(ctx context.Context) ([]api.Token, error)
	RevokeToken(ctx context.Context, p Principal, id string) (bool, error)
}

// Event is what a long-poll waits for.
type Event int

const (
	JobEnded    Event = iota // the job reached a terminal state (GET /v1/jobs/{id}/wait)
	JobsChanged              // a job was created or changed state (GET /v1/jobs?wait_seconds=)
	WorkQueued               // a job may have become leasable (POST /v1/lease)
)

// Submission is a submit the layer has validated, with the job's id made and the task's
// version resolved.
type Submission struct {
	ID             string // api.NewJobID
	Task           string
	TaskVersion    string // the published version the job runs
	Pool           string
	Input          []byte // compacted; valid against the task's input schema
	MaxAttempts    int
	IdempotencyKey string // "" for none
	RequestHash    []byte // what an idempotent replay must match (RequestHash)
	Approval       string // "" for pending_approval
	Auto           bool   // Approval is the control plane's own (auto-approval)
	TraceParent    string
	// SubmittedByName is the submitting Principal's Name, stored as api.Job.SubmittedByName.
	SubmittedByName string
}

// ListQuery is GET /v1/jobs's query, checked. Pool "" lists every pool.
type ListQuery struct {
	State  api.State
	Task   string
	Pool   string
	Limit  int
	Cursor string
}

// Match reports whether j passes the query's filters (not its cursor).
func (q ListQuery) Match(j api.Job) bool {
	return (q.State == "" || j.State == q.State) && (q.Task == "" || j.Task == q.Task) && (q.Pool == "" || j.Pool == q.Pool)
}

// Optional interfaces: the layer serves a route group only when its backend implements
// the interface (a JetStream backend's workers talk to NATS, so it has no worker routes).

// ListWaker refines Next(JobsChanged) for a list long-poll, for a backend whose page is
// costly to read again: the channel is closed only when a job that q matches may have been
// written. stop releases it when the waiter leaves first.
type ListWaker interface {
	NextMatch(q ListQuery) (ch <-chan struct{}, stop func())
}

// Workers serves the HTTP worker routes: register, catalog publication, lease,
// heartbeat, complete.
type Workers interface {
	Register(ctx context.Context, p Principal, req api.RegisterRequest) (api.RegisterResponse, error)
	PublishCatalog(ctx context.Context, p Principal, req api.CatalogRequest) (api.CatalogResponse, error)
	// Registered refuses (not_registered) a worker that has not registered.
	Registered(ctx context.Context, p Principal) error
	// LeaseOnce hands out up to max leasable jobs at once, or none.
	LeaseOnce(ctx context.Context, p Principal, max int) ([]api.LeasedJob, error)
	Heartbeat(ctx context.Context, p Principal, leaseToken string) (api.HeartbeatResponse, error)
	// Complete records a completion the layer has checked (CheckCompletion, the output
	// compacted and under its cap).
	Complete(ctx context.Context, p Principal, id string, c Completion) (api.CompleteResponse, error)
}

// Completion is a checked api.CompleteRequest.
type Completion struct {
	api.CompleteRequest
	Code      outcome.Code
	Retryable bool
	Output    []byte // compacted; nil for none
}

// Auditor serves GET /v1/audit.
type Auditor interface {
	ListAudit(ctx context.Context, jobID, action string, limit int, cursor int64) (api.AuditList, error)
}

// AuditHeads serves GET /v1/workers/{id}/audit-head.
type AuditHeads interface {
	WorkerAuditHead(ctx context.Context, id string) (api.WorkerAuditHead, error)
}

// TokenCreator serves POST /v1/tokens. The layer has checked the request
// (api.CheckTokenRequest, the pool resolved); a backend refuses a role its mode has no use
// for with invalid_field.
type TokenCreator interface {
	CreateToken(ctx context.Context, p Principal, req api.TokenCreateRequest) (api.Token, error)
}

// WorkerLister serves GET /v1/workers.
type WorkerLister interface {
	// ListWorkers lists the workers of pool ("" for every pool) as of now, in
	// api.SortWorkers order; online means seen within the backend's online window.
	ListWorkers(ctx context.Context, pool string, now time.Time) (api.WorkerList, error)
}

// RegistrationExchanger serves POST /v1/register/exchange.
type RegistrationExchanger interface {
	// ExchangeRegistration uses up the registration token p and returns a new worker
	// token of its pool named name (Secret set), at once: a token exchanged twice yields
	// one worker token, and the second exchange ErrRegistrationUsed. The backend audits
	// the exchange with it.
	ExchangeRegistration(ctx context.Context, p Principal, name string, now time.Time) (api.Token, error)
}

// AuditAppender is a backend whose writes do not carry their own audit entries (JetStream:
// a KV compare-and-set cannot append to a stream atomically with it). The layer appends
// one entry for each API action it completed (AuditedActions), after the write. A backend
// that audits in the transaction of the write (SQLite) does not implement it, so that an
// action is never audited twice nor, there, without its entry.
type AuditAppender interface {
	AppendAudit(ctx context.Context, e api.AuditEntry) error
}

// Package api holds the wire types of the control-plane HTTP API (/v1), shared by the server
// and the Go client so that both sides agree on every field name. docs/api.md documents the
// same shapes for people; keep the two in step.
//
// Nothing here can carry an internal URL, a credential or a request detail: a task
// definition has a name, a version, a description and JSON Schemas, and nothing else.
package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/approval"
)

// Role is what a bearer token may do.
type Role string

const (
	RoleWorker   Role = "worker"   // register, publish catalog, lease, heartbeat, complete (own pool)
	RoleClient   Role = "client"   // submit, get, list, cancel, wait
	RoleApprover Role = "approver" // attach approvals (and read jobs to decide)
	RoleAdmin    Role = "admin"    // everything, including token management and audit
	// RoleRegistration may only exchange itself for a worker token of its pool
	// (POST /v1/register/exchange); HTTP mode only.
	RoleRegistration Role = "registration"
)

// Roles lists every role.
var Roles = []Role{RoleWorker, RoleClient, RoleApprover, RoleAdmin, RoleRegistration}

// AllPools is the pool of a non-worker token that may act on every pool.
const AllPools = "*"

// TokenPrefix starts every bearer token, in both control-plane modes, so that secret
// scanners can find leaked ones.
const TokenPrefix = "cst_"

// State is where a job is in its life.
type State string

const (
	StatePendingApproval State = "pending_approval"
	StateQueued          State = "queued"
	StateRunning         State = "running"
	StateCancelRequested State = "cancel_requested" // running, and the worker is told to stop
	StateSucceeded       State = "succeeded"
	StateFailed          State = "failed"    // non-retryable failure
	StateDead            State = "dead"      // retryable failures until attempts ran out
	StateRejected        State = "rejected"  // the worker refused the approval
	StateCancelled       State = "cancelled" // cancelled by a client
	StateDenied          State = "denied"    // refused by an approver before it reached a worker
)

// OutcomeDeniedByApprover is the outcome of a denied job. It is the control plane's, not an
// outcome.Code: no worker can report it, since a denied job never reaches one.
const OutcomeDeniedByApprover = "denied_by_approver"

// States lists every state.
var States = []State{StatePendingApproval, StateQueued, StateRunning, StateCancelRequested,
	StateSucceeded, StateFailed, StateDead, StateRejected, StateCancelled, StateDenied}

// Terminal reports whether no further transition can happen.
func (s State) Terminal() bool {
	switch s {
	case StateSucceeded, StateFailed, StateDead, StateRejected, StateCancelled, StateDenied:
		return true
	}
	return false
}

// Error codes in {"error":{"code":...}}. Stable: clients switch on them.
const (
	CodeUnauthenticated   = "unauthenticated"    // 401: missing, malformed, unknown or revoked token
	CodeForbidden         = "forbidden"          // 403: the token's role or pool does not allow this
	CodeNotFound          = "not_found"          // 404: no such route, job, token or task (in your pool)
	CodeMethodNotAllowed  = "method_not_allowed" // 405
	CodeInvalidJSON       = "invalid_json"       // 400: body is not one JSON object of the right types
	CodeUnknownField      = "unknown_field"      // 400: body has a field the API does not define
	CodeInvalidField      = "invalid_field"      // 400: a field has a value the API does not accept
	CodeInputInvalid      = "input_invalid"      // 400: input does not match the task's input_schema
	CodeBodyTooLarge      = "body_too_large"     // 413: request body over its limit
	CodeInputTooLarge     = "input_too_large"    // 413: job input over the input cap
	CodeOutputTooLarge    = "output_too_large"   // 413: job output over the output cap
	CodeUnknownTask       = "unknown_task"       // 400: task (version) not published in the pool
	CodeIdempotency       = "idempotency_conflict"
	CodeInvalidState      = "invalid_state"    // 409: the job is not in a state that allows this
	CodeLeaseConflict     = "lease_conflict"   // 409: stale lease token / attempt, or duplicate completion
	CodeLeaseLost         = "lease_lost"       // 409: heartbeat for a lease that is no longer yours
	CodeJobCancelled      = "job_cancelled"    // 409: heartbeat for a job that was cancelled: stop it
	CodeCatalogConflict   = "catalog_conflict" // 409: same task name+version published with another definition
	CodeNotRegistered     = "not_registered"   // 409: worker must register before this call
	CodeInternal          = "internal"         // 500
	CodeUnavailable       = "unavailable"      // 503: shutting down
	CodeAutoApproveFailed = "auto_approve_failed"
)

// ErrorBody is the body of every non-2xx response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail says what went wrong. Details, when present, lists schema violations.
type ErrorDetail struct {
	Code    string        `json:"code"`
	Message string        `json:"message"`
	Details []SchemaIssue `json:"details,omitempty"`
}

// SchemaIssue is one JSON Schema violation: where in the input, and what.
type SchemaIssue struct {
	Location string `json:"location"` // JSON Pointer into the input ("" is the root)
	Message  string `json:"message"`
}

// TaskDef is one task a worker can run. It deliberately has no field for endpoints, URLs
// or credentials: those stay on the worker.
type TaskDef struct {
	Name         string          `json:"name"`
	Version      string          `json:"version"`
	Title        string          `json:"title,omitempty"`
	Description  string          `json:"description,omitempty"`
	InputSchema  json.RawMessage `json:"input_schema"`
	OutputSchema json.RawMessage `json:"output_schema,omitempty"`
	// Annotations are the policy's hints about the task's effect (never the module
	// author's). Unlike the schemas they are not part of a version's identity: the security
	// team may change them without a new version, and the most recent publication wins.
	Annotations *ToolAnnotations `json:"annotations,omitempty"`
}

// ToolAnnotations say what a task does to the systems it calls, as the worker's policy
// states it. A nil field was not stated; a client must not assume either answer.
type ToolAnnotations struct {
	ReadOnly    *bool `json:"read_only,omitempty"`
	Destructive *bool `json:"destructive,omitempty"`
	Idempotent  *bool `json:"idempotent,omitempty"`
}

// MaxTitle is the longest task title a catalog accepts, in bytes.
const MaxTitle = 128

// RegisterRequest is POST /v1/workers/register.
type RegisterRequest struct {
	Name         string `json:"name"`          // human label, e.g. the host name
	AgentVersion string `json:"agent_version"` // castellan version string
}

// RegisterResponse tells the worker the server's lease parameters.
type RegisterResponse struct {
	WorkerID        string `json:"worker_id"`
	Pool            string `json:"pool"`
	LeaseTTLSeconds int    `json:"lease_ttl_seconds"`
	MaxWaitSeconds  int    `json:"max_wait_seconds"`
}

// CatalogRequest is PUT /v1/catalog: the worker's full catalog, replacing its previous one.
type CatalogRequest struct {
	Tasks []TaskDef `json:"tasks"`
}

// CatalogResponse lists the tasks published in a pool.
type CatalogResponse struct {
	Pool  string    `json:"pool"`
	Tasks []TaskDef `json:"tasks"`
}

// SubmitRequest is POST /v1/jobs.
type SubmitRequest struct {
	Task           string          `json:"task"`
	TaskVersion    string          `json:"task_version,omitempty"` // default: newest published
	Pool           string          `json:"pool"`
	Input          json.RawMessage `json:"input"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
	MaxAttempts    int             `json:"max_attempts,omitempty"` // default 3, at most 100
	Approval       string          `json:"approval,omitempty"`     // compact JWS
	// TraceParent is a W3C traceparent header value: the job's trace continues from it on
	// the control plane and the worker. Optional.
	TraceParent string `json:"traceparent,omitempty"`
}

// SubmitBody is SubmitRequest as a server decodes it: max_attempts is a pointer there, so
// that an explicit 0 (refused) is told apart from an absent field (the default). It
// shadows the embedded field, so the JSON names are SubmitRequest's exactly.
type SubmitBody struct {
	SubmitRequest
	MaxAttempts *int `json:"max_attempts,omitempty"`
}

// Request returns the submit request, or why max_attempts is refused: it is 1..100 when
// present, and omitted for the default.
func (b SubmitBody) Request() (SubmitRequest, error) {
	r := b.SubmitRequest
	r.MaxAttempts = 0
	if b.MaxAttempts != nil {
		if *b.MaxAttempts < 1 || *b.MaxAttempts > MaxAttemptsLimit {
			return r, fmt.Errorf("max_attempts is %d, want 1..%d (omit it for the server's default)", *b.MaxAttempts, MaxAttemptsLimit)
		}
		r.MaxAttempts = *b.MaxAttempts
	}
	return r, nil
}

// MaxAttemptsLimit bounds a job's max_attempts in both control-plane modes.
const MaxAttemptsLimit = 100

// ApproveRequest is POST /v1/jobs/{id}/approval.
type ApproveRequest struct {
	Token string `json:"token"`
}

// DenyRequest is POST /v1/jobs/{id}/deny: the approver's reason, shown to the submitter.
type DenyRequest struct {
	Reason string `json:"reason"`
}

// DenyBody is DenyRequest as a server decodes it: the reason raw, so that invalid UTF-8
// or a lone surrogate escape is refused instead of silently becoming U+FFFD.
type DenyBody struct {
	Reason json.RawMessage `json:"reason"`
}

// Check returns the reason, or why it is refused and with which code (CodeInvalidJSON
// when reason is not a JSON string, CodeInvalidField for a string CheckDenyReason refuses).
func (b DenyBody) Check() (reason, code string, err error) {
	raw := bytes.TrimSpace(b.Reason)
	if len(raw) == 0 || string(raw) == "null" {
		return "", CodeInvalidField, errors.New("reason is required: say why the job is denied")
	}
	if raw[0] != '"' {
		return "", CodeInvalidJSON, errors.New(`field "reason" must be a string`)
	}
	if err := approval.CheckIJSON(raw); err != nil {
		return "", CodeInvalidField, fmt.Errorf("reason: %v", err)
	}
	if err := json.Unmarshal(raw, &reason); err != nil {
		return "", CodeInvalidJSON, fmt.Errorf("reason: %v", err)
	}
	if err := CheckDenyReason(reason); err != nil {
		return "", CodeInvalidField, err
	}
	return reason, "", nil
}

// Job is the control plane's view of a job.
type Job struct {
	ID             string          `json:"id"`
	Task           string          `json:"task"`
	TaskVersion    string          `json:"task_version"`
	Pool           string          `json:"pool"`
	State          State           `json:"state"`
	Input          json.RawMessage `json:"input,omitempty"` // omitted in lists
	HasApproval    bool            `json:"has_approval"`
	Attempt        int             `json:"attempt"`
	MaxAttempts    int             `json:"max_attempts"`
	NotBefore      *time.Time      `json:"not_before,omitempty"`
	Outcome        string          `json:"outcome,omitempty"`       // outcome.Code of the last completion, or OutcomeDeniedByApprover
	Output         json.RawMessage `json:"output,omitempty"`        // omitted in lists
	ErrorMessage   string          `json:"error_message,omitempty"` // a denied job's: the approver's reason
	DeniedBy       string          `json:"denied_by,omitempty"`     // the denying token's name (its id if unnamed)
	DurationMS     int64           `json:"duration_ms,omitempty"`
	ModuleDigest   string          `json:"module_digest,omitempty"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
	SubmittedBy    string          `json:"submitted_by"`
	// SubmittedByName is the submitting token's name at submit ("" for an unnamed token):
	// what approval rules read as requester.
	SubmittedByName string `json:"submitted_by_name,omitempty"`
	// PlanID is the plan the job is a step of (GET /v1/jobs/{id} only; lists omit it): such a
	// job is approved or denied with its plan, never alone.
	PlanID     string     `json:"plan_id,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// JobList is GET /v1/jobs. NextCursor is empty on the last page.
type JobList struct {
	Jobs       []Job  `json:"jobs"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// LeaseRequest is POST /v1/lease.
type LeaseRequest struct {
	Max         int  `json:"max"`                    // 1..100
	WaitSeconds *int `json:"wait_seconds,omitempty"` // default 30, 0..60
}

// LeasedJob is one job handed to a worker.
type LeasedJob struct {
	JobID          string          `json:"job_id"`
	Task           string          `json:"task"`
	TaskVersion    string          `json:"task_version"`
	Pool           string          `json:"pool"`
	Input          json.RawMessage `json:"input"`
	Approval       string          `json:"approval"`
	Attempt        int             `json:"attempt"`
	MaxAttempts    int             `json:"max_attempts"`
	LeaseToken     string          `json:"lease_token"`
	LeaseExpiresAt time.Time       `json:"lease_expires_at"`
	// TraceParent is the W3C traceparent stored at submit, for the worker to continue the
	// job's trace. Empty when the submit carried none.
	TraceParent string `json:"traceparent,omitempty"`
}

// LeaseResponse may hold no jobs when the wait elapsed.
type LeaseResponse struct {
	Jobs []LeasedJob `json:"jobs"`
}

// HeartbeatResponse is the answer to POST /v1/leases/{token}/heartbeat.
type HeartbeatResponse struct {
	JobID           string    `json:"job_id"`
	LeaseExpiresAt  time.Time `json:"lease_expires_at"`
	CancelRequested bool      `json:"cancel_requested"`
}

// CompleteRequest is POST /v1/jobs/{id}/complete.
type CompleteRequest struct {
	LeaseToken   string          `json:"lease_token"`
	Attempt      int             `json:"attempt"`
	Outcome      string          `json:"outcome"` // an outcome.Code
	Output       json.RawMessage `json:"output,omitempty"`
	ErrorMessage string          `json:"error_message,omitempty"`
	DurationMS   int64           `json:"duration_ms"`
	ModuleDigest string          `json:"module_digest,omitempty"`
	Retryable    *bool           `json:"retryable,omitempty"` // default: outcome.Code.Retryable()
	// AuditHead is the worker's latest signed audit checkpoint, so that its log can be
	// checked from off the host (`castellan audit verify --head`). Optional.
	AuditHead *AuditHead `json:"audit_head,omitempty"`
}

// AuditHead names a checkpoint in a worker's audit log: its sequence number and the hex
// SHA-256 of its line. Nothing about the network or the jobs.
type AuditHead struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// WorkerAuditHead is GET /v1/workers/{id}/audit-head: the newest head the worker reported.
type WorkerAuditHead struct {
	WorkerID   string    `json:"worker_id"`
	Name       string    `json:"name"`
	Seq        uint64    `json:"seq"`
	Hash       string    `json:"hash"`
	ReportedAt time.Time `json:"reported_at"`
}

// CompleteResponse says what the completion did to the job.
type CompleteResponse struct {
	JobID     string     `json:"job_id"`
	State     State      `json:"state"`
	Attempt   int        `json:"attempt"`
	NotBefore *time.Time `json:"not_before,omitempty"` // set when requeued for retry
}

// TokenCreateRequest is POST /v1/tokens.
type TokenCreateRequest struct {
	Role Role   `json:"role"`
	Pool string `json:"pool"`
	Name string `json:"name,omitempty"`
	// TTLSeconds makes the token expire that many seconds after its creation; omitted (or
	// 0), it never expires. At most MaxTokenTTLSeconds.
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
}

// RegisterExchangeRequest is POST /v1/register/exchange, sent with a registration token:
// the worker's name, which its new worker token is named after. The answer is that token
// (Token, Secret set) and the registration token is used up.
type RegisterExchangeRequest struct {
	Name string `json:"name"`
}

// MaxRegistrationTTLSeconds bounds a registration token's ttl_seconds (a day): it is meant
// to be handed to a new host and exchanged at its first start.
const MaxRegistrationTTLSeconds = 24 * 3600

// MaxTokenTTLSeconds bounds a token's ttl_seconds (ten years): beyond it, omit the field.
const MaxTokenTTLSeconds = 10 * 366 * 24 * 3600

// CheckTokenTTL says why a ttl_seconds is refused, in both control-plane modes.
func CheckTokenTTL(ttl int64) error {
	if ttl < 0 || ttl > MaxTokenTTLSeconds {
		return fmt.Errorf("ttl_seconds is %d, want 1..%d (omit it for a token that never expires)", ttl, MaxTokenTTLSeconds)
	}
	return nil
}

// Token describes a bearer token. Secret is set only in the response that created it.
type Token struct {
	ID        string     `json:"id"`
	Role      Role       `json:"role"`
	Pool      string     `json:"pool"`
	Name      string     `json:"name,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	// ExpiresAt is when the token stops authenticating; nil for a token without a TTL.
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	Secret    string     `json:"token,omitempty"`
}

// Expired reports whether the token has expired at now.
func (t Token) Expired(now time.Time) bool { return t.ExpiresAt != nil && !now.Before(*t.ExpiresAt) }

// TokenList is GET /v1/tokens.
type TokenList struct {
	Tokens []Token `json:"tokens"`
}

// AuditEntry is one control-plane action.
type AuditEntry struct {
	ID     int64           `json:"id"`
	At     time.Time       `json:"at"`
	Actor  string          `json:"actor"` // token id, or "server" for the reaper
	Role   string          `json:"role"`
	Action string          `json:"action"`
	JobID  string          `json:"job_id,omitempty"`
	Detail json.RawMessage `json:"detail,omitempty"`
	// PrevHash is the previous entry's Hash ("" for the first entry); Hash is AuditHash of
	// this entry. Together they chain the log: see VerifyAuditChain.
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash"`
}

// AuditList is GET /v1/audit.
type AuditList struct {
	Entries    []AuditEntry `json:"entries"`
	NextCursor string       `json:"next_cursor,omitempty"`
}

// WorkerInfo is one worker in GET /v1/workers: who it is, what it serves, and whether it
// was seen within the list's online window.
type WorkerInfo struct {
	ID           string     `json:"id"` // its token id (SQLite mode) or its connection's worker id (NATS mode)
	Name         string     `json:"name"`
	Pool         string     `json:"pool"`
	Version      string     `json:"version"`
	Tasks        []string   `json:"tasks"` // name@version, in name order
	RegisteredAt *time.Time `json:"registered_at,omitempty"`
	LastSeenAt   time.Time  `json:"last_seen_at"` // its last lease, heartbeat or registration (to within PresenceInterval)
	Online       bool       `json:"online"`       // LastSeenAt within OnlineWindowSeconds
}

// WorkerList is GET /v1/workers, online workers first.
type WorkerList struct {
	Workers             []WorkerInfo `json:"workers"`
	OnlineWindowSeconds int          `json:"online_window_seconds"`
}

// PresenceInterval is how often at most a worker's last-seen time is written, in both
// modes: a busy worker costs at most one write per interval, not one per lease.
const PresenceInterval = 10 * time.Second

// OnlineWindow is how recently a worker must have been seen to be online: it is seen at
// every lease long-poll and every heartbeat (a third of the lease), so the window is the
// lease (at least 90 s, several long-polls and presence writes).
func OnlineWindow(lease time.Duration) time.Duration { return max(90*time.Second, lease) }

// SortWorkers orders a worker list as both modes answer it: online first, then by pool,
// name and id.
func SortWorkers(ws []WorkerInfo) {
	slices.SortFunc(ws, func(a, b WorkerInfo) int {
		switch {
		case a.Online != b.Online:
			if a.Online {
				return -1
			}
			return 1
		case a.Pool != b.Pool:
			return strings.Compare(a.Pool, b.Pool)
		case a.Name != b.Name:
			return strings.Compare(a.Name, b.Name)
		}
		return strings.Compare(a.ID, b.ID)
	})
}

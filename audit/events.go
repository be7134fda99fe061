package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/castellan-dev/castellan/egress"
)

// Record types. The worker writes the job_* , approval_* and http_call records; the control
// plane writes the job_submitted … lease_expired ones; both write checkpoint and rotated.
const (
	TypeJobReceived      = "job_received"
	TypeApprovalVerified = "approval_verified"
	TypeApprovalRejected = "approval_rejected"
	TypeJobStarted       = "job_started"
	TypeHTTPCall         = "http_call"
	TypeJobFinished      = "job_finished"
	TypeCheckpoint       = "checkpoint"
	TypeRotated          = "rotated"
)

// Record is one line of the log as it is written and read back. Only the fields of its type
// are set. It is exported for readers of the log; writers use the Event types, which cannot
// carry anything but these fields.
type Record struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Prev is the hex SHA-256 of the previous line (without its newline); empty only in the
	// first record of a chain.
	Prev string `json:"prev"`
	Type string `json:"type"`

	Job         string `json:"job,omitempty"`
	Task        string `json:"task,omitempty"`
	TaskVersion string `json:"task_version,omitempty"`
	Pool        string `json:"pool,omitempty"`
	Attempt     int    `json:"attempt,omitempty"`
	Actor       string `json:"actor,omitempty"` // control plane: token id, or "server"
	Role        string `json:"role,omitempty"`
	State       string `json:"state,omitempty"`

	Endpoint      string   `json:"endpoint,omitempty"`
	Method        string   `json:"method,omitempty"`
	Path          string   `json:"path,omitempty"`
	Status        int      `json:"status,omitempty"`
	RequestBytes  int64    `json:"request_bytes,omitempty"`
	ResponseBytes int64    `json:"response_bytes,omitempty"`
	DurationMS    *float64 `json:"duration_ms,omitempty"`
	Decision      string   `json:"decision,omitempty"`
	Reason        string   `json:"reason,omitempty"`

	Outcome      string `json:"outcome,omitempty"`
	OutputBytes  *int   `json:"output_bytes,omitempty"`
	OutputSHA256 string `json:"output_sha256,omitempty"`

	RotatedFrom string `json:"rotated_from,omitempty"`
	// Every is the writer's checkpoint interval, in a checkpoint: at most this many records
	// follow it before the next checkpoint, so a longer unsealed tail was not written by it.
	// Absent in checkpoints written before it was recorded (DefaultCheckpointEvery applies).
	Every int    `json:"every,omitempty"`
	Key   string `json:"key,omitempty"` // checkpoint: hex Ed25519 public key
	Sig   string `json:"sig,omitempty"` // checkpoint: hex signature, see checkpointMessage
}

// Event is something Append can record. The interface is sealed: only this package's event
// types implement it, so nothing but their fields can reach the log.
type Event interface {
	record() Record
}

// JobReceived: the worker leased a job.
type JobReceived struct {
	Job, Task, TaskVersion, Pool string
	Attempt                      int
}

// ApprovalVerified: the job's approval verified; the job may run.
type ApprovalVerified struct {
	Job, Task string
	Attempt   int
}

// ApprovalRejected: the worker refused the job. Reason is the refusal's outcome message
// (outcome.Message), which names the check that failed and never holds a token.
type ApprovalRejected struct {
	Job, Task string
	Attempt   int
	Reason    string
}

// JobStarted: the task began running in the sandbox.
type JobStarted struct {
	Job, Task string
	Attempt   int
}

// HTTPCall is one host HTTP call decision, from the egress gateway's audit event (which by
// construction holds no body, header value, query or credential).
type HTTPCall egress.Event

// JobFinished: the job ended. Output is hashed and measured here; its bytes are not written.
type JobFinished struct {
	Job, Task string
	Attempt   int
	Outcome   string
	Duration  time.Duration
	Output    []byte
}

// Action is one control-plane action on a job: Type is one of the Action* constants.
type Action struct {
	Type            string
	Job, Task, Pool string
	Actor, Role     string
	Attempt         int
	Outcome, State  string
}

// Control-plane action types.
const (
	ActionSubmitted   = "job_submitted"
	ActionApproved    = "job_approved"
	ActionLeased      = "job_leased"
	ActionCompleted   = "job_completed"
	ActionCancelled   = "job_cancelled"
	ActionDenied      = "job_denied"
	ActionLeaseExpiry = "lease_expired"
)

func ms(d time.Duration) *float64 {
	v := float64(d.Microseconds()) / 1000
	return &v
}

func (e JobReceived) record() Record {
	return Record{Type: TypeJobReceived, Job: e.Job, Task: e.Task, TaskVersion: e.TaskVersion, Pool: e.Pool, Attempt: e.Attempt}
}

func (e ApprovalVerified) record() Record {
	return Record{Type: TypeApprovalVerified, Job: e.Job, Task: e.Task, Attempt: e.Attempt}
}

func (e ApprovalRejected) record() Record {
	return Record{Type: TypeApprovalRejected, Job: e.Job, Task: e.Task, Attempt: e.Attempt, Reason: e.Reason}
}

func (e JobStarted) record() Record {
	return Record{Type: TypeJobStarted, Job: e.Job, Task: e.Task, Attempt: e.Attempt}
}

func (e HTTPCall) record() Record {
	return Record{Type: TypeHTTPCall, Job: e.Job, Task: e.Task, Endpoint: e.Endpoint, Method: e.Method,
		Path: e.Path, Status: e.Status, RequestBytes: e.RequestBytes, ResponseBytes: e.ResponseBytes,
		DurationMS: ms(e.Duration), Decision: e.Decision, Reason: e.Reason}
}

func (e JobFinished) record() Record {
	n := len(e.Output)
	sum := sha256.Sum256(e.Output)
	return Record{Type: TypeJobFinished, Job: e.Job, Task: e.Task, Attempt: e.Attempt, Outcome: e.Outcome,
		DurationMS: ms(e.Duration), OutputBytes: &n, OutputSHA256: hex.EncodeToString(sum[:])}
}

func (e Action) record() Record {
	return Record{Type: e.Type, Job: e.Job, Task: e.Task, Pool: e.Pool, Actor: e.Actor, Role: e.Role,
		Attempt: e.Attempt, Outcome: e.Outcome, State: e.State}
}

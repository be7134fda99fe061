package natsq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
)

// Names of the streams and buckets. They are part of the deployment contract: account
// permissions (docs/deploy.md) name them.
const (
	JobsStreamPrefix = "CASTELLAN_JOBS_" // + pool token: one work-queue stream per pool
	ResultsStream    = "CASTELLAN_RESULTS"
	DeadStream       = "CASTELLAN_DEAD"
	JobsBucket       = "castellan_jobs"
	CancelBucket     = "castellan_cancel"
	CatalogBucket    = "castellan_catalog"

	// ResultsConsumer is the dispatchers' shared durable consumer on ResultsStream.
	ResultsConsumer = "dispatcher"

	// HeaderReason carries why a message was dead-lettered.
	HeaderReason = "Castellan-Reason"

	// maxAttemptsCap is the API's bound on max_attempts.
	maxAttemptsCap = api.MaxAttemptsLimit
)

// token turns a pool or task name (which may hold dots) into one NATS subject token and a
// valid stream or consumer name. '~' is not allowed in either name, so this cannot collide.
func token(name string) string { return strings.ReplaceAll(name, ".", "~") }

// checkName applies the API's rule for a pool or task name (internal/server/api), so that
// no name is valid in one mode and not in the other.
func checkName(kind, name string) error {
	switch {
	case kind == "pool" && !api.ValidPoolName(name):
		return fmt.Errorf("natsq: pool %q is invalid: use 1-63 of a-z 0-9 _ . - starting with a letter or digit", name)
	case kind == "task" && !api.ValidTaskName(name):
		return fmt.Errorf("natsq: task %q is invalid: use 1-64 of a-z 0-9 _ . - starting with a letter", name)
	}
	return nil
}

// JobsStream is the work-queue stream of pool.
func JobsStream(pool string) string { return JobsStreamPrefix + token(pool) }

// JobSubject is where jobs of task in pool are published.
func JobSubject(pool, task string) string { return "castellan.jobs." + token(pool) + "." + token(task) }

// ResultSubject is where workers of pool publish results.
func ResultSubject(pool string) string { return "castellan.results." + token(pool) }

// DeadSubject is where unprocessable jobs of pool are republished.
func DeadSubject(pool, task string) string {
	return "castellan.dead." + token(pool) + "." + token(task)
}

// ClaimSubject is where workers of pool claim a delivered job before running it (a core
// NATS request, answered by one dispatcher).
func ClaimSubject(pool string) string { return "castellan.claims." + token(pool) }

// CatalogSubject is where a pool's workers ask the control plane to publish their catalog
// (request/reply): the control plane checks it against the versions published in the pool
// before it writes the catalog bucket, which workers cannot write themselves.
func CatalogSubject(pool string) string { return "castellan.catalog." + token(pool) }

func poolOfCatalogSubject(subj string) string {
	return strings.ReplaceAll(strings.TrimPrefix(subj, "castellan.catalog."), "~", ".")
}

// CatalogPublish is a worker's request on CatalogSubject: its whole catalog.
type CatalogPublish struct {
	WorkerID string        `json:"worker_id"`
	Tasks    []api.TaskDef `json:"tasks"`
}

// CatalogReply answers a CatalogPublish: empty when published, else the refusal as the
// HTTP API words it (code catalog_conflict or invalid_field, with details).
type CatalogReply struct {
	Code    string            `json:"code,omitempty"`
	Message string            `json:"message,omitempty"`
	Details []api.SchemaIssue `json:"details,omitempty"`
}

func poolOfResultSubject(subj string) string {
	return strings.ReplaceAll(strings.TrimPrefix(subj, "castellan.results."), "~", ".")
}

func poolOfClaimSubject(subj string) string {
	return strings.ReplaceAll(strings.TrimPrefix(subj, "castellan.claims."), "~", ".")
}

// Envelope is a job message: api.LeasedJob without the lease fields, which the transport
// supplies (the attempt is the delivery count).
type Envelope struct {
	JobID       string          `json:"job_id"`
	Task        string          `json:"task"`
	TaskVersion string          `json:"task_version"`
	Pool        string          `json:"pool"`
	Input       json.RawMessage `json:"input"`
	Approval    string          `json:"approval"`
	MaxAttempts int             `json:"max_attempts"`
	// ClaimKey is the job's proof of delivery: random, written by the dispatcher into the
	// job's record (which workers cannot read) and into this message (which only the
	// pool's workers can pull). A worker presents it to claim an attempt; whoever has not
	// been handed the message cannot. Dispatch sets it; callers leave it empty.
	ClaimKey string `json:"claim_key,omitempty"`
}

func (e Envelope) check() error {
	switch {
	case e.JobID == "" || len(e.JobID) > 128:
		return errors.New("job_id is empty or over 128 bytes")
	case e.Approval == "":
		return errors.New("approval is empty")
	case e.MaxAttempts < 1 || e.MaxAttempts > maxAttemptsCap:
		return fmt.Errorf("max_attempts is %d, want 1..%d", e.MaxAttempts, maxAttemptsCap)
	case e.TaskVersion == "":
		return errors.New("task_version is empty")
	case len(e.Input) == 0 || !json.Valid(e.Input):
		return errors.New("input is not a JSON document")
	}
	if err := checkName("pool", e.Pool); err != nil {
		return err
	}
	return checkName("task", e.Task)
}

// Result is what a worker publishes on ResultSubject: the api.CompleteRequest fields without
// the lease token, plus who and which attempt.
type Result struct {
	JobID        string          `json:"job_id"`
	Task         string          `json:"task"`
	Attempt      int             `json:"attempt"`
	WorkerID     string          `json:"worker_id"`
	Outcome      string          `json:"outcome"`
	Output       json.RawMessage `json:"output,omitempty"`
	ErrorMessage string          `json:"error_message,omitempty"`
	DurationMS   int64           `json:"duration_ms"`
	ModuleDigest string          `json:"module_digest,omitempty"`
	Retryable    *bool           `json:"retryable,omitempty"`
	// Fence is the one the dispatcher granted this attempt when the worker claimed it: a
	// result is recorded only with the current attempt's fence, from the worker it was
	// granted to.
	Fence string `json:"fence"`
	// NotBefore is when the worker hands a retryable failure back for redelivery (the
	// job's not_before while it waits). Set only when the job is requeued.
	NotBefore *time.Time `json:"not_before,omitempty"`
}

// ClaimRequest is what a worker sends on ClaimSubject after pulling a job and before
// running it.
type ClaimRequest struct {
	JobID    string `json:"job_id"`
	ClaimKey string `json:"claim_key"`
	WorkerID string `json:"worker_id"`
	// Delivery names the JetStream delivery (stream sequence and delivery count), so that
	// a claim repeated after a lost reply gets the same grant instead of a new attempt.
	Delivery string `json:"delivery"`
}

// ClaimReply answers a claim: a grant (Attempt and Fence), or a refusal. A final refusal
// means the job must not run again (Term the message); Dead means its attempts are used up
// (dead-letter it too). Any other refusal hands the job back for later.
type ClaimReply struct {
	Attempt int    `json:"attempt,omitempty"`
	Fence   string `json:"fence,omitempty"`
	Refused string `json:"refused,omitempty"`
	Final   bool   `json:"final,omitempty"`
	Dead    bool   `json:"dead,omitempty"`
}

// Lease is the attempt the dispatcher granted last, and to whom.
type Lease struct {
	Attempt  int       `json:"attempt"`
	Fence    string    `json:"fence"`
	WorkerID string    `json:"worker_id"`
	Delivery string    `json:"delivery"`
	At       time.Time `json:"at"`
}

// resultMsgID deduplicates a worker's republished result. The fence is part of it: with
// only the job and attempt, anyone who may publish results could take the id first and
// have the stream drop the real result as a duplicate.
func resultMsgID(jobID string, attempt int, fence string) string {
	return fmt.Sprintf("%s/%d/%s", jobID, attempt, fence)
}

// Record is a job's state in the JobsBucket.
type Record struct {
	Job         api.Job      `json:"job"`
	Approval    string       `json:"approval"`
	JobsSeq     uint64       `json:"jobs_seq,omitempty"` // stream sequence of the job message
	Completions []Completion `json:"completions,omitempty"`
	ClaimKey    string       `json:"claim_key,omitempty"` // see Envelope.ClaimKey
	Lease       *Lease       `json:"lease,omitempty"`     // the last attempt granted
}

// Completion is one recorded attempt.
type Completion struct {
	Attempt  int       `json:"attempt"`
	Outcome  string    `json:"outcome"`
	WorkerID string    `json:"worker_id,omitempty"`
	At       time.Time `json:"at"`
}

func (r *Record) completed(attempt int) bool {
	for _, c := range r.Completions {
		if c.Attempt == attempt {
			return true
		}
	}
	return false
}

// nextState is the state after a result, decided as the HTTP control plane decides it.
// casConflict reports whether err is JetStream refusing a compare-and-set because the key
// or stream moved on: 10071, or on a replicated stream, while another write of the same key
// is in flight, 10164 (nats-server's jetstream_batching.go). Both mean read again and retry.
func casConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func nextState(current api.State, code string, retryable bool, attempt, maxAttempts int) api.State {
	return controlplane.CompleteState(current, outcome.Code(code), retryable, attempt, maxAttempts)
}

// ensureShared creates (or updates) the results and dead-letter streams and the buckets.
func ensureShared(ctx context.Context, js jetstream.JetStream, replicas int) error {
	streams := []jetstream.StreamConfig{
		{Name: ResultsStream, Subjects: []string{"castellan.results.>"}, Retention: jetstream.LimitsPolicy,
			MaxAge: 7 * 24 * time.Hour, Duplicates: 10 * time.Minute, Replicas: replicas, Storage: jetstream.FileStorage},
		{Name: DeadStream, Subjects: []string{"castellan.dead.>"}, Retention: jetstream.LimitsPolicy,
			MaxAge: 30 * 24 * time.Hour, Replicas: replicas, Storage: jetstream.FileStorage},
	}
	for _, c := range streams {
		if _, err := ensureStream(ctx, js, c); err != nil {
			return fmt.Errorf("natsq: create stream %s: %w", c.Name, err)
		}
	}
	buckets := []jetstream.KeyValueConfig{
		{Bucket: JobsBucket, Description: "Castellan job state", History: 1, Replicas: replicas},
		{Bucket: CancelBucket, Description: "Castellan cancellation requests", History: 1, TTL: 7 * 24 * time.Hour, Replicas: replicas},
		{Bucket: CatalogBucket, Description: "Castellan worker catalogs", History: 1, Replicas: replicas},
		auditHeadsConfig(replicas),
	}
	for _, c := range buckets {
		if _, err := ensureKV(ctx, js, c); err != nil {
			return fmt.Errorf("natsq: create bucket %s: %w", c.Bucket, err)
		}
	}
	return nil
}

func ensurePoolStream(ctx context.Context, js jetstream.JetStream, pool string, replicas int) error {
	_, err := ensureStream(ctx, js, jetstream.StreamConfig{
		Name:       JobsStream(pool),
		Subjects:   []string{"castellan.jobs." + token(pool) + ".>"},
		Retention:  jetstream.WorkQueuePolicy,
		Storage:    jetstream.FileStorage,
		Replicas:   replicas,
		Duplicates: 10 * time.Minute,
	})
	if err != nil {
		return fmt.Errorf("natsq: create stream %s: %w", JobsStream(pool), err)
	}
	return nil
}

func consumerConfig(pool, task string, ackWait time.Duration) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       token(task),
		Description:   "Castellan workers of pool " + pool + " serving " + task,
		FilterSubject: JobSubject(pool, task),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		// Unbounded: a job's attempts are bounded by its claims (handleClaim ends the job
		// dead once max_attempts are used), not by deliveries. A delivery handed back unclaimed
		// (no control plane answering, a claim refused for now, a worker stopping) is not an
		// attempt, and a message past a MaxDeliver bound is kept by the stream but never
		// delivered again: its job would stay queued or running for good.
		MaxDeliver:    -1,
		MaxAckPending: 100_000,
		MaxWaiting:    4096,
	}
}

func ensureConsumer(ctx context.Context, js jetstream.JetStream, pool, task string, ackWait time.Duration) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, JobsStream(pool), consumerConfig(pool, task, ackWait))
	if err != nil {
		return nil, fmt.Errorf("natsq: create consumer %s on %s: %w", token(task), JobsStream(pool), err)
	}
	return c, nil
}

// ensureStream creates the stream, or updates it only if a setting this package makes
// differs. Every control-plane replica and worker calls it at start and on first use, and
// an update of an unchanged stream is not free: the server rewrites the stream's
// configuration, and nats-server 2.15 does that racily with a consumer being added at the
// same moment (its file store, as the race detector reports).
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, cfg.Name)
	switch {
	case err == nil:
		if sameStream(s.CachedInfo().Config, cfg) {
			return s, nil
		}
		return js.UpdateStream(ctx, cfg)
	case errors.Is(err, jetstream.ErrStreamNotFound):
		s, err = js.CreateStream(ctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return js.Stream(ctx, cfg.Name) // created meanwhile by another replica or worker
		}
		return s, err
	}
	return nil, err
}

// sameStream reports whether have already has every setting of want that this package sets.
// Zero values in want are the server's defaults and are not compared.
func sameStream(have, want jetstream.StreamConfig) bool {
	return slices.Equal(have.Subjects, want.Subjects) && have.Retention == want.Retention &&
		have.Storage == want.Storage && have.MaxAge == want.MaxAge &&
		(want.Duplicates == 0 || have.Duplicates == want.Duplicates) &&
		max(have.Replicas, 1) == max(want.Replicas, 1)
}

// ensureKV is ensureStream for a key-value bucket.
func ensureKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	switch {
	case err == nil:
		st, err := kv.Status(ctx)
		if err != nil {
			return nil, err
		}
		if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.History() == int64(max(cfg.History, 1)) &&
			bs.TTL() == cfg.TTL && max(bs.StreamInfo().Config.Replicas, 1) == max(cfg.Replicas, 1) {
			return kv, nil
		}
		return js.CreateOrUpdateKeyValue(ctx, cfg)
	case errors.Is(err, jetstream.ErrBucketNotFound):
		kv, err = js.CreateKeyValue(ctx, cfg)
		if errors.Is(err, jetstream.ErrBucketExists) {
			return js.KeyValue(ctx, cfg.Bucket)
		}
		return kv, err
	}
	return nil, err
}

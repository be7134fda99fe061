package natsq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// The JetStream control plane's audit log is a stream, one message per api.AuditEntry,
// hash-chained as over SQLite (api.AuditHash). Every replica appends with the stream's
// expected last sequence, so two replicas appending at once cannot both chain onto the same
// entry: the second is refused, reads the new head and chains onto it. An entry's id is its
// stream sequence.
const (
	// AuditStream holds the audit entries; file storage, kept until an operator removes them.
	AuditStream = "CASTELLAN_AUDIT"
	// auditSubjectPrefix + "job.<job id>" for a job's entries, + "none" for the others, so
	// that one job's entries are read without the rest.
	auditSubjectPrefix = "castellan.audit."
)

func auditSubject(jobID string) string {
	if jobID == "" || !jobIDRE.MatchString(jobID) {
		return auditSubjectPrefix + "none"
	}
	return auditSubjectPrefix + "job." + jobID
}

func ensureAuditStream(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := ensureStream(ctx, js, jetstream.StreamConfig{
		Name:        AuditStream,
		Description: "Castellan control-plane audit log (hash-chained)",
		Subjects:    []string{auditSubjectPrefix + ">"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return fmt.Errorf("natsq: create stream %s: %w", AuditStream, err)
	}
	return nil
}

// auditLog appends to the AuditStream. It remembers the head it last wrote or read, and
// reads it again when another writer moved it.
type auditLog struct {
	js       jetstream.JetStream
	mu       sync.Mutex
	known    bool
	lastSeq  uint64
	lastHash string
}

func newAuditLog(ctx context.Context, js jetstream.JetStream, replicas int) (*auditLog, error) {
	if err := ensureAuditStream(ctx, js, replicas); err != nil {
		return nil, err
	}
	return &auditLog{js: js}, nil
}

// loadHead reads the stream's last entry.
func (a *auditLog) loadHead(ctx context.Context) error {
	st, err := a.js.Stream(ctx, AuditStream)
	if err != nil {
		return fmt.Errorf("natsq: audit stream: %w", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("natsq: audit stream: %w", err)
	}
	a.lastSeq, a.lastHash = info.State.LastSeq, ""
	if info.State.LastSeq > 0 {
		m, err := st.GetMsg(ctx, info.State.LastSeq)
		if err != nil {
			return fmt.Errorf("natsq: read the audit head: %w", err)
		}
		var e api.AuditEntry
		if err := json.Unmarshal(m.Data, &e); err != nil {
			return fmt.Errorf("natsq: the audit head (sequence %d) is unreadable: %w", info.State.LastSeq, err)
		}
		a.lastHash = e.Hash
	}
	a.known = true
	return nil
}

// append chains e onto the head and publishes it (e.ID and the hashes are set here).
func (a *auditLog) append(ctx context.Context, e api.AuditEntry) error {
	e.At = e.At.UTC().Truncate(time.Millisecond)
	e.ID = 0
	a.mu.Lock()
	defer a.mu.Unlock()
	for range 20 {
		if !a.known {
			if err := a.loadHead(ctx); err != nil {
				return err
			}
		}
		e.PrevHash = a.lastHash
		h, err := api.AuditHash(e)
		if err != nil {
			return err
		}
		e.Hash = h
		data, err := json.Marshal(e)
		if err != nil {
			return err
		}
		ack, err := a.js.Publish(ctx, auditSubject(e.JobID), data, jetstream.WithExpectLastSequence(a.lastSeq))
		if err == nil {
			a.lastSeq, a.lastHash = ack.Sequence, h
			return nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
			a.known = false
			return fmt.Errorf("natsq: append to the audit log: %w", err)
		}
		a.known = false // another writer appended: chain onto its entry
	}
	return errors.New("natsq: append to the audit log: the head kept moving (20 tries)")
}

// appendDirect records an entry with direct NATS access (`castellan token create --nats`).
func appendDirect(ctx context.Context, nc *nats.Conn, replicas int, e api.AuditEntry) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	a, err := newAuditLog(ctx, js, replicas)
	if err != nil {
		return err
	}
	return a.append(ctx, e)
}

// walkAudit calls fn with the entries of the AuditStream oldest first (those of jobID only,
// when set), stopping at the last one there when it began.
func walkAudit(ctx context.Context, js jetstream.JetStream, jobID string, fn func(api.AuditEntry) error) error {
	st, err := js.Stream(ctx, AuditStream)
	if err != nil {
		return fmt.Errorf("natsq: audit stream: %w", err)
	}
	subj := auditSubjectPrefix + ">"
	if jobID != "" {
		subj = auditSubject(jobID)
	}
	var opts []jetstream.StreamInfoOpt
	if jobID != "" {
		opts = append(opts, jetstream.WithSubjectFilter(subj))
	}
	info, err := st.Info(ctx, opts...)
	if err != nil {
		return fmt.Errorf("natsq: audit stream: %w", err)
	}
	if info.State.Msgs == 0 || (jobID != "" && info.State.Subjects[subj] == 0) {
		return nil
	}
	last := info.State.LastSeq
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
	if err != nil {
		return fmt.Errorf("natsq: read the audit stream: %w", err)
	}
	for {
		b, err := cons.Fetch(256, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("natsq: read the audit stream: %w", err)
		}
		n := 0
		for m := range b.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return err
			}
			var e api.AuditEntry
			if err := json.Unmarshal(m.Data(), &e); err != nil {
				// Kept, not skipped: the chain check must see that this entry is broken.
				e = api.AuditEntry{Action: "unreadable", Detail: nil}
			}
			e.ID = int64(meta.Sequence.Stream)
			if err := fn(e); err != nil {
				return err
			}
			if meta.NumPending == 0 || meta.Sequence.Stream >= last {
				return nil
			}
		}
		if err := b.Error(); err != nil {
			return fmt.Errorf("natsq: read the audit stream: %w", err)
		}
		if n == 0 {
			return errors.New("natsq: read the audit stream: it ended before its last entry")
		}
	}
}

// listAudit is one page of GET /v1/audit from the stream: newest first, at most limit,
// ids below cursor (0 for the newest). It reads the job's entries, or the whole stream.
func listAudit(ctx context.Context, js jetstream.JetStream, jobID, action string, limit int, cursor int64) (api.AuditList, error) {
	var keep []api.AuditEntry // the newest limit+1 matching, oldest first
	err := walkAudit(ctx, js, jobID, func(e api.AuditEntry) error {
		if (cursor > 0 && e.ID >= cursor) || (action != "" && e.Action != action) || (jobID != "" && e.JobID != jobID) {
			return nil
		}
		keep = append(keep, e)
		if len(keep) > limit+1 {
			keep = keep[1:]
		}
		return nil
	})
	if err != nil {
		return api.AuditList{}, err
	}
	out := api.AuditList{Entries: []api.AuditEntry{}}
	for i := len(keep) - 1; i >= 0 && len(out.Entries) < limit; i-- {
		out.Entries = append(out.Entries, keep[i])
	}
	if len(keep) > limit {
		out.NextCursor = strconv.FormatInt(out.Entries[limit-1].ID, 10)
	}
	return out, nil
}

// auditCompletion records a result the dispatcher has just recorded (once: a redelivered
// result finds its attempt recorded and is not audited again). Best effort, like record: a
// crash between the job's write and this append leaves the completion out of the stream,
// never in it twice.
func (d *Dispatcher) auditCompletion(ctx context.Context, r Result, j api.Job) {
	if d.audit == nil {
		return
	}
	detail, _ := json.Marshal(map[string]any{"attempt": r.Attempt, "outcome": r.Outcome, "state": j.State})
	e := api.AuditEntry{At: d.o.Now(), Actor: r.WorkerID, Role: string(api.RoleWorker), Action: "job.complete", JobID: r.JobID, Detail: detail}
	if err := d.audit.append(context.WithoutCancel(ctx), e); err != nil {
		d.log.Error("audit log append failed", zap.String("action", e.Action), zap.String("job", r.JobID), zap.Error(err))
	}
}

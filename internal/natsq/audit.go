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
//
// Appends made at once are written as one batch (group commit): every entry of a batch is
// chained onto the one before it and published without waiting for that one's
// acknowledgement, so a batch costs one round trip, not one per entry, and the log is no
// longer a queue of round trips under load. Each entry expects the stream's last sequence
// to be the one before it and, after the first, the last message id to be the entry
// before it (ids are the entries' hashes): if another writer appends in between, the rest
// of the batch is refused, not chained onto the wrong entry, and is chained again onto the
// new head. Each append still returns only once its entry is stored.
type auditLog struct {
	js       jetstream.JetStream
	mu       sync.Mutex
	known    bool
	lastSeq  uint64
	lastHash string
	queue    []*auditReq // appends waiting for the batch being written
	writing  bool
}

type auditReq struct {
	e    api.AuditEntry
	done chan error
}

// maxAuditBatch bounds one batch (and the publishes awaiting their acknowledgement).
const maxAuditBatch = 256

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

// append chains e onto the head and publishes it (e.ID and the hashes are set here), with
// whatever other appends are waiting, and returns once it is stored.
func (a *auditLog) append(ctx context.Context, e api.AuditEntry) error {
	e.At = e.At.UTC().Truncate(time.Millisecond)
	e.ID = 0
	r := &auditReq{e: e, done: make(chan error, 1)}
	a.mu.Lock()
	a.queue = append(a.queue, r)
	if !a.writing {
		a.writing = true
		go a.writeQueued()
	}
	a.mu.Unlock()
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err() // it may still be stored, as a publish whose acknowledgement is lost
	}
}

// writeQueued writes batches until no append waits.
func (a *auditLog) writeQueued() {
	for {
		a.mu.Lock()
		batch := a.queue[:min(len(a.queue), maxAuditBatch)]
		a.queue = a.queue[len(batch):]
		if len(batch) == 0 {
			a.queue = nil
			a.writing = false
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
		a.writeBatch(batch)
	}
}

// errWrongLastMsgID is JetStream's refusal of an expected last message id (10070).
const errWrongLastMsgID jetstream.ErrorCode = 10070

// chainRefused reports whether err is a refusal of an entry's expected last sequence or
// message id: another writer appended first.
func chainRefused(err error) bool {
	var apiErr *jetstream.APIError
	return casConflict(err) || errors.As(err, &apiErr) && apiErr.ErrorCode == errWrongLastMsgID
}

// writeBatch stores the batch's entries in order, answering each request. Only this
// process's writer goroutine runs it, so the head fields need no lock while it does.
func (a *auditLog) writeBatch(batch []*auditReq) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for try := 0; len(batch) > 0; try++ {
		if try == 20 {
			for _, r := range batch {
				r.done <- errors.New("natsq: append to the audit log: the head kept moving (20 tries)")
			}
			return
		}
		if !a.known {
			if err := a.loadHead(ctx); err != nil {
				for _, r := range batch {
					r.done <- err
				}
				return
			}
		}
		seq, prev := a.lastSeq, a.lastHash
		futures := make([]jetstream.PubAckFuture, 0, len(batch))
		hashes := make([]string, 0, len(batch))
		var sendErr error
		for i, r := range batch {
			e := r.e
			e.PrevHash = prev
			h, err := api.AuditHash(e)
			var data []byte
			if err == nil {
				e.Hash = h
				data, err = json.Marshal(e)
			}
			if err != nil {
				sendErr = err
				break
			}
			m := nats.NewMsg(auditSubject(e.JobID))
			m.Data = data
			opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequence(seq), jetstream.WithMsgID(h)}
			if i > 0 {
				opts = append(opts, jetstream.WithExpectLastMsgID(prev))
			}
			f, err := a.js.PublishMsgAsync(m, opts...)
			if err != nil {
				sendErr = fmt.Errorf("natsq: append to the audit log: %w", err)
				break
			}
			futures, hashes = append(futures, f), append(hashes, h)
			seq, prev = seq+1, h
		}
		// Acknowledgements come in order; from the first refusal on, the rest are refused
		// too (each expects the one before it) and are chained again onto the new head.
		retry := batch[len(futures):]
		if sendErr != nil && len(retry) > 0 {
			retry[0].done <- sendErr
			retry = retry[1:]
		}
		var again []*auditReq
		for i, f := range futures {
			var err error
			select {
			case ack := <-f.Ok():
				a.lastSeq, a.lastHash = ack.Sequence, hashes[i]
			case err = <-f.Err():
			case <-ctx.Done():
				err = ctx.Err()
			}
			switch {
			case err == nil:
				batch[i].done <- nil
			case chainRefused(err):
				a.known = false
				again = append(again, batch[i])
			default:
				a.known = false
				batch[i].done <- fmt.Errorf("natsq: append to the audit log: %w", err)
			}
		}
		batch = append(again, retry...)
	}
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

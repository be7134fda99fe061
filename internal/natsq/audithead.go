package natsq

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// The worker's audit-log head travels with its result as a header (the result's JSON is
// left as it is), and the dispatcher keeps the furthest one per worker in a bucket of its
// own, so that `castellan audit verify --server` can check the worker's log from off its host.
const (
	// AuditHeadsBucket holds one api.WorkerAuditHead per worker, keyed <pool>.<worker id>.
	AuditHeadsBucket = "castellan_audit_heads"
	// AuditHeadHeader carries SEQ:HASH on a result message.
	AuditHeadHeader = "Castellan-Audit-Head"
)

func auditHeadsConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: AuditHeadsBucket, Description: "Castellan workers' audit-log heads", History: 1, Replicas: replicas}
}

// auditHeadMsg is the result message, with the head as a header when there is one.
func auditHeadMsg(subject string, data []byte, h *api.AuditHead) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = data
	if h != nil {
		m.Header.Set(AuditHeadHeader, strconv.FormatUint(h.Seq, 10)+":"+h.Hash)
	}
	return m
}

// parseAuditHead reads SEQ:HASH; ok is false for anything else.
func parseAuditHead(v string) (api.AuditHead, bool) {
	seq, hash, found := strings.Cut(v, ":")
	n, err := strconv.ParseUint(seq, 10, 64)
	if !found || err != nil || n == 0 || len(hash) != 64 || strings.Trim(hash, "0123456789abcdef") != "" {
		return api.AuditHead{}, false
	}
	return api.AuditHead{Seq: n, Hash: hash}, true
}

// recordAuditHead keeps the head a result carried if it is further along than the one held
// for that worker of that pool (the pool comes from the subject, which the worker's account
// restricts). Best effort: the result itself is recorded already.
func (d *Dispatcher) recordAuditHead(ctx context.Context, pool string, r Result, hdr nats.Header) {
	v := hdr.Get(AuditHeadHeader)
	if v == "" || d.heads == nil || !plainKey(r.WorkerID) {
		return
	}
	h, ok := parseAuditHead(v)
	if !ok {
		d.log.Warn("a result carried a malformed audit head; ignored", zap.String("job", r.JobID))
		return
	}
	key := token(pool) + "." + r.WorkerID
	// One write per worker at a time: results of one worker handled at once would otherwise
	// race for its key (a refused compare-and-set, a read and a write again each). A head
	// that arrives while the key is being written waits, and only the furthest of those is
	// written next.
	if !d.headsSeen.claim(key, r.WorkerID, h) {
		return
	}
	for {
		d.writeAuditHead(ctx, key, r.WorkerID, h)
		var more bool
		if h, more = d.headsSeen.next(key); !more {
			return
		}
	}
}

// writeAuditHead writes h as worker's head under key unless a further one is recorded.
func (d *Dispatcher) writeAuditHead(ctx context.Context, key, worker string, h api.AuditHead) {
	data, _ := json.Marshal(api.WorkerAuditHead{WorkerID: worker, Seq: h.Seq, Hash: h.Hash, ReportedAt: time.Now().UTC()})
	for try := range 5 {
		// First from the head this dispatcher last wrote for the worker (a worker's results
		// mostly reach one replica), so that a result costs one write, not a read and a
		// write; the write is checked against the revision, and a stale copy costs a read.
		seq, rev, known := uint64(0), uint64(0), false
		if try == 0 {
			seq, rev, known = d.headsSeen.get(key)
		}
		if !known {
			e, err := d.heads.Get(ctx, key)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
			case err != nil:
				continue
			default:
				var cur api.WorkerAuditHead
				if json.Unmarshal(e.Value(), &cur) == nil {
					seq = cur.Seq
				}
				rev = e.Revision()
			}
		}
		if seq >= h.Seq {
			return
		}
		var newRev uint64
		var err error
		if rev == 0 {
			newRev, err = d.heads.Create(ctx, key, data)
		} else {
			newRev, err = d.heads.Update(ctx, key, data, rev)
		}
		if err == nil {
			d.headsSeen.put(key, h.Seq, newRev)
			return
		}
	}
	d.log.Warn("recording a worker's audit head failed", zap.String("worker_id", worker))
}

// headsSeen is the head this dispatcher last wrote per worker key, with its revision, and
// the keys being written with the furthest head waiting for each.
type headsSeen struct {
	mu      sync.Mutex
	m       map[string][2]uint64 // key -> seq, revision
	writing map[string]*api.AuditHead
}

// claim makes the caller the writer of key, or leaves h for the current writer (the
// furthest waiting head wins) and returns false.
func (h *headsSeen) claim(key, worker string, head api.AuditHead) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.writing == nil {
		h.writing = map[string]*api.AuditHead{}
	}
	waiting, busy := h.writing[key]
	if !busy {
		h.writing[key] = nil
		return true
	}
	if waiting == nil || waiting.Seq < head.Seq {
		h.writing[key] = &head
	}
	return false
}

// next hands the writer of key the head that waited meanwhile, or ends its turn.
func (h *headsSeen) next(key string) (api.AuditHead, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	waiting := h.writing[key]
	if waiting == nil {
		delete(h.writing, key)
		return api.AuditHead{}, false
	}
	h.writing[key] = nil
	return *waiting, true
}

// maxHeadsSeen bounds the copies (one per worker); past it they start over.
const maxHeadsSeen = 4096

func (h *headsSeen) get(key string) (seq, rev uint64, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.m[key]
	return v[0], v[1], ok
}

func (h *headsSeen) put(key string, seq, rev uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil || len(h.m) >= maxHeadsSeen {
		h.m = map[string][2]uint64{}
	}
	h.m[key] = [2]uint64{seq, rev}
}

// workerAuditHead is GET /v1/workers/{id}/audit-head: the furthest head worker id reported.
func (s *APIServer) workerAuditHead(ctx context.Context, id string) (api.WorkerAuditHead, error) {
	if !plainKey(id) || s.d.heads == nil {
		return api.WorkerAuditHead{}, refusal(http.StatusNotFound, api.CodeNotFound, "no audit head reported by worker %q", id)
	}
	keys, err := s.d.heads.ListKeysFiltered(ctx, "*."+id)
	if err != nil {
		return api.WorkerAuditHead{}, err
	}
	var found *api.WorkerAuditHead
	for k := range keys.Keys() {
		e, err := s.d.heads.Get(ctx, k)
		if err != nil {
			continue
		}
		var h api.WorkerAuditHead
		if json.Unmarshal(e.Value(), &h) == nil && (found == nil || h.Seq > found.Seq) {
			found = &h
		}
	}
	if found == nil {
		return api.WorkerAuditHead{}, refusal(http.StatusNotFound, api.CodeNotFound, "no audit head reported by worker %q", id)
	}
	return *found, nil
}

// plainKey reports whether s can be one token of a KV key as it is.
func plainKey(s string) bool {
	return s != "" && len(s) <= 128 && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") == ""
}

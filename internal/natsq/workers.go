package natsq

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// WorkersBucket holds each worker's presence, keyed <pool>.<worker id>: its name, version
// and tasks, rewritten at most every api.PresenceInterval while it leases or heartbeats.
// An entry not rewritten for presenceTTL is dropped by JetStream, so the bucket holds the
// workers of the last hour. Workers write only their own pool's keys (docs/deploy.md).
const WorkersBucket = "castellan_workers"

// presenceTTL is how long a silent worker stays listed (as offline).
const presenceTTL = time.Hour

// EnsureWorkersBucket creates (or fits) the WorkersBucket; the control plane calls it at
// start, workers only write into it.
func EnsureWorkersBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := ensureKV(ctx, js, jetstream.KeyValueConfig{Bucket: WorkersBucket,
		Description: "Castellan workers' presence", History: 1, TTL: presenceTTL, Replicas: max(replicas, 1)})
	if err != nil {
		return nil, fmt.Errorf("natsq: create bucket %s: %w", WorkersBucket, err)
	}
	return kv, nil
}

// presence is what a WorkerQueue announces about itself.
type presence struct {
	mu   sync.Mutex
	info api.WorkerInfo
	last time.Time // last write; zero forces the next one
	warn bool      // a failed write was logged (once)
}

// announce writes the worker's presence if force or it is due. The write is a plain
// JetStream publish to the bucket's subject, so a worker user needs only that subject, not
// the bucket's stream info; a bucket that does not exist (an older control plane) or a
// failed write only costs the listing, never a lease.
func (q *WorkerQueue) announce(ctx context.Context, force bool) {
	if !plainKey(q.workerID) {
		return
	}
	p := &q.pres
	p.mu.Lock()
	now := time.Now()
	if !force && now.Sub(p.last) < api.PresenceInterval {
		p.mu.Unlock()
		return
	}
	p.last = now
	p.info.ID, p.info.Pool, p.info.LastSeenAt = q.workerID, q.o.Pool, now.UTC()
	if p.info.RegisteredAt == nil {
		at := now.UTC()
		p.info.RegisteredAt = &at
	}
	if p.info.Tasks == nil {
		p.info.Tasks = []string{}
	}
	data, err := json.Marshal(p.info)
	p.mu.Unlock()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	// No retries: a missing bucket answers "no responders", which the client would otherwise
	// retry with waits inside the lease. The next try is one interval later, like a success.
	subj := "$KV." + WorkersBucket + "." + token(q.o.Pool) + "." + q.workerID
	if _, err := q.js.Publish(ctx, subj, data, jetstream.WithRetryAttempts(0)); err != nil {
		p.mu.Lock()
		first := !p.warn
		p.warn = true
		p.mu.Unlock()
		if first {
			q.log.Warn("announcing the worker's presence failed; it will not be listed online (GET /v1/workers) until a write succeeds",
				zap.String("bucket", WorkersBucket), zap.Error(err))
		}
	}
}

// presenceRegistered records the name and version of Register.
func (q *WorkerQueue) presenceRegistered(req api.RegisterRequest) {
	q.pres.mu.Lock()
	q.pres.info.Name, q.pres.info.Version = req.Name, req.AgentVersion
	q.pres.mu.Unlock()
}

// presenceTasks records the tasks of a published catalog.
func (q *WorkerQueue) presenceTasks(tasks []api.TaskDef) {
	names := make([]string, 0, len(tasks))
	for _, t := range tasks {
		names = append(names, t.Name+"@"+t.Version)
	}
	sort.Strings(names)
	q.pres.mu.Lock()
	q.pres.info.Tasks = names
	q.pres.mu.Unlock()
}

// listWorkers reads the WorkersBucket: the workers of pool ("" for all) seen in the last
// presenceTTL, online when their entry was written within window of now. The time seen is
// the entry's, stamped by the NATS server, not the worker's own clock.
func listWorkers(ctx context.Context, kv jetstream.KeyValue, pool string, window time.Duration, now time.Time) (api.WorkerList, error) {
	out := api.WorkerList{Workers: []api.WorkerInfo{}, OnlineWindowSeconds: int(window / time.Second)}
	filter := ">"
	if pool != "" {
		filter = token(pool) + ".>"
	}
	err := scanKV(ctx, kv, WorkersBucket, filter, func(ent jetstream.KeyValueEntry) {
		var info api.WorkerInfo
		// A worker writes only its own pool's keys, but anything in them: the key's pool is
		// the one its permissions allow, so it wins over the value's.
		if err := json.Unmarshal(ent.Value(), &info); err != nil || info.ID == "" || ent.Key() != token(info.Pool)+"."+info.ID {
			return
		}
		if info.Tasks == nil {
			info.Tasks = []string{}
		}
		info.LastSeenAt = ent.Created().UTC()
		info.Online = now.Sub(info.LastSeenAt) < window
		out.Workers = append(out.Workers, info)
	})
	if err != nil {
		return out, err
	}
	api.SortWorkers(out.Workers)
	return out, nil
}

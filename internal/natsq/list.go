package natsq

import (
	"container/heap"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// jobFilter is GET /v1/jobs's query (checked by the layer), with its cursor parsed.
type jobFilter struct {
	controlplane.ListQuery
	after *listCursor
}

// listCursor is a position in the list order (newest first: created_at, then id, both
// descending). Job ids are random, so the creation time leads; the id breaks ties (a
// DispatchBatch gives a whole batch one creation time).
type listCursor struct {
	created int64 // Unix nanoseconds
	id      string
}

// String is the cursor as it travels: "<unix nanoseconds>.<job id>". Job ids hold no '.'.
func (c listCursor) String() string { return strconv.FormatInt(c.created, 10) + "." + c.id }

func parseCursor(s string) (*listCursor, bool) {
	n, id, ok := strings.Cut(s, ".")
	if !ok || !jobIDRE.MatchString(id) {
		return nil, false
	}
	created, err := strconv.ParseInt(n, 10, 64)
	if err != nil || created < 0 {
		return nil, false
	}
	return &listCursor{created: created, id: id}, true
}

// before reports whether c comes before d in the list order (is newer).
func (c listCursor) before(d listCursor) bool {
	if c.created != d.created {
		return c.created > d.created
	}
	return c.id > d.id
}

// skipJSON decodes nothing: a listed job omits its input and output, so they are not
// even copied out of the record.
type skipJSON struct{}

func (*skipJSON) UnmarshalJSON([]byte) error { return nil }

// listRecord is a Record as a list reads it. The outer Input and Output shadow the
// embedded job's (encoding/json prefers the shallower field).
type listRecord struct {
	Job struct {
		api.Job
		Input  skipJSON `json:"input"`
		Output skipJSON `json:"output"`
	} `json:"job"`
}

// listJobs returns one page of jobs, newest first.
//
// What it costs: the JobsBucket is keyed by job id alone, so there is no index to seek by
// pool, state or time. Every page reads the latest record of every job in the bucket once,
// through one ordered consumer (a KV watcher that skips deleted keys and stops when it
// has caught up), decodes it, and keeps only the newest limit+1 matches in a heap: O(jobs
// in the bucket) messages and bytes read from JetStream per page (inputs and outputs
// included), O(limit) memory. The bucket keeps every job forever, so this grows with
// history: prefer GET /v1/jobs/{id} and wait where the id is known. A job that changes
// while the page is read is shown in one of its states, once.
func (s *APIServer) listJobs(ctx context.Context, f jobFilter) (api.JobList, error) {
	keep := &newest{cap: f.Limit + 1, at: map[string]int{}}
	err := scanKV(ctx, s.d.jobs, JobsBucket, ">", func(e jetstream.KeyValueEntry) {
		var rec listRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			s.log.Warn("skipping an unreadable job record in a list", zap.String("key", e.Key()))
			return
		}
		j := rec.Job.Job
		j.Input, j.Output = nil, nil
		pos := listCursor{created: j.CreatedAt.UnixNano(), id: j.ID}
		keep.offer(j, pos, f.Match(j) && (f.after == nil || f.after.before(pos)))
	})
	if err != nil {
		return api.JobList{}, err
	}
	jobs := keep.sorted()
	out := api.JobList{Jobs: []api.Job{}}
	if len(jobs) > f.Limit {
		jobs = jobs[:f.Limit]
		last := jobs[len(jobs)-1]
		out.NextCursor = listCursor{created: last.CreatedAt.UnixNano(), id: last.ID}.String()
	}
	out.Jobs = append(out.Jobs, jobs...)
	return out, nil
}

// newest keeps the cap first jobs in the list order: a heap whose root is the last kept
// job, with an index by id so that a job seen twice (it changed during the scan) is kept
// once, in its later state.
type newest struct {
	cap   int
	items []listItem
	at    map[string]int // job id -> index in items
}

type listItem struct {
	job api.Job
	pos listCursor
}

func (h *newest) Len() int           { return len(h.items) }
func (h *newest) Less(i, j int) bool { return h.items[j].pos.before(h.items[i].pos) } // the last in list order on top
func (h *newest) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.at[h.items[i].job.ID], h.at[h.items[j].job.ID] = i, j
}
func (h *newest) Push(x any) {
	it := x.(listItem)
	h.at[it.job.ID] = len(h.items)
	h.items = append(h.items, it)
}
func (h *newest) Pop() any {
	it := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	delete(h.at, it.job.ID)
	return it
}

// offer considers a job's latest record; match is whether it passes the filter.
func (h *newest) offer(j api.Job, pos listCursor, match bool) {
	if i, ok := h.at[j.ID]; ok {
		// Seen before in an older state. Its place in the order has not changed.
		if match {
			h.items[i].job = j
		} else {
			heap.Remove(h, i)
		}
		return
	}
	switch {
	case !match:
	case len(h.items) < h.cap:
		heap.Push(h, listItem{job: j, pos: pos})
	case pos.before(h.items[0].pos):
		heap.Pop(h)
		heap.Push(h, listItem{job: j, pos: pos})
	}
}

// sorted returns the kept jobs in list order.
func (h *newest) sorted() []api.Job {
	slices.SortFunc(h.items, func(a, b listItem) int {
		switch {
		case a.pos.before(b.pos):
			return -1
		case b.pos.before(a.pos):
			return 1
		}
		return 0
	})
	out := make([]api.Job, len(h.items))
	for i, it := range h.items {
		out[i] = it.job
	}
	return out
}

// scanKV calls fn with the latest entry of every key of bucket kv matching filter (">" for
// all), deleted keys skipped, through one ordered consumer (a KV watcher) that stops when
// it has caught up. It is how every list of this package reads a bucket.
func scanKV(ctx context.Context, kv jetstream.KeyValue, bucket, filter string, fn func(jetstream.KeyValueEntry)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := kv.Watch(ctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("natsq: list %s: %w", bucket, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("natsq: list %s: the watcher stopped before it caught up", bucket)
			}
			if e == nil {
				return nil // caught up: every key's latest entry has been seen
			}
			fn(e)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

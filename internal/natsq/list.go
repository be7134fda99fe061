package natsq

import (
	"container/heap"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/server/api"
)

const (
	defaultListLimit = 50
	maxListLimit     = 500
)

// jobFilter is GET /v1/jobs's query, checked.
type jobFilter struct {
	state api.State
	task  string
	pool  string // "" means every pool the principal may see
	limit int
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

// onlyParams rejects query parameters the endpoint does not define, as internal/server
// does, so that a typo is an error rather than a silently ignored filter.
func onlyParams(r *http.Request, allowed ...string) error {
	for k := range r.URL.Query() {
		if !slices.Contains(allowed, k) {
			if len(allowed) == 0 {
				return refusal(http.StatusBadRequest, api.CodeUnknownField, "query parameter %q is not defined for this endpoint (it takes none)", k)
			}
			return refusal(http.StatusBadRequest, api.CodeUnknownField, "query parameter %q is not defined for this endpoint (allowed: %s)", k, strings.Join(allowed, ", "))
		}
	}
	return nil
}

func intParam(v, name string, def, lo, hi int) (int, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, refusal(http.StatusBadRequest, api.CodeInvalidField, "%s %q must be an integer in %d..%d", name, v, lo, hi)
	}
	return n, nil
}

// hList serves GET /v1/jobs with internal/server's parameters, checks and scoping.
func (s *APIServer) hList(w http.ResponseWriter, r *http.Request, p principal) error {
	if err := onlyParams(r, "state", "task", "pool", "limit", "cursor", "wait_seconds"); err != nil {
		return err
	}
	q := r.URL.Query()
	f := jobFilter{state: api.State(q.Get("state")), task: q.Get("task")}
	if f.state != "" && !slices.Contains(api.States, f.state) {
		return refusal(http.StatusBadRequest, api.CodeInvalidField, "state %q is not a job state (one of %s)", f.state, joinStates())
	}
	if f.task != "" && !api.ValidTaskName(f.task) {
		return refusal(http.StatusBadRequest, api.CodeInvalidField, "task %q is not a valid task name (1-64 of a-z 0-9 _ . - starting with a letter)", f.task)
	}
	if pool := q.Get("pool"); pool != "" {
		var err error
		if f.pool, err = resolvePool(p, pool); err != nil {
			return err
		}
	} else if p.role != api.RoleAdmin && p.pool != api.AllPools {
		f.pool = p.pool
	}
	var err error
	if f.limit, err = intParam(q.Get("limit"), "limit", defaultListLimit, 1, maxListLimit); err != nil {
		return err
	}
	if c := q.Get("cursor"); c != "" {
		var ok bool
		if f.after, ok = parseCursor(c); !ok {
			return refusal(http.StatusBadRequest, api.CodeInvalidField, "cursor %q is not a cursor from a previous page's next_cursor", c)
		}
	}
	wait, err := intParam(q.Get("wait_seconds"), "wait_seconds", 0, 0, maxWaitSeconds)
	if err != nil {
		return err
	}
	if wait == 0 {
		list, err := s.listJobs(r.Context(), f)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, list)
		return nil
	}
	return s.listWait(w, r, f, time.Duration(wait)*time.Second)
}

// listWait is a list long-poll: when the page is empty it watches the job bucket (every
// replica sees every write) and reads the page again when a job the filter matches is
// written, answering as soon as the page has a job or the wait ends.
func (s *APIServer) listWait(w http.ResponseWriter, r *http.Request, f jobFilter, wait time.Duration) error {
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	// Watch before the first read, so that no write between the two is missed.
	watch, err := s.d.jobs.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("natsq: watch %s: %w", JobsBucket, err)
	}
	defer func() { _ = watch.Stop() }()
	list, err := s.listJobs(ctx, f)
	if err != nil {
		return err
	}
	s.waiters.Add(1)
	defer s.waiters.Add(-1)
	for len(list.Jobs) == 0 {
		select {
		case <-s.closing:
			writeJSON(w, http.StatusOK, list)
			return nil
		case e, ok := <-watch.Updates():
			if !ok {
				writeJSON(w, http.StatusOK, list)
				return nil
			}
			if e == nil {
				continue
			}
			var rec listRecord
			if json.Unmarshal(e.Value(), &rec) != nil || !f.match(rec.Job.Job) {
				continue
			}
			if list, err = s.listJobs(ctx, f); err != nil {
				if ctx.Err() != nil && r.Context().Err() == nil {
					writeJSON(w, http.StatusOK, api.JobList{Jobs: []api.Job{}})
					return nil // the wait ended during the read
				}
				return err
			}
		case <-ctx.Done():
			if r.Context().Err() != nil {
				return r.Context().Err()
			}
			writeJSON(w, http.StatusOK, list)
			return nil
		}
	}
	writeJSON(w, http.StatusOK, list)
	return nil
}

// match reports whether j passes the filter and comes after its cursor.
func (f jobFilter) match(j api.Job) bool {
	pos := listCursor{created: j.CreatedAt.UnixNano(), id: j.ID}
	return (f.state == "" || j.State == f.state) && (f.task == "" || j.Task == f.task) &&
		(f.pool == "" || j.Pool == f.pool) && (f.after == nil || f.after.before(pos))
}

func joinStates() string {
	names := make([]string, len(api.States))
	for i, st := range api.States {
		names[i] = string(st)
	}
	return strings.Join(names, ", ")
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
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch, err := s.d.jobs.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return api.JobList{}, fmt.Errorf("natsq: list %s: %w", JobsBucket, err)
	}
	defer func() { _ = wch.Stop() }()
	keep := &newest{cap: f.limit + 1, at: map[string]int{}}
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case e, ok = <-wch.Updates():
		case <-ctx.Done():
			return api.JobList{}, ctx.Err()
		}
		if !ok {
			return api.JobList{}, fmt.Errorf("natsq: list %s: the watcher stopped before it caught up", JobsBucket)
		}
		if e == nil {
			break // caught up: every job's latest record has been seen
		}
		var rec listRecord
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			s.log.Warn("skipping an unreadable job record in a list", zap.String("key", e.Key()))
			continue
		}
		j := rec.Job.Job
		j.Input, j.Output = nil, nil
		keep.offer(j, listCursor{created: j.CreatedAt.UnixNano(), id: j.ID}, f.match(j))
	}
	jobs := keep.sorted()
	out := api.JobList{Jobs: []api.Job{}}
	if len(jobs) > f.limit {
		jobs = jobs[:f.limit]
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

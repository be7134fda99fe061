package natsq

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// changeFeed tells parked long-polls of this replica that a job was written, by any
// replica or dispatcher: one watch of the job bucket's keys (headers only, no records) per
// replica, fanned out to the waiters in memory, instead of a watch per parked request.
type changeFeed struct {
	mu    sync.Mutex
	any   chan struct{}            // closed at the next write of any job
	jobs  controlplane.JobWakes    // the waits of one job, woken when it ends
	lists map[*listWaiter]struct{} // parked list long-polls
}

// listWaiter is a parked list: ch is closed at the next write of a job its query matches.
type listWaiter struct {
	q  controlplane.ListQuery
	ch chan struct{}
}

func (f *changeFeed) init() {
	f.any = make(chan struct{})
	f.lists = map[*listWaiter]struct{}{}
}

// nextMatch registers a parked list; stop unregisters it.
func (f *changeFeed) nextMatch(q controlplane.ListQuery) (<-chan struct{}, func()) {
	w := &listWaiter{q: q, ch: make(chan struct{})}
	f.mu.Lock()
	f.lists[w] = struct{}{}
	f.mu.Unlock()
	return w.ch, func() {
		f.mu.Lock()
		delete(f.lists, w)
		f.mu.Unlock()
	}
}

// listening reports whether a list is parked (a written job is then read, to match it).
func (f *changeFeed) listening() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.lists) > 0
}

// fireLists wakes the parked lists whose query matches j.
func (f *changeFeed) fireLists(j api.Job) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for w := range f.lists {
		if w.q.Match(j) {
			close(w.ch)
			delete(f.lists, w)
		}
	}
}

// next returns the channel closed at the next write of job id, or of any job for "".
func (f *changeFeed) next(id string) <-chan struct{} {
	if id != "" {
		return f.jobs.Wait(id)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.any
}

// fire wakes the waiters of any job and, when ended (the write made it terminal, or what
// it made it is unknown), those of job id: a waiter of one job waits for its end
// (controlplane.JobEnded), and is not woken to read it again at every step before.
func (f *changeFeed) fire(id string, ended bool) {
	f.mu.Lock()
	close(f.any)
	f.any = make(chan struct{})
	f.mu.Unlock()
	if ended {
		f.jobs.Fire(id)
	}
}

// fireJob wakes the waiters of job id only: it was just recorded terminal (finalJobs).
func (f *changeFeed) fireJob(id string) { f.jobs.Fire(id) }

// watchJobs runs the feed until ctx ends. A waiter parked before the watch is up (or while
// it reconnects) is woken by the layer's periodic recheck instead.
func (s *APIServer) watchJobs(ctx context.Context) error {
	// With the records, not only their keys: a job's waiters are woken only when it ends,
	// a parked list only for a job it would show, and an ended job's record is kept for the
	// waits to answer with (finalJobs), with no read back.
	w, err := s.d.jobs.WatchAll(ctx, jetstream.UpdatesOnly())
	if err != nil {
		return fmt.Errorf("natsq: watch %s: %w", JobsBucket, err)
	}
	return follow(ctx, w, func(e jetstream.KeyValueEntry) {
		var rec listRecord // the record without its input and output
		if e.Operation() != jetstream.KeyValuePut || json.Unmarshal(e.Value(), &rec) != nil {
			s.feed.fire(e.Key(), true) // deleted, or unreadable: whoever waits reads it
			return
		}
		ended := rec.Job.State.Terminal()
		if ended {
			if full, err := decodeRecord(e.Value()); err == nil {
				s.d.final.put(e.Key(), full.Job, e.Revision())
			}
		}
		s.feed.fire(e.Key(), ended)
		if s.feed.listening() {
			s.feed.fireLists(rec.Job.Job)
		}
	})
}

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
	jobs  map[string]chan struct{} // closed at the next write of that job
	lists map[*listWaiter]struct{} // parked list long-polls
}

// listWaiter is a parked list: ch is closed at the next write of a job its query matches.
type listWaiter struct {
	q  controlplane.ListQuery
	ch chan struct{}
}

// maxFeedKeys bounds the per-job channels a feed holds for waits that ended without their
// job changing; past it every waiter is woken (they read again) and the map starts over.
const maxFeedKeys = 1 << 16

func (f *changeFeed) init() {
	f.any = make(chan struct{})
	f.jobs = map[string]chan struct{}{}
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
	f.mu.Lock()
	defer f.mu.Unlock()
	if id == "" {
		return f.any
	}
	ch, ok := f.jobs[id]
	if !ok {
		if len(f.jobs) >= maxFeedKeys {
			for k, c := range f.jobs {
				close(c)
				delete(f.jobs, k)
			}
		}
		ch = make(chan struct{})
		f.jobs[id] = ch
	}
	return ch
}

// fire wakes the waiters of any job and, when ended (the write made it terminal, or what
// it made it is unknown), those of job id: a waiter of one job waits for its end
// (controlplane.JobEnded), and is not woken to read it again at every step before.
func (f *changeFeed) fire(id string, ended bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	close(f.any)
	f.any = make(chan struct{})
	if ch, ok := f.jobs[id]; ok && ended {
		close(ch)
		delete(f.jobs, id)
	}
}

// fireJob wakes the waiters of job id only: it was just recorded terminal (finalJobs).
func (f *changeFeed) fireJob(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ch, ok := f.jobs[id]; ok {
		close(ch)
		delete(f.jobs, id)
	}
}

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

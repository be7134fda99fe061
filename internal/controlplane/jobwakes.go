package controlplane

import "sync"

// JobWakes parks the waits of single jobs: Wait gives the channel that Fire closes for that
// job, so that the end of one job wakes only the waits on it, not every parked wait (at 32
// clients each waiting on its own job, a broadcast made every end cost 32 reads of jobs that
// had not changed). Both backends use it. The zero value is ready to use.
type JobWakes struct {
	mu   sync.Mutex
	jobs map[string]chan struct{}
}

// maxJobWakes bounds the channels held for waits that ended without their job ending (a
// wait that timed out, a job that does not exist); past it every waiter is woken (they read
// again and take a fresh channel) and the map starts over.
const maxJobWakes = 1 << 16

// Wait returns the channel closed at the next Fire of job id.
func (w *JobWakes) Wait(id string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch, ok := w.jobs[id]
	if ok {
		return ch
	}
	if w.jobs == nil || len(w.jobs) >= maxJobWakes {
		for _, c := range w.jobs {
			close(c)
		}
		w.jobs = map[string]chan struct{}{}
	}
	ch = make(chan struct{})
	w.jobs[id] = ch
	return ch
}

// Fire wakes the waits on each of ids.
func (w *JobWakes) Fire(ids ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, id := range ids {
		if ch, ok := w.jobs[id]; ok {
			close(ch)
			delete(w.jobs, id)
		}
	}
}

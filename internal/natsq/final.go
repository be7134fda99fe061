package natsq

import (
	"sync"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// finalJobs holds the last terminal records seen by this replica, written by its own
// dispatcher (when the write is acknowledged) or by any replica (when the job bucket's watch
// delivers it, feed.go), whichever comes first: a wait parked on one of those jobs is woken
// then and answers without reading the record back from the bucket, a round trip fewer
// between a result and the wait returning it. It is safe to answer reads from: a terminal
// job's fields never change again (a late result of an earlier attempt is only appended to
// the record's completions, which api.Job does not show, and moves updated_at, which the
// copy follows: the newest revision seen wins). A job not here is read from the bucket.
type finalJobs struct {
	mu     sync.Mutex
	jobs   map[string]finalJob
	order  []string // insertion order, oldest first, for the bound
	notify func(id string)
}

type finalJob struct {
	job api.Job
	rev uint64
}

// maxFinal bounds the copies: a wait reads its job within milliseconds of the write, so
// the last few hundred cover every parked wait at thousands of jobs a second. A job whose
// input and output are larger than maxFinalBytes is not kept (its waits read it), so the
// copies hold at most maxFinal * maxFinalBytes of them.
const (
	maxFinal      = 512
	maxFinalBytes = 64 << 10
)

// put keeps j, the job's record at revision rev, unless a newer revision is held.
func (f *finalJobs) put(id string, j api.Job, rev uint64) {
	f.mu.Lock()
	if f.jobs == nil {
		f.jobs = map[string]finalJob{}
	}
	old, ok := f.jobs[id]
	if ok && old.rev >= rev {
		f.mu.Unlock()
		return
	}
	if len(j.Input)+len(j.Output) > maxFinalBytes {
		delete(f.jobs, id) // its id stays in order until it comes round; harmless
		notify := f.notify
		f.mu.Unlock()
		if notify != nil {
			notify(id) // woken all the same: it reads the record
		}
		return
	}
	if !ok {
		if len(f.order) >= maxFinal {
			delete(f.jobs, f.order[0])
			f.order = f.order[1:]
		}
		f.order = append(f.order, id)
	}
	j.Input, j.Output = cloneRaw(j.Input), cloneRaw(j.Output)
	f.jobs[id] = finalJob{job: j, rev: rev}
	notify := f.notify
	f.mu.Unlock()
	if notify != nil {
		notify(id)
	}
}

func (f *finalJobs) get(id string) (api.Job, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.jobs[id]
	j := c.job
	j.Input, j.Output = cloneRaw(j.Input), cloneRaw(j.Output)
	return j, ok
}

func (f *finalJobs) setNotify(fn func(id string)) {
	f.mu.Lock()
	f.notify = fn
	f.mu.Unlock()
}

func cloneRaw(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

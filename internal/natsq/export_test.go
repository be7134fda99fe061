package natsq

import (
	"context"
	"time"
)

// ParkedWaits is how many job waits and list long-polls are parked in s, so that tests
// poll instead of sleeping.
func (s *APIServer) ParkedWaits() int64 { return s.cp.Waiters() }

// TouchLease marks a held delivery as just seen, as a worker that received it late would
// have it: its local expiry check then passes although JetStream has redelivered it.
func (q *WorkerQueue) TouchLease(tok string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if l := q.inflight[tok]; l != nil {
		l.seen = time.Now()
	}
}

// Sweeper is one dispatcher's lease sweep, driven by a test instead of its ticker.
type Sweeper struct{ sw *sweeper }

// NewSweeper returns a sweep of d's running jobs; beforeWrite, if set, runs between the
// sweep's republish of a job and its write of the record.
func (d *Dispatcher) NewSweeper(beforeWrite func()) *Sweeper {
	sw := newSweeper(d)
	sw.beforeWrite = beforeWrite
	return &Sweeper{sw: sw}
}

// Job sweeps job id once, now, and returns what it found ("expired", "gone", "live", "not
// due", "not running", "superseded").
func (s *Sweeper) Job(ctx context.Context, id string) (string, error) {
	r, _, err := s.sw.job(ctx, id, time.Now())
	return r.String(), err
}

// Update is the dispatcher's compare-and-set of a job's record, for tests that race it.
func (d *Dispatcher) Update(ctx context.Context, id string, change func(*Record) (bool, error)) (Record, error) {
	return d.update(ctx, id, change)
}

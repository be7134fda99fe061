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

// SweepJob runs the lease sweep once on job id, now, and returns what it found ("expired",
// "live", "not due", "not running", "superseded"). beforeWrite, if set, runs between the
// sweep's republish and its write of the record.
func (d *Dispatcher) SweepJob(ctx context.Context, id string, beforeWrite func()) (string, error) {
	sw := newSweeper(d)
	sw.beforeWrite = beforeWrite
	r, err := sw.job(ctx, id, time.Now())
	return r.String(), err
}

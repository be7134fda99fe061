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

// Update is the dispatcher's compare-and-set of a job's record, for tests that race it.
func (d *Dispatcher) Update(ctx context.Context, id string, change func(*Record) (bool, error)) (Record, error) {
	return d.update(ctx, id, change)
}

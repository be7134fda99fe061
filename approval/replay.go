package approval

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// ReplayStore remembers which approvals a worker has already acted on.
type ReplayStore interface {
	// Consume records that the approval with this nonce is being used for the given
	// attempt. It fails with a *RejectError of reason Replayed if that (nonce, attempt) was
	// consumed before (or the nonce was consumed for another job), and AttemptsExhausted if
	// attempt > maxAttempts. The record must be kept at least until expiry, the instant
	// after which the verifier rejects the token anyway; the Verifier passes exp + leeway.
	// Any other error means the store failed and nothing is known about the approval.
	Consume(ctx context.Context, nonce, jobID string, attempt, maxAttempts int, expiry time.Time) error
}

// pruneInterval is how often a store drops records whose expiry has passed. Records are
// small; pruning more often buys nothing.
const pruneInterval = 10 * time.Minute

// checkAttempt applies the checks every store makes before touching its records.
func checkAttempt(attempt, maxAttempts int) error {
	if attempt < 1 {
		return fmt.Errorf("approval: attempt %d is invalid; attempts are numbered from 1", attempt)
	}
	if attempt > maxAttempts {
		return reject(AttemptsExhausted, fmt.Sprintf("this is attempt %d; the approval allows %d", attempt, maxAttempts))
	}
	return nil
}

func replayed(jobID string, attempt int) *RejectError {
	return reject(Replayed, fmt.Sprintf("this approval was already used for attempt %d of job %q on this worker", attempt, jobID))
}

func nonceReused(jobID, otherJob string) *RejectError {
	return reject(Replayed, fmt.Sprintf("this approval's nonce was already used for job %q, not %q: the signer reused a nonce", otherJob, jobID))
}

// MemoryReplayStore is a ReplayStore that forgets everything when the process exits. It
// suits tests and one-shot `castellan run`, where the process lives no longer than a job;
// a long-running worker needs OpenReplayStore.
type MemoryReplayStore struct {
	mu        sync.Mutex
	now       func() time.Time
	nonces    map[string]*memoryEntry
	lastPrune time.Time
}

type memoryEntry struct {
	job      string
	expiry   time.Time
	attempts map[int]bool
}

var _ ReplayStore = (*MemoryReplayStore)(nil)

// NewMemoryReplayStore returns an empty in-memory store.
func NewMemoryReplayStore() *MemoryReplayStore {
	return &MemoryReplayStore{now: time.Now, nonces: map[string]*memoryEntry{}}
}

// Consume implements ReplayStore.
func (s *MemoryReplayStore) Consume(ctx context.Context, nonce, jobID string, attempt, maxAttempts int, expiry time.Time) error {
	if err := checkAttempt(attempt, maxAttempts); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.Sub(s.lastPrune) >= pruneInterval {
		for n, e := range s.nonces {
			if e.expiry.Before(now) {
				delete(s.nonces, n)
			}
		}
		s.lastPrune = now
	}
	e := s.nonces[nonce]
	if e == nil {
		e = &memoryEntry{job: jobID, attempts: map[int]bool{}}
		s.nonces[nonce] = e
	}
	switch {
	case e.job != jobID:
		return nonceReused(jobID, e.job)
	case e.attempts[attempt]:
		return replayed(jobID, attempt)
	}
	e.attempts[attempt] = true
	e.expiry = later(e.expiry, expiry)
	return nil
}

// Len returns how many approvals (nonces) the store remembers.
func (s *MemoryReplayStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.nonces)
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

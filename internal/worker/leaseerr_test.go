package worker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/runtime"
)

// failingLeases fails the first Lease calls with err, and counts registrations.
type failingLeases struct {
	*fakeQueue
	err error

	mu        sync.Mutex
	fails     int
	registers int
}

func (f *failingLeases) Register(ctx context.Context, req api.RegisterRequest) (api.RegisterResponse, error) {
	f.mu.Lock()
	f.registers++
	f.mu.Unlock()
	f.fakeQueue.mu.Lock()
	f.fakeQueue.notify()
	f.fakeQueue.mu.Unlock()
	return f.fakeQueue.Register(ctx, req)
}

func (f *failingLeases) Lease(ctx context.Context, max int, wait time.Duration) ([]api.LeasedJob, error) {
	f.mu.Lock()
	fail := f.fails > 0
	if fail {
		f.fails--
	}
	f.mu.Unlock()
	if fail {
		return nil, f.err
	}
	return f.fakeQueue.Lease(ctx, max, wait)
}

type leaseFailures struct {
	mu sync.Mutex
	n  int
}

func (o *leaseFailures) Observe(ctx context.Context, ev worker.Event) context.Context {
	if ev.Kind == worker.LeaseFailed {
		o.mu.Lock()
		o.n++
		o.mu.Unlock()
	}
	return ctx
}

func (o *leaseFailures) count() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n
}

// TestLeaseErrorsHandled: a failed lease is a failure, not an empty answer: it is observed
// (and logged, and backed off), and a control plane that forgot the worker (a 409
// not_registered, e.g. after its database was restored, or with a rotated token) gets a new
// registration. The poll's own cancellation once hid every lease error as a "cut" poll.
func TestLeaseErrorsHandled(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		err           error
		wantRegisters int
	}{
		{"outage", errOutage, 1},
		{"not registered", &client.APIError{Status: 409, Code: api.CodeNotRegistered, Message: "register first"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSigner(t)
			q := &failingLeases{fakeQueue: newFakeQueue("alpha"), err: tc.err, fails: 3}
			obs := &leaseFailures{}
			r := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
				return runtime.Result{Output: in}
			})
			startFake(t, worker.Config{Client: q, Runner: r, Catalog: catalog, Verifier: s.verifier(), Observer: obs})
			q.fakeQueue.waitUntil(t, "a lease after the failures", func(*fakeQueue) bool {
				q.mu.Lock()
				defer q.mu.Unlock()
				return q.fails == 0 && q.inLease > 0
			})
			if got := obs.count(); got != 3 {
				t.Errorf("lease failures observed = %d, want 3", got)
			}
			q.mu.Lock()
			defer q.mu.Unlock()
			if q.registers < tc.wantRegisters {
				t.Errorf("registrations = %d, want at least %d", q.registers, tc.wantRegisters)
			}
		})
	}
}

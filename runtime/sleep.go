package runtime

import (
	"context"
	"sync/atomic"
	"time"
)

// sleeper is the WASI clock sleep of one instance (poll_oneoff's clock subscriptions are its
// only caller). wazero never interrupts a host function, its own WASI functions included, so
// with time.Sleep a guest could wait for as long as it asks, past its deadline and past the
// worker's shutdown. This sleep ends when the context of the current guest call is done: the
// guest then resumes, and wazero's context watchdog ends it with the deadline's exit code.
//
// The context changes over an instance's life: a pre-initialised instance sleeps under its
// instantiation context while _initialize runs, then under its job's.
type sleeper struct {
	ctx atomic.Pointer[context.Context]
}

func newSleeper(ctx context.Context) *sleeper {
	s := &sleeper{}
	s.set(ctx)
	return s
}

func (s *sleeper) set(ctx context.Context) { s.ctx.Store(&ctx) }

// nanosleep implements wazero's sys.Nanosleep.
func (s *sleeper) nanosleep(ns int64) {
	ctx := *s.ctx.Load()
	if ns <= 0 || ctx.Err() != nil {
		return
	}
	t := time.NewTimer(time.Duration(ns))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

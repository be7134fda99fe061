package runtime

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// pool keeps instances of a reactor module instantiated and initialised ahead of time, so a
// Go guest's runtime start is not on the job's path. Each instance serves exactly one job.
//
// Its size follows the arrival rate: every poolTick the pool estimates the rate at which
// jobs take instances (an exponentially weighted average) and the time one refill takes,
// and aims to hold what arrives during a refill, twice over, plus one for every job that
// found it empty since the last tick. It grows only when its refills caught up with the
// target since the last tick (otherwise the CPU, not the size, is what it lacks). It never
// aims below the configured size, nor above what poolMemory allows for instances of this
// module's size. When jobs stop arriving, the
// target decays back to the configured size and instances over it are closed; after a
// second without jobs it is back there and the module's cached memory buffers are dropped,
// so that an idle worker gives the memory of a burst back.
//
// When ahead-of-time instantiation fails (a start function that never returns, a module that
// traps while initialising), the pool stops refilling: jobs then instantiate on their own
// path, where the failure becomes their outcome, and the pool resumes after a success there.
type pool struct {
	m     *Module
	ready chan *instance // capacity: the largest target
	base  int            // the configured size: the target's floor

	target atomic.Int64
	takes  atomic.Int64 // instances handed out since the last tick
	misses atomic.Int64 // gets that found the pool empty since the last tick
	hits   atomic.Int64 // totals, for tests and benchmarks
	empty  atomic.Int64

	mu     sync.Mutex
	broken bool
	wake   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	// Owned by the fill goroutine.
	rate float64       // takes per second
	fill time.Duration // one refill, averaged
	idle int           // ticks in a row without a take
	// caughtUp records that the pool reached its target since the last tick. Only then can
	// a larger target help: a refill that never catches up is limited by the CPU, not by the
	// size, and growing would only hold more memory.
	caughtUp bool
}

const (
	// poolTick is how often the target is recomputed.
	poolTick = 250 * time.Millisecond
	// poolMemory bounds the memory one module's ready instances may hold; poolMax bounds
	// their number whatever their size.
	poolMemory = 64 << 20
	poolMax    = 64
	// rateWeight is the weight of the last tick in the rate average: about a second of
	// memory at four ticks a second.
	rateWeight = 0.3
	// idleTicks without a take make the pool idle: it drops to its configured size at once
	// and the module's cached memory buffers go back to the garbage collector.
	idleTicks = 4
)

// poolLimit is the largest target for a module whose instances hold instanceBytes each.
func poolLimit(base int, instanceBytes uint64) int {
	n := poolMax
	if instanceBytes > 0 {
		n = int(min(uint64(poolMax), poolMemory/instanceBytes))
	}
	return max(n, base)
}

func newPool(m *Module, size int, instanceBytes uint64) *pool {
	ctx, cancel := context.WithCancel(context.Background())
	p := &pool{
		m:      m,
		ready:  make(chan *instance, poolLimit(size, instanceBytes)),
		base:   size,
		wake:   make(chan struct{}, 1),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
	}
	p.target.Store(int64(size))
	return p
}

func (p *pool) start() {
	go p.run()
	p.signal()
}

func (p *pool) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// get returns a ready instance or nil, without waiting. Taking an instance does not start a
// refill: the caller calls jobDone when its job has run, so that making the next instance (a Go
// guest allocates megabytes and triggers GC) does not compete with the job it was for. An
// empty pool starts refilling at once, and grows at the next tick.
func (p *pool) get() *instance {
	p.takes.Add(1)
	select {
	case inst := <-p.ready:
		p.hits.Add(1)
		return inst
	default:
		p.misses.Add(1)
		p.empty.Add(1)
		p.signal()
		return nil
	}
}

// jobDone tells the pool a job that took an instance has finished running.
func (p *pool) jobDone() { p.signal() }

func (p *pool) healthy() {
	p.mu.Lock()
	was := p.broken
	p.broken = false
	p.mu.Unlock()
	if was {
		p.signal()
	}
}

func (p *pool) run() {
	defer close(p.done)
	tick := time.NewTicker(poolTick)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.wake:
		case now := <-tick.C:
			p.retarget(now.Sub(last))
			last = now
		}
		p.refill()
	}
}

// retarget recomputes the target from the takes and misses of the last elapsed interval and
// closes ready instances over it.
func (p *pool) retarget(elapsed time.Duration) {
	if elapsed <= 0 {
		return
	}
	takes, misses := p.takes.Swap(0), p.misses.Swap(0)
	p.rate = rateWeight*float64(takes)/elapsed.Seconds() + (1-rateWeight)*p.rate
	want := p.rate * p.fill.Seconds() * 2
	t := int64(math.Ceil(want)) + misses
	cur := p.target.Load()
	if !p.caughtUp && t > cur {
		t = cur
	}
	p.caughtUp = int64(len(p.ready)) >= cur
	if misses == 0 && t < cur {
		// Shrink one step per tick: a lull of a tick does not throw instances away.
		t = cur - 1
	}
	if takes == 0 {
		p.idle++
	} else {
		p.idle = 0
	}
	if p.idle >= idleTicks {
		t, p.rate = int64(p.base), 0
	}
	t = min(max(t, int64(p.base)), int64(cap(p.ready)))
	p.target.Store(t)
	for int64(len(p.ready)) > t {
		select {
		case inst := <-p.ready:
			inst.close(context.Background())
		default:
		}
	}
	if p.idle >= idleTicks {
		// After the closes above, whose buffers went back to the cache.
		p.m.memCache.drop()
	}
}

// refill makes one instance when the pool is under its target, and asks for another turn
// while it stays under: between two instances, run sees the tick.
func (p *pool) refill() {
	if int64(len(p.ready)) >= p.target.Load() {
		p.caughtUp = true
		return
	}
	{
		p.mu.Lock()
		broken := p.broken
		p.mu.Unlock()
		if broken || p.ctx.Err() != nil {
			return
		}
		ctx, cancel := context.WithTimeout(p.ctx, p.m.limits.Timeout)
		start := time.Now()
		inst, err := p.m.instantiate(ctx, nil, p.m.startFunctions())
		took := time.Since(start)
		cancel()
		if err != nil {
			if inst != nil {
				inst.close(context.Background())
			}
			if p.ctx.Err() != nil {
				return
			}
			p.m.log.Warn("pre-initialising an instance failed; jobs will instantiate on demand", zap.Error(err))
			p.mu.Lock()
			p.broken = true
			p.mu.Unlock()
			return
		}
		if p.fill == 0 {
			p.fill = took
		} else {
			p.fill = (p.fill*7 + took) / 8
		}
		select {
		case p.ready <- inst:
		default:
			inst.close(context.Background())
		}
		if int64(len(p.ready)) < p.target.Load() {
			p.signal()
		}
	}
}

func (p *pool) stop(ctx context.Context) {
	p.cancel()
	<-p.done
	for {
		select {
		case inst := <-p.ready:
			inst.close(ctx)
		default:
			return
		}
	}
}

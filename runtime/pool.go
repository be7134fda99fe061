package runtime

import (
	"context"
	"sync"

	"go.uber.org/zap"
)

// pool keeps instances of a reactor module instantiated and initialised ahead of time, so a
// Go guest's runtime start is not on the job's path. Each instance serves exactly one job.
//
// When ahead-of-time instantiation fails (a start function that never returns, a module that
// traps while initialising), the pool stops refilling: jobs then instantiate on their own
// path, where the failure becomes their outcome, and the pool resumes after a success there.
type pool struct {
	m     *Module
	ready chan *instance

	mu     sync.Mutex
	broken bool
	wake   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

func newPool(m *Module, size int) *pool {
	ctx, cancel := context.WithCancel(context.Background())
	return &pool{
		m:      m,
		ready:  make(chan *instance, size),
		wake:   make(chan struct{}, 1),
		ctx:    ctx,
		cancel: cancel,
		done:   make(chan struct{}),
	}
}

func (p *pool) start() {
	go p.fill()
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
// empty pool starts refilling at once.
func (p *pool) get() *instance {
	select {
	case inst := <-p.ready:
		return inst
	default:
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

func (p *pool) fill() {
	defer close(p.done)
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.wake:
		}
		for len(p.ready) < cap(p.ready) {
			p.mu.Lock()
			broken := p.broken
			p.mu.Unlock()
			if broken || p.ctx.Err() != nil {
				break
			}
			ctx, cancel := context.WithTimeout(p.ctx, p.m.limits.Timeout)
			inst, err := p.m.instantiate(ctx, nil, p.m.startFunctions())
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
				break
			}
			select {
			case p.ready <- inst:
			default:
				inst.close(context.Background())
			}
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

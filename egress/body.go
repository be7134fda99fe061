package egress

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// body is a Response.Body: upstream → LimitReader(max+1) → counter → redacting reader. It
// never holds more than the redactor's window, and the request context (endpoint timeout
// under the job context) keeps bounding every Read until Close. The limit and the counter
// live inside the body, so a call allocates them with it.
type body struct {
	g       *Gateway
	ep      *endpoint
	ctx     context.Context // the job's
	callCtx context.Context // the job's, bounded by the endpoint timeout
	cancel  context.CancelFunc
	raw     io.ReadCloser
	lim     io.LimitedReader // raw, capped at max+1 bytes
	cnt     countingReader   // counts what lim yields
	r       io.Reader        // the redactor's reader over cnt
	r2      io.Reader        // the address redactor's reader over r; nil without one
	hop     hop              // for redirect hops, through the request context
	n       atomic.Int64     // upstream bytes read so far
	max     int64
	err     error // sticky; only touched by Read

	mu     sync.Mutex // guards reason, which Read sets and Close reads
	reason string

	once  sync.Once
	ev    Event
	start time.Time
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (b *body) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	r := b.r
	if b.r2 != nil {
		r = b.r2
	}
	n, err := r.Read(p)
	if b.n.Load() > b.max {
		// Whatever the redactor still held back stays unread: the task gets E_TOO_LARGE.
		b.fail(ErrResponseTooLarge, "response too large")
		return 0, b.err
	}
	if err != nil && err != io.EOF {
		e := b.g.classify(b.ctx, b.callCtx, b.ep, err)
		b.fail(e, reasonOf(e))
		return n, b.err
	}
	return n, err
}

func (b *body) fail(err error, reason string) {
	b.err = err
	b.mu.Lock()
	b.reason = reason
	b.mu.Unlock()
}

// Close releases the connection, cancels the request context and emits the audit event. It
// may be called concurrently with a blocked Read (at job end), and more than once.
func (b *body) Close() error {
	b.once.Do(func() {
		b.raw.Close()
		// After raw: a Read blocked in it returns, and the redactor hands its pooled buffers
		// back then if not now. Reads after Close fail in the redactor, never reach the pool.
		for _, r := range []io.Reader{b.r2, b.r} {
			if c, ok := r.(io.Closer); ok {
				c.Close()
			}
		}
		b.cancel()
		b.mu.Lock()
		reason := b.reason
		b.mu.Unlock()
		b.ev.ResponseBytes = b.n.Load()
		b.g.finish(&b.ev, b.start, "allow", reason)
	})
	return nil
}

package runtime

import (
	"sync"

	"github.com/tetratelabs/wazero/experimental"
)

// linearMemory backs one instance's memory. wazero checks the page limit before it asks the
// allocator, so the runtime is configured one page above the task's limit and this allocator
// refuses the last step itself: that way a refused memory.grow is observed, and a trap or
// exit that follows it is reported as memory_limit rather than guessed from sizes.
//
// Its buffer comes from the module's memoryCache when one fits (zeroed), and goes back there
// when the instance is closed after its job. wazero's Free is deliberately a no-op: on a
// timeout wazero calls it from its watchdog while the guest may still be unwinding, so a
// buffer released there could be written by the old job after the next one got it. The
// buffer is released by instance.close instead, which runs only once the guest call has
// returned.
type linearMemory struct {
	limit   uint64
	buf     []byte
	refused bool
	cache   *memoryCache // nil: every buffer is freshly allocated
	// img, when set, is written into the buffer when it is allocated (snapshot.go): the
	// buffer then holds the image up to img's size, and zeros after it.
	img *image
	// mapped, when set, is the memory instead of buf's own array: a private mapping of img's
	// file (imagemap_linux.go), unmapped by release.
	mapped *mapping
}

var _ experimental.MemoryAllocator = (*linearMemory)(nil)

func (l *linearMemory) Allocate(capacity, _ uint64) experimental.LinearMemory {
	if l.img != nil {
		capacity = max(capacity, l.img.size())
	}
	if capacity > l.limit {
		capacity = l.limit
	}
	if l.img != nil && l.img.file != nil && l.img.size() <= capacity && l.mapFor(l.img.file) {
		l.buf = l.mapped.bytes(0)
		return l
	}
	if l.img != nil && l.img.size() <= capacity {
		// A recycled buffer is not cleared first: fill clears only what the image does not
		// overwrite.
		b, dirty := l.cache.getDirty(capacity)
		if b == nil {
			b = make([]byte, 0, capacity)
		}
		l.img.fill(b[:cap(b)], dirty)
		l.buf = b[:0]
		return l
	}
	if b := l.cache.get(capacity); b != nil {
		l.buf = b
		return l
	}
	l.buf = make([]byte, 0, capacity)
	return l
}

func (l *linearMemory) Reallocate(size uint64) []byte {
	if size > l.limit {
		l.refused = true
		return nil
	}
	if l.mapped != nil {
		// The memory never moves: growing makes more of the reservation accessible.
		if l.mapped.grow(size) != nil {
			return nil
		}
		l.buf = l.mapped.bytes(size)
		return l.buf
	}
	if size <= uint64(cap(l.buf)) {
		// Bytes past the old length are zero (make zeroed them, or the cache did when the
		// buffer came back, and memory only grows), or hold the image written at Allocate.
		l.buf = l.buf[:size]
		return l.buf
	}
	newCap := 2 * uint64(cap(l.buf))
	if newCap < size {
		newCap = size
	}
	if newCap > l.limit {
		newCap = l.limit
	}
	nb := make([]byte, size, newCap)
	copy(nb, l.buf)
	l.buf = nb
	return nb
}

// Free is called by wazero when the module closes, possibly while the guest still runs
// (see linearMemory). It does nothing; release does the work.
func (l *linearMemory) Free() {}

// release hands the buffer to the cache (or to the garbage collector). Call it only once no
// guest code can run on this memory any more.
func (l *linearMemory) release() {
	b := l.buf
	l.buf = nil
	if l.mapped != nil {
		l.mapped.unmap()
		l.mapped = nil
		return
	}
	l.cache.put(b)
}

// memoryCache keeps the linear-memory buffers of one module's finished instances for its
// next instances. A fresh buffer per job was most of what a small module allocated per job,
// and the garbage collection that followed was most of the sandbox's cost at a thousand jobs
// a second.
//
// Safety: a buffer is only put back after its instance's guest call has returned, and it is
// cleared when it is taken out again, so no byte of one job's memory is visible to the next.
// Clearing at take rather than at put keeps it off the job's path: the pool takes buffers
// when it pre-initialises instances, between jobs.
type memoryCache struct {
	maxBytes  uint64 // bound on the bytes held
	maxBuffer uint64 // bound on one buffer

	mu     sync.Mutex
	held   uint64
	bufs   [][]byte // dirty: bytes up to len(b) may hold an earlier job's data
	reuses int64    // buffers handed out again, for tests
}

// maxCachedMemory bounds what one module's cache holds; maxCachedBuffer bounds one buffer.
// Larger memories (a Go guest's runtime takes megabytes) are left to the garbage collector:
// the allocator gets large buffers as fresh pages the kernel has zeroed, which is cheaper
// than clearing megabytes by hand. A module instantiated from an image (snapshot.go) keeps
// buffers up to twice its image's size: the image is copied over most of such a buffer
// anyway, so only the rest needs clearing, and a fresh buffer would be cleared by Go's
// allocator and then written over.
const (
	maxCachedMemory = 16 << 20
	maxCachedBuffer = 1 << 20
)

func newMemoryCache(maxBytes, maxBuffer uint64) *memoryCache {
	return &memoryCache{maxBytes: maxBytes, maxBuffer: maxBuffer}
}

// getDirty returns a buffer with at least capacity bytes of capacity and the length up to
// which it may hold an earlier job's bytes, or nil. The caller must clear or overwrite them.
func (c *memoryCache) getDirty(capacity uint64) ([]byte, int) {
	b := c.take(capacity)
	if b == nil {
		return nil, 0
	}
	return b[:0], len(b)
}

// get returns a zeroed buffer with at least capacity bytes of capacity, or nil.
func (c *memoryCache) get(capacity uint64) []byte {
	b := c.take(capacity)
	if b == nil {
		return nil
	}
	// Only the first len bytes can have been written: the rest of the capacity was never
	// part of the memory (see Reallocate).
	clear(b[:len(b)])
	return b[:0]
}

// take removes a buffer of at least capacity bytes from the cache, dirty, or returns nil.
func (c *memoryCache) take(capacity uint64) []byte {
	if c == nil {
		return nil
	}
	var b []byte
	c.mu.Lock()
	for i := len(c.bufs) - 1; i >= 0; i-- {
		if uint64(cap(c.bufs[i])) >= capacity {
			b = c.bufs[i]
			last := len(c.bufs) - 1
			c.bufs[i] = c.bufs[last]
			c.bufs[last] = nil
			c.bufs = c.bufs[:last]
			c.held -= uint64(cap(b))
			c.reuses++
			break
		}
	}
	c.mu.Unlock()
	return b
}

// drop lets the garbage collector have every buffer held.
func (c *memoryCache) drop() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.bufs)
	c.bufs, c.held = nil, 0
}

// put keeps b for a later get if the cache has room. The caller must not use b again.
func (c *memoryCache) put(b []byte) {
	if c == nil || cap(b) == 0 || uint64(cap(b)) > c.maxBuffer {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.held+uint64(cap(b)) > c.maxBytes {
		return
	}
	c.held += uint64(cap(b))
	c.bufs = append(c.bufs, b)
}

package runtime

import "github.com/tetratelabs/wazero/experimental"

// linearMemory backs one instance's memory. wazero checks the page limit before it asks the
// allocator, so the runtime is configured one page above the task's limit and this allocator
// refuses the last step itself: that way a refused memory.grow is observed, and a trap or
// exit that follows it is reported as memory_limit rather than guessed from sizes.
type linearMemory struct {
	limit   uint64
	buf     []byte
	refused bool
}

var _ experimental.MemoryAllocator = (*linearMemory)(nil)

func (l *linearMemory) Allocate(capacity, _ uint64) experimental.LinearMemory {
	if capacity > l.limit {
		capacity = l.limit
	}
	l.buf = make([]byte, 0, capacity)
	return l
}

func (l *linearMemory) Reallocate(size uint64) []byte {
	if size > l.limit {
		l.refused = true
		return nil
	}
	if size <= uint64(cap(l.buf)) {
		// Bytes past the old length were zeroed by make and never written: memory only grows.
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

func (l *linearMemory) Free() { l.buf = nil }

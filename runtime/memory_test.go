package runtime

import (
	"bytes"
	"testing"
)

func TestMemoryCache(t *testing.T) {
	t.Parallel()
	c := newMemoryCache(5<<16, maxCachedBuffer) // room for two of the 2-page buffers below
	if b := c.get(1 << 16); b != nil {
		t.Fatalf("get() on an empty cache = %d bytes, want nil", cap(b))
	}
	dirty := func(n int) []byte {
		b := make([]byte, n, n+1<<16) // length n written, one more page of capacity never written
		for i := range b {
			b[i] = 0xAB
		}
		return b
	}
	c.put(dirty(1 << 16))
	c.put(dirty(1 << 16))
	c.put(dirty(1 << 16)) // 2 pages of capacity each: the third does not fit
	if c.held != 4<<16 || len(c.bufs) != 2 {
		t.Fatalf("after 3 puts: held %d bytes in %d buffers, want %d in 2", c.held, len(c.bufs), 4<<16)
	}
	c.put(make([]byte, 0, 6<<16)) // larger than the whole budget: dropped
	if len(c.bufs) != 2 {
		t.Fatalf("a buffer over the budget was kept: %d buffers", len(c.bufs))
	}
	if b := c.get(3 << 16); b != nil {
		t.Fatalf("get(3 pages) = %d bytes of capacity, want nil (none is that large)", cap(b))
	}
	b := c.get(2 << 16)
	if b == nil {
		t.Fatal("get(2 pages) = nil, want a cached buffer")
	}
	if !bytes.Equal(b[:cap(b)], make([]byte, cap(b))) {
		t.Fatal("a cached buffer is not zeroed over its whole capacity")
	}
	if c.held != 2<<16 || c.reuses != 1 {
		t.Fatalf("after get: held %d, reuses %d, want %d and 1", c.held, c.reuses, 2<<16)
	}
	big := newMemoryCache(64<<20, maxCachedBuffer)
	big.put(make([]byte, 0, maxCachedBuffer+1)) // one buffer over the per-buffer bound
	if len(big.bufs) != 0 {
		t.Errorf("a %d-byte buffer was kept, want buffers over %d left to the GC", maxCachedBuffer+1, maxCachedBuffer)
	}
	var nilCache *memoryCache // modules without a cache
	nilCache.put(dirty(10))
	if nilCache.get(1) != nil {
		t.Fatal("a nil cache returned a buffer")
	}
}

// TestImageFillClearsDirtyBuffer: an image written into a recycled buffer leaves no byte of
// the buffer's earlier contents, between its ranges, after them, or past the image's size.
func TestImageFillClearsDirtyBuffer(t *testing.T) {
	im := &image{pages: 1, ranges: []memRange{
		{off: 4096, data: bytes.Repeat([]byte{1}, 4096)},
		{off: 16384, data: bytes.Repeat([]byte{2}, 100)},
	}}
	want := make([]byte, 2*65536)
	copy(want[4096:], im.ranges[0].data)
	copy(want[16384:], im.ranges[1].data)
	for _, dirty := range []int{0, 100, 5000, 16400, 65536, 2 * 65536} {
		b := make([]byte, 2*65536)
		for i := range dirty {
			b[i] = 0xEE
		}
		im.fill(b, dirty)
		if !bytes.Equal(b, want) {
			i := 0
			for i < len(b) && b[i] == want[i] {
				i++
			}
			t.Errorf("dirty up to %d: byte %d is %#x after fill, want %#x", dirty, i, b[i], want[i])
		}
	}
}

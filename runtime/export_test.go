package runtime

// MemoryReuses returns how many instances of m got a recycled memory buffer.
func MemoryReuses(m *Module) int64 {
	m.memCache.mu.Lock()
	defer m.memCache.mu.Unlock()
	return m.memCache.reuses
}

// Safely runs f under the safety net every guest call and instantiation of m runs under.
func Safely(m *Module, f func() error) error { return m.safely("running", f) }

// Snapshotted reports whether m's instances start from a snapshot of _initialize.
func Snapshotted(m *Module) bool { return m.snapshot }

// CachedMemory returns how many bytes of recycled memory buffers m holds.
func CachedMemory(m *Module) uint64 {
	m.memCache.mu.Lock()
	defer m.memCache.mu.Unlock()
	return m.memCache.held
}

// CopyImages makes e's snapshot instances copy their image instead of mapping it. Call it
// before e loads anything.
func CopyImages(e *Engine) { e.copyImages = true }

// ImageMapped reports whether m's instances map their image copy-on-write.
func ImageMapped(m *Module) bool { return m.img != nil && m.img.file != nil }

// MapsImages reports whether this build maps images (Linux on amd64 or arm64).
const MapsImages = mapsImages

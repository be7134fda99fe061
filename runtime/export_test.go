package runtime

// MemoryReuses returns how many instances of m got a recycled memory buffer.
func MemoryReuses(m *Module) int64 {
	m.memCache.mu.Lock()
	defer m.memCache.mu.Unlock()
	return m.memCache.reuses
}

//go:build linux && (amd64 || arm64)

package runtime

import (
	"errors"
	"fmt"
	"os"
	goruntime "runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Copy-on-write images, as wasmtime instantiates from a module's memory image: the image is
// written once into a sealed memfd, and each instance's linear memory is a private mapping
// of it. A new instance then costs two mmap calls instead of copying the image and clearing
// the rest of its memory; the pages a job writes are copied by the kernel on its first write
// to each, and the pages it only reads are the memfd's, shared by every instance.
//
// Isolation: the mapping is MAP_PRIVATE, so a job's writes go to pages of its own, which
// munmap discards; the memfd is sealed against writes, so nothing can change the image
// after it is made.
//
// The linear memory is one reservation of the task's whole memory limit: the image mapped
// over its start, and anonymous memory after it that is inaccessible (PROT_NONE) until
// memory.grow makes it part of the memory. Growing never moves the memory, and no page
// outside the memory's current size is ever readable or writable.

// imageFile is an image written to a sealed memfd.
type imageFile struct {
	f    *os.File // closed with the module, or by its finalizer
	size uint64   // bytes; a multiple of the 64 KiB wasm page
}

// newImageFile writes im into a new sealed memfd. It fails where memfds or the seals are not
// available (an old kernel, a seccomp filter); the caller then copies the image instead.
func newImageFile(im *image) (*imageFile, error) {
	fd, err := unix.MemfdCreate("castellan-snapshot", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "castellan-snapshot")
	fail := func(what string, err error) (*imageFile, error) {
		_ = f.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := f.Truncate(int64(im.size())); err != nil {
		return fail("sizing the image file", err)
	}
	for _, r := range im.ranges {
		if _, err := f.WriteAt(r.data, int64(r.off)); err != nil {
			return fail("writing the image file", err)
		}
	}
	const seals = unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL
	if err := control(f, func(fd int) error {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals)
		return err
	}); err != nil {
		return fail("sealing the image file", err)
	}
	file := &imageFile{f: f, size: im.size()}
	// One mapping made and checked here, so that a kernel that refuses writable private
	// mappings of a sealed memfd makes the module copy its image instead of failing jobs.
	m, err := file.mapMemory(im.size())
	if err != nil {
		return fail("mapping the image file", err)
	}
	ok := m.check(im)
	m.unmap()
	if !ok {
		return fail("mapping the image file", errors.New("the mapping does not hold the image"))
	}
	return file, nil
}

// close releases the memfd (mappings made from it stay valid). Safe while instances are
// being made: a mapping attempted after it fails, and that instance copies the image.
func (f *imageFile) close() { _ = f.f.Close() }

func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// mapsImages: this build maps images copy-on-write.
const mapsImages = true

// wasmPage is the unit of every size here; it is a multiple of the page size of every Linux
// configuration (4, 16 or 64 KiB).
const wasmPage = 65536

// mapping is one instance's linear memory.
type mapping struct {
	base    atomic.Pointer[byte] // nil once unmapped
	reserve uintptr              // bytes reserved: the limit, rounded up to a wasm page
	rw      uint64               // bytes accessible from base: the image, then what grew
}

// mapMemory reserves limit bytes (rounded up to a wasm page) and maps the image over their
// start.
func (f *imageFile) mapMemory(limit uint64) (*mapping, error) {
	reserve := uintptr((max(limit, f.size) + wasmPage - 1) / wasmPage * wasmPage)
	base, err := unix.MmapPtr(-1, 0, nil, reserve, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("reserving %d bytes: %w", reserve, err)
	}
	err = control(f.f, func(fd int) error {
		_, err := unix.MmapPtr(fd, 0, base, uintptr(f.size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_FIXED)
		return err
	})
	if err != nil {
		_ = unix.MunmapPtr(base, reserve)
		return nil, fmt.Errorf("mapping the image: %w", err)
	}
	m := &mapping{reserve: reserve, rw: f.size}
	m.base.Store((*byte)(base))
	return m, nil
}

// bytes returns the first n bytes of the memory, with no capacity past them: an append
// must never reach inaccessible pages. n must not exceed what grow made accessible.
func (m *mapping) bytes(n uint64) []byte { return unsafe.Slice(m.base.Load(), m.reserve)[:n:n] }

// grow makes the memory accessible up to size bytes, a multiple of the wasm page no larger
// than the reservation.
func (m *mapping) grow(size uint64) error {
	if size <= m.rw {
		return nil
	}
	if size > uint64(m.reserve) {
		return fmt.Errorf("%d bytes is past the reservation of %d", size, m.reserve)
	}
	all := unsafe.Slice(m.base.Load(), m.reserve)
	if err := unix.Mprotect(all[m.rw:size], unix.PROT_READ|unix.PROT_WRITE); err != nil {
		return err
	}
	m.rw = size
	return nil
}

// unmap releases the memory. It is idempotent. No guest code may run on the memory any more,
// and no slice of it may be used after.
func (m *mapping) unmap() {
	if b := m.base.Swap(nil); b != nil {
		_ = unix.MunmapPtr(unsafe.Pointer(b), m.reserve)
	}
}

// check reports whether the mapping holds im: its ranges, and zeros between them.
func (m *mapping) check(im *image) bool {
	b := m.bytes(im.size())
	at := 0
	for _, r := range im.ranges {
		if !isZero(b[at:r.off]) || string(b[r.off:int(r.off)+len(r.data)]) != string(r.data) {
			return false
		}
		at = int(r.off) + len(r.data)
	}
	return isZero(b[at:])
}

// mapFor gives l a mapping of the image as its memory, or returns false (l then copies).
// The mapping is unmapped by release, or when l becomes unreachable without a release (an
// instance that was never closed), when no code can reach the memory any more.
func (l *linearMemory) mapFor(f *imageFile) bool {
	m, err := f.mapMemory(l.limit)
	if err != nil {
		return false
	}
	l.mapped = m
	goruntime.AddCleanup(l, func(m *mapping) { m.unmap() }, m)
	goruntime.KeepAlive(f)
	return true
}

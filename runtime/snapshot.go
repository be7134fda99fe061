package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/tetratelabs/wabin/binary"
	"github.com/tetratelabs/wabin/leb128"
	"github.com/tetratelabs/wabin/wasm"
	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"

	"github.com/castellan-dev/castellan/hostfuncs"
)

// Pre-initialised snapshots, Wizer's approach (github.com/bytecodealliance/wizer) on wazero.
//
// A reactor's _initialize (a Go guest's runtime start: about 3 ms and megabytes of memory
// growth) produces the same kind of state for every job. It is run once per loaded module;
// the linear memory and the mutable globals it leaves are captured, and every job's fresh
// instance starts from that image instead of running _initialize again.
//
// The module a job instantiates is a rewrite of the task's binary, made with wabin and
// derived from the binary alone, so the compilation cache still compiles it once per
// machine: its active data segments are removed (their bytes become an image written by
// the host, merged into a few ranges: a Go binary has tens of thousands of segments, which
// wazero evaluates one by one at each instantiation) and every mutable global is exported
// under a reserved name, so that the host can set it. Without a snapshot the same rewritten
// module runs as before: the original data is written, then _initialize is called.
//
// What cannot be captured faithfully makes the module run without a snapshot (logged with
// the reason): an _initialize that traps, exits or runs out of time; one that calls any host
// function but WASI's clocks, random numbers, sched_yield, the (always empty) arguments and
// environment and the state-free queries of the standard streams (snapshotWASI), because every job would see that call's effect without it happening
// (a log line, a sleep, an HTTP call); a mutable global that is not a number (v128, a
// reference); and modules the rewrite does not cover (a start section, bulk-memory
// instructions that name data segments, a data segment whose offset is not a constant).
//
// Not captured: table contents. wazero exposes no way to read a table, so a table changed by
// _initialize (table.set, table.grow, table.fill, table.copy, table.init) is back at its
// declared contents in every job. Go, Rust, C and AssemblyScript reactors fill their tables
// from element segments and do not change them at run time; a module that does gets its
// original table, the same one in every job, never another job's.
//
// Isolation is unchanged: the image is never written after capture; each job gets a fresh
// instance and a memory that is a private copy-on-write mapping of the image (Linux, see
// imagemap_linux.go) or a buffer that is fresh or cleared, and the image is copied into it.

// globalExportPrefix names the exports the rewrite adds for mutable globals. A module that
// already exports a name with this prefix is not rewritten.
const globalExportPrefix = "castellan.snapshot.global."

// imageChunk is the granularity of an image: ranges of memory are kept or skipped in whole
// chunks. A Go guest's heap is mostly zero pages after its runtime start.
const imageChunk = 4096

// image is how an instance's memory and mutable globals start.
type image struct {
	pages   uint32 // memory size in 64 KiB pages
	ranges  []memRange
	globals []uint64 // values of rewrite.globals, in that order; nil: leave the initial values
	// file is the image in a sealed memfd, which instances map copy-on-write
	// (imagemap_linux.go); nil: they copy the ranges.
	file *imageFile
}

type memRange struct {
	off  uint32
	data []byte
}

// size is the image's memory size in bytes.
func (im *image) size() uint64 { return uint64(im.pages) * 65536 }

// fill writes the image into b, whose length is at least the image's size: b then holds
// the image up to its size and zeros after it. Bytes of b from dirty on are zero already.
func (im *image) fill(b []byte, dirty int) {
	at := 0
	for _, r := range im.ranges {
		if off := int(r.off); at < dirty && at < off {
			clear(b[at:min(off, dirty)])
		}
		at = int(r.off) + copy(b[r.off:], r.data)
	}
	if at < dirty {
		clear(b[at:dirty])
	}
}

func (im *image) bytes() int {
	n := 0
	for _, r := range im.ranges {
		n += len(r.data)
	}
	return n
}

// rewrite is a reactor module prepared for image instantiation.
type rewrite struct {
	wasm     []byte   // the binary jobs instantiate
	data     *image   // the original data segments, for instances that run _initialize
	globals  []string // export names of the mutable globals
	numeric  bool     // every mutable global is i32, i64, f32 or f64: a snapshot can hold them
	refusal  string   // why there can be no snapshot even though the module was rewritten
	minPages uint32
}

// rewriteModule prepares mod (decoded from the binary Load compiles) for image
// instantiation, or says why it cannot be.
func rewriteModule(mod *wasm.Module) (*rewrite, string) {
	switch {
	case mod.MemorySection == nil:
		return nil, "the module defines no memory"
	case mod.StartSection != nil:
		return nil, "the module has a start function, which would run before its data is written"
	case mod.DataCountSection != nil:
		// memory.init and data.drop name data segments by index, and need this section.
		return nil, "the module uses bulk-memory instructions on data segments"
	}
	for _, e := range mod.ElementSection {
		// wabin encodes the MVP form of element segments only: it panics on the others and
		// would write a segment for another table, or a null element, wrongly.
		if e.Mode != wasm.ElementModeActive || e.TableIndex != 0 || e.Type != wasm.RefTypeFuncref || slices.Contains(e.Init, nil) {
			return nil, "the module has element segments in a form the rewrite does not encode"
		}
	}
	for _, c := range mod.CodeSection {
		if localGroups(c.LocalTypes) > maxLocalGroups {
			return nil, "a function declares its locals in too many groups"
		}
	}
	for _, e := range mod.ExportSection {
		if len(e.Name) >= len(globalExportPrefix) && e.Name[:len(globalExportPrefix)] == globalExportPrefix {
			return nil, "the module exports a name reserved for snapshots"
		}
	}
	rw := &rewrite{numeric: true, minPages: mod.MemorySection.Min}
	limit := uint64(mod.MemorySection.Min) * 65536
	// The original data, applied in order as instantiation would (a later segment overwrites
	// an earlier one), into one buffer spanning the segments.
	var lo, hi uint64 = ^uint64(0), 0
	var kept []*wasm.DataSegment
	for _, d := range mod.DataSection {
		if d.OffsetExpression == nil { // passive: stays in the module, inert without memory.init
			kept = append(kept, d)
			continue
		}
		off, ok := constI32(d.OffsetExpression)
		if !ok {
			return nil, "a data segment's offset is not a constant"
		}
		end := uint64(off) + uint64(len(d.Init))
		if end > limit {
			return nil, "a data segment lies outside the initial memory"
		}
		if len(d.Init) == 0 {
			continue
		}
		lo, hi = min(lo, uint64(off)), max(hi, end)
	}
	rw.data = &image{pages: mod.MemorySection.Min}
	if hi > lo {
		buf := make([]byte, hi-lo)
		for _, d := range mod.DataSection {
			if d.OffsetExpression == nil || len(d.Init) == 0 {
				continue
			}
			off, _ := constI32(d.OffsetExpression)
			copy(buf[uint64(off)-lo:], d.Init)
		}
		rw.data.ranges = nonZeroRanges(buf, uint32(lo))
	}

	out := *mod
	out.DataSection = kept
	out.ExportSection = slices.Clone(mod.ExportSection)
	imported := mod.ImportGlobalCount() // zero: Load refuses imported globals
	for i, g := range mod.GlobalSection {
		if !g.Type.Mutable {
			continue
		}
		switch g.Type.ValType {
		case wasm.ValueTypeI32, wasm.ValueTypeI64, wasm.ValueTypeF32, wasm.ValueTypeF64:
		default:
			rw.numeric = false
			rw.refusal = "a mutable global holds a vector or a reference, which the host cannot read"
		}
		name := globalExportPrefix + strconv.Itoa(i)
		rw.globals = append(rw.globals, name)
		out.ExportSection = append(out.ExportSection, &wasm.Export{Type: wasm.ExternTypeGlobal, Name: name, Index: imported + uint32(i)})
	}
	var err error
	if rw.wasm, err = encode(&out); err != nil {
		return nil, err.Error()
	}
	return rw, ""
}

// maxLocalGroups bounds the runs of same-typed locals of one function the rewrite encodes:
// wabin's encoder takes time quadratic in them, and toolchains emit a handful.
const maxLocalGroups = 1000

func localGroups(ts []wasm.ValueType) int {
	n := 0
	for i := range ts {
		if i == 0 || ts[i] != ts[i-1] {
			n++
		}
	}
	return n
}

// encode is binary.EncodeModule with its panics (on forms it does not support) turned into
// an error.
func encode(m *wasm.Module) (b []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = errors.New("the module has a form the rewrite does not encode")
		}
	}()
	return binary.EncodeModule(m), nil
}

// constI32 returns the value of an i32.const expression.
func constI32(e *wasm.ConstantExpression) (uint32, bool) {
	if e.Opcode != wasm.OpcodeI32Const {
		return 0, false
	}
	v, _, err := leb128.DecodeInt32(bytes.NewReader(e.Data))
	return uint32(v), err == nil
}

// nonZeroRanges splits b, which starts at memory offset base, into ranges of whole chunks
// that hold a non-zero byte; adjacent chunks are merged. The ranges are copies.
func nonZeroRanges(b []byte, base uint32) []memRange {
	var out []memRange
	start := -1
	flush := func(end int) {
		if start >= 0 {
			out = append(out, memRange{off: base + uint32(start), data: bytes.Clone(b[start:end])})
			start = -1
		}
	}
	for at := 0; at < len(b); at += imageChunk {
		end := min(at+imageChunk, len(b))
		if isZero(b[at:end]) {
			flush(at)
			continue
		}
		if start < 0 {
			start = at
		}
	}
	flush(len(b))
	return out
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// apply completes a fresh instance whose memory buffer the allocator filled with im
// (linearMemory.img): the memory grows to the image's size, over bytes that hold it
// already, and the mutable globals are set.
func (im *image) apply(mod api.Module, globals []string) error {
	mem := mod.Memory()
	if have := mem.Size() / 65536; have < im.pages {
		if _, ok := mem.Grow(im.pages - have); !ok {
			return fmt.Errorf("memory of %d pages does not fit the limit", im.pages)
		}
	}
	for i, v := range im.globals {
		g, ok := mod.ExportedGlobal(globals[i]).(api.MutableGlobal)
		if !ok {
			return fmt.Errorf("global %s is not exported as mutable", globals[i])
		}
		g.Set(v)
	}
	return nil
}

// snapshotWASI are the host functions _initialize may call for its result to be captured:
// they read a clock, random bytes, or the arguments and environment (empty in the sandbox),
// and change nothing outside the instance. State made from them (a random seed, a start
// time) is then the same in every job.
var snapshotWASI = map[string]bool{
	"clock_time_get": true, "clock_res_get": true, "random_get": true, "sched_yield": true,
	"args_get": true, "args_sizes_get": true, "environ_get": true, "environ_sizes_get": true,
	// The standard streams are host-side writers and an empty reader: their kind is fixed,
	// and setting their flags changes nothing (wazero answers ENOSYS for a non-blocking mode
	// on them). There are no preopened directories, so fd_prestat_get only says so. Go's
	// runtime start calls all three.
	"fd_fdstat_get": true, "fd_fdstat_set_flags": true, "fd_prestat_get": true,
}

// hostCalls records the host functions a capture's guest called.
type hostCalls struct {
	mu     sync.Mutex
	called map[string]int
}

func (h *hostCalls) NewFunctionListener(def api.FunctionDefinition) experimental.FunctionListener {
	return h
}

func (h *hostCalls) Before(_ context.Context, _ api.Module, def api.FunctionDefinition, _ []uint64, _ experimental.StackIterator) {
	h.mu.Lock()
	h.called[def.ModuleName()+"."+def.Name()]++
	h.mu.Unlock()
}

func (h *hostCalls) After(context.Context, api.Module, api.FunctionDefinition, []uint64) {}
func (h *hostCalls) Abort(context.Context, api.Module, api.FunctionDefinition, error)    {}

// refused names the calls outside snapshotWASI, sorted.
func (h *hostCalls) refused() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for name := range h.called {
		mod, fn, _ := cutLast(name)
		if mod == "wasi_snapshot_preview1" && snapshotWASI[fn] {
			continue
		}
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func cutLast(s string) (string, string, bool) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '.' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// capture runs _initialize once in a runtime of its own, whose host modules report every
// call, and returns the state it leaves, or why it cannot be used.
func (m *Module) capture(ctx context.Context, rc wazero.RuntimeConfig, rw *rewrite) (*image, string) {
	if !rw.numeric {
		return nil, rw.refusal
	}
	calls := &hostCalls{called: map[string]int{}}
	rt := wazero.NewRuntimeWithConfig(ctx, rc)
	defer rt.Close(context.Background())
	if err := hostfuncs.Instantiate(experimental.WithFunctionListenerFactory(ctx, calls), rt); err != nil {
		return nil, "host modules: " + firstLine(err)
	}
	compiled, ours, err := m.engine.compile(ctx, m.cfg.Name, rt, rw.wasm) // a cache hit: Load compiled it
	if !ours {
		// The compilation was abandoned; its goroutine closes rt when it ends.
		return nil, "compiling for the capture: " + firstLine(err)
	}
	if err != nil {
		return nil, "compiling for the capture: " + firstLine(err)
	}
	ictx, cancel := context.WithTimeout(ctx, m.limits.Timeout)
	defer cancel()
	mem := &linearMemory{limit: m.memLimit, img: rw.data}
	mc := m.moduleConfig().
		WithStartFunctions().
		// No wait is captured: a sleep would be recorded as a poll_oneoff call and refused.
		WithNanosleep(func(int64) {})
	var mod api.Module
	err = m.safely("pre-initialising", func() (err error) {
		mod, err = rt.InstantiateModule(experimental.WithMemoryAllocator(ictx, mem), compiled, mc)
		if err != nil {
			return err
		}
		if err := rw.data.apply(mod, nil); err != nil { // the data was written by the allocator
			return err
		}
		_, err = mod.ExportedFunction("_initialize").Call(ictx)
		return err
	})
	if err != nil {
		if ictx.Err() != nil {
			return nil, fmt.Sprintf("_initialize did not return within %s", m.limits.Timeout)
		}
		return nil, "_initialize failed: " + firstLine(err)
	}
	if bad := calls.refused(); len(bad) > 0 {
		return nil, "_initialize called host functions whose effect a snapshot cannot repeat: " + joinComma(bad)
	}
	im := &image{pages: mod.Memory().Size() / 65536}
	buf, ok := mod.Memory().Read(0, mod.Memory().Size())
	if !ok {
		return nil, "reading the memory failed"
	}
	im.ranges = nonZeroRanges(buf, 0)
	for _, name := range rw.globals {
		g := mod.ExportedGlobal(name)
		if g == nil {
			return nil, "global " + name + " is not exported"
		}
		im.globals = append(im.globals, g.Get())
	}
	return im, ""
}

func joinComma(ss []string) string {
	var b bytes.Buffer
	for i, s := range ss {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(clipName(s))
	}
	return b.String()
}

// snapshotStats is what a loaded module's snapshot holds, for logs and tests.
type snapshotStats struct {
	pages, bytes, ranges int
	took                 time.Duration
}

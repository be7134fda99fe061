package runtime

import (
	"bytes"
	"fmt"
	"io"
	"time"

	"github.com/tetratelabs/wabin/binary"
	"github.com/tetratelabs/wabin/leb128"
	"github.com/tetratelabs/wabin/wasm"

	"github.com/castellan-dev/castellan/internal/options"
)

// LoadLimits bound what loading a module may cost the host, before any of it runs. Every
// field is optional: zero takes the default named on it, and a negative value makes
// NewEngine fail with an error naming the field.
//
// Compiling a crafted module takes time and memory that grow faster than its size (deeply
// nested blocks, a br_table with hundreds of thousands of targets, a function declaring
// millions of locals: wazero expands local declarations eagerly). The body and locals limits
// keep the worst cases out before compiling; the compile deadline bounds the rest. Measured
// with wazero v1.12.0: 10,000 nested blocks compile in 0.4 s, 40,000 in 6 s; a br_table of
// 100,000 targets in 7 s; a function of 50 million locals allocates 1.7 GB.
type LoadLimits struct {
	// ModuleBytes bounds the module binary. Optional; default DefaultModuleBytes (64 MiB).
	ModuleBytes int64
	// Functions bounds the functions a module defines. Optional; default DefaultFunctions
	// (100,000).
	Functions int
	// FunctionBodyBytes bounds the code of one function. Optional; default
	// DefaultFunctionBodyBytes (96 KiB): the largest function
	// of the Go, Rust, C and Haskell modules we measured has 80 KB; 40,000 nested blocks take
	// 120 KB.
	FunctionBodyBytes int
	// FunctionLocals bounds the locals one function declares. Optional; default
	// DefaultFunctionLocals (50,000).
	FunctionLocals int
	// TableElements bounds the elements of all a module's tables together, at their declared
	// maximum. Optional; default DefaultTableElements (1,048,576). Each element also counts TableElementBytes against every
	// job's memory limit (see Limits.MemoryPages).
	TableElements int64
	// CompileTimeout bounds compiling one module. Optional; default DefaultCompileTimeout (1m): generous, because the limits
	// above keep the crafted cases out, and an ordinary 3 MB Go module compiles in under a
	// second (the default is ten times longer in a binary built with the race detector, which
	// slows the compiler down that much). wazero stops compiling at the deadline between two
	// functions; the function being compiled is finished first, on a goroutine Load no longer
	// waits for.
	CompileTimeout time.Duration
}

const (
	DefaultModuleBytes       = 64 << 20
	DefaultFunctions         = 100_000
	DefaultFunctionBodyBytes = 96 << 10
	DefaultFunctionLocals    = 50_000
	DefaultTableElements     = 1 << 20
	DefaultCompileTimeout    = time.Minute
	// TableElementBytes is what one table element counts against a job's memory limit:
	// wazero keeps a table as a Go slice of 8-byte references, and table.grow appends to it,
	// so a growing table may briefly hold twice its length.
	TableElementBytes = 16
)

func (l LoadLimits) withDefaults() (LoadLimits, error) {
	if err := options.CheckNotNegative(l); err != nil {
		return l, err
	}
	if l.ModuleBytes == 0 {
		l.ModuleBytes = DefaultModuleBytes
	}
	if l.Functions == 0 {
		l.Functions = DefaultFunctions
	}
	if l.FunctionBodyBytes == 0 {
		l.FunctionBodyBytes = DefaultFunctionBodyBytes
	}
	if l.FunctionLocals == 0 {
		l.FunctionLocals = DefaultFunctionLocals
	}
	if l.TableElements == 0 {
		l.TableElements = DefaultTableElements
	}
	if l.CompileTimeout == 0 {
		l.CompileTimeout = DefaultCompileTimeout * defaultCompileScale
	}
	return l, nil
}

// inspected is what Load learns from a module's sections before compiling it.
type inspected struct {
	// wasm is the binary to compile: the module as given, except that a table declared
	// without a maximum gets its minimum as maximum (see inspect).
	wasm []byte
	// tableBytes is what the module's tables count against each job's memory limit.
	tableBytes uint64
	// problems are the reasons to refuse the module; empty when it may be compiled.
	problems []string
	// invalid is set when the binary cannot be decoded at all.
	invalid error
	// mod is the decoded module (with the table patch applied) when there were no problems.
	mod *wasm.Module
}

// inspect checks a module against the load limits and the module shape docs/abi.md asks for,
// without compiling it.
//
// The code section is walked first, reading only each function's size and local
// declarations: a full decode expands local declarations into one byte per local, so a
// 10-byte function declaring four billion locals would cost gigabytes before any limit could
// be checked. Only a module within those limits is decoded in full (by wabin).
//
// Tables: wazero keeps table elements in Go memory outside the memory limit, and a table
// without a declared maximum lets table.grow take as much as the guest asks. Go's toolchain
// declares its function table without a maximum and never grows it; such a table is given
// its minimum as maximum, so table.grow on it fails (returns -1) as the specification
// allows. Every table's maximum then counts against the limits.
func inspect(b []byte, ll LoadLimits) inspected {
	res := inspected{wasm: b}
	if int64(len(b)) > ll.ModuleBytes {
		res.problems = append(res.problems, fmt.Sprintf("module of %d bytes exceeds the limit of %d bytes", len(b), ll.ModuleBytes))
		return res
	}
	tableAt, tableEnd, problems := scanSections(b, ll)
	if len(problems) > 0 {
		res.problems = problems
		return res
	}
	m, err := binary.DecodeModule(b, wasm.CoreFeaturesV2)
	if err != nil {
		res.invalid = err
		return res
	}
	for _, imp := range m.ImportSection {
		kind := ""
		switch imp.Type {
		case wasm.ExternTypeTable:
			kind = "table"
		case wasm.ExternTypeMemory:
			kind = "memory"
		case wasm.ExternTypeGlobal:
			kind = "global"
		default:
			continue
		}
		res.problems = append(res.problems, fmt.Sprintf("imports %s %s.%s: modules must define their own memory, tables and globals",
			kind, clipName(imp.Module), clipName(imp.Name)))
	}
	var elements uint64
	patch := false
	for _, t := range m.TableSection {
		if t.Max == nil {
			t.Max, patch = &t.Min, true
		}
		elements += uint64(*t.Max)
	}
	if elements > uint64(ll.TableElements) {
		res.problems = append(res.problems, fmt.Sprintf("tables declare up to %d elements, the limit is %d (a table without a maximum counts its minimum)",
			elements, ll.TableElements))
	}
	res.tableBytes = elements * TableElementBytes
	if patch && tableAt >= 0 {
		tables := binary.EncodeModule(&wasm.Module{TableSection: m.TableSection})[8:] // past magic and version
		out := make([]byte, 0, len(b)+len(tables))
		out = append(out, b[:tableAt]...)
		out = append(out, tables...)
		res.wasm = append(out, b[tableEnd:]...)
	}
	res.mod = m
	return res
}

// scanSections walks the section headers of b and the function headers of its code section.
// It returns where the table section starts and ends (-1 when there is none) and what
// exceeds the limits. A malformed binary yields no problem here: the full decode reports it.
func scanSections(b []byte, ll LoadLimits) (tableAt, tableEnd int, problems []string) {
	tableAt, tableEnd = -1, -1
	if len(b) < 8 {
		return
	}
	r := bytes.NewReader(b[8:])
	for {
		at := len(b) - r.Len()
		id, err := r.ReadByte()
		if err != nil {
			return
		}
		size, _, err := leb128.DecodeUint32(r)
		if err != nil || uint64(size) > uint64(r.Len()) {
			return
		}
		start := len(b) - r.Len()
		switch id {
		case wasm.SectionIDTable:
			tableAt, tableEnd = at, start+int(size)
		case wasm.SectionIDCode:
			problems = scanCode(b[start:start+int(size)], ll)
			if len(problems) > 0 {
				return
			}
		}
		if _, err := r.Seek(int64(size), io.SeekCurrent); err != nil {
			return
		}
	}
}

func scanCode(sec []byte, ll LoadLimits) []string {
	r := bytes.NewReader(sec)
	n, _, err := leb128.DecodeUint32(r)
	if err != nil {
		return nil
	}
	if uint64(n) > uint64(ll.Functions) {
		return []string{fmt.Sprintf("module defines %d functions, the limit is %d", n, ll.Functions)}
	}
	for i := uint32(0); i < n; i++ {
		size, _, err := leb128.DecodeUint32(r)
		if err != nil || uint64(size) > uint64(r.Len()) {
			return nil
		}
		if uint64(size) > uint64(ll.FunctionBodyBytes) {
			return []string{fmt.Sprintf("function %d has %d bytes of code, the limit is %d", i, size, ll.FunctionBodyBytes)}
		}
		end := len(sec) - r.Len() + int(size)
		groups, _, err := leb128.DecodeUint32(r)
		if err != nil {
			return nil
		}
		var locals uint64
		for g := uint32(0); g < groups && len(sec)-r.Len() < end; g++ {
			c, _, err := leb128.DecodeUint32(r)
			if err != nil {
				return nil
			}
			if _, err := r.ReadByte(); err != nil { // the locals' type
				return nil
			}
			if locals += uint64(c); locals > uint64(ll.FunctionLocals) {
				return []string{fmt.Sprintf("function %d declares more than %d locals", i, ll.FunctionLocals)}
			}
		}
		if _, err := r.Seek(int64(end), io.SeekStart); err != nil {
			return nil
		}
	}
	return nil
}

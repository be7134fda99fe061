package runtime_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	goruntime "runtime"

	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

// TestTableLimits: tables are bounded per module and count against the task's memory limit.
func TestTableLimits(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	tests := []struct {
		fixture string
		pages   uint32
		loadErr string       // module_rejected at load, with this in the message
		code    outcome.Code // otherwise the job's outcome
		msg     string
	}{
		{fixture: "table_bomb", pages: 64, code: outcome.TaskError, msg: "task returned 7"}, // table.grow refused
		{fixture: "table_max", pages: 64, loadErr: "tables declare up to 100000000 elements"},
		{fixture: "table_grow", pages: 16, loadErr: "1048576 bytes against a memory limit of 1048576"},
		{fixture: "table_grow", pages: 64, code: outcome.OK},
	}
	for _, tt := range tests {
		m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: tt.fixture, Wasm: fixture(t, tt.fixture), Limits: runtime.Limits{MemoryPages: tt.pages}})
		if tt.loadErr != "" {
			if outcome.CodeOf(err) != outcome.ModuleRejected || !strings.Contains(err.Error(), tt.loadErr) {
				t.Errorf("Load(%s, %d pages) = %v, want module_rejected containing %q", tt.fixture, tt.pages, err, tt.loadErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("Load(%s) = %v", tt.fixture, err)
		}
		res := m.Run(t.Context(), runtime.Job{ID: "t"})
		if res.Code() != tt.code || !strings.Contains(outcome.Message(res.Err), tt.msg) {
			t.Errorf("Run(%s) = %s (%v), want %s containing %q", tt.fixture, res.Code(), res.Err, tt.code, tt.msg)
		}
	}
}

// TestTableMemoryStaysBounded runs a hostile batch (unbounded table growth, tables grown to
// their maximum, memory bombs) and checks that the heap the process holds from the OS stays
// near where it started: tables must not take memory outside the limits. Before tables were
// bounded, one table_bomb job took 512 MiB.
func TestTableMemoryStaysBounded(t *testing.T) {
	e := newEngine(t)
	var mods []*runtime.Module
	for _, name := range []string{"table_bomb", "table_grow", "membomb"} {
		mods = append(mods, load(t, e, name, runtime.Limits{MemoryPages: 64}))
	}
	held := func() uint64 {
		var ms goruntime.MemStats
		goruntime.GC()
		goruntime.ReadMemStats(&ms)
		return ms.HeapSys - ms.HeapReleased
	}
	before := held()
	var peak uint64
	for i := range 30 {
		m := mods[i%len(mods)]
		if res := m.Run(t.Context(), runtime.Job{ID: "b"}); res.Code() == outcome.OK && i%len(mods) == 0 {
			t.Fatalf("Run(table_bomb) = ok: table.grow of 64M elements succeeded")
		}
		peak = max(peak, held())
	}
	const slack = 96 << 20
	if peak > before+slack {
		t.Errorf("heap held from the OS grew from %d to %d bytes during the hostile batch, want < %d more", before, peak, slack)
	}
}

// TestBadModuleShapeRejectedAtLoad: imports of a table, a global or a memory, and an
// _initialize of the wrong type, are refused at load (they would fail every job later).
func TestBadModuleShapeRejectedAtLoad(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	tests := []struct{ fixture, msg string }{
		{"import_table", "imports table env.table"},
		{"import_global", "imports global env.g"},
		{"import_memory", "imports memory env.memory"},
		{"bad_initialize", "_initialize must have type () -> ()"},
		{"extism_import_global", "imports global extism:host/env.g"},
	}
	for _, tt := range tests {
		_, err := e.Load(t.Context(), runtime.ModuleConfig{Name: tt.fixture, Wasm: fixture(t, tt.fixture)})
		if outcome.CodeOf(err) != outcome.ModuleRejected || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("Load(%s) = %v, want module_rejected containing %q", tt.fixture, err, tt.msg)
		}
	}
}

// uleb is the unsigned LEB128 encoding of n, for the generated modules below.
func uleb(n uint64) []byte {
	var b []byte
	for {
		c := byte(n & 0x7f)
		if n >>= 7; n == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func section(id byte, content []byte) []byte {
	return append(append([]byte{id}, uleb(uint64(len(content)))...), content...)
}

// genModule returns a module exporting memory and n functions () -> i32, the first exported
// as run. Each function declares locals i32 locals and runs body (without its final end),
// then returns 0. Crafted modules are generated here rather than committed: the hostile
// part is a repetition.
func genModule(n int, locals uint64, body []byte) []byte {
	m := []byte{0, 'a', 's', 'm', 1, 0, 0, 0}
	m = append(m, section(1, []byte{1, 0x60, 0, 1, 0x7f})...)
	funcs := uleb(uint64(n))
	for range n {
		funcs = append(funcs, 0)
	}
	m = append(m, section(3, funcs)...)
	m = append(m, section(5, []byte{1, 0, 1})...)
	m = append(m, section(7, []byte{2, 3, 'r', 'u', 'n', 0, 0, 6, 'm', 'e', 'm', 'o', 'r', 'y', 2, 0})...)
	fn := []byte{0}
	if locals > 0 {
		fn = append(append([]byte{1}, uleb(locals)...), 0x7f)
	}
	fn = append(append(fn, body...), 0x41, 0, 0x0b) // i32.const 0; end
	code := uleb(uint64(n))
	for range n {
		code = append(append(code, uleb(uint64(len(fn)))...), fn...)
	}
	return append(m, section(10, code)...)
}

// nestedBlocks is depth nested empty blocks.
func nestedBlocks(depth int) []byte {
	b := make([]byte, 0, 3*depth)
	for range depth {
		b = append(b, 0x02, 0x40) // block (no result)
	}
	for range depth {
		b = append(b, 0x0b)
	}
	return b
}

// brTable is one br_table with targets entries, inside a block.
func brTable(targets int) []byte {
	b := []byte{0x02, 0x40, 0x41, 0x00, 0x0e} // block; i32.const 0; br_table
	b = append(b, uleb(uint64(targets))...)
	for range targets {
		b = append(b, 0)
	}
	return append(b, 0, 0x0b) // default target; end
}

// TestLoadLimits: crafted modules whose compilation would take seconds and gigabytes are
// refused at load, with the limit they exceed named.
func TestLoadLimits(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ll   runtime.LoadLimits
		wasm []byte
		msg  string
	}{
		{"40k nested blocks", runtime.LoadLimits{}, genModule(1, 0, nestedBlocks(40_000)), "bytes of code, the limit is 98304"},
		{"400k br_table targets", runtime.LoadLimits{}, genModule(1, 0, brTable(400_000)), "bytes of code, the limit is 98304"},
		{"4G locals", runtime.LoadLimits{}, genModule(1, 1<<32-1, nil), "declares more than 50000 locals"},
		{"locals in groups", runtime.LoadLimits{FunctionLocals: 10}, genModule(1, 11, nil), "declares more than 10 locals"},
		{"too many functions", runtime.LoadLimits{Functions: 10}, genModule(11, 0, nil), "defines 11 functions, the limit is 10"},
		{"module size", runtime.LoadLimits{ModuleBytes: 64}, genModule(10, 0, nil), "exceeds the limit of 64 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := runtime.NewEngine(runtime.Config{Load: tt.ll})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close(context.Background())
			_, err = e.Load(t.Context(), runtime.ModuleConfig{Name: "crafted", Wasm: tt.wasm})
			if outcome.CodeOf(err) != outcome.ModuleRejected || !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("Load(%s) = %v, want module_rejected containing %q", tt.name, err, tt.msg)
			}
		})
	}
	// The generator makes valid modules: within the limits they load and run.
	e := newEngine(t)
	m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "ok", Wasm: genModule(3, 100, nestedBlocks(100))})
	if err != nil {
		t.Fatalf("Load(generated module within limits) = %v", err)
	}
	if res := m.Run(t.Context(), runtime.Job{ID: "g"}); res.Err != nil {
		t.Errorf("Run(generated) = %v", res.Err)
	}
}

// TestCompileDeadline: a module within the size limits whose compilation is slow is refused
// at the compile deadline, and a good module loaded meanwhile is not held up by it.
func TestCompileDeadline(t *testing.T) {
	t.Parallel()
	e, err := runtime.NewEngine(runtime.Config{Load: runtime.LoadLimits{FunctionBodyBytes: 1 << 20, CompileTimeout: 300 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	// Seconds of compilation, spread over many functions: wazero stops between functions.
	slow := genModule(400, 0, nestedBlocks(3_000))
	hostile := make(chan error, 1)
	go func() {
		_, err := e.Load(context.Background(), runtime.ModuleConfig{Name: "slow", Wasm: slow})
		hostile <- err
	}()
	m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "echo", Wasm: fixture(t, "echo")})
	if err != nil {
		t.Fatalf("Load(echo) while a slow module compiles = %v", err)
	}
	if res := m.Run(t.Context(), runtime.Job{ID: "e", Input: []byte("hi")}); string(res.Output) != "hi" {
		t.Errorf("Run(echo) = %q, %v", res.Output, res.Err)
	}
	select {
	case err := <-hostile:
		t.Logf("the slow module's Load returned before the good one was done: %v", err)
		if outcome.CodeOf(err) != outcome.ModuleRejected {
			t.Fatalf("Load(slow) = %v, want module_rejected", err)
		}
	default:
	}
	err = <-hostile
	if outcome.CodeOf(err) != outcome.ModuleRejected || !strings.Contains(err.Error(), "longer than the limit of 300ms") {
		t.Errorf("Load(slow) = %v, want module_rejected at the compile deadline", err)
	}
}

func TestNegativeLoadLimitsRefused(t *testing.T) {
	t.Parallel()
	if _, err := runtime.NewEngine(runtime.Config{Load: runtime.LoadLimits{Functions: -1}}); err == nil {
		t.Error("NewEngine(Functions: -1) = nil error, want one")
	}
}

// TestLoadOnClosedEngine: Load on a closed engine returns ErrClosed at once (it used to hang
// in wazero on the closed compilation cache).
func TestLoadOnClosedEngine(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"echo", "extism_probe"} {
		e, err := runtime.NewEngine(runtime.Config{})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Close(t.Context()); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := e.Load(context.Background(), runtime.ModuleConfig{Name: name, Wasm: fixture(t, name)})
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, runtime.ErrClosed) {
				t.Errorf("Load(%s) on a closed engine = %v, want ErrClosed", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Load(%s) on a closed engine has not returned after 10s", name)
		}
	}
}

package runtime_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/internal/testenv"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".wasm"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newEngine(t testing.TB) *runtime.Engine {
	t.Helper()
	e, err := runtime.NewEngine(runtime.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close(context.Background()) })
	return e
}

func load(t testing.TB, e *runtime.Engine, name string, lim runtime.Limits) *runtime.Module {
	t.Helper()
	m, err := e.Load(context.Background(), runtime.ModuleConfig{Name: name, Wasm: fixture(t, name), Limits: lim})
	if err != nil {
		t.Fatalf("Load(%s) = %v", name, err)
	}
	return m
}

func TestEchoAndCommand(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	for _, name := range []string{"echo", "command"} {
		m := load(t, e, name, runtime.Limits{})
		for i := range 3 { // several jobs: each gets a fresh instance
			in := `{"n":` + string(rune('0'+i)) + `}`
			res := m.Run(t.Context(), runtime.Job{ID: "j", Input: []byte(in)})
			if res.Err != nil {
				t.Fatalf("%s: Run() err = %v", name, res.Err)
			}
			want := in
			if name == "command" {
				want = "cmd:" + in
			}
			if string(res.Output) != want {
				t.Errorf("%s: Run() output = %q, want %q", name, res.Output, want)
			}
		}
	}
}

// TestHostileModules runs each hostile fixture and checks it ends with the right outcome,
// quickly, without hurting the process.
func TestHostileModules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		lim   runtime.Limits
		input string
		want  outcome.Code
		msg   string
	}{
		{"loop", runtime.Limits{Timeout: 200 * time.Millisecond}, "", outcome.Timeout, "time limit"},
		{"start_loop", runtime.Limits{Timeout: 200 * time.Millisecond}, "", outcome.Timeout, "time limit"},
		{"membomb", runtime.Limits{MemoryPages: 64}, "", outcome.MemoryLimit, "64 pages"},
		{"recurse", runtime.Limits{}, "", outcome.Trap, "stack overflow"},
		{"huge_output", runtime.Limits{OutputBytes: 1 << 20}, "", outcome.OutputTooLarge, "1048576 bytes"},
		{"oob", runtime.Limits{}, "", outcome.Trap, "out-of-bounds"},
		{"fail", runtime.Limits{}, "customer 9 not found", outcome.TaskError, "customer 9 not found"},
		{"http_flood", runtime.Limits{}, "", outcome.Denied, "not granted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := load(t, newEngine(t), tt.name, tt.lim)
			res := m.Run(t.Context(), runtime.Job{ID: "j1", Input: []byte(tt.input)})
			if got := res.Code(); got != tt.want {
				t.Fatalf("Run(%s) code = %s (%v), want %s", tt.name, got, res.Err, tt.want)
			}
			if !strings.Contains(outcome.Message(res.Err), tt.msg) {
				t.Errorf("Run(%s) message = %q, want it to contain %q", tt.name, outcome.Message(res.Err), tt.msg)
			}
			if res.Output != nil {
				t.Errorf("Run(%s) output = %q, want none on failure", tt.name, res.Output)
			}
			if tt.want == outcome.Timeout && !errors.Is(res.Err, context.DeadlineExceeded) {
				t.Errorf("errors.Is(%v, context.DeadlineExceeded) = false, want true", res.Err)
			}
		})
	}
}

func TestBadImportsRejectedAtLoad(t *testing.T) {
	t.Parallel()
	_, err := newEngine(t).Load(t.Context(), runtime.ModuleConfig{Name: "bad", Wasm: fixture(t, "bad_imports")})
	if got := outcome.CodeOf(err); got != outcome.ModuleRejected {
		t.Fatalf("Load(bad_imports) code = %s (%v), want module_rejected", got, err)
	}
	for _, want := range []string{"env.system", "path_open", "sock_accept", "castellan_v1.input_size(i32)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Load(bad_imports) error does not list %q:\n%v", want, err)
		}
	}
}

func TestLoadRejects(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	echo := fixture(t, "echo")
	tests := []struct {
		name string
		cfg  runtime.ModuleConfig
		msg  string
	}{
		{"garbage", runtime.ModuleConfig{Wasm: []byte("not wasm")}, "invalid module"},
		{"empty", runtime.ModuleConfig{Wasm: nil}, "invalid module"},
		{"truncated", runtime.ModuleConfig{Wasm: echo[:len(echo)/2]}, "invalid module"},
		{"pin mismatch", runtime.ModuleConfig{Wasm: echo, SHA256: strings.Repeat("ab", 32)}, "policy pins"},
		{"no entry", runtime.ModuleConfig{Wasm: echo, Entry: "main"}, "neither the entry"},
		{"memory over limit", runtime.ModuleConfig{Wasm: fixture(t, "http_probe"), Limits: runtime.Limits{MemoryPages: 2}}, "min 4 pages"},
	}
	for _, tt := range tests {
		tt.cfg.Name = tt.name
		_, err := e.Load(t.Context(), tt.cfg)
		if outcome.CodeOf(err) != outcome.ModuleRejected || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("Load(%s) = %v, want module_rejected containing %q", tt.name, err, tt.msg)
		}
	}
}

func TestStdoutGoesToLogNotOutput(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zap.DebugLevel)
	e, err := runtime.NewEngine(runtime.Config{Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "stdio", Wasm: fixture(t, "stdio")})
	if err != nil {
		t.Fatal(err)
	}
	res := m.Run(t.Context(), runtime.Job{ID: "job-7", Input: []byte("hello from guest\nsecond line")})
	if res.Err != nil || len(res.Output) != 0 {
		t.Fatalf("Run() = %q, %v; want empty output, nil", res.Output, res.Err)
	}
	lines := logs.FilterMessage("task stdout").All()
	if len(lines) != 2 {
		t.Fatalf("got %d stdout log lines, want 2: %v", len(lines), lines)
	}
	if got := lines[0].ContextMap(); got["msg"] != "hello from guest" || got["task"] != "stdio" || got["job"] != "job-7" {
		t.Errorf("stdout line fields = %v, want msg, task and job", got)
	}
}

// TestRecursionMemoryReturns checks that a stack overflow leaves the process healthy and
// gives back the memory the runaway stack took (wazero's compiler grows a Go-side stack).
func TestRecursionMemoryReturns(t *testing.T) {
	e := newEngine(t)
	m := load(t, e, "recurse", runtime.Limits{})
	var before, after goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&before)
	for range 3 {
		if res := m.Run(t.Context(), runtime.Job{ID: "r"}); res.Code() != outcome.Trap {
			t.Fatalf("Run(recurse) = %v, want trap", res.Err)
		}
	}
	goruntime.GC()
	goruntime.ReadMemStats(&after)
	const slack = 64 << 20
	if after.HeapInuse > before.HeapInuse+slack {
		t.Errorf("heap in use grew from %d to %d bytes after 3 stack overflows, want < %d more", before.HeapInuse, after.HeapInuse, slack)
	}
	// The process still runs other work.
	echo := load(t, e, "echo", runtime.Limits{})
	if res := echo.Run(t.Context(), runtime.Job{ID: "after", Input: []byte("ok")}); string(res.Output) != "ok" {
		t.Errorf("echo after recursion = %q, %v", res.Output, res.Err)
	}
}

func TestCancelledJob(t *testing.T) {
	t.Parallel()
	m := load(t, newEngine(t), "loop", runtime.Limits{Timeout: time.Minute})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan runtime.Result)
	go func() { done <- m.Run(ctx, runtime.Job{ID: "c"}) }()
	cancel()
	res := <-done
	if res.Code() != outcome.Cancelled || !errors.Is(res.Err, context.Canceled) {
		t.Fatalf("Run(cancelled) = %v, want cancelled", res.Err)
	}
}

// TestFixturesUpToDate rebuilds every committed .wasm from its .wat when wabt is installed
// (CI installs it) and fails when they differ.
func TestFixturesUpToDate(t *testing.T) {
	wat2wasm := testenv.LookPath(t, "apt-get install -y wabt", "wat2wasm")
	wats, _ := filepath.Glob("testdata/*.wat")
	for _, w := range wats {
		out := filepath.Join(t.TempDir(), "x.wasm")
		if b, err := exec.Command(wat2wasm, w, "-o", out).CombinedOutput(); err != nil {
			t.Fatalf("wat2wasm %s: %v\n%s", w, err, b)
		}
		got, _ := os.ReadFile(out)
		want, _ := os.ReadFile(strings.TrimSuffix(w, ".wat") + ".wasm")
		if string(got) != string(want) {
			t.Errorf("%s is stale: run `make fixtures`", strings.TrimSuffix(w, ".wat")+".wasm")
		}
	}
}

// TestRecycledMemoryIsZeroed runs jobs that mark their memory (a byte of the first page and
// of a page they grow) and fail if they find a mark: recycled buffers must reach the next
// instance zeroed, after a normal end and after a timeout (when wazero frees the memory from
// its watchdog while the guest may still run). It also checks buffers were recycled at all,
// so that it tests something.
func TestRecycledMemoryIsZeroed(t *testing.T) {
	t.Parallel()
	for _, pool := range []int{-1, 2} { // on-demand instances, and the pre-initialised pool
		e := newEngine(t)
		m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "residue", Wasm: fixture(t, "residue"), PoolSize: max(pool, 0), NoPool: pool < 0,
			Limits: runtime.Limits{Timeout: 100 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 12 {
			in, want := "", outcome.OK
			if i%3 == 1 {
				in, want = "spin", outcome.Timeout
			}
			res := m.Run(t.Context(), runtime.Job{ID: fmt.Sprintf("j%d", i), Input: []byte(in)})
			if got := res.Code(); got != want {
				t.Fatalf("pool %d: job %d: Run() code = %s (%v), want %s (task returned 7: it saw an earlier job's memory)",
					pool, i, got, res.Err, want)
			}
		}
		if n := runtime.MemoryReuses(m); n == 0 {
			t.Errorf("pool %d: MemoryReuses() = 0, want buffers recycled (the test would prove nothing)", pool)
		}
	}
}

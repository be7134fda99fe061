package runtime_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

// TestExtismMemoryTooSmall: a memory limit the plugin fits in, but not the plugin and the
// Extism kernel together (the kernel takes 16 pages at start), ends the job as memory_limit;
// it used to panic in wazero and take the process down.
func TestExtismMemoryTooSmall(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	for pages := uint32(14); pages <= 18; pages++ {
		m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "p", Wasm: fixture(t, "extism_probe"), Limits: runtime.Limits{MemoryPages: pages}})
		if err != nil {
			if outcome.CodeOf(err) != outcome.ModuleRejected {
				t.Errorf("Load(%d pages) = %v, want module_rejected or success", pages, err)
			}
			continue
		}
		for range 3 { // repeatedly: a refused instance leaves nothing behind
			res := m.Run(t.Context(), runtime.Job{ID: "j", Input: []byte("eok")})
			want := outcome.MemoryLimit
			if pages >= 17 {
				want = outcome.OK
			}
			if res.Code() != want {
				t.Errorf("Run(%d pages) = %s (%v), want %s", pages, res.Code(), res.Err, want)
			}
		}
	}
}

// TestExtismInputTooLarge: input that the kernel cannot allocate within the memory limit
// fails the job as memory_limit; the plugin used to run with an empty input and succeed.
func TestExtismInputTooLarge(t *testing.T) {
	t.Parallel()
	m, err := newEngine(t).Load(t.Context(), runtime.ModuleConfig{Name: "p", Wasm: fixture(t, "extism_probe"), Limits: runtime.Limits{MemoryPages: 32}})
	if err != nil {
		t.Fatal(err)
	}
	big := append([]byte("e"), bytes.Repeat([]byte("x"), 3<<20)...)
	res := m.Run(t.Context(), runtime.Job{ID: "big", Input: big})
	if res.Code() != outcome.MemoryLimit || !strings.Contains(outcome.Message(res.Err), "input of") {
		t.Errorf("Run(3 MiB input, 2 MiB limit) = %s %d bytes (%v), want memory_limit naming the input", res.Code(), len(res.Output), res.Err)
	}
	// An input that fits still arrives whole.
	fits := append([]byte("e"), bytes.Repeat([]byte("y"), 16<<10)...)
	if res := m.Run(t.Context(), runtime.Job{ID: "fits", Input: fits}); res.Err != nil || !bytes.Equal(res.Output, fits[1:]) {
		t.Errorf("Run(16 KiB input) = %d bytes, %v; want the input echoed", len(res.Output), res.Err)
	}
}

// TestPanicBecomesJobFailure: a panic escaping a guest call or an instantiation (a fault in
// wazero or the go-sdk) fails that job as internal and is logged without its value, which may
// hold guest bytes.
func TestPanicBecomesJobFailure(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zap.DebugLevel)
	e, err := runtime.NewEngine(runtime.Config{Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "echo", Wasm: fixture(t, "echo")})
	if err != nil {
		t.Fatal(err)
	}
	err = runtime.Safely(m, func() error { panic("guest bytes: s3cr3t-from-guest-memory") })
	if outcome.CodeOf(err) != outcome.Internal {
		t.Errorf("Safely(panicking call) = %v, want internal", err)
	}
	if logs.FilterMessage("recovered a panic in the sandbox").Len() != 1 {
		t.Errorf("want one log line about the recovered panic, got %v", logs.All())
	}
	for _, l := range logs.All() {
		if strings.Contains(fmt.Sprint(l.Message, l.ContextMap()), "s3cr3t") {
			t.Errorf("log line %q %v holds the panic's value", l.Message, l.ContextMap())
		}
	}
	if res := m.Run(t.Context(), runtime.Job{ID: "after", Input: []byte("ok")}); string(res.Output) != "ok" {
		t.Errorf("Run after a recovered panic = %q, %v", res.Output, res.Err)
	}
}

package tasks

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/runtime"
)

// TestRunVersionDuringHotSwaps: while versions 1 and 2 of a task are swapped in and out as
// fast as they compile, every job asked for one version runs on that version's module (its
// digest says so) or does not run at all, with ErrVersionNotLoaded; no job runs the other.
func TestRunVersionDuringHotSwaps(t *testing.T) {
	t.Parallel()
	engine, err := runtime.NewEngine(runtime.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = engine.Close(context.Background()) })
	echo, err := os.ReadFile("../../runtime/testdata/echo.wasm")
	if err != nil {
		t.Fatal(err)
	}
	// Version 2 is the same code with one more custom section: another module digest.
	wasm := map[string][]byte{"1": echo, "2": append(append([]byte(nil), echo...), 0x00, 0x03, 0x01, 'x', 0x00)}
	s := &Set{log: zap.NewNop(), tasks: map[string]*slot{}}
	t.Cleanup(func() { s.Close(context.Background()) })
	digest := map[string]string{}
	build := func(v string) *Task {
		m, err := engine.Load(context.Background(), runtime.ModuleConfig{Name: "hot", Wasm: wasm[v], NoPool: true})
		if err != nil {
			t.Error(err)
			return nil
		}
		return &Task{Name: "hot", Policy: &policy.Task{Name: "hot", Version: v}, Module: m, Def: api.TaskDef{Name: "hot", Version: v}}
	}
	for _, v := range []string{"2", "1"} {
		tk := build(v)
		if tk == nil {
			t.FailNow()
		}
		digest[v] = tk.Module.Digest()
		s.swap(context.Background(), "hot", tk)
	}
	if digest["1"] == digest["2"] {
		t.Fatalf("both versions have digest %s; want two modules", digest["1"])
	}

	stop := make(chan struct{})
	var swaps sync.WaitGroup
	swaps.Add(1)
	go func() {
		defer swaps.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			tk := build([]string{"2", "1"}[i%2])
			if tk == nil {
				return
			}
			s.swap(context.Background(), "hot", tk)
		}
	}()
	var ran, handedBack atomic.Int64
	var jobs sync.WaitGroup
	for g := range 8 {
		jobs.Add(1)
		go func() {
			defer jobs.Done()
			for i := range 150 {
				v := []string{"1", "2"}[(g+i)%2]
				res := s.RunVersion(context.Background(), "hot", v, "job", []byte(`{"n":1}`))
				switch {
				case res.Err == nil && res.Digest == digest[v]:
					ran.Add(1)
				case res.Err == nil:
					t.Errorf("RunVersion(hot, %s) ran module %s, want %s (version %s)", v, res.Digest, digest[v], v)
				case errors.Is(res.Err, ErrVersionNotLoaded) && outcome.CodeOf(res.Err) == outcome.Cancelled:
					handedBack.Add(1)
				default:
					t.Errorf("RunVersion(hot, %s) = %v, want success or %v", v, res.Err, ErrVersionNotLoaded)
				}
			}
		}()
	}
	jobs.Wait()
	close(stop)
	swaps.Wait()
	if ran.Load() == 0 || handedBack.Load() == 0 {
		t.Errorf("%d jobs ran and %d were not loaded; want both to happen during swaps", ran.Load(), handedBack.Load())
	}
	if res := s.RunVersion(context.Background(), "absent", "1", "job", nil); !errors.Is(res.Err, ErrVersionNotLoaded) {
		t.Errorf("RunVersion(absent task) = %v, want %v", res.Err, ErrVersionNotLoaded)
	}
}

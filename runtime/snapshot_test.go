package runtime_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/internal/wasmbuild"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

// snapState is what snap_state.wat reports.
type snapState struct {
	global       uint32
	data, grown  byte
	random       uint64
	clock        uint64
	big          uint64
	zero1, zero2 byte
}

func parseSnapState(t *testing.T, out []byte) snapState {
	t.Helper()
	if len(out) != 40 {
		t.Fatalf("snap_state output has %d bytes, want 40", len(out))
	}
	le := binary.LittleEndian
	return snapState{global: le.Uint32(out[0:]), data: out[4], grown: out[5], random: le.Uint64(out[8:]),
		clock: le.Uint64(out[16:]), big: le.Uint64(out[24:]), zero1: out[32], zero2: out[33]}
}

// TestSnapshotJobsStartFromInitializedState: a reactor's _initialize runs once, and every
// job starts from the state it left (a non-exported global, memory it grew, the module's
// data it changed, its clock and random reads), never from an earlier job's writes: each
// job overwrites all of it, with and without the pool, and after a job that timed out;
// whether the instances map the image or copy it.
func TestSnapshotJobsStartFromInitializedState(t *testing.T) {
	t.Parallel()
	for _, v := range []struct {
		pool    int
		copying bool
	}{{-1, false}, {2, false}, {-1, true}, {2, true}} {
		pool := v.pool
		e := newEngine(t)
		if v.copying {
			runtime.CopyImages(e)
		}
		m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "snap_state", Wasm: fixture(t, "snap_state"), PoolSize: max(pool, 0), NoPool: pool < 0,
			Limits: runtime.Limits{Timeout: 300 * time.Millisecond}})
		if err != nil {
			t.Fatal(err)
		}
		if !runtime.Snapshotted(m) {
			t.Fatalf("pool %d: snap_state was not snapshotted", pool)
		}
		var first snapState
		for i := range 6 {
			in := []byte(nil)
			if i == 2 {
				in = []byte("spin") // this job times out; the next must not see its writes
			}
			res := m.Run(t.Context(), runtime.Job{ID: "s", Input: in})
			if i == 2 {
				if res.Code() != outcome.Timeout {
					t.Fatalf("pool %d: spinning job = %v, want timeout", pool, res.Err)
				}
				continue
			}
			if res.Err != nil {
				t.Fatalf("pool %d: job %d = %v", pool, i, res.Err)
			}
			s := parseSnapState(t, res.Output)
			want := snapState{global: 42, data: 0x11, grown: 0x33, big: 0x1122334455667788, random: s.random, clock: s.clock}
			if s != want {
				t.Errorf("pool %d: job %d saw %+v, want the state _initialize left: %+v", pool, i, s, want)
			}
			if i == 0 {
				first = s
			} else if s.random != first.random || s.clock != first.clock {
				t.Errorf("pool %d: job %d saw random %x and clock %d, job 0 saw %x and %d: want the snapshot's",
					pool, i, s.random, s.clock, first.random, first.clock)
			}
		}
		if first.random == 0 || first.clock == 0 {
			t.Errorf("pool %d: _initialize read random %x and clock %d, want real values", pool, first.random, first.clock)
		}
		if got, want := runtime.ImageMapped(m), runtime.MapsImages && !v.copying; got != want {
			t.Errorf("pool %d, copying %v: instances map the image: %v, want %v", pool, v.copying, got, want)
		}
		if pool < 0 && v.copying && runtime.MemoryReuses(m) == 0 {
			t.Errorf("no memory buffer was recycled: the test did not cover a reused buffer")
		}
	}
}

// TestSnapshotRefused: what a snapshot cannot capture faithfully makes the module run as
// before, every instance running _initialize, with the reason in the log; the jobs' outcomes
// are those of the path without snapshots.
func TestSnapshotRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		fixture, reason string
		code            outcome.Code // of a job; empty: success
		output          []byte
	}{
		{"snap_host", "castellan_v1.log", "", []byte{1, 0, 0, 0}},
		{"snap_trap", "_initialize failed", outcome.Trap, nil},
		{"snap_ref", "vector or a reference", "", nil},
		{"snap_elem", "element segments in a form", "", nil},
		{"snap_reserved", "reserved for snapshots", "", nil},
		{"snap_bulk", "bulk-memory instructions", "", nil},
		{"snap_start", "start function", outcome.TaskError, nil}, // run returns the start's 1: the data was there
		{"sleep_init", "wasi_snapshot_preview1.poll_oneoff", "", nil},
		{"log_init", "wasi_snapshot_preview1.fd_write", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			t.Parallel()
			core, logs := observer.New(zap.DebugLevel)
			e, err := runtime.NewEngine(runtime.Config{Logger: zap.New(core)})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close(t.Context())
			lim := runtime.Limits{}
			if tt.fixture == "sleep_init" {
				lim.Timeout = 300 * time.Millisecond
			}
			m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: tt.fixture, Wasm: fixture(t, tt.fixture), NoPool: true, Limits: lim})
			if err != nil {
				t.Fatal(err)
			}
			if runtime.Snapshotted(m) {
				t.Fatalf("%s was snapshotted", tt.fixture)
			}
			found := false
			for _, l := range logs.FilterMessageSnippet("without a snapshot").All() {
				r, _ := l.ContextMap()["reason"].(string)
				found = found || strings.Contains(r, tt.reason)
			}
			if !found {
				t.Errorf("no log line gives the reason %q", tt.reason)
			}
			for range 2 {
				res := m.Run(t.Context(), runtime.Job{ID: "r"})
				if tt.fixture == "sleep_init" { // sleeps an hour in each instance's _initialize
					if res.Code() != outcome.Timeout {
						t.Errorf("Run = %v, want timeout", res.Err)
					}
					continue
				}
				if (tt.code == "") != (res.Err == nil) || (res.Err != nil && res.Code() != tt.code) ||
					(tt.output != nil && !bytes.Equal(res.Output, tt.output)) {
					t.Errorf("Run = %x, %v; want %x, code %q", res.Output, res.Err, tt.output, tt.code)
				}
			}
		})
	}
}

// TestSnapshotGoRandom: in a Go task served from a snapshot, math/rand's global source was
// seeded once, in _initialize, so every job draws the same first number; crypto/rand reads
// fresh bytes in each job. docs/writing-tasks.md says so.
func TestSnapshotGoRandom(t *testing.T) {
	t.Parallel()
	wasm := wasmbuild.Go(t, "runtime/testdata/gorand")
	e := newEngine(t)
	m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "gorand", Wasm: wasm, NoPool: true})
	if err != nil {
		t.Fatal(err)
	}
	if !runtime.Snapshotted(m) {
		t.Fatal("the Go module was not snapshotted")
	}
	var outs [][]string
	for range 3 {
		res := m.Run(t.Context(), runtime.Job{ID: "g"})
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		f := strings.Fields(string(res.Output))
		if len(f) != 2 {
			t.Fatalf("output %q", res.Output)
		}
		outs = append(outs, f)
	}
	for i := 1; i < len(outs); i++ {
		if outs[i][0] != outs[0][0] {
			t.Errorf("math/rand: job %d drew %s, job 0 %s: want the same (seeded in _initialize)", i, outs[i][0], outs[0][0])
		}
		if outs[i][1] == outs[0][1] {
			t.Errorf("crypto/rand: job %d read %s like job 0: want fresh bytes per job", i, outs[i][1])
		}
	}

	// Without snapshots every instance runs _initialize: the seeds differ.
	m2, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "gorand", Wasm: wasm, NoPool: true, NoSnapshot: true})
	if err != nil {
		t.Fatal(err)
	}
	a, b := m2.Run(t.Context(), runtime.Job{ID: "a"}), m2.Run(t.Context(), runtime.Job{ID: "b"})
	if a.Err != nil || b.Err != nil || strings.Fields(string(a.Output))[0] == strings.Fields(string(b.Output))[0] {
		t.Errorf("without snapshots: %q, %v and %q, %v; want two different seeds", a.Output, a.Err, b.Output, b.Err)
	}
}

// TestSnapshotImagePagesArePrivate: a job that overwrites every page of the image, and
// grows the memory, leaves nothing for the next job, whether instances map the image
// copy-on-write or copy it; jobs running at once do not see each other's writes; and a job
// that grows its memory page by page is stopped at the task's limit as memory_limit, with
// the next job again on the pristine image.
func TestSnapshotImagePagesArePrivate(t *testing.T) {
	t.Parallel()
	for _, copying := range []bool{false, true} {
		e := newEngine(t)
		if copying {
			runtime.CopyImages(e)
		}
		m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "snap_pages", Wasm: fixture(t, "snap_pages"), NoPool: true,
			Limits: runtime.Limits{MemoryPages: 64, Timeout: 10 * time.Second}})
		if err != nil {
			t.Fatal(err)
		}
		if !runtime.Snapshotted(m) {
			t.Fatalf("copying %v: snap_pages was not snapshotted", copying)
		}
		if got, want := runtime.ImageMapped(m), runtime.MapsImages && !copying; got != want {
			t.Fatalf("copying %v: instances map the image: %v, want %v", copying, got, want)
		}
		check := func(what string, res runtime.Result) {
			t.Helper()
			if res.Err != nil {
				t.Errorf("copying %v: %s = %v", copying, what, res.Err)
				return
			}
			if len(res.Output) != 12 {
				t.Errorf("copying %v: %s: output of %d bytes, want 12", copying, what, len(res.Output))
				return
			}
			le := binary.LittleEndian
			pages, diff, b100 := le.Uint32(res.Output), int32(le.Uint32(res.Output[4:])), res.Output[8]
			if pages != 4 || diff != -1 || b100 != 0 {
				t.Errorf("copying %v: %s saw %d pages, first difference from the image at %d, byte 100 = %#x; want 4 pages, -1, 0 (the pristine image)",
					copying, what, pages, diff, b100)
			}
		}
		for i := range 3 {
			check(fmt.Sprintf("job %d", i), m.Run(t.Context(), runtime.Job{ID: "p"}))
		}
		res := m.Run(t.Context(), runtime.Job{ID: "grow", Input: []byte("grow")})
		if res.Code() != outcome.MemoryLimit {
			t.Errorf("copying %v: job growing its memory past the limit = %v, want memory_limit", copying, res.Err)
		}
		check("the job after the one that grew", m.Run(t.Context(), runtime.Job{ID: "p"}))
		var wg sync.WaitGroup
		results := make([]runtime.Result, 8)
		for i := range results {
			wg.Go(func() { results[i] = m.Run(t.Context(), runtime.Job{ID: "c"}) })
		}
		wg.Wait()
		for i, res := range results {
			check(fmt.Sprintf("concurrent job %d", i), res)
		}
	}
}

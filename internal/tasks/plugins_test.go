package tasks

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/runtime"
)

const testdata = "../../plugins/testdata"

const pluginPolicy = `version: 1
endpoints:
  crm: {base_url: "https://crm.internal", allow: ["GET /a"]}
plugins: {require_signed: false}
tasks:
  hot: {}
  other: {}
  probe: {}
`

type env struct {
	root string
	set  *Set
	logs *observer.ObservedLogs
}

// start serves root's plugins with a short debounce. Plugins are written before it starts.
func start(t *testing.T, setup func(root string)) *env {
	t.Helper()
	root := t.TempDir()
	setup(root)
	pol, err := policy.Parse("policy.yaml", []byte(pluginPolicy), "/")
	if err != nil {
		t.Fatal(err)
	}
	engine, err := runtime.NewEngine(runtime.Config{})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	set, err := Load(t.Context(), Options{Policy: pol, Engine: engine, Log: zap.New(core), PluginsDir: root, Debounce: 20 * time.Millisecond, NoPool: true})
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	t.Cleanup(func() {
		set.Close(context.Background())
		_ = engine.Close(context.Background())
	})
	return &env{root: root, set: set, logs: logs}
}

// install writes a plugin the documented way: every file to a hidden temporary name, then
// renamed into place, the manifest last.
func install(t *testing.T, root, name, version, wasmFile string) {
	t.Helper()
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	wasm, err := os.ReadFile(wasmFile)
	if err != nil {
		t.Fatal(err)
	}
	put(t, dir, name+".wasm", wasm)
	put(t, dir, "plugin.yaml", []byte(fmt.Sprintf("name: %s\nversion: %q\n", name, version)))
}

func put(t *testing.T, dir, name string, data []byte) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func output(s *Set, task string) string {
	res := s.Run(context.Background(), task, "probe", []byte(`{}`))
	if res.Err != nil {
		return "error: " + res.Err.Error()
	}
	return string(res.Output)
}

// TestHotReplaceUnderLoad replaces a plugin 50 times while jobs run continuously: no job
// fails and every output is one complete version.
func TestHotReplaceUnderLoad(t *testing.T) {
	t.Parallel()
	e := start(t, func(root string) { install(t, root, "hot", "1", testdata+"/v1.wasm") })
	if got := output(e.set, "hot"); got != "version-v1" {
		t.Fatalf("Run(hot) = %q, want version-v1", got)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var jobs, failures atomic.Int64
	var mu sync.Mutex
	var bad []string
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				res := e.set.Run(context.Background(), "hot", "job", nil)
				jobs.Add(1)
				if out := string(res.Output); res.Err != nil || (out != "version-v1" && out != "version-v2") {
					failures.Add(1)
					mu.Lock()
					bad = append(bad, fmt.Sprintf("output %q err %v", out, res.Err))
					mu.Unlock()
				}
			}
		}()
	}
	replacements := 50
	if testing.Short() {
		replacements = 10
	}
	for i := 0; i < replacements; i++ {
		v := "v2"
		if i%2 == 1 {
			v = "v1"
		}
		install(t, e.root, "hot", fmt.Sprint(i+2), testdata+"/"+v+".wasm")
		waitFor(t, "hot to serve "+v, func() bool {
			cur, ok := e.set.Get("hot")
			return ok && cur.Policy.Version == fmt.Sprint(i+2) && output(e.set, "hot") == "version-"+v
		})
	}
	cancel()
	wg.Wait()
	if failures.Load() != 0 {
		t.Errorf("%d of %d jobs failed during 50 replacements, e.g. %v", failures.Load(), jobs.Load(), bad[:min(3, len(bad))])
	}
	if jobs.Load() < 50 {
		t.Errorf("only %d jobs ran during 50 replacements; the hammer did not hammer", jobs.Load())
	}
}

// TestRefusedKeepsServing drops broken versions of a serving plugin and broken new plugins:
// each is refused with a precise log line, the previous version and the other plugins serve.
func TestRefusedKeepsServing(t *testing.T) {
	t.Parallel()
	v1, err := os.ReadFile(testdata + "/v1.wasm")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		plugin string // "hot" (replaced while serving) or "probe" (new)
		write  func(t *testing.T, dir string)
		want   string
	}{
		{"zero-byte module", "hot", func(t *testing.T, dir string) { put(t, dir, "hot.wasm", nil) }, "module hot.wasm is empty (0 bytes)"},
		{"truncated module", "hot", func(t *testing.T, dir string) { put(t, dir, "hot.wasm", v1[:len(v1)/2]) }, "invalid module"},
		{"corrupted module", "hot", func(t *testing.T, dir string) {
			c := append([]byte(nil), v1...)
			copy(c[8:], "garbage!")
			put(t, dir, "hot.wasm", c)
		}, "invalid module"},
		{"manifest error", "hot", func(t *testing.T, dir string) {
			put(t, dir, "plugin.yaml", []byte("name: hot\nversion: \"9\"\ncapabilities:\n  limits: {memroy: 1MiB}\n"))
		}, `plugin.yaml:4: capabilities.limits.memroy: unknown key (did you mean "memory"?)`},
		{"HTTP import without endpoint grant", "probe", func(t *testing.T, dir string) {
			install(t, filepath.Dir(dir), "probe", "1", testdata+"/http_probe.wasm")
		}, "forbidden imports:\n  castellan_v1.http_body_read(i32, i32, i32) -> (i32): HTTP import without an endpoint grant"},
		{"imports outside the ABI", "probe", func(t *testing.T, dir string) {
			install(t, filepath.Dir(dir), "probe", "1", testdata+"/bad_imports.wasm")
		}, "module imports what the sandbox does not offer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := start(t, func(root string) {
				install(t, root, "hot", "1", testdata+"/v1.wasm")
				install(t, root, "other", "1", testdata+"/v2.wasm")
			})
			dir := filepath.Join(e.root, tt.plugin)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			tt.write(t, dir)
			// Poll for the refusal naming the problem: a new directory may first be refused
			// for a missing manifest while its files are still arriving.
			var entry observer.LoggedEntry
			found := func() bool {
				for _, en := range e.logs.FilterMessageSnippet("plugin refused").FilterField(zap.String("plugin", tt.plugin)).All() {
					if strings.Contains(fmt.Sprint(en.ContextMap()["error"]), tt.want) {
						entry = en
						return true
					}
				}
				return false
			}
			deadline := time.Now().Add(10 * time.Second)
			for !found() {
				if time.Now().After(deadline) {
					t.Fatalf("no refusal of %s containing %q; logs: %v", tt.plugin, tt.want, e.logs.FilterMessageSnippet("plugin refused").All())
				}
				time.Sleep(2 * time.Millisecond)
			}
			if tt.plugin == "hot" && !strings.Contains(entry.Message, "previous version keeps serving") {
				t.Errorf("refusal message = %q, want it to say the previous version keeps serving", entry.Message)
			}
			if got := output(e.set, "hot"); got != "version-v1" {
				t.Errorf("Run(hot) after the refusal = %q, want version-v1 (the previous version)", got)
			}
			if got := output(e.set, "other"); got != "version-v2" {
				t.Errorf("Run(other) after the refusal = %q, want version-v2", got)
			}
			if _, ok := e.set.Get("probe"); ok {
				t.Errorf("Get(probe) found a refused plugin")
			}
		})
	}
}

func TestAddRemoveAndCatalogUpdates(t *testing.T) {
	t.Parallel()
	e := start(t, func(root string) { install(t, root, "hot", "1", testdata+"/v1.wasm") })
	names := func(c []api.TaskDef) string {
		var s []string
		for _, d := range c {
			s = append(s, d.Name+"@"+d.Version)
		}
		return strings.Join(s, ",")
	}
	if got := names(e.set.Catalog()); got != "hot@1" {
		t.Fatalf("Catalog() = %s, want hot@1", got)
	}
	// Add: a directory written under a hidden name, then renamed into place.
	tmp := filepath.Join(e.root, ".other.tmp")
	install(t, e.root, ".other.tmp", "3", testdata+"/v2.wasm")
	_ = os.Rename(filepath.Join(tmp, ".other.tmp.wasm"), filepath.Join(tmp, "other.wasm"))
	put(t, tmp, "plugin.yaml", []byte("name: other\nversion: \"3\"\ninput_schema: {type: object, required: [x]}\n"))
	if err := os.Rename(tmp, filepath.Join(e.root, "other")); err != nil {
		t.Fatal(err)
	}
	waitCatalog(t, e.set, "hot@1,other@3", names)
	if cat := e.set.Catalog(); string(cat[1].InputSchema) != `{"required":["x"],"type":"object"}` {
		t.Errorf("Catalog()[other].InputSchema = %s, want the manifest's inline schema as JSON", cat[1].InputSchema)
	}
	if got := output(e.set, "other"); got != "version-v2" {
		t.Errorf("Run(other) = %q, want version-v2", got)
	}
	// Remove.
	if err := os.RemoveAll(filepath.Join(e.root, "hot")); err != nil {
		t.Fatal(err)
	}
	waitCatalog(t, e.set, "other@3", names)
	if res := e.set.Run(t.Context(), "hot", "j", nil); res.Err == nil || !strings.Contains(res.Err.Error(), "not served") {
		t.Errorf("Run(removed plugin) = %v, want rejected as not served", res.Err)
	}
}

// waitCatalog reads Updates until the catalog is want.
func waitCatalog(t *testing.T, s *Set, want string, names func([]api.TaskDef) string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case c := <-s.Updates():
			if names(c) == want {
				return
			}
		case <-timeout:
			t.Fatalf("Updates() never delivered %s (now %s)", want, names(s.Catalog()))
		}
	}
}

// TestRetiredVersionClosedAfterLastJob holds a job on v1 (its instance is created when Run
// starts) and checks a replaced version is closed only after its last job.
func TestRetiredVersionClosedAfterLastJob(t *testing.T) {
	t.Parallel()
	e := start(t, func(root string) { install(t, root, "hot", "1", testdata+"/v1.wasm") })
	sl := e.set.acquire("hot") // a job in flight on v1
	install(t, e.root, "hot", "2", testdata+"/v2.wasm")
	waitFor(t, "v2 to serve", func() bool { return output(e.set, "hot") == "version-v2" })
	res := sl.task.Module.Run(t.Context(), runtime.Job{ID: "in-flight"})
	if res.Err != nil || string(res.Output) != "version-v1" {
		t.Errorf("in-flight job on the replaced version = %q, %v; want version-v1", res.Output, res.Err)
	}
	e.set.release(t.Context(), sl)
	res = sl.task.Module.Run(t.Context(), runtime.Job{ID: "after"})
	if res.Err == nil {
		t.Errorf("Run on the retired version after its last job = ok, want it closed")
	}
}

// TestExtismPluginAndPolicyTask serves one real Extism plugin (built with Extism's C PDK)
// twice: from the plugins directory and as a policy task with a module path. Both must load
// and run, because the runtime runs it; neither path may keep an import check of its own.
func TestExtismPluginAndPolicyTask(t *testing.T) {
	t.Parallel()
	hello, err := filepath.Abs(testdata + "/extism_hello.wasm")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	dir := filepath.Join(root, "hello")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	wasm, err := os.ReadFile(hello)
	if err != nil {
		t.Fatal(err)
	}
	put(t, dir, "hello.wasm", wasm)
	put(t, dir, "plugin.yaml", []byte("name: hello\nversion: \"1\"\nentry: run_test\n"))
	doc := fmt.Sprintf("version: 1\nplugins: {require_signed: false}\ntasks:\n  hello: {}\n  hello_policy:\n    module: %s\n    entry: run_test\n", hello)
	pol, err := policy.Parse("policy.yaml", []byte(doc), "/")
	if err != nil {
		t.Fatal(err)
	}
	engine, err := runtime.NewEngine(runtime.Config{})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	set, err := Load(t.Context(), Options{Policy: pol, Engine: engine, Log: zap.New(core), PluginsDir: root, NoPool: true})
	if err != nil {
		t.Fatalf("Load() error = %v", err)
	}
	t.Cleanup(func() {
		set.Close(context.Background())
		_ = engine.Close(context.Background())
	})
	for _, task := range []string{"hello", "hello_policy"} {
		if got := output(set, task); got != "Hello, world!" {
			t.Errorf("Run(%s) = %q, want Hello, world!; refusals: %v", task, got, logs.FilterMessageSnippet("refused").All())
		}
	}
}

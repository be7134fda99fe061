package tasks

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/runtime"
)

// A guest's log lines name the task and the job they come from.
func TestTaskLogNamesTaskAndJob(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	wasm, err := os.ReadFile("../../runtime/testdata/log_flood.wasm")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "log.wasm"), wasm, 0o600); err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse("policy.yaml", []byte("version: 1\ntasks:\n  logger:\n    module: log.wasm\n"), dir)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := runtime.NewEngine(runtime.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = engine.Close(context.Background()) })
	core, logs := observer.New(zap.DebugLevel)
	s, err := Load(context.Background(), Options{Policy: pol, Engine: engine, NoPool: true, Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	s.Run(t.Context(), "logger", "job-7", []byte("s")) // one-byte log lines, up to the budget
	lines := logs.FilterMessage("task log").All()
	if len(lines) == 0 {
		t.Fatalf("no task log line; got %v", logs.All())
	}
	for _, l := range lines {
		if f := l.ContextMap(); f["task"] != "logger" || f["job"] != "job-7" {
			t.Fatalf("task log fields = %v, want task logger and job job-7", f)
		}
	}
}

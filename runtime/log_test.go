package runtime_test

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/hostfuncs"
	"github.com/castellan-dev/castellan/runtime"
)

// logCost sums what the task's lines in logs cost against a log budget, and counts them.
func logCost(logs *observer.ObservedLogs) (cost int64, lines int) {
	for _, e := range logs.All() {
		if !strings.HasPrefix(e.Message, "task ") || strings.Contains(e.Message, "budget exhausted") {
			continue // the worker's own lines (the budget warning)
		}
		msg, _ := e.ContextMap()["msg"].(string)
		cost += hostfuncs.LogCost(len(msg))
		lines++
	}
	return cost, lines
}

// TestLogBudgetCountsEveryLine: lines with no bytes of their own (zero-length log calls,
// empty stdout and stderr lines, from the job or from _initialize) still cost their overhead,
// so the log a job leaves stays within its budget whatever form the flood takes.
func TestLogBudgetCountsEveryLine(t *testing.T) {
	t.Parallel()
	const budget = 16 << 10
	tests := []struct {
		name, fixture, input string
		pool                 int
		instances            int64 // instances whose lines may be in the log: each has one budget
	}{
		{"zero-length log calls", "log_flood", "z", -1, 1},
		{"one-byte log calls", "log_flood", "s", -1, 1},
		{"empty stdout lines", "log_flood", "e", -1, 1},
		{"empty stderr lines", "log_flood", "w", -1, 1},
		{"newlines in bulk", "log_flood", "b", -1, 1},
		{"_initialize on the job's path", "log_init", "", -1, 1},
		// the job's instance, and the pool's refills after it
		{"_initialize ahead of time", "log_init", "", 2, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			core, logs := observer.New(zap.DebugLevel)
			e, err := runtime.NewEngine(runtime.Config{Logger: zap.New(core)})
			if err != nil {
				t.Fatal(err)
			}
			m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: tt.fixture, Wasm: fixture(t, tt.fixture), PoolSize: max(tt.pool, 0), NoPool: tt.pool < 0,
				Limits: runtime.Limits{LogBytes: budget}})
			if err != nil {
				t.Fatal(err)
			}
			res := m.Run(t.Context(), runtime.Job{ID: "flood", Input: []byte(tt.input)})
			if res.Err != nil {
				t.Fatalf("Run(%s) = %v", tt.input, res.Err)
			}
			if err := e.Close(context.Background()); err != nil { // the pool stops refilling
				t.Fatal(err)
			}
			cost, lines := logCost(logs)
			if max := tt.instances * budget; cost > max || lines == 0 {
				t.Errorf("Run(%s) logged %d lines costing %d bytes, want at least one and at most %d bytes (%d per line of overhead)",
					tt.name, lines, cost, max, hostfuncs.LogLineOverhead)
			}
			if logs.FilterMessageSnippet("log budget exhausted").Len() == 0 {
				t.Errorf("Run(%s): no line says the log budget was exhausted", tt.name)
			}
		})
	}
}

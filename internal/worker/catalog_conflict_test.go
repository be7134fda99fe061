package worker_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/runtime"
)

// TestCatalogConflictLeavesOutOnlyTheConflictingTask: a task whose name and version the
// control plane already holds with another definition (a plugin changed without a version
// bump) neither stops a worker at start nor blocks its later catalog updates; the worker
// publishes everything else.
func TestCatalogConflictLeavesOutOnlyTheConflictingTask(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.startWorker(funcRunner(func(ctx context.Context, task, jobID string, input []byte) runtime.Result { return runtime.Result{} }))
	s.waitCatalog()

	def := func(name, desc string) api.TaskDef {
		return api.TaskDef{Name: name, Version: "1.0.0", Description: desc, InputSchema: json.RawMessage(`{"type":"object"}`)}
	}
	changed := def("echo", "echoes its input, differently") // echo@1.0.0 is published as "echoes its input"
	updates := make(chan []api.TaskDef, 1)
	w, err := worker.New(worker.Config{
		Client: s.client(api.RoleWorker), Catalog: []api.TaskDef{changed, def("lookup", "looks up")},
		CatalogUpdates: updates, Concurrency: 1, LeaseWait: time.Second, Heartbeat: 200 * time.Millisecond,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Runner:   funcRunner(func(ctx context.Context, task, jobID string, input []byte) runtime.Result { return runtime.Result{} }),
		Verifier: approval.NewVerifier(s.trusted, approval.NewMemoryReplayStore()),
	})
	if err != nil {
		t.Fatal(err)
	}
	lease, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(lease, lease) }()
	t.Cleanup(func() { stop(); <-done })

	published := func(name string) (api.TaskDef, bool) {
		c, err := s.submit.Catalog(context.Background(), pool)
		if err != nil {
			return api.TaskDef{}, false
		}
		i := slices.IndexFunc(c.Tasks, func(d api.TaskDef) bool { return d.Name == name })
		if i < 0 {
			return api.TaskDef{}, false
		}
		return c.Tasks[i], true
	}
	poll(t, "lookup published by the worker that also holds a conflicting echo", func() bool {
		select {
		case err := <-done:
			done <- err // for the cleanup
			t.Fatalf("Run() = %v at start, want the worker to keep running without the conflicting task", err)
		default:
		}
		_, ok := published("lookup")
		return ok
	})
	if d, _ := published("echo"); d.Description != "echoes its input" {
		t.Fatalf("echo@1.0.0 description = %q, want the first publication's", d.Description)
	}

	updates <- []api.TaskDef{changed, def("lookup", "looks up"), def("ticket", "opens a ticket")}
	poll(t, "a later catalog update published despite the conflicting task", func() bool {
		_, ok := published("ticket")
		return ok
	})
}

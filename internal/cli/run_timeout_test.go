package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunReturnsAtTheTaskDeadline: `castellan run` of a task blocked in a host call (a
// one-hour WASI clock wait) returns a timeout shortly after the task's deadline, whether or
// not the sandbox manages to interrupt the call.
func TestRunReturnsAtTheTaskDeadline(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	wasm, err := os.ReadFile("testdata/poll_hour.wasm")
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "poll_hour.wasm"), wasm, 0o644))
	pol := filepath.Join(dir, "policy.yaml")
	must(t, os.WriteFile(pol, []byte(`version: 1
tasks:
  hang:
    module: poll_hour.wasm
    version: "1"
    limits:
      timeout: 300ms
`), 0o644))
	type result struct {
		err    error
		stderr string
	}
	done := make(chan result, 1)
	go func() {
		var stdout, stderr bytes.Buffer
		err := Run(t.Context(), RunConfig{Policy: pol, Task: "hang", Input: `{}`, CacheDir: "off", LogLevel: "error"}, &stdout, &stderr)
		done <- result{err, stderr.String()}
	}()
	select {
	case r := <-done:
		if ExitCode(r.err) != ExitTaskFailed || !strings.Contains(r.stderr, "timeout") {
			t.Errorf("Run() = %v (exit %d), stderr %q; want a task failure saying timeout", r.err, ExitCode(r.err), r.stderr)
		}
	case <-time.After(300*time.Millisecond + runOverrun + 5*time.Second):
		t.Fatal("Run() still running 7s after the task's 300ms deadline")
	}
}

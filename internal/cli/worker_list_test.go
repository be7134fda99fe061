package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestWorkerList: `castellan worker list` shows a registered worker of a real control plane
// with its pool, version, tasks and online status, as a table and as JSON, and is refused
// for a client token.
func TestWorkerList(t *testing.T) {
	t.Parallel()
	cp := startControlPlane(t)
	w := cp.client(api.RoleWorker)
	if _, err := w.Register(t.Context(), api.RegisterRequest{Name: "dc1-w1", AgentVersion: "1.2.3"}); err != nil {
		t.Fatal(err)
	}
	var echo api.TaskDef
	must(t, json.Unmarshal([]byte(`{"name":"echo","version":"1","input_schema":{"type":"object"}}`), &echo))
	if _, err := w.PublishCatalog(t.Context(), []api.TaskDef{echo}); err != nil {
		t.Fatal(err)
	}
	admin := cp.writeToken("admin.token", cp.token(api.RoleAdmin).Secret)
	var out bytes.Buffer
	must(t, WorkerList(t.Context(), WorkerListConfig{JobConfig: JobConfig{Server: cp.base, TokenFile: admin}}, &out))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAME ") {
		t.Fatalf("worker list = %q, want a header and one worker", out.String())
	}
	if f := strings.Fields(lines[1]); len(f) != 7 || f[0] != "dc1-w1" || f[1] != "default" || f[2] != "1.2.3" || f[3] != "online" || f[5] != "echo@1" {
		t.Fatalf("worker list row = %q, want dc1-w1 default 1.2.3 online <time> echo@1 <id>", lines[1])
	}

	out.Reset()
	must(t, WorkerList(t.Context(), WorkerListConfig{JobConfig: JobConfig{Server: cp.base, TokenFile: admin, JSON: true}, Pool: "default"}, &out))
	var l api.WorkerList
	if err := json.Unmarshal(out.Bytes(), &l); err != nil || len(l.Workers) != 1 || !l.Workers[0].Online || l.OnlineWindowSeconds < 90 {
		t.Fatalf("worker list --json = %s (%v), want one online worker and the window", out.String(), err)
	}

	code, _, errs := runApp(t.Context(), "worker", "list", "--server", cp.base, "--token-file", cp.writeToken("client.token", cp.token(api.RoleClient).Secret))
	if code != ExitTaskFailed || !strings.Contains(errs, "forbidden") {
		t.Fatalf("worker list with a client token = exit %d, %q; want exit 1 forbidden", code, errs)
	}
}

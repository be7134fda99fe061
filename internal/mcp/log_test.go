package mcp_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/castellan-dev/castellan/internal/logging"
	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/server/api"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestLogsCarryNoSecretOrValue: the SDK's and this layer's lines reach the project's zap
// logger as JSON lines under its name, and none carries a bearer token (valid or not), a
// call's argument values or a job's output.
func TestLogsCarryNoSecretOrValue(t *testing.T) {
	t.Parallel()
	var buf lockedBuffer
	z, err := logging.New(&buf, logging.Options{Level: "debug", Format: "json"})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, true, mcp.Options{Logger: mcp.SlogLogger(z.Named("mcp"))})
	ctx := t.Context()
	// A task the SDK cannot serve: this layer logs that it is not offered.
	bad := api.TaskDef{Name: "not-object", Version: "1", InputSchema: json.RawMessage(`{"type":"string"}`)}
	if _, err := e.workerA.PublishCatalog(ctx, []api.TaskDef{echoTask(), bad}); err != nil {
		t.Fatal(err)
	}
	const value, badValue, bogus = 918273645, "zz-argument-value", "cst_bogus-token-5c1e"
	cs := e.connect(ctx, e.secrets["client"], nil)
	r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": value}})
	if err != nil || r.IsError {
		t.Fatalf("CallTool(echo) = %v, %+v", err, r)
	}
	if r, err = cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": badValue}}); err != nil || !r.IsError {
		t.Fatalf("CallTool(echo, bad) = %v, %+v", err, r)
	}
	// The SDK logs a refused revision; send it with the valid token and then a bogus one.
	for _, tok := range []string{e.secrets["client"], bogus} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+mcp.Path, strings.NewReader(`{"jsonrpc":"2.0","id":3,"method":"tools/list","params":{}}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Mcp-Protocol-Version", "2026-07-28")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	_ = z.Sync()
	out := buf.String()
	var fromSDK, fromLayer bool
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		if m["logger"] != "mcp" {
			t.Errorf("log line %q: logger %v, want mcp", line, m["logger"])
		}
		msg, _ := m["msg"].(string)
		fromSDK = fromSDK || strings.Contains(msg, "protocol version")
		fromLayer = fromLayer || strings.Contains(msg, "not offered")
	}
	if !fromSDK || !fromLayer {
		t.Fatalf("want a line from the SDK (refused revision) and one from this layer (tool not offered); got:\n%s", out)
	}
	for _, s := range []string{e.secrets["client"], bogus, "918273645", badValue} {
		if strings.Contains(out, s) {
			t.Errorf("the MCP log carries %q:\n%s", s, out)
		}
	}
}

package mcp_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/testenv"
)

// TestTypeScriptClient runs the official TypeScript SDK client (testdata/tsclient, pinned
// by package-lock.json) against /mcp on a real control plane. It is skipped only when node
// or npm is not installed; CI has both, so there it always runs.
func TestTypeScriptClient(t *testing.T) {
	node := testenv.LookPath(t, "the TypeScript client test needs node and npm: apt-get install -y nodejs npm", "node")
	npm := testenv.LookPath(t, "the TypeScript client test needs node and npm: apt-get install -y nodejs npm", "npm")
	dir, _ := filepath.Abs("testdata/tsclient")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	ci := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
	ci.Dir = dir
	if out, err := ci.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}

	e := newEnv(t, false, mcp.Options{})
	cmd := exec.CommandContext(ctx, node, "client.mjs")
	cmd.Dir = dir
	cmd.Env = append(cmd.Environ(), "MCP_URL="+e.url+mcp.Path, "MCP_TOKEN="+e.secrets["client"])
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	j := e.pendingJob(ctx)
	e.approve(ctx, j.ID)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("node client.mjs: %v\nstderr:\n%s", err, stderr.String())
	}
	var got struct {
		ProtocolVersion string `json:"protocolVersion"`
		Tools           []struct {
			Name         string          `json:"name"`
			Title        string          `json:"title"`
			Annotations  json.RawMessage `json:"annotations"`
			InputSchema  json.RawMessage `json:"inputSchema"`
			OutputSchema json.RawMessage `json:"outputSchema"`
		} `json:"tools"`
		Call struct {
			IsError           bool            `json:"isError"`
			StructuredContent json.RawMessage `json:"structuredContent"`
			Text              string          `json:"text"`
		} `json:"call"`
		Progress []string `json:"progress"`
		Bad      struct {
			IsError bool   `json:"isError"`
			Text    string `json:"text"`
		} `json:"bad"`
		Other struct {
			IsError bool   `json:"isError"`
			Text    string `json:"text"`
		} `json:"other"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("client output %q: %v", stdout.String(), err)
	}
	t.Logf("TypeScript client negotiated protocol %s", got.ProtocolVersion)
	if got.ProtocolVersion == "" {
		t.Error("no protocol version negotiated")
	}
	var names []string
	for _, tl := range got.Tools {
		names = append(names, tl.Name)
		if tl.Name == "echo" && (!jsonEqual(tl.InputSchema, echoTask().InputSchema) || !jsonEqual(tl.OutputSchema, echoTask().OutputSchema)) {
			t.Errorf("echo schemas = %s / %s, want the catalog's", tl.InputSchema, tl.OutputSchema)
		}
		// The catalog's echo is read-only and idempotent, destructive unset (left out).
		if tl.Name == "echo" && (tl.Title != echoTask().Title || !jsonEqual(tl.Annotations, []byte(`{"readOnlyHint":true,"idempotentHint":true}`))) {
			t.Errorf("echo title %q annotations %s, want %q and read-only, idempotent hints", tl.Title, tl.Annotations, echoTask().Title)
		}
	}
	slices.Sort(names)
	if want := []string{mcp.ResultToolName, mcp.PlanResultToolName, mcp.SubmitPlanToolName, "echo"}; !slices.Equal(names, want) {
		t.Errorf("tools = %v, want %v", names, want)
	}
	if got.Call.IsError || !jsonEqual(got.Call.StructuredContent, []byte(`{"n":42}`)) {
		t.Errorf("callTool(echo) = isError %v structuredContent %s text %q, want {\"n\":42}", got.Call.IsError, got.Call.StructuredContent, got.Call.Text)
	}
	if len(got.Progress) == 0 || !strings.Contains(got.Progress[0], "pending approval") {
		t.Errorf("progress = %q, want pending approval first", got.Progress)
	}
	if !got.Bad.IsError || !strings.Contains(got.Bad.Text, "/n") {
		t.Errorf("callTool(echo, bad) = %+v, want a tool error naming /n", got.Bad)
	}
	if !got.Other.IsError {
		t.Errorf("callTool(beta-only) = %+v, want an error", got.Other)
	}
}

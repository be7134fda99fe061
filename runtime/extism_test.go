package runtime_test

// The Extism path must pass the same secrecy and hostile-module tests as native modules.
// The guest is testdata/extism_probe.wat, a raw Extism-ABI plugin driven by its input, and
// the PDK-built plugins shipped inside the extism/go-sdk module download.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/testenv"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/runtime"
)

func extismHTTP(t *testing.T, s *sandbox, req string) (runtime.ExtismResponse, runtime.Result) {
	t.Helper()
	res := s.m.Run(t.Context(), runtime.Job{ID: "job-x", Input: []byte("h" + req)})
	var resp runtime.ExtismResponse
	if res.Err == nil {
		if err := json.Unmarshal(res.Output, &resp); err != nil {
			t.Fatalf("plugin output %q is not an ExtismResponse: %v", res.Output, err)
		}
	}
	return resp, res
}

func TestExtismProbe(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	s := newSandbox(t, up.URL, runtime.Limits{Timeout: 2 * time.Second}, "extism_probe")
	tests := []struct {
		name, input string
		code        outcome.Code
		output, msg string
	}{
		{"echo", "ehello", outcome.OK, "hello", ""},
		{"fail", "f", outcome.TaskError, "", "boom"},
		{"unknown op", "?", outcome.TaskError, "", "task returned 2"},
		{"credential in output", "e{\"t\":\"" + token + "\"}", outcome.SecretInOutput, "", ""},
	}
	for _, tc := range tests {
		res := s.m.Run(t.Context(), runtime.Job{ID: "job-1", Input: []byte(tc.input)})
		if res.Code() != tc.code || string(res.Output) != tc.output {
			t.Errorf("%s: Run = %s %q (%v), want %s %q", tc.name, res.Code(), res.Output, res.Err, tc.code, tc.output)
		}
		if oe, ok := res.Err.(*outcome.Error); ok && tc.msg != "" && oe.Msg != tc.msg {
			t.Errorf("%s: message = %q, want %q", tc.name, oe.Msg, tc.msg)
		}
	}
}

func TestExtismHTTPReachesAPI(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	s := newSandbox(t, up.URL, runtime.Limits{}, "extism_probe")
	resp, res := extismHTTP(t, s, `{"endpoint":"crm","method":"GET","path":"/api/customers/42","headers":{"Accept":"application/json"}}`)
	if res.Err != nil {
		t.Fatalf("Run = %v", res.Err)
	}
	if resp.Status != 200 || !strings.Contains(string(resp.Body), `"name":"Ada Lovelace"`) || res.HTTPCalls != 1 {
		t.Errorf("response = %d %q (calls %d), want 200 with the record after 1 call", resp.Status, resp.Body, res.HTTPCalls)
	}
	if ev := s.lastEvent(); ev.Decision != "allow" || ev.Task != "probe" || ev.Job != "job-x" {
		t.Errorf("audit event = %+v, want allow for probe/job-x", ev)
	}
}

// TestExtismCredentialNeverReadable: echo endpoints reflect the injected credential; the
// plugin sees only the placeholder, in the body and in response headers.
func TestExtismCredentialNeverReadable(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	s := newSandbox(t, up.URL, runtime.Limits{}, "extism_probe")
	forms := redact.Forms(token)
	for _, id := range []string{"echo", "echo-b64", "echo-header", "echo-url", "echo-hex"} {
		resp, res := extismHTTP(t, s, `{"endpoint":"crm","method":"GET","path":"/api/customers/`+id+`"}`)
		if res.Err != nil {
			t.Fatalf("Run(%s) = %v", id, res.Err)
		}
		seen := string(resp.Body)
		for k, v := range resp.Headers {
			seen += "\n" + k + ": " + v
		}
		if resp.Status != 200 || !strings.Contains(seen, redact.Placeholder) {
			t.Errorf("%s: response = %d %q, want 200 with %s", id, resp.Status, seen, redact.Placeholder)
		}
		for _, f := range forms {
			if strings.Contains(seen, f) || strings.Contains(string(res.Output), f) {
				t.Errorf("%s: the plugin read the credential (form %q)", id, f)
			}
		}
		if _, ok := resp.Headers["Set-Cookie"]; ok {
			t.Errorf("%s: Set-Cookie reached the plugin", id)
		}
	}
}

func TestExtismDenied(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	s := newSandbox(t, up.URL, runtime.Limits{}, "extism_probe")
	for _, req := range []string{
		`{"endpoint":"other","method":"GET","path":"/api/customers/42"}`,
		`{"endpoint":"crm","method":"GET","path":"/admin/users"}`,
		`{"endpoint":"crm","method":"DELETE","path":"/api/customers/42"}`,
		`{"endpoint":"crm","method":"GET","path":"/api/customers/../admin"}`,
		`{"endpoint":"crm","method":"GET","path":"http://evil.example/x"}`,
		`{"endpoint":"crm","method":"GET","path":"/api/customers/42","headers":{"Authorization":"Bearer mine"}}`,
		`{"endpoint":"crm","method":"GET","path":"/api/customers/42","url":"http://evil.example/"}`,
		`not json`,
	} {
		before := up.requests.Load()
		_, res := extismHTTP(t, s, req)
		if res.Code() != outcome.Denied {
			t.Errorf("Run(h%s) = %s (%v), want denied", req, res.Code(), res.Err)
		}
		if up.requests.Load() != before {
			t.Errorf("Run(h%s): the upstream received the denied request", req)
		}
	}
}

func TestExtismHostileModules(t *testing.T) {
	t.Parallel()
	up := newUpstream(t)
	tests := []struct {
		name, input string
		lim         runtime.Limits
		code        outcome.Code
	}{
		{"infinite loop", "l", runtime.Limits{Timeout: 300 * time.Millisecond}, outcome.Timeout},
		{"memory bomb", "m", runtime.Limits{MemoryPages: 64}, outcome.MemoryLimit},
		{"kernel memory bomb", "k", runtime.Limits{MemoryPages: 64}, outcome.MemoryLimit},
		{"huge output", "o", runtime.Limits{OutputBytes: 1 << 20}, outcome.OutputTooLarge},
		{"call budget", `h{"endpoint":"crm","method":"GET","path":"/api/customers/42"}`, runtime.Limits{NoHTTPCalls: true}, outcome.CallBudgetExceeded},
		{"slow upstream", `h{"endpoint":"crm","method":"GET","path":"/api/customers/slow"}`, runtime.Limits{Timeout: 300 * time.Millisecond}, outcome.Timeout},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSandbox(t, up.URL, tc.lim, "extism_probe")
			start := time.Now()
			res := s.m.Run(t.Context(), runtime.Job{ID: "job-1", Input: []byte(tc.input)})
			if res.Code() != tc.code {
				t.Errorf("Run(%s) = %s (%v), want %s", tc.input, res.Code(), res.Err, tc.code)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Run(%s) took %s", tc.input, d)
			}
			// The module stays usable: the next job runs on a fresh instance.
			if res := s.m.Run(t.Context(), runtime.Job{ID: "job-2", Input: []byte("eok")}); res.Err != nil || string(res.Output) != "ok" {
				t.Errorf("Run after %s = %q, %v; want ok", tc.name, res.Output, res.Err)
			}
		})
	}
}

func TestExtismRejectsHTTPRequestImport(t *testing.T) {
	t.Parallel()
	_, err := newEngine(t).Load(t.Context(), runtime.ModuleConfig{Name: "x", Wasm: fixture(t, "extism_http_request")})
	if outcome.CodeOf(err) != outcome.ModuleRejected || !strings.Contains(err.Error(), "extism:host/env.http_request") {
		t.Errorf("Load(extism_http_request) = %v, want module_rejected naming extism:host/env.http_request", err)
	}
}

// pdkPlugin returns a test plugin shipped with the extism/go-sdk module, or skips.
func pdkPlugin(t *testing.T, name string) []byte {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		testenv.Missing(t, fmt.Sprintf("go env GOMODCACHE: %v", err))
	}
	p := filepath.Join(strings.TrimSpace(string(out)), "github.com", "extism", "go-sdk@v1.7.1", "wasm", name+".wasm")
	b, err := os.ReadFile(p)
	if err != nil {
		testenv.Missing(t, fmt.Sprintf("PDK test plugin absent (%v); it ships in the extism/go-sdk v1.7.1 module download (go mod download)", err))
	}
	return b
}

func TestExtismPDKPlugins(t *testing.T) {
	t.Parallel()
	tests := []struct {
		plugin, entry, input string
		code                 outcome.Code
		output               string
		loadErr              string
	}{
		{plugin: "count_vowels", entry: "count_vowels", input: "hello world", code: outcome.OK, output: `{"count":3,"total":3,"vowels":"aeiouAEIOU"}`},
		{plugin: "hello", entry: "run_test", code: outcome.OK, output: "Hello, world!"},
		{plugin: "fail", entry: "run_test", code: outcome.TaskError},
		{plugin: "http", entry: "run_test", loadErr: "extism:host/env.http_request"},
		{plugin: "fs", entry: "run_test", loadErr: "wasi_snapshot_preview1.path_open"},
	}
	for _, tc := range tests {
		t.Run(tc.plugin, func(t *testing.T) {
			t.Parallel()
			wasm := pdkPlugin(t, tc.plugin)
			m, err := newEngine(t).Load(t.Context(), runtime.ModuleConfig{Name: tc.plugin, Wasm: wasm, Entry: tc.entry})
			if tc.loadErr != "" {
				if outcome.CodeOf(err) != outcome.ModuleRejected || !strings.Contains(err.Error(), tc.loadErr) {
					t.Errorf("Load(%s) = %v, want module_rejected naming %s", tc.plugin, err, tc.loadErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load(%s) = %v", tc.plugin, err)
			}
			res := m.Run(t.Context(), runtime.Job{ID: "j", Input: []byte(tc.input)})
			if res.Code() != tc.code || (tc.output != "" && string(res.Output) != tc.output) {
				t.Errorf("Run(%s) = %s %q (%v), want %s %q", tc.plugin, res.Code(), res.Output, res.Err, tc.code, tc.output)
			}
		})
	}
}

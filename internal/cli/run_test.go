package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/examples"
	"github.com/castellan-dev/castellan/internal/democrm"
	"github.com/castellan-dev/castellan/redact"
)

const runToken = "cli-test-crm-token-5f2a9c"

// runFixture starts the demo CRM and writes a policy whose task is the committed crm-lookup
// module, with the token in a 0600 file.
func runFixture(t *testing.T) (policyPath string) {
	t.Helper()
	base, stop, err := democrm.Start(t.Context(), runToken)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	module := filepath.Join(dir, "crm-lookup.wasm")
	must(t, os.WriteFile(tokenFile, []byte(runToken+"\n"), 0o600))
	must(t, os.WriteFile(module, examples.CRMLookupWasm, 0o644))
	// The demo policy names its schemas relative to itself.
	must(t, os.WriteFile(filepath.Join(dir, "input.schema.json"), []byte(crmLookupInputSchema), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "output.schema.json"), []byte(crmLookupOutputSchema), 0o644))
	pol := strings.NewReplacer("{{.TokenFile}}", tokenFile, "{{.CRMURL}}", base, "{{.Module}}", module).Replace(examples.DemoPolicy)
	policyPath = filepath.Join(dir, "policy.yaml")
	must(t, os.WriteFile(policyPath, []byte(pol), 0o644))
	return policyPath
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestRunCommand(t *testing.T) {
	t.Parallel()
	pol := runFixture(t)
	cache := t.TempDir()
	tests := []struct {
		name     string
		cfg      RunConfig
		exit     int
		stdout   string
		stderr   string // substring
		oneLine  bool   // stderr is exactly one line
		logLevel string
	}{
		{"found", RunConfig{Task: "crm-lookup", Input: `{"customer_id":"42"}`}, ExitOK,
			`{"customer_id":"42","name":"Ada Lovelace","tier":"gold","open_tickets":2}` + "\n", "", false, "debug"},
		{"not found", RunConfig{Task: "crm-lookup", Input: `{"customer_id":"999"}`}, ExitTaskFailed,
			"", "task_error: customer 999 not found", true, "warn"},
		{"bad input", RunConfig{Task: "crm-lookup", Input: `{"customer_id":"../admin"}`}, ExitTaskFailed,
			"", "task_error:", true, "warn"},
		{"input not JSON", RunConfig{Task: "crm-lookup", Input: `{nope`}, ExitUsage, "", "must be a JSON document", false, "warn"},
		{"unknown task", RunConfig{Task: "erp-sync", Input: `{}`}, ExitUsage, "", `task "erp-sync" is not defined`, false, "warn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.Policy, cfg.CacheDir, cfg.LogLevel = pol, cache, tt.logLevel
			var stdout, stderr bytes.Buffer
			err := Run(t.Context(), cfg, &stdout, &stderr)
			if got := ExitCode(err); got != tt.exit {
				t.Fatalf("Run() exit = %d (%v), want %d; stderr:\n%s", got, err, tt.exit, stderr.String())
			}
			if stdout.String() != tt.stdout {
				t.Errorf("stdout = %q, want %q", stdout.String(), tt.stdout)
			}
			got := stderr.String()
			if tt.exit == ExitUsage {
				got = err.Error()
			}
			if !strings.Contains(got, tt.stderr) {
				t.Errorf("stderr = %q, want it to contain %q", got, tt.stderr)
			}
			if tt.oneLine && strings.Count(strings.TrimSpace(got), "\n") != 0 {
				t.Errorf("stderr = %q, want exactly one line", got)
			}
			all := stdout.String() + stderr.String()
			for _, f := range redact.Forms(runToken) {
				if strings.Contains(all, f) {
					t.Errorf("credential form %q in the output or logs", f)
				}
			}
		})
	}
}

func TestPolicyCheck(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := policyCheck(runFixture(t), &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"task crm-lookup", "allow GET /api/customers/*", "credential crm_token from file", "is valid"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("policy check output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), runToken) {
		t.Error("policy check printed the credential value")
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	must(t, os.WriteFile(bad, []byte("version: 1\ntasks:\n  x:\n    modul: a.wasm\n"), 0o644))
	err := policyCheck(bad, &out)
	if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), "bad.yaml:4") {
		t.Errorf("policyCheck(bad) = %v, want a usage error naming bad.yaml:4", err)
	}
}

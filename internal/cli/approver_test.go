package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestApproverCheckErrors: `approver check` refuses each class of mistake with exit status
// 2 and a message naming the file and the line to fix.
func TestApproverCheckErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, src string
		line      int
		want      string
	}{
		{"unknown key", "rules:\n  - name: a\n    when: 'true'\n    aprove: {ttl: 1m}\n", 4, `unknown key (did you mean "approve"?)`},
		{"two documents", "rules: []\n---\nrules: []\n", 2, "second YAML document"},
		{"bad CEL syntax", "rules:\n  - name: a\n    when: 'task == \"x\" &&'\n    ask: {}\n", 3, "CEL: Syntax error"},
		{"non-bool expression", "rules:\n  - name: a\n    when: 'size(task)'\n    ask: {}\n", 3, "of type int, not bool"},
		{"unknown variable", "rules:\n  - name: a\n    when: 'user == \"bob\"'\n    ask: {}\n", 3, `unknown variable or function "user"`},
		{"missing action", "rules:\n  - name: a\n    when: 'true'\n", 2, "missing action"},
		{"two actions", "rules:\n  - name: a\n    when: 'true'\n    approve: {ttl: 1m}\n    deny: {reason: no}\n", 5, "exactly one action"},
		{"ttl too long", "rules:\n  - name: a\n    when: 'true'\n    approve: {ttl: 48h}\n", 4, "out of range"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, t.TempDir(), "rules.yaml", tt.src)
			var out bytes.Buffer
			err := ApproverCheck(t.Context(), ApproverCheckConfig{Rules: path}, strings.NewReader(""), &out)
			if code := ExitCode(err); code != ExitUsage {
				t.Fatalf("ApproverCheck(%q) = %v (exit %d), want exit %d", tt.src, err, code, ExitUsage)
			}
			want := fmt.Sprintf("%s:%d: ", path, tt.line)
			for _, l := range strings.Split(err.Error(), "\n") {
				if strings.HasPrefix(l, want) && strings.Contains(l, tt.want) {
					return
				}
			}
			t.Fatalf("ApproverCheck(%q) = %v, want a line starting %q mentioning %q", tt.src, err, want, tt.want)
		})
	}
}

const approverRules = `rules:
  - name: read-only-lookups
    when: 'task == "crm-lookup" && pool == "default" && size(input.customer_id) < 16'
    approve: { ttl: 10m, max_attempts: 3 }
  - name: no-weekend-writes
    when: 'task.startsWith("erp-") && time.getDayOfWeek() in [0, 6]'
    deny: { reason: "no ERP changes at weekends" }
  - name: big-refunds
    when: 'task == "refund" && input.amount > 1000'
    ask: { reason: "refund over 1000" }
`

// TestApproverCheckSamples: through the real command line, each sample is decided by the
// rule it should be, and the default is ask.
func TestApproverCheckSamples(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rulesFile := writeFile(t, dir, "rules.yaml", approverRules)
	samples := `- {task: crm-lookup, version: "1", pool: default, input: {customer_id: c-42}, requester: agent}
- {task: erp-post, pool: default, input: {}, time: "2026-11-28T12:00:00Z"}
- {task: refund, input: {amount: 1500}}
- {task: refund, input: {amount: 10}, time: "2026-12-01T12:00:00Z"}
- {task: refund, input: {}}
`
	want := []string{
		`1. task "crm-lookup" version "1" pool "default" requester "agent": approve by rule read-only-lookups (ttl 10m0s, max_attempts 3)`,
		`2. task "erp-post" version "" pool "default" requester "": deny by rule no-weekend-writes: no ERP changes at weekends`,
		`3. task "refund" version "" pool "" requester "": ask by rule big-refunds: refund over 1000`,
		`4. task "refund" version "" pool "" requester "": ask (default): no rule matched`,
		`5. task "refund" version "" pool "" requester "": ask by rule big-refunds: rule "big-refunds" (line 8) could not be evaluated: no such key: amount`,
	}
	for _, viaStdin := range []bool{false, true} {
		var out, errOut bytes.Buffer
		app := App(&out, &errOut)
		// Flags before RULES, as urfave/cli parses them, and after, as the docs write them.
		args := []string{"castellan", "approver", "check", "--input", writeFile(t, dir, "samples.yaml", samples), rulesFile}
		if viaStdin {
			app.Reader = strings.NewReader(samples)
			args = []string{"castellan", "approver", "check", rulesFile, "--input", "-"}
		}
		if err := runAppWith(context.Background(), app, args); err != nil {
			t.Fatalf("castellan %v = %v; stderr %s", args[1:], err, errOut.String())
		}
		got := strings.Split(strings.TrimSpace(out.String()), "\n")
		if len(got) != len(want)+1 || got[0] != fmt.Sprintf("rules %s are valid (3 rules)", rulesFile) {
			t.Fatalf("castellan %v printed\n%s\nwant a validity line and %d decisions", args[1:], out.String(), len(want))
		}
		for i, w := range want {
			if got[i+1] != w {
				t.Errorf("castellan %v line %d = %q, want %q", args[1:], i+2, got[i+1], w)
			}
		}
	}
}

// TestApproverCheckBadSamples: a sample file with a mistake is a usage error naming it.
func TestApproverCheckBadSamples(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rulesFile := writeFile(t, dir, "rules.yaml", approverRules)
	for _, tt := range []struct{ name, src, want string }{
		{"unknown field", "- task: a\n  tsk: b\n", "samples.yaml:2: field tsk not found"},
		{"not a list", "task: a\n", "samples.yaml:1: cannot unmarshal"},
		{"bad time", "- task: a\n  time: monday\n", "samples.yaml: sample 1: time \"monday\""},
		{"two documents", "- task: a\n---\n- task: b\n", "samples.yaml:2: a second YAML document"},
		{"empty", "", "samples.yaml: no samples"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, t.TempDir(), "samples.yaml", tt.src)
			err := ApproverCheck(t.Context(), ApproverCheckConfig{Rules: rulesFile, Input: path}, nil, &bytes.Buffer{})
			if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ApproverCheck(samples %q) = %v, want a usage error mentioning %q", tt.src, err, tt.want)
			}
		})
	}
}

package cli

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/approver/approvertest"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// startApprover runs `castellan approver` against e with cfg's rules, key and UI settings
// filled in, until the test ends; it returns the console URL ("" without --ui) and the log.
func startApprover(t *testing.T, e *approvertest.Env, rulesSrc string, cfg ApproverConfig) (string, *syncBuffer) {
	t.Helper()
	dir := t.TempDir()
	priv, _, err := approval.WriteKeyFiles(dir, "approver-cli")
	must(t, err)
	cfg.Key, cfg.Rules = priv, writeFile(t, dir, "rules.yaml", rulesSrc)
	cfg.Server, cfg.TokenFile = e.URL, writeFile(t, dir, "token", e.Secrets["admin"]+"\n")
	if cfg.Pools == nil {
		cfg.Pools = []string{approvertest.Pool}
	}
	ready := make(chan string, 1)
	cfg.ready = func(u string) { ready <- u }
	ctx, cancel := context.WithCancel(t.Context())
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- Approver(ctx, cfg, stdout, stderr) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Approver() = %v after cancel; log %s", err, stderr.String())
		}
	})
	select {
	case u := <-ready:
		return u, stderr
	case err := <-done:
		t.Fatalf("Approver() = %v before it was ready; log %s", err, stderr.String())
	}
	return "", nil
}

// TestApproverCommand: `castellan approver` approves what its rule matches, signed with
// --key, and leaves the rest pending.
func TestApproverCommand(t *testing.T) {
	t.Parallel()
	e := approvertest.New(t)
	_, log := startApprover(t, e, "rules:\n  - name: lookups\n    when: 'task == \"crm-lookup\"'\n    approve: {ttl: 5m}\n", ApproverConfig{})
	ok := e.Submit(e.Client, "crm-lookup", approvertest.Pool, `{"customer_id":"c-1"}`)
	left := e.Submit(e.Client, "refund", approvertest.Pool, `{"amount":1}`)
	e.WaitState(ok.ID, api.StateQueued)
	c, _, err := approval.Inspect(e.Lease(approvertest.Pool, ok.ID).Approval)
	if err != nil || c.ApprovedBy == nil || c.ApprovedBy.Rule != "lookups" {
		t.Fatalf("approval claims %+v, %v; want approved_by rule lookups", c, err)
	}
	if got := e.Get(left.ID); got.State != api.StatePendingApproval {
		t.Fatalf("job no rule matched is %s, want pending_approval", got.State)
	}
	if !strings.Contains(log.String(), "approved by rule") {
		t.Fatalf("log %q: want an 'approved by rule' line", log.String())
	}
}

// TestApproverUsage: missing or bad configuration is a usage error before anything runs.
func TestApproverUsage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rulesFile := writeFile(t, dir, "r.yaml", "rules: []\n")
	priv, _, err := approval.WriteKeyFiles(dir, "k")
	must(t, err)
	for _, tt := range []struct {
		name string
		cfg  ApproverConfig
		want string
	}{
		{"no key", ApproverConfig{Rules: rulesFile}, "--key and --rules are required"},
		{"public key", ApproverConfig{Key: filepath.Join(dir, "k.public.jwks.json"), Rules: rulesFile}, "--key"},
		{"bad rules", ApproverConfig{Key: priv, Rules: writeFile(t, dir, "bad.yaml", "rulez: []\n")}, "bad.yaml:1"},
		{"no server", ApproverConfig{Key: priv, Rules: rulesFile}, "--server is required"},
	} {
		err := Approver(t.Context(), tt.cfg, &syncBuffer{}, &syncBuffer{})
		if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Approver() = %v, want a usage error containing %q", tt.name, err, tt.want)
		}
	}
}

// TestApproverConsoleFlag: --ui serves the console at the printed session URL, which logs
// a browser in; a non-loopback --ui without --ui-allow-remote is a usage error.
func TestApproverConsoleFlag(t *testing.T) {
	t.Parallel()
	e := approvertest.New(t)
	u, _ := startApprover(t, e, "rules: []\n", ApproverConfig{UI: "127.0.0.1:0", As: "alice"})
	if !strings.HasPrefix(u, "http://127.0.0.1:") || !strings.Contains(u, "/?session=") {
		t.Fatalf("console URL %q, want http://127.0.0.1:PORT/?session=...", u)
	}
	jar, err := cookiejar.New(nil)
	must(t, err)
	hc := &http.Client{Jar: jar}
	resp, err := hc.Get(u)
	must(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.RawQuery != "" || !strings.Contains(string(body), "Signing as <strong>alice</strong>") {
		t.Fatalf("GET session URL -> %d at %s:\n%s", resp.StatusCode, resp.Request.URL, body)
	}
	dir := t.TempDir()
	priv, _, err := approval.WriteKeyFiles(dir, "k")
	must(t, err)
	err = Approver(t.Context(), ApproverConfig{JobConfig: JobConfig{Server: e.URL, TokenFile: writeFile(t, dir, "tok", e.Secrets["admin"])},
		Key: priv, Rules: writeFile(t, dir, "r.yaml", "rules: []\n"), Pools: []string{"default"}, UI: "192.0.2.1:8470"}, &syncBuffer{}, &syncBuffer{})
	if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), "--ui-allow-remote") {
		t.Fatalf("Approver(--ui 192.0.2.1:8470) = %v, want a usage error naming --ui-allow-remote", err)
	}
}

// TestApproverForbiddenPool: a token that may not read a served pool ends the approver
// with a usage error naming the problem, instead of retrying for ever.
func TestApproverForbiddenPool(t *testing.T) {
	t.Parallel()
	e := approvertest.New(t)
	dir := t.TempDir()
	priv, _, err := approval.WriteKeyFiles(dir, "k")
	must(t, err)
	e.NewClient("pool-approver", api.RoleApprover, approvertest.Other)
	err = Approver(t.Context(), ApproverConfig{JobConfig: JobConfig{Server: e.URL, TokenFile: writeFile(t, dir, "tok", e.Secrets["pool-approver"])},
		Key: priv, Rules: writeFile(t, dir, "r.yaml", "rules: []\n"), Pools: []string{approvertest.Pool}}, &syncBuffer{}, &syncBuffer{})
	if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), "403") {
		t.Fatalf("Approver(token for another pool) = %v, want a usage error naming the 403", err)
	}
}

package cli

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
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
		{"no key", ApproverConfig{Rules: rulesFile}, "--key (or --key-vault) and --rules are required"},
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

// fakeVault serves one KV v2 secret to one token, as Vault's HTTP API does.
func fakeVault(t *testing.T, token, path string, data map[string]string) string {
	t.Helper()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("X-Vault-Token") != token {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"errors":["permission denied"]}`))
			return
		}
		switch r.URL.Path {
		case "/v1/auth/token/lookup-self":
			_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"id": token, "ttl": 0, "renewable": false}})
		case "/v1/" + path:
			_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"data": data, "metadata": map[string]any{"version": 1}}})
		default:
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errors":[]}`))
		}
	}))
	t.Cleanup(hs.Close)
	return hs.URL
}

// TestApproverKeyFromVault: --key-vault reads the signing key from a Vault KV v2 secret; the
// approvals verify with its public half, and no log line holds the private key. A reference
// that is malformed, or a value that is not a private JWK, is a usage error that does not
// repeat the value.
func TestApproverKeyFromVault(t *testing.T) {
	e := approvertest.New(t)
	priv, pub, err := approval.GenerateKey("vault-approver")
	must(t, err)
	jwk, err := priv.MarshalJSON()
	must(t, err)
	const vaultToken = "hvs.test-approver-token"
	addr := fakeVault(t, vaultToken, "secret/data/approvers/alice", map[string]string{"jwk": string(jwk), "pub": `{"kty":"OKP","crv":"Ed25519","x":"AAAA"}`})
	t.Setenv("VAULT_ADDR", addr)
	t.Setenv("VAULT_TOKEN", vaultToken)

	dir := t.TempDir()
	base := ApproverConfig{JobConfig: JobConfig{Server: e.URL, TokenFile: writeFile(t, dir, "tok", e.Secrets["admin"])},
		Rules: writeFile(t, dir, "r.yaml", "rules:\n  - name: all\n    when: 'true'\n    approve: {ttl: 1m}\n"), Pools: []string{approvertest.Pool}}
	for _, tt := range []struct{ ref, want string }{
		{"secret/approvers/alice", "want MOUNT/PATH#FIELD"},
		{"approvers#jwk", "want MOUNT/PATH#FIELD"},
		{"secret/approvers/alice#pub", "not a private Ed25519 JWK"},
		{"secret/approvers/bob#jwk", "cannot be read"},
	} {
		cfg := base
		cfg.KeyVault = tt.ref
		err := Approver(t.Context(), cfg, &syncBuffer{}, &syncBuffer{})
		if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "AAAA") {
			t.Errorf("Approver(--key-vault %s) = %v, want a usage error saying %q", tt.ref, err, tt.want)
		}
	}

	ctx, cancel := context.WithCancel(t.Context())
	cfg := base
	cfg.KeyVault = "secret/approvers/alice#jwk"
	cfg.LogLevel = "debug"
	ready := make(chan string, 1)
	cfg.ready = func(u string) { ready <- u }
	stderr := &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- Approver(ctx, cfg, &syncBuffer{}, stderr) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Approver(--key-vault) = %v; log %s", err, stderr.String())
	}
	j := e.Submit(e.Client, "crm-lookup", approvertest.Pool, `{"customer_id":"v-1"}`)
	e.WaitState(j.ID, api.StateQueued)
	cancel()
	must(t, <-done)
	e.Trusted.Keys = append(e.Trusted.Keys, pub)
	if c, err := e.Verify(e.Lease(approvertest.Pool, j.ID)); err != nil || c.ApprovedBy == nil || c.ApprovedBy.Rule != "all" {
		t.Fatalf("worker Verify(approval signed with the Vault key) = %+v, %v", c, err)
	}
	var d struct {
		D string `json:"d"`
	}
	must(t, json.Unmarshal(jwk, &d))
	if d.D == "" || strings.Contains(stderr.String(), d.D) {
		t.Fatalf("the approver's log holds the private key (or the test found no d): %q", stderr.String())
	}
}

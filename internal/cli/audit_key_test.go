package cli

import (
	"context"
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/secrets"
)

// TestAuditKeyOutsideStateDir (13.10): the audit signing key can come from a file outside
// STATE-DIR or from a policy credential (env, file or Vault); then no key is created
// beside the log, and the log verifies with that key's public half.
func TestAuditKeyOutsideStateDir(t *testing.T) {
	t.Parallel()
	keyDir := t.TempDir()
	privPath, pubPath, err := approval.WriteKeyFiles(keyDir, "audit")
	must(t, err)
	jwk, err := approval.LoadPrivateKey(privPath)
	must(t, err)
	want := jwk.Key.(ed25519.PrivateKey)
	red := redact.NewSet()
	store, err := secrets.NewStore(map[string]secrets.Spec{"audit_key": {File: privPath}, "pub": {File: pubPath}}, nil, red, zap.NewNop())
	must(t, err)
	defer store.Close()

	for _, tt := range []struct {
		name string
		cfg  WorkerConfig
	}{
		{"file", WorkerConfig{AuditKeyFile: privPath}},
		{"credential", WorkerConfig{AuditKeyCredential: "audit_key"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stateDir := t.TempDir()
			obs, err := newObservability(context.Background(), tt.cfg, stateDir, store, red, zap.NewNop())
			must(t, err)
			must(t, obs.audit.Append(audit.JobStarted{Job: "j", Task: "t", Attempt: 1}))
			obs.close()
			if _, err := os.Stat(filepath.Join(stateDir, "audit.private.jwk.json")); err == nil {
				t.Errorf("a signing key was created in STATE-DIR although %+v names one elsewhere", tt.cfg)
			}
			rep, err := audit.VerifyFiles([]string{filepath.Join(stateDir, "audit.log")}, want.Public().(ed25519.PublicKey))
			if err != nil || rep.Checkpoints < 2 {
				t.Fatalf("Verify(log, the external key) = %+v, %v; want signed by it", rep, err)
			}
		})
	}

	t.Run("default creates the key in STATE-DIR once", func(t *testing.T) {
		t.Parallel()
		stateDir := t.TempDir()
		k1, err := auditKey(context.Background(), WorkerConfig{}, stateDir, store)
		must(t, err)
		k2, err := auditKey(context.Background(), WorkerConfig{}, stateDir, store)
		must(t, err)
		if !k1.Equal(k2) {
			t.Fatal("the second start loaded another key")
		}
	})

	for _, tt := range []struct {
		name    string
		cfg     WorkerConfig
		want    string
		notWant string
	}{
		{"missing file", WorkerConfig{AuditKeyFile: filepath.Join(keyDir, "nope.jwk.json")}, "--audit-key-file", ""},
		{"public key file", WorkerConfig{AuditKeyFile: pubPath}, "--audit-key-file", ""},
		{"both", WorkerConfig{AuditKeyFile: privPath, AuditKeyCredential: "audit_key"}, "give one", ""},
		{"unknown credential", WorkerConfig{AuditKeyCredential: "nope"}, "--audit-key-credential", ""},
		{"credential not a private key", WorkerConfig{AuditKeyCredential: "pub"}, "not a private Ed25519 JWK", `"x"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			stateDir := t.TempDir()
			_, err := auditKey(context.Background(), tt.cfg, stateDir, store)
			if err == nil || !strings.Contains(err.Error(), tt.want) || (tt.notWant != "" && strings.Contains(err.Error(), tt.notWant)) {
				t.Fatalf("auditKey(%+v) = %v, want an error naming %q", tt.cfg, err, tt.want)
			}
			if _, err := os.Stat(filepath.Join(stateDir, "audit.private.jwk.json")); err == nil {
				t.Errorf("a key was created in STATE-DIR after a refused --audit-key-*")
			}
		})
	}
}

package secrets

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/castellan-dev/castellan/redact"
)

// TestRealVault runs the Store against a real Vault server: the fake in fakevault_test.go
// only speaks the subset of the API we believe we use, and this test checks that belief.
// It needs VAULT_ADDR and VAULT_TOKEN (a token allowed to write, read and delete under
// castellan-test/ in the KV v2 mount named by CASTELLAN_VAULT_KV_MOUNT, default "secret"),
// e.g. against `vault server -dev`.
func TestRealVault(t *testing.T) {
	if os.Getenv("VAULT_ADDR") == "" || os.Getenv("VAULT_TOKEN") == "" {
		t.Skip("VAULT_ADDR and VAULT_TOKEN are not set: no real Vault to test against (the fake-server tests cover the same code)")
	}
	mount := os.Getenv("CASTELLAN_VAULT_KV_MOUNT")
	if mount == "" {
		mount = "secret"
	}
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		t.Fatalf("api.NewClient = %v", err)
	}
	rnd := make([]byte, 8)
	rand.Read(rnd)
	path := "castellan-test/" + hex.EncodeToString(rnd)
	value := "real-vault-value-" + hex.EncodeToString(rnd)
	kv := client.KVv2(mount)
	if _, err := kv.Put(t.Context(), path, map[string]any{"api_key": value}); err != nil {
		t.Fatalf("KVv2(%q).Put(%q) = %v", mount, path, err)
	}
	t.Cleanup(func() {
		if err := kv.DeleteMetadata(t.Context(), path); err != nil {
			t.Errorf("KVv2(%q).DeleteMetadata(%q) = %v", mount, path, err)
		}
	})

	red := redact.NewSet()
	s, err := NewStore(map[string]Spec{
		"real":    {Vault: &VaultRef{Mount: mount, Path: path, Field: "api_key"}},
		"nofield": {Vault: &VaultRef{Mount: mount, Path: path, Field: "nope"}},
		"missing": {Vault: &VaultRef{Mount: mount, Path: path + "-missing", Field: "api_key"}},
	}, &VaultConfig{Namespace: os.Getenv("VAULT_NAMESPACE")}, red, nil)
	if err != nil {
		t.Fatalf("NewStore = %v", err)
	}
	defer s.Close()
	mustCredential(t, s, "real", value)
	if !red.Contains([]byte(value)) {
		t.Errorf("redact set does not contain the value read from Vault")
	}
	for name, want := range map[string]string{"nofield": `field "nope" not found in secret`, "missing": "not found (404)"} {
		_, err := s.Credential(t.Context(), name)
		checkErr(t, "Credential("+name+")", err, want)
		if err != nil && strings.Contains(fmt.Sprintf("%+v", err), os.Getenv("VAULT_TOKEN")) {
			t.Errorf("Credential(%s) error %q contains the Vault token", name, err)
		}
	}
}

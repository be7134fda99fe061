package secrets

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/redact"
)

// The store is what the egress gateway uses to inject credentials. The guard lives in a
// test so that the secrets package itself does not depend on egress.
var _ egress.Credentials = (*Store)(nil)

func newStore(t *testing.T, specs map[string]Spec, vc *VaultConfig) (*Store, *redact.Set) {
	t.Helper()
	red := redact.NewSet()
	s, err := NewStore(specs, vc, red, nil)
	if err != nil {
		t.Fatalf("NewStore = %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, red
}

// checkErr asserts err is a CredentialUnavailable *outcome.Error wrapping an *Error, whose
// message says only that the credential is unavailable, and whose local detail contains
// every part of want.
func checkErr(t *testing.T, call string, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s = nil error, want one containing %q", call, want)
	}
	var oe *outcome.Error
	if !errors.As(err, &oe) || oe.Code != outcome.CredentialUnavailable {
		t.Errorf("%s error = %#v, want *outcome.Error with code %s", call, err, outcome.CredentialUnavailable)
	}
	var se *Error
	if !errors.As(err, &se) {
		t.Errorf("%s error = %#v, want it to wrap a *secrets.Error", call, err)
	}
	for _, line := range strings.Split(err.Error(), "\n") {
		if !strings.HasSuffix(line, "is unavailable (see the worker's log)") {
			t.Errorf("%s error = %q, want only `credential \"NAME\" is unavailable (see the worker's log)`", call, line)
		}
	}
	for _, w := range want {
		if d := Detail(err); !strings.Contains(d, w) {
			t.Errorf("Detail(%s error) = %q, want it to contain %q", call, d, w)
		}
	}
}

// TestEnvProvider cannot run in parallel: it sets environment variables.
func TestEnvProvider(t *testing.T) {
	t.Setenv("CASTELLAN_TEST_TOKEN", "env-secret-value-1")
	t.Setenv("CASTELLAN_TEST_EMPTY", "")
	t.Setenv("CASTELLAN_TEST_SHORT", "tiny7ch")
	t.Setenv("CASTELLAN_TEST_NL", "env-secret-value-2\n")
	s, red := newStore(t, map[string]Spec{
		"ok":      {Env: "CASTELLAN_TEST_TOKEN"},
		"unset":   {Env: "CASTELLAN_TEST_UNSET_VARIABLE"},
		"empty":   {Env: "CASTELLAN_TEST_EMPTY"},
		"short":   {Env: "CASTELLAN_TEST_SHORT"},
		"newline": {Env: "CASTELLAN_TEST_NL"},
	}, nil)
	tests := []struct {
		name, want string
		errParts   []string
	}{
		{"ok", "env-secret-value-1", nil},
		{"newline", "env-secret-value-2\n", nil}, // environment values are taken verbatim
		{"unset", "", []string{`credential "unset"`, "environment variable CASTELLAN_TEST_UNSET_VARIABLE is not set"}},
		{"empty", "", []string{"environment variable CASTELLAN_TEST_EMPTY is empty"}},
		{"short", "", []string{`credential "short"`, "value shorter than 8 bytes cannot be redacted safely; use a longer credential"}},
		{"nope", "", []string{`credential "nope"`, "no such credential"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Credential(t.Context(), tt.name)
			if tt.errParts != nil {
				checkErr(t, "Credential("+tt.name+")", err, tt.errParts...)
				if strings.Contains(err.Error(), "tiny7ch") {
					t.Errorf("Credential(%q) error = %q, contains the value", tt.name, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Credential(%q) = %q, %v, want %q", tt.name, got, err, tt.want)
			}
			if !red.Contains([]byte(got)) {
				t.Errorf("redact set does not contain the value of %q after Credential", tt.name)
			}
		})
	}
	// Values are read at call time: a rotated value is picked up.
	t.Setenv("CASTELLAN_TEST_TOKEN", "env-secret-value-rotated")
	if got, err := s.Credential(t.Context(), "ok"); err != nil || got != "env-secret-value-rotated" {
		t.Errorf("Credential(ok) after rotation = %q, %v, want the new value", got, err)
	}
}

func TestFileProvider(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name     string
		path     string
		want     string
		errParts []string
	}{
		{"plain", write("plain", "file-secret-value"), "file-secret-value", nil},
		{"newline", write("nl", "file-secret-value\n"), "file-secret-value", nil},
		{"crlf", write("crlf", "file-secret-value\r\n"), "file-secret-value", nil},
		{"one newline only", write("nl2", "file-secret-value\n\n"), "file-secret-value\n", nil},
		{"missing", filepath.Join(dir, "missing"), "", []string{"file " + filepath.Join(dir, "missing") + " does not exist"}},
		{"directory", dir, "", []string{"file " + dir + ": cannot read it (is a directory)"}},
		{"short", write("short", "abc\n"), "", []string{"value shorter than 8 bytes"}},
		{"empty", write("empty", "\n"), "", []string{"file " + filepath.Join(dir, "empty") + " is empty"}},
		{"huge", write("huge", strings.Repeat("x", maxFileSize+1)), "", []string{"is larger than"}},
	}
	specs := map[string]Spec{}
	for _, tt := range tests {
		specs[tt.name] = Spec{File: tt.path}
	}
	if os.Geteuid() != 0 { // root reads anything, so this case only runs as a normal user
		p := write("unreadable", "file-secret-value")
		if err := os.Chmod(p, 0); err != nil {
			t.Fatal(err)
		}
		specs["unreadable"] = Spec{File: p}
		tests = append(tests, struct {
			name, path, want string
			errParts         []string
		}{"unreadable", p, "", []string{"file " + p + ": permission denied"}})
	}
	s, red := newStore(t, specs, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := s.Credential(t.Context(), tt.name)
			if tt.errParts != nil {
				checkErr(t, "Credential("+tt.name+")", err, tt.errParts...)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Credential(%q) = %q, %v, want %q", tt.name, got, err, tt.want)
			}
			if !red.Contains([]byte(got)) {
				t.Errorf("redact set does not contain the value of %q", tt.name)
			}
		})
	}
}

func TestNewStoreValidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		specs map[string]Spec
		vc    *VaultConfig
		want  string
	}{
		{"no source", map[string]Spec{"a": {}}, nil, `credential "a": set exactly one of env, file, vault or aws (found 0)`},
		{"two sources", map[string]Spec{"a": {Env: "X", File: "/f"}}, nil, "found 2"},
		{"vault no path", map[string]Spec{"a": {Vault: &VaultRef{Field: "f"}}}, &VaultConfig{Address: "http://v"}, "vault path is empty"},
		{"vault no field", map[string]Spec{"a": {Vault: &VaultRef{Path: "p"}}}, &VaultConfig{Address: "http://v"}, "vault field is empty"},
		{"vault dotdot", map[string]Spec{"a": {Vault: &VaultRef{Path: "a/../b", Field: "f"}}}, &VaultConfig{Address: "http://v"}, `".."`},
		{"bad address", map[string]Spec{"a": {Vault: &VaultRef{Path: "p", Field: "f"}}}, &VaultConfig{Address: "vault:8200"}, "not an http(s) URL"},
		{"bad auth", map[string]Spec{"a": {Vault: &VaultRef{Path: "p", Field: "f"}}}, &VaultConfig{Address: "http://v", AuthMethod: "ldap"}, `auth method "ldap" is not supported`},
		{"approle no role", map[string]Spec{"a": {Vault: &VaultRef{Path: "p", Field: "f"}}}, &VaultConfig{Address: "http://v", AuthMethod: "approle"}, "needs a role id"},
		{"approle no secret id", map[string]Spec{"a": {Vault: &VaultRef{Path: "p", Field: "f"}}}, &VaultConfig{Address: "http://v", AuthMethod: "approle", RoleID: "r"}, "needs a secret id"},
		{"missing CA", map[string]Spec{"a": {Vault: &VaultRef{Path: "p", Field: "f"}}}, &VaultConfig{Address: "https://v", CACert: "/nonexistent/ca.pem"}, "CA certificate /nonexistent/ca.pem"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewStore(tt.specs, tt.vc, redact.NewSet(), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewStore(%s) = %v, want error containing %q", tt.name, err, tt.want)
			}
		})
	}
	if _, err := NewStore(nil, nil, nil, nil); err == nil {
		t.Errorf("NewStore(nil redact.Set) = nil error, want one")
	}
}

func TestPreload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte("preloaded-file-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := newFakeVault(t)
	f.addToken("hvs.preload-token-SECRETTOKEN", 0, false)
	f.put("secret/castellan/crm", map[string]any{"api_key": "preloaded-vault-secret"})
	vc := &VaultConfig{Address: f.srv.URL, TokenFile: writeFile(t, "hvs.preload-token-SECRETTOKEN\n")}

	s, red := newStore(t, map[string]Spec{
		"file":  {File: good},
		"vault": {Vault: &VaultRef{Path: "castellan/crm", Field: "api_key"}},
	}, vc)
	if err := s.Preload(t.Context()); err != nil {
		t.Fatalf("Preload = %v, want nil", err)
	}
	for _, v := range []string{"preloaded-file-secret", "preloaded-vault-secret"} {
		if !red.Contains([]byte("echo: " + v)) {
			t.Errorf("after Preload, redact set does not contain %q", v)
		}
	}

	bad, _ := newStore(t, map[string]Spec{
		"a-missing": {File: filepath.Join(dir, "missing")},
		"b-good":    {File: good},
		"c-missing": {Vault: &VaultRef{Path: "castellan/none", Field: "x"}},
	}, vc)
	err := bad.Preload(t.Context())
	checkErr(t, "Preload", err, `credential "a-missing"`, `credential "c-missing": vault: secret/data/castellan/none: not found (404)`)
	if strings.Contains(err.Error(), "b-good") {
		t.Errorf("Preload error = %q, mentions a credential that loaded fine", err)
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCancelledContext(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, map[string]Spec{"a": {File: "/does/not/matter"}}, nil)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Credential(ctx, "a")
	checkErr(t, "Credential(cancelled)", err, "cancelled")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is(%v, context.Canceled) = false, want true", err)
	}
}

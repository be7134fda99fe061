package secrets_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/internal/tasks"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/runtime"
	"github.com/castellan-dev/castellan/secrets"
)

// Every name below is a host detail: where a credential lives (file path, environment
// variable, Vault address, mount, path, field, AppRole mount) or where an endpoint is. None
// may reach the control plane; each carries a marker so one strings.Contains finds it.
const (
	envMissing   = "LEAKTEST_ENV_MISSING"
	envEmpty     = "LEAKTEST_ENV_EMPTY"
	envShort     = "LEAKTEST_ENV_SHORT"
	envGood      = "LEAKTEST_ENV_GOOD"
	envToken     = "LEAKTEST_VAULT_TOKEN_ENV"
	vaultMount   = "kvleakmount"
	vaultPath    = "team/leakpath"
	vaultField   = "leakfield"
	appRoleMount = "leakapprole"
	awsSecretID  = "leakaws/team-secret"
	awsField     = "leakawsfield"
	goodToken    = "hvs.leak-test-token-value"
	goodValue    = "a-credential-value-long-enough"
)

// job runs one job of a task that calls endpoint api (whose credential is erp_password)
// through the whole stack the worker uses: policy, tasks, runtime, egress, secrets.
func job(t *testing.T, store *secrets.Store, red *redact.Set, baseURL, target string) runtime.Result {
	t.Helper()
	wasm, err := filepath.Abs("../plugins/testdata/http_probe.wasm")
	if err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf(`version: 1
credentials:
  erp_password: {env: POLICY_SIDE_NAME}
endpoints:
  api:
    base_url: %s
    allow: ["GET /x"]
    auth: {bearer: erp_password}
tasks:
  probe:
    module: %s
    endpoints: [api]
`, baseURL, wasm)
	pol, err := policy.Parse("policy.yaml", []byte(doc), "/")
	if err != nil {
		t.Fatal(err)
	}
	engine, err := runtime.NewEngine(runtime.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = engine.Close(context.Background()) })
	set, err := tasks.Load(t.Context(), tasks.Options{Policy: pol, Engine: engine, Secrets: store, Redactor: red, NoPool: true})
	if err != nil {
		t.Fatalf("tasks.Load() error = %v", err)
	}
	t.Cleanup(func() { set.Close(context.Background()) })
	return set.Run(t.Context(), "probe", "job-1", []byte("api\x00GET\x00"+target+"\x00\x00"))
}

// TestNoHostDetailReachesTheControlPlane generates every provider × failure mode and runs a
// job through it; what the worker would send the control plane (the outcome message, and
// the output) names the credential at most by its logical name, and the worker's own log
// keeps the detail. It cannot run in parallel: it sets environment variables.
func TestNoHostDetailReachesTheControlPlane(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "leakdir")
	if err := os.MkdirAll(filepath.Join(dir, "a-directory"), 0o755); err != nil {
		t.Fatal(err)
	}
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv(envEmpty, "")
	t.Setenv(envShort, "abc")
	t.Setenv(envGood, goodValue)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/x" && r.URL.Query().Get("go") == "away" {
			http.Redirect(w, r, "http://elsewhere.leakhost.example:8443/x", http.StatusFound)
			return
		}
		fmt.Fprint(w, "ok")
	}))
	t.Cleanup(upstream.Close)
	downURL := func() string {
		s := httptest.NewServer(http.NotFoundHandler())
		s.Close()
		return s.URL
	}()

	vault := func(setup func(v *secrets.FakeVault)) func(t *testing.T) (secrets.Spec, *secrets.VaultConfig) {
		return func(t *testing.T) (secrets.Spec, *secrets.VaultConfig) {
			v := secrets.NewFakeVault(t)
			v.Put(vaultMount+"/"+vaultPath, map[string]any{vaultField: goodValue})
			setup(v)
			return secrets.Spec{Vault: &secrets.VaultRef{Mount: vaultMount, Path: vaultPath, Field: vaultField}},
				&secrets.VaultConfig{Address: v.URL(), TokenFile: file("vault-token", goodToken+"\n")}
		}
	}
	withToken := func(v *secrets.FakeVault) { v.AddToken(goodToken) }
	aws := func(field string, setup func(a *secrets.FakeAWS)) func(t *testing.T) (secrets.Spec, *secrets.VaultConfig) {
		return func(t *testing.T) (secrets.Spec, *secrets.VaultConfig) {
			a := secrets.NewFakeAWS(t)
			setup(a)
			return secrets.Spec{AWS: &secrets.AWSRef{SecretID: awsSecretID, Field: field}}, nil
		}
	}
	awsFails := func(status int, code string) func(a *secrets.FakeAWS) {
		return func(a *secrets.FakeAWS) { a.Put(awsSecretID, goodValue); a.FailWith(status, code) }
	}
	type source func(t *testing.T) (secrets.Spec, *secrets.VaultConfig)
	env := func(name string) source {
		return func(*testing.T) (secrets.Spec, *secrets.VaultConfig) { return secrets.Spec{Env: name}, nil }
	}
	fileSpec := func(path string) source {
		return func(*testing.T) (secrets.Spec, *secrets.VaultConfig) { return secrets.Spec{File: path}, nil }
	}
	tests := []struct {
		name    string
		source  source
		baseURL string // default: the upstream
		target  string // default: /x
		code    outcome.Code
		local   string // what the worker's own log must say
	}{
		{name: "env missing", source: env(envMissing), code: outcome.CredentialUnavailable, local: envMissing},
		{name: "env empty", source: env(envEmpty), code: outcome.CredentialUnavailable, local: envEmpty},
		{name: "env too short to redact", source: env(envShort), code: outcome.CredentialUnavailable, local: "shorter than"},
		{name: "file missing", source: fileSpec(filepath.Join(dir, "erp-password")), code: outcome.CredentialUnavailable, local: filepath.Join(dir, "erp-password")},
		{name: "file unreadable (a directory)", source: fileSpec(filepath.Join(dir, "a-directory")), code: outcome.CredentialUnavailable, local: filepath.Join(dir, "a-directory")},
		{name: "file empty", source: func(*testing.T) (secrets.Spec, *secrets.VaultConfig) {
			return secrets.Spec{File: file("empty", "\n")}, nil
		}, code: outcome.CredentialUnavailable, local: "empty"},
		{name: "file too large", source: func(*testing.T) (secrets.Spec, *secrets.VaultConfig) {
			return secrets.Spec{File: file("large", strings.Repeat("x", 70<<10))}, nil
		}, code: outcome.CredentialUnavailable, local: "larger than"},
		{name: "vault 403", source: vault(func(*secrets.FakeVault) {}), code: outcome.CredentialUnavailable, local: "403"},
		{name: "vault 404", source: vault(func(v *secrets.FakeVault) { withToken(v); v.Remove(vaultMount + "/" + vaultPath) }), code: outcome.CredentialUnavailable, local: "404"},
		{name: "vault deleted version", source: vault(func(v *secrets.FakeVault) { withToken(v); v.Put(vaultMount+"/"+vaultPath, nil) }), code: outcome.CredentialUnavailable, local: "no data"},
		{name: "vault 500", source: vault(func(v *secrets.FakeVault) { withToken(v); v.FailWith(500) }), code: outcome.CredentialUnavailable, local: "500"},
		{name: "vault 503", source: vault(func(v *secrets.FakeVault) { withToken(v); v.FailWith(503) }), code: outcome.CredentialUnavailable, local: "503"},
		{name: "vault bad field", source: vault(func(v *secrets.FakeVault) {
			withToken(v)
			v.Put(vaultMount+"/"+vaultPath, map[string]any{"other": goodValue})
		}), code: outcome.CredentialUnavailable, local: vaultField},
		{name: "vault field not a string", source: vault(func(v *secrets.FakeVault) {
			withToken(v)
			v.Put(vaultMount+"/"+vaultPath, map[string]any{vaultField: 12345678})
		}), code: outcome.CredentialUnavailable, local: vaultField},
		{name: "vault down", source: vault(func(v *secrets.FakeVault) { v.Close() }), code: outcome.CredentialUnavailable, local: "unreachable"},
		{name: "vault token file missing", source: func(t *testing.T) (secrets.Spec, *secrets.VaultConfig) {
			sp, vc := vault(withToken)(t)
			vc.TokenFile = filepath.Join(dir, "no-token-file")
			return sp, vc
		}, code: outcome.CredentialUnavailable, local: filepath.Join(dir, "no-token-file")},
		{name: "vault token env unset", source: func(t *testing.T) (secrets.Spec, *secrets.VaultConfig) {
			sp, vc := vault(withToken)(t)
			vc.TokenFile, vc.TokenEnv = "", envToken
			return sp, vc
		}, code: outcome.CredentialUnavailable, local: envToken},
		{name: "vault approle refused", source: func(t *testing.T) (secrets.Spec, *secrets.VaultConfig) {
			sp, vc := vault(func(v *secrets.FakeVault) { v.AppRole("role-id", "right-secret-id") })(t)
			*vc = secrets.VaultConfig{Address: vc.Address, AuthMethod: "approle", AppRoleMount: appRoleMount, RoleID: "role-id",
				SecretIDFile: file("secret-id", "wrong-secret-id\n")}
			return sp, vc
		}, code: outcome.CredentialUnavailable, local: "approle"},
		{name: "aws not found", source: aws("", func(*secrets.FakeAWS) {}), code: outcome.CredentialUnavailable, local: "ResourceNotFoundException"},
		{name: "aws access denied", source: aws("", awsFails(400, "AccessDeniedException")), code: outcome.CredentialUnavailable, local: "AccessDeniedException"},
		{name: "aws decryption failure", source: aws("", awsFails(400, "DecryptionFailure")), code: outcome.CredentialUnavailable, local: "DecryptionFailure"},
		{name: "aws throttled", source: aws("", awsFails(400, "ThrottlingException")), code: outcome.CredentialUnavailable, local: "ThrottlingException"},
		{name: "aws 500", source: aws("", awsFails(500, "InternalServiceError")), code: outcome.CredentialUnavailable, local: "HTTP 500"},
		{name: "aws bad field", source: aws(awsField, func(a *secrets.FakeAWS) {
			a.Put(awsSecretID, `{"other":"`+goodValue+`"}`)
		}), code: outcome.CredentialUnavailable, local: awsField},
		{name: "aws field of a non-JSON string", source: aws(awsField, func(a *secrets.FakeAWS) { a.Put(awsSecretID, goodValue) }),
			code: outcome.CredentialUnavailable, local: "not a JSON object"},
		{name: "aws down", source: aws("", func(a *secrets.FakeAWS) { a.Close() }), code: outcome.CredentialUnavailable, local: "unreachable"},
		{name: "aws works", source: aws("", func(a *secrets.FakeAWS) { a.Put(awsSecretID, goodValue) }), code: outcome.OK},
		// Egress failures reachable through a job, with a working credential.
		{name: "endpoint down", source: env(envGood), baseURL: downURL, code: outcome.OK},
		{name: "path not allowed", source: env(envGood), target: "/y", code: outcome.Denied},
		{name: "redirect to another host", source: env(envGood), target: "/x?go=away", code: outcome.Denied},
	}
	forbidden := []string{dir, "leakdir", envMissing, envEmpty, envShort, envGood, envToken, vaultMount, vaultPath, "leakpath",
		vaultField, appRoleMount, awsSecretID, "leakaws", awsField, secrets.FakeAWSRegion, secrets.FakeAWSAccessKey, "127.0.0.1", "localhost", "leakhost", strings.TrimPrefix(upstream.URL, "http://"),
		strings.TrimPrefix(downURL, "http://"), goodToken, goodValue}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp, vc := tt.source(t)
			core, logs := observer.New(zap.DebugLevel)
			red := redact.NewSet()
			store, err := secrets.NewStore(map[string]secrets.Spec{"erp_password": sp}, vc, red, zap.New(core))
			if err != nil {
				t.Fatalf("NewStore() error = %v", err)
			}
			t.Cleanup(func() { store.Close() })
			base, target := tt.baseURL, tt.target
			if base == "" {
				base = upstream.URL
			}
			if target == "" {
				target = "/x"
			}
			res := job(t, store, red, base, target)
			if got := outcome.CodeOf(res.Err); got != tt.code {
				t.Fatalf("job outcome = %s (%v), want %s", got, res.Err, tt.code)
			}
			// What worker.handle sends: outcome.Message(res.Err) and the output.
			sent := []string{outcome.Message(res.Err), string(res.Output)}
			if res.Err != nil {
				sent = append(sent, res.Err.Error())
			}
			for _, s := range sent {
				for _, bad := range forbidden {
					if strings.Contains(s, bad) {
						t.Errorf("sent to the control plane: %q; it contains the host detail %q", s, bad)
					}
				}
			}
			if tt.code == outcome.CredentialUnavailable {
				if msg := outcome.Message(res.Err); !strings.Contains(msg, `credential "erp_password"`) {
					t.Errorf("outcome message = %q, want it to name the credential erp_password", msg)
				}
				found := false
				for _, e := range logs.All() {
					if strings.Contains(fmt.Sprint(e.Message, e.ContextMap()), tt.local) {
						found = true
					}
				}
				if !found {
					t.Errorf("the worker's log lacks the detail %q; logs: %v", tt.local, logs.All())
				}
			}
		})
	}
}

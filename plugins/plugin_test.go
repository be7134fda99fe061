package plugins

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/policy"
)

const testPolicy = `version: 1
endpoints:
  crm:
    base_url: https://crm.internal
    allow: ["GET /a"]
plugins:
  require_signed: %REQ%
  strict: %STRICT%
  trusted_publishers: ["%KEY%"]
tasks:
  echo:
    limits: { memory: 1MiB }
`

// fixture is a plugins root with one plugin "echo", signed by "alice" whose public key the
// policy trusts; "mallory" is a key the policy does not trust.
type fixture struct {
	root, dir, alice, mallory string
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	base := t.TempDir()
	f := fixture{root: filepath.Join(base, "plugins")}
	f.dir = filepath.Join(f.root, "echo")
	if err := os.MkdirAll(f.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"alice", "mallory"} {
		if _, _, err := approval.WriteKeyFiles(base, k); err != nil {
			t.Fatal(err)
		}
	}
	f.alice = filepath.Join(base, "alice"+approval.PrivateKeySuffix)
	f.mallory = filepath.Join(base, "mallory"+approval.PrivateKeySuffix)
	write(t, filepath.Join(f.dir, "plugin.yaml"), "name: echo\nversion: \"1\"\ncapabilities:\n  limits: { memory: 64KiB }\n")
	copyFile(t, "testdata/echo.wasm", filepath.Join(f.dir, "echo.wasm"))
	return f
}

func (f fixture) policy(t *testing.T, requireSigned, strict bool) *policy.Policy {
	t.Helper()
	b := func(v bool) string {
		if v {
			return "true"
		}
		return "false"
	}
	pub := strings.TrimSuffix(f.alice, approval.PrivateKeySuffix) + approval.PublicKeySuffix
	doc := strings.NewReplacer("%REQ%", b(requireSigned), "%STRICT%", b(strict), "%KEY%", pub).Replace(testPolicy)
	p, err := policy.Parse("policy.yaml", []byte(doc), "/")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestOpen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		setup         func(t *testing.T, f fixture)
		requireSigned bool
		strict        bool
		want          string // substring of the error; "" means it loads
	}{
		{"signed by a trusted key", func(t *testing.T, f fixture) { sign(t, f.dir, f.alice) }, true, false, ""},
		{"unsigned allowed by policy", func(t *testing.T, f fixture) {}, false, false, ""},
		{"unsigned", func(t *testing.T, f fixture) {}, true, false, "unsigned (no plugin.sig) and the policy requires signed plugins"},
		{"unknown signer", func(t *testing.T, f fixture) { sign(t, f.dir, f.mallory) }, true, false, `signed by unknown key "mallory"; trusted publisher keys: alice`},
		{"unknown signer even when unsigned is allowed", func(t *testing.T, f fixture) { sign(t, f.dir, f.mallory) }, false, false, `unknown key "mallory"`},
		{"garbage signature", func(t *testing.T, f fixture) { write(t, filepath.Join(f.dir, "plugin.sig"), "not-a-jws") }, true, false, "plugin.sig is not a valid signature"},
		{"signature bytes altered", func(t *testing.T, f fixture) {
			sign(t, f.dir, f.alice)
			b, _ := os.ReadFile(filepath.Join(f.dir, "plugin.sig"))
			s := strings.TrimSpace(string(b))
			last := s[len(s)-2]
			repl := byte('A')
			if last == 'A' {
				repl = 'B'
			}
			write(t, filepath.Join(f.dir, "plugin.sig"), s[:len(s)-2]+string(repl)+s[len(s)-1:])
		}, true, false, `does not verify with trusted key "alice"`},
		{"module tampered after signing", func(t *testing.T, f fixture) {
			sign(t, f.dir, f.alice)
			copyFile(t, "testdata/v1.wasm", filepath.Join(f.dir, "echo.wasm"))
		}, true, false, "tampered: the files do not match the signature by key \"alice\":\n  echo.wasm has sha256"},
		{"manifest tampered after signing", func(t *testing.T, f fixture) {
			sign(t, f.dir, f.alice)
			write(t, filepath.Join(f.dir, "plugin.yaml"), "name: echo\nversion: \"1\"\ncapabilities:\n  limits: { memory: 64KiB }\n  endpoints: [crm]\n")
		}, true, false, "plugin.yaml has sha256"},
		{"zero-byte module", func(t *testing.T, f fixture) { write(t, filepath.Join(f.dir, "echo.wasm"), "") }, false, false, "module echo.wasm is empty (0 bytes)"},
		{"module missing", func(t *testing.T, f fixture) { _ = os.Remove(filepath.Join(f.dir, "echo.wasm")) }, false, false, "module file echo.wasm does not exist"},
		{"manifest missing", func(t *testing.T, f fixture) { _ = os.Remove(filepath.Join(f.dir, "plugin.yaml")) }, false, false, "no plugin.yaml"},
		{"manifest unknown key", func(t *testing.T, f fixture) {
			write(t, filepath.Join(f.dir, "plugin.yaml"), "name: echo\nversion: \"1\"\ncapabilites: {}\n")
		}, false, false, `plugin.yaml:3: capabilites: unknown key (did you mean "capabilities"?)`},
		{"manifest bad limit", func(t *testing.T, f fixture) {
			write(t, filepath.Join(f.dir, "plugin.yaml"), "name: echo\nversion: \"1\"\ncapabilities:\n  limits:\n    timeout: 10\n")
		}, false, false, "plugin.yaml:5: capabilities.limits.timeout: duration 10 needs a unit"},
		{"manifest module outside the directory", func(t *testing.T, f fixture) {
			write(t, filepath.Join(f.dir, "plugin.yaml"), "name: echo\nversion: \"1\"\nmodule: ../other/x.wasm\n")
		}, false, false, `plugin.yaml:3: module: "../other/x.wasm" must be a plain file name`},
		{"manifest name mismatch", func(t *testing.T, f fixture) {
			write(t, filepath.Join(f.dir, "plugin.yaml"), "name: ohce\nversion: \"1\"\n")
		}, false, false, `plugin.yaml:1: name: is "ohce" but the plugin directory is "echo"`},
		{"manifest missing version", func(t *testing.T, f fixture) {
			write(t, filepath.Join(f.dir, "plugin.yaml"), "name: echo\n")
		}, false, false, "plugin.yaml:1: version: missing"},
		{"requests more, not strict", func(t *testing.T, f fixture) {
			write(t, filepath.Join(f.dir, "plugin.yaml"), "name: echo\nversion: \"1\"\ncapabilities:\n  endpoints: [crm]\n  limits: { memory: 2MiB }\n")
		}, false, false, ""},
		{"requests more, strict", func(t *testing.T, f fixture) {
			write(t, filepath.Join(f.dir, "plugin.yaml"), "name: echo\nversion: \"1\"\ncapabilities:\n  endpoints: [crm]\n")
		}, false, true, "requests more than the policy grants and the policy is strict:\n  endpoint crm requested but not granted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			tt.setup(t, f)
			pol := f.policy(t, tt.requireSigned, tt.strict)
			trust, err := LoadTrust(pol.Plugins.TrustedPublishers...)
			if err != nil {
				t.Fatal(err)
			}
			p, err := Open(f.root, "echo", pol, trust)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Open() error = %v, want nil", err)
				}
				if p.Grant == nil || p.Grant.Module != filepath.Join(f.dir, "echo.wasm") {
					t.Errorf("Open().Grant = %+v, want the module in the plugin directory", p.Grant)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open() error = %v, want it to contain %q", err, tt.want)
			}
			if outcome.CodeOf(err) != outcome.ModuleRejected {
				t.Errorf("Open() error code = %s, want module_rejected", outcome.CodeOf(err))
			}
		})
	}
}

func TestOpenManifestProblemsUnwrap(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	write(t, filepath.Join(f.dir, "plugin.yaml"), "name: echo\nversion: \"1\"\nentry: [x]\n")
	_, err := Open(f.root, "echo", f.policy(t, false, false), nil)
	var perr *policy.Error
	if !errors.As(err, &perr) || len(perr.Problems) != 1 {
		t.Fatalf("Open() error = %v, want a *policy.Error with one problem", err)
	}
	if p := perr.Problems[0]; p.Line != 3 || p.Field != "entry" || p.File != filepath.Join(f.dir, "plugin.yaml") {
		t.Errorf("Open() problem = %+v, want %s line 3 field entry", p, filepath.Join(f.dir, "plugin.yaml"))
	}
}

func TestGrantIsIntersection(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	write(t, filepath.Join(f.dir, "plugin.yaml"), "name: echo\nversion: \"1\"\ncapabilities:\n  endpoints: [crm, erp]\n  limits: { memory: 2MiB, http_calls: 3 }\n")
	doc := "version: 1\nendpoints:\n  crm: {base_url: https://crm.internal, allow: [\"GET /a\"]}\n  erp: {base_url: https://erp.internal, allow: [\"GET /a\"]}\n" +
		"plugins: {require_signed: false}\ntasks:\n  echo:\n    endpoints: [crm]\n    limits: { memory: 1MiB, http_calls: 10 }\n"
	pol, err := policy.Parse("policy.yaml", []byte(doc), "/")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Open(f.root, "echo", pol, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(p.Grant.Endpoints, ","); got != "crm" {
		t.Errorf("Open().Grant.Endpoints = %q, want crm (erp is requested, not granted)", got)
	}
	if p.Grant.Limits.MemoryPages != 16 || p.Grant.Limits.HTTPCalls != 3 {
		t.Errorf("Open().Grant.Limits = %+v, want memory 16 pages (granted) and http calls 3 (requested)", p.Grant.Limits)
	}
	if len(p.Diffs) != 2 || p.Diffs[0].Field != "endpoints" || p.Diffs[1].Field != "limits.memory" {
		t.Errorf("Open().Diffs = %+v, want endpoints and limits.memory", p.Diffs)
	}
}

func TestSignVerify(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	sign(t, filepath.Join(f.dir, "echo.wasm"), f.alice) // a file inside the plugin works too
	trust, err := LoadTrust(strings.TrimSuffix(f.alice, approval.PrivateKeySuffix) + approval.PublicKeySuffix)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := Verify(f.dir, trust)
	if err != nil {
		t.Fatalf("Verify() error = %v", err)
	}
	if sig.KeyID != "alice" || len(sig.Files) != 2 {
		t.Errorf("Verify() = %+v, want kid alice over plugin.yaml and echo.wasm", sig)
	}
	copyFile(t, "testdata/v2.wasm", filepath.Join(f.dir, "echo.wasm"))
	if _, err := Verify(f.dir, trust); err == nil || !strings.Contains(err.Error(), "tampered") {
		t.Errorf("Verify(tampered) error = %v, want tampered", err)
	}
	if _, err := Sign(f.dir, strings.TrimSuffix(f.alice, approval.PrivateKeySuffix)+approval.PublicKeySuffix); err == nil {
		t.Errorf("Sign(with a public key) error = nil, want a refusal")
	}
}

func sign(t *testing.T, dir, key string) {
	t.Helper()
	if _, err := Sign(dir, key); err != nil {
		t.Fatalf("Sign(%s) error = %v", dir, err)
	}
}

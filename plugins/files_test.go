package plugins

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/outcome"
)

// TestOpenRefusesEscapes names, in every field of a manifest that names a file (and for the
// files a plugin always has), a file that is not a regular file of the plugin's own directory:
// a symbolic link (leaving the directory or not), a hard link, a symlinked plugin directory,
// and the path forms that leave the directory. Each is refused, and the credential file the
// attacker aimed at is never read into the plugin.
func TestOpenRefusesEscapes(t *testing.T) {
	t.Parallel()
	const secretText = `{"password":"TOPSECRET-credential"}`
	// setup gets the plugin directory and the path of a credential file outside it.
	type setup func(t *testing.T, dir, secret string)
	manifest := func(extra string) setup {
		return func(t *testing.T, dir, _ string) {
			write(t, filepath.Join(dir, "plugin.yaml"), "name: echo\nversion: \"1\"\n"+extra)
		}
	}
	symlink := func(target func(dir, secret string) string, link string) setup {
		return func(t *testing.T, dir, secret string) {
			_ = os.Remove(filepath.Join(dir, link))
			if err := os.Symlink(target(dir, secret), filepath.Join(dir, link)); err != nil {
				t.Fatal(err)
			}
		}
	}
	outside := func(_, secret string) string { return secret }
	relOutside := func(dir, secret string) string {
		rel, _ := filepath.Rel(dir, secret)
		return rel
	}
	inside := func(dir, _ string) string { return filepath.Join(dir, "real.json") }
	hardlink := func(link string) setup {
		return func(t *testing.T, dir, secret string) {
			_ = os.Remove(filepath.Join(dir, link))
			if err := os.Link(secret, filepath.Join(dir, link)); err != nil {
				t.Fatal(err)
			}
		}
	}
	both := func(a, b setup) setup {
		return func(t *testing.T, dir, secret string) { a(t, dir, secret); b(t, dir, secret) }
	}
	tests := []struct {
		name  string
		setup setup
		want  string
	}{
		{"input schema symlinked to a credential file", both(manifest("input_schema: in.json\n"), symlink(outside, "in.json")), "in.json is a symbolic link"},
		{"output schema symlinked relatively out of the directory", both(manifest("output_schema: out.json\n"), symlink(relOutside, "out.json")), "out.json is a symbolic link"},
		{"schema symlinked to a file inside the directory", both(manifest("input_schema: in.json\n"), func(t *testing.T, dir, s string) {
			write(t, filepath.Join(dir, "real.json"), `{"type":"object"}`)
			symlink(inside, "in.json")(t, dir, s)
		}), "in.json is a symbolic link"},
		{"schema hard-linked to a credential file", both(manifest("input_schema: in.json\n"), hardlink("in.json")), "in.json has 2 hard links"},
		{"module symlinked out of the directory", symlink(outside, "echo.wasm"), "echo.wasm is a symbolic link"},
		{"module hard-linked", hardlink("echo.wasm"), "echo.wasm has 2 hard links"},
		{"manifest symlinked", func(t *testing.T, dir, secret string) {
			write(t, secret+".yaml", "name: echo\nversion: \"1\"\n")
			_ = os.Remove(filepath.Join(dir, "plugin.yaml"))
			if err := os.Symlink(secret+".yaml", filepath.Join(dir, "plugin.yaml")); err != nil {
				t.Fatal(err)
			}
		}, "plugin.yaml is a symbolic link"},
		{"signature symlinked", symlink(outside, "plugin.sig"), "plugin.sig is a symbolic link"},
		{"plugin directory symlinked", func(t *testing.T, dir, secret string) {
			elsewhere := filepath.Join(filepath.Dir(secret), "elsewhere")
			if err := os.Rename(dir, elsewhere); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(elsewhere, dir); err != nil {
				t.Fatal(err)
			}
		}, "is a symbolic link, not a directory"},
		{"schema ../", manifest("input_schema: ../secret.json\n"), "must be a plain file name"},
		{"schema absolute", manifest("input_schema: /etc/passwd\n"), "must be a plain file name"},
		{"schema ./x/../../", manifest("output_schema: ./x/../../secret.json\n"), "must be a plain file name"},
		{"module ../", manifest("module: ../secret.json\n"), "must be a plain file name"},
		{"module absolute", manifest("module: /etc/passwd\n"), "must be a plain file name"},
		{"module ./x/../../", manifest("module: ./x/../../secret.json\n"), "must be a plain file name"},
		{"module backslash", manifest("module: ..\\\\secret.json\n"), "must be a plain file name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			secret := filepath.Join(filepath.Dir(f.root), "secret.json")
			write(t, secret, secretText)
			tt.setup(t, f.dir, secret)
			p, err := Open(f.root, "echo", f.policy(t, false, false), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open() error = %v, want it to contain %q", err, tt.want)
			}
			if outcome.CodeOf(err) != outcome.ModuleRejected {
				t.Errorf("Open() error code = %s, want module_rejected", outcome.CodeOf(err))
			}
			if strings.Contains(err.Error(), "TOPSECRET") {
				t.Errorf("Open() error = %v; it quotes the credential file", err)
			}
			if p != nil && p.Manifest != nil && (strings.Contains(string(p.Manifest.InputSchema), "TOPSECRET") || strings.Contains(string(p.Manifest.OutputSchema), "TOPSECRET")) {
				t.Errorf("Open() read the credential file into the plugin's schema")
			}
			// Signing reads the same files; it must refuse them the same way.
			if _, err := Sign(f.dir, f.alice); err == nil && !strings.Contains(tt.name, "signature") && !strings.Contains(tt.name, "directory symlinked") {
				t.Errorf("Sign() error = nil, want a refusal containing %q", tt.want)
			}
		})
	}
}

package policy

import (
	"strings"
	"testing"
)

func TestParsePlugins(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml string
		want       string // substring of the error; "" means valid
		check      func(t *testing.T, p *Policy)
	}{
		{"defaults", "version: 1\n", "", func(t *testing.T, p *Policy) {
			if !p.Plugins.RequireSigned || p.Plugins.Strict || len(p.Plugins.TrustedPublishers) != 0 {
				t.Errorf("Parse().Plugins = %+v, want require_signed true, strict false, no keys", p.Plugins)
			}
		}},
		{"section", "version: 1\nplugins:\n  require_signed: false\n  strict: true\n  trusted_publishers: [keys/a.json]\ntasks:\n  p: {limits: {memory: 1MiB}}\n", "", func(t *testing.T, p *Policy) {
			if p.Plugins.RequireSigned || !p.Plugins.Strict || p.Plugins.TrustedPublishers[0] != "/srv/keys/a.json" {
				t.Errorf("Parse().Plugins = %+v", p.Plugins)
			}
			if !p.Tasks["p"].IsPluginGrant() || p.Tasks["p"].Limits.MemoryPages != 16 {
				t.Errorf("Parse().Tasks[p] = %+v, want a plugin grant with 16 pages", p.Tasks["p"])
			}
		}},
		{"not a boolean", "version: 1\nplugins:\n  strict: yes please\n", "policy.yaml:3: plugins.strict: must be true or false", nil},
		{"unknown key", "version: 1\nplugins:\n  require_sigend: true\n", `plugins.require_sigend: unknown key (did you mean "require_signed"?)`, nil},
		{"author keys in a plugin grant", "version: 1\ntasks:\n  p:\n    version: \"2\"\n", "tasks.p.module: missing; set the path of the task's .wasm file, or remove version", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := Parse("policy.yaml", []byte(tt.yaml), "/srv")
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("Parse(%q) error = %v, want %q", tt.yaml, err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q) error = %v", tt.yaml, err)
			}
			tt.check(t, p)
		})
	}
}

// TestManifestNamesItsKind: the file-wide rules (one document, no aliases) name the file as
// what it is; a plugin author was told "a policy file holds exactly one".
func TestManifestNamesItsKind(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ src, want string }{
		{"name: p\n---\nname: q\n", "plugin.yaml:2: a second YAML document starts here; a plugin manifest holds exactly one"},
		{"name: &n p\ntitle: *n\n", "plugin.yaml:2: title: YAML aliases (*n) are not supported in a plugin manifest"},
	} {
		_, err := ParseManifest("plugin.yaml", []byte(tt.src), nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseManifest(%q) = %v, want a problem %q", tt.src, err, tt.want)
		}
	}
}

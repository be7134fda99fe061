package policy

import (
	"go.yaml.in/yaml/v3"

	"github.com/castellan-dev/castellan/internal/strictyaml"
)

// Plugins is the policy's plugins section: how the worker treats modules that arrive in a
// plugins directory (docs/plugins.md) rather than through a task's module path.
type Plugins struct {
	// RequireSigned refuses plugins without a valid signature by a trusted publisher. Default
	// true: a plugins directory is a deployment channel, and an unsigned module there is
	// whatever the last person with write access put in it.
	RequireSigned bool
	// Strict refuses a plugin whose manifest requests more (endpoints or limits) than the
	// policy grants its task, instead of loading it with the granted subset. Default false.
	Strict bool
	// TrustedPublishers are absolute paths of JWKS (or single JWK) files holding the Ed25519
	// public keys whose signatures are accepted.
	TrustedPublishers []string
}

// pluginManifestKeys are task keys that a plugin's manifest supplies; a task without a module
// (a plugin grant) may not set them.
// Annotations are not among them: the policy sets them for a plugin too.
var pluginManifestKeys = []string{"entry", "version", "title", "description", "input_schema", "output_schema"}

// IsPluginGrant reports whether t grants a plugin (a task without a module in the policy):
// the module, entry, version, title, description and schemas come from the plugin's manifest, and
// the endpoints and limits here are the most the plugin gets.
func (t *Task) IsPluginGrant() bool { return t.Module == "" }

func (d *decoder) plugins(n *yaml.Node, line int) Plugins {
	const path = "plugins"
	pl := Plugins{RequireSigned: true}
	m, ok := d.Mapping(n, path, line, []string{"require_signed", "strict", "trusted_publishers"})
	if !ok {
		return pl
	}
	set(m, "require_signed", &pl.RequireSigned, d.Bool)
	set(m, "strict", &pl.Strict, d.Bool)
	if v := m.Get("trusted_publishers"); v != nil {
		items, _ := d.List(v, strictyaml.Field(path, "trusted_publishers"))
		seen := map[string]int{}
		for i, it := range items {
			ipath := strictyaml.Index(strictyaml.Field(path, "trusted_publishers"), i)
			s, ok := d.path(it, ipath)
			if !ok {
				continue
			}
			if first, dup := seen[s]; dup {
				d.Add(it.Line, ipath, "key file repeats trusted_publishers[%d]; remove one", first)
				continue
			}
			seen[s] = i
			pl.TrustedPublishers = append(pl.TrustedPublishers, s)
		}
	}
	return pl
}

package policy

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/strictyaml"
)

// WriteSummary writes a human summary of the policy, the output of `castellan policy check`:
// per task (sorted by name) its module and pin, limits, and each granted endpoint with its
// base URL, rules and credential. A credential appears only as its name, where its value
// comes from (env, file, vault or aws) and how it is injected, never as a value or reference.
// The output is deterministic so it can be diffed in review.
func (p *Policy) WriteSummary(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "policy %s: %s, %s, %s\n", p.Path,
		plural(len(p.Tasks), "task"), plural(len(p.Endpoints), "endpoint"), plural(len(p.Credentials), "credential"))
	if v := p.Vault; v != nil {
		addr := v.Address
		if addr == "" {
			addr = "from VAULT_ADDR"
		}
		fmt.Fprintf(&b, "vault: %s, auth %s\n", addr, v.AuthMethod)
	}
	for _, name := range p.TaskNames() {
		t := p.Tasks[name]
		if t.IsPluginGrant() {
			fmt.Fprintf(&b, "\ntask %s (plugin grant)\n", t.Name)
		} else {
			fmt.Fprintf(&b, "\ntask %s (version %s)\n", t.Name, t.Version)
		}
		if t.Title != "" {
			fmt.Fprintf(&b, "  title: %s\n", t.Title)
		}
		if t.Description != "" {
			fmt.Fprintf(&b, "  description: %s\n", strings.Join(strings.Fields(t.Description), " "))
		}
		if t.Annotations != nil {
			fmt.Fprintf(&b, "  annotations: %s\n", t.Annotations)
		}
		if t.OutputSchema != "" {
			fmt.Fprintf(&b, "  output schema: %s (every ok output is checked against it)\n", t.OutputSchema)
		}
		pin := "unpinned"
		if t.SHA256 != "" {
			pin = "sha256 " + t.SHA256
		}
		if t.IsPluginGrant() {
			fmt.Fprintf(&b, "  module: from the plugin named %s (%s); these are the most it is granted\n", t.Name, pin)
		} else {
			fmt.Fprintf(&b, "  module: %s (%s), entry %s\n", t.Module, pin, t.Entry)
		}
		l := t.Limits
		fmt.Fprintf(&b, "  limits: memory %s (%d pages), timeout %s, output %s, http calls %d, log %s\n",
			formatSize(int64(l.MemoryPages)*WasmPageSize), l.MemoryPages, strictyaml.FormatDuration(l.Timeout),
			formatSize(l.OutputBytes), l.HTTPCalls, formatSize(l.LogBytes))
		fmt.Fprintf(&b, "  secret in output: %s\n", t.OnSecretInOutput)
		if len(t.Endpoints) == 0 {
			b.WriteString("  endpoints: none (no network access)\n")
		}
		for _, en := range t.Endpoints {
			p.writeEndpoint(&b, p.Endpoints[en])
		}
	}
	if pl := p.Plugins; p.hasPluginGrants() || len(pl.TrustedPublishers) > 0 || !pl.RequireSigned || pl.Strict {
		fmt.Fprintf(&b, "\nplugins: require_signed %t, strict %t, %s\n", pl.RequireSigned, pl.Strict, plural(len(pl.TrustedPublishers), "trusted publisher key file"))
	}
	if unused := p.unusedEndpoints(); len(unused) > 0 {
		fmt.Fprintf(&b, "\nendpoints granted to no task: %s\n", strings.Join(unused, ", "))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func (p *Policy) writeEndpoint(b *strings.Builder, e *egress.Endpoint) {
	fmt.Fprintf(b, "  endpoint %s: %s\n", e.Name, e.BaseURL)
	for _, r := range e.Rules {
		fmt.Fprintf(b, "    allow %s\n", r)
	}
	if a := e.Auth; a.Kind != egress.AuthNone {
		fmt.Fprintf(b, "    credential %s from %s, %s\n", a.Credential, p.Credentials[a.Credential].Source(), injection(a))
	} else {
		b.WriteString("    credential: none\n")
	}
	fmt.Fprintf(b, "    timeout %s, max response %s, max request %s\n",
		strictyaml.FormatDuration(e.Timeout), formatSize(e.MaxResponseBytes), formatSize(e.MaxRequestBytes))
}

// injection says how a credential is injected, after "credential x from y, ".
func injection(a egress.Auth) string {
	if a.Kind == egress.AuthNone {
		return "not injected"
	}
	return "as " + a.String()
}

func (p *Policy) unusedEndpoints() []string {
	used := map[string]bool{}
	for _, t := range p.Tasks {
		for _, e := range t.Endpoints {
			used[e] = true
		}
	}
	var out []string
	for name := range p.Endpoints {
		if !used[name] {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func (p *Policy) hasPluginGrants() bool {
	for _, t := range p.Tasks {
		if t.IsPluginGrant() {
			return true
		}
	}
	return false
}

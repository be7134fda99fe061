package plugins

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Formats returns the formats Write accepts, in a new slice: the list is the package's, not
// something an importer can change.
func Formats() []string { return []string{"table", "json", "markdown"} }

// Write writes the report in format "table", "json" or "markdown". Every form is
// deterministic, so reports can be diffed in review.
func (r *Report) Write(w io.Writer, format string) error {
	switch format {
	case "table", "":
		return r.writeTable(w)
	case "json":
		b, err := json.MarshalIndent(r, "", "  ")
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	case "markdown":
		return r.writeMarkdown(w)
	}
	return fmt.Errorf("unknown format %q; use %s", format, strings.Join(Formats(), ", "))
}

func (r *Report) header() string {
	s := "policy " + r.Policy
	if r.PluginsDir != "" {
		s += ", plugins " + r.PluginsDir
	}
	return s
}

func (r *Report) settings() string {
	return fmt.Sprintf("require_signed %t, strict %t, trusted publishers: %s",
		r.Plugins.RequireSigned, r.Plugins.Strict, orNone(r.Plugins.TrustedPublishers))
}

func (r *Report) countLine() string {
	return fmt.Sprintf("%d high, %d medium, %d low", r.Counts.High, r.Counts.Medium, r.Counts.Low)
}

func (t *TaskReport) outputSchema() string {
	if t.OutputSchema {
		return "declared (every ok output is checked)"
	}
	return "none (output unchecked)"
}

func (t *TaskReport) signer() string {
	switch {
	case t.Signer != "":
		return t.Signer
	case t.Source == "policy":
		return "n/a (policy module)"
	}
	return "UNSIGNED"
}

func (l *LimitsReport) String() string {
	return fmt.Sprintf("memory %d bytes, timeout %s, output %d bytes, http calls %d, log %d bytes",
		l.MemoryBytes, l.Timeout, l.OutputBytes, l.HTTPCalls, l.LogBytes)
}

func (e *EndpointReport) head() string {
	tls := "TLS"
	if !e.TLS {
		tls = "NO TLS"
	}
	return fmt.Sprintf("%s %s (%s; timeout %s, max response %d bytes, max request %d bytes)",
		e.Name, e.BaseURL, tls, e.Timeout, e.MaxResponseBytes, e.MaxRequestBytes)
}

func (c *CredentialReport) String() string {
	if c == nil {
		return "none"
	}
	return fmt.Sprintf("%s (from %s), as %s", c.Name, c.Source, c.Injection)
}

func (r RuleReport) String() string {
	if r.Wildcard {
		return r.Rule + "  [wildcard]"
	}
	return r.Rule
}

func (r *Report) writeTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "castellan audit: %s\nplugins: %s\n\n", r.header(), r.settings())
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tSOURCE\tSTATUS\tVERSION\tSIGNER\tSHA256\tENDPOINTS")
	for _, t := range r.Tasks {
		sha := t.SHA256
		if len(sha) > 12 {
			sha = sha[:12]
		}
		eps := make([]string, len(t.Endpoints))
		for i, e := range t.Endpoints {
			eps[i] = e.Name
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Source, t.Status, dash(t.Version), t.signer(), dash(sha), dash(strings.Join(eps, ",")))
	}
	tw.Flush()
	for _, t := range r.Tasks {
		fmt.Fprintf(&b, "\ntask %s (%s, %s)\n", t.Name, t.Source, t.Status)
		if t.Refused != "" {
			fmt.Fprintf(&b, "  refused: %s\n", strings.ReplaceAll(t.Refused, "\n", "\n    "))
		}
		if t.Module != "" {
			fmt.Fprintf(&b, "  module: %s sha256 %s\n", t.Module, dash(t.SHA256))
		}
		if t.Title != "" {
			fmt.Fprintf(&b, "  title: %s\n", t.Title)
		}
		fmt.Fprintf(&b, "  annotations: %s\n", t.Annotations)
		fmt.Fprintf(&b, "  output schema: %s\n", t.outputSchema())
		fmt.Fprintf(&b, "  signer: %s\n", t.signer())
		for _, imp := range t.Imports {
			fmt.Fprintf(&b, "  import %s\n", imp)
		}
		if t.Limits != nil {
			fmt.Fprintf(&b, "  limits: %s\n", t.Limits)
		}
		if len(t.Endpoints) == 0 && t.Status == "loads" {
			b.WriteString("  endpoints: none (no network access)\n")
		}
		for _, e := range t.Endpoints {
			fmt.Fprintf(&b, "  endpoint %s\n", e.head())
			for _, rule := range e.Rules {
				fmt.Fprintf(&b, "    allow %s\n", rule)
			}
			fmt.Fprintf(&b, "    credential %s\n", e.Credential)
		}
		for _, d := range t.Differences {
			fmt.Fprintf(&b, "  requested but not granted: %s\n", d)
		}
	}
	fmt.Fprintf(&b, "\nfindings: %s\n", r.countLine())
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, f := range r.Findings {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", strings.ToUpper(string(f.Severity)), f.Code, f.Message)
	}
	tw.Flush()
	_, err := io.WriteString(w, b.String())
	return err
}

func (r *Report) writeMarkdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Castellan audit\n\n- %s\n- plugins: %s\n- findings: %s\n\n", r.header(), r.settings(), r.countLine())
	b.WriteString("## Tasks\n\n| task | source | status | version | signer | sha256 | endpoints |\n|---|---|---|---|---|---|---|\n")
	for _, t := range r.Tasks {
		eps := make([]string, len(t.Endpoints))
		for i, e := range t.Endpoints {
			eps[i] = e.Name
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | `%s` | %s |\n", t.Name, t.Source, t.Status, dash(t.Version), t.signer(), dash(t.SHA256), dash(strings.Join(eps, ", ")))
	}
	for _, t := range r.Tasks {
		fmt.Fprintf(&b, "\n### %s\n\n", t.Name)
		if t.Refused != "" {
			fmt.Fprintf(&b, "**Refused:**\n\n```\n%s\n```\n\n", t.Refused)
		}
		if t.Module != "" {
			fmt.Fprintf(&b, "- module: `%s`\n", t.Module)
		}
		if t.Title != "" {
			fmt.Fprintf(&b, "- title: %s\n", mdEscape(t.Title))
		}
		fmt.Fprintf(&b, "- annotations: %s\n", t.Annotations)
		fmt.Fprintf(&b, "- output schema: %s\n", t.outputSchema())
		fmt.Fprintf(&b, "- signer: %s\n", t.signer())
		if t.Limits != nil {
			fmt.Fprintf(&b, "- limits: %s\n", t.Limits)
		}
		if len(t.Imports) > 0 {
			b.WriteString("- imports:\n")
			for _, imp := range t.Imports {
				fmt.Fprintf(&b, "  - `%s`\n", imp)
			}
		}
		for _, e := range t.Endpoints {
			fmt.Fprintf(&b, "- endpoint %s\n", mdEscape(e.head()))
			for _, rule := range e.Rules {
				fmt.Fprintf(&b, "  - allow `%s`%s\n", rule.Rule, map[bool]string{true: " (wildcard)"}[rule.Wildcard])
			}
			fmt.Fprintf(&b, "  - credential: %s\n", mdEscape(e.Credential.String()))
		}
		for _, d := range t.Differences {
			fmt.Fprintf(&b, "- requested but not granted: %s\n", mdEscape(d.String()))
		}
	}
	b.WriteString("\n## Findings\n\n")
	if len(r.Findings) == 0 {
		b.WriteString("None.\n")
	} else {
		b.WriteString("| severity | code | task | endpoint | finding |\n|---|---|---|---|---|\n")
		for _, f := range r.Findings {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", f.Severity, f.Code, dash(f.Task), dash(f.Endpoint), mdEscape(f.Message))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "*", `\*`, "_", `\_`, "\n", " ").Replace(s)
}

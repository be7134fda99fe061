package plugins

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/runtime"
)

// Severity ranks a finding. The zero value is not a severity.
type Severity string

const (
	Low    Severity = "low"
	Medium Severity = "medium"
	High   Severity = "high"
)

// Rank orders severities: low 1, medium 2, high 3, anything else 0.
func (s Severity) Rank() int {
	switch s {
	case Low:
		return 1
	case Medium:
		return 2
	case High:
		return 3
	}
	return 0
}

// ParseSeverity parses "low", "medium" or "high".
func ParseSeverity(s string) (Severity, error) {
	if sv := Severity(strings.ToLower(s)); sv.Rank() > 0 {
		return sv, nil
	}
	return "", fmt.Errorf("severity %q: use low, medium or high", s)
}

// Report is the security review of a policy and a plugins directory: what every task can do,
// and what deserves a second look. Its JSON form is described by docs/audit.schema.json.
type Report struct {
	Policy     string         `json:"policy"`
	PluginsDir string         `json:"plugins_dir,omitempty"`
	Plugins    PluginSettings `json:"plugin_settings"`
	Tasks      []TaskReport   `json:"tasks"`
	Findings   []Finding      `json:"findings"`
	Counts     Counts         `json:"counts"`
}

// PluginSettings is the policy's plugins section, with publisher keys by kid.
type PluginSettings struct {
	RequireSigned     bool     `json:"require_signed"`
	Strict            bool     `json:"strict"`
	TrustedPublishers []string `json:"trusted_publishers"`
}

// TaskReport is one task: where its module comes from and everything it is granted.
type TaskReport struct {
	Name    string `json:"name"`
	Source  string `json:"source"` // "plugin" or "policy"
	Status  string `json:"status"` // "loads" or "refused"
	Refused string `json:"refused,omitempty"`
	Version string `json:"version,omitempty"`
	Title   string `json:"title,omitempty"`
	// Annotations are the policy's (for a plugin too: a manifest cannot set them), as
	// published to MCP clients; nil when the policy sets none.
	Annotations *AnnotationsReport `json:"annotations,omitempty"`
	// OutputSchema is whether the task declares an output schema, which the worker holds
	// every ok output to (invalid_output otherwise).
	OutputSchema bool             `json:"output_schema"`
	Module       string           `json:"module,omitempty"` // relative to the plugins directory or the policy's directory
	SHA256       string           `json:"sha256,omitempty"`
	Signer       string           `json:"signer,omitempty"` // kid of the publisher key; empty when unsigned
	Imports      []string         `json:"imports"`
	Endpoints    []EndpointReport `json:"endpoints"`
	Limits       *LimitsReport    `json:"limits,omitempty"`
	Differences  []Diff           `json:"differences"`
}

// AnnotationsReport is a task's annotations as the policy sets them; an absent field is not
// set.
type AnnotationsReport struct {
	ReadOnly    *bool `json:"read_only,omitempty"`
	Destructive *bool `json:"destructive,omitempty"`
	Idempotent  *bool `json:"idempotent,omitempty"`
}

func annotationsReport(a *policy.Annotations) *AnnotationsReport {
	if a == nil {
		return nil
	}
	return &AnnotationsReport{ReadOnly: a.ReadOnly, Destructive: a.Destructive, Idempotent: a.Idempotent}
}

// String is the annotations in policy terms, e.g. "read_only, idempotent".
func (a *AnnotationsReport) String() string {
	if a == nil {
		return (*policy.Annotations)(nil).String()
	}
	return (&policy.Annotations{ReadOnly: a.ReadOnly, Destructive: a.Destructive, Idempotent: a.Idempotent}).String()
}

// EndpointReport is one granted endpoint. Credentials appear by name, source kind and
// injection style, never by value or location.
type EndpointReport struct {
	Name             string            `json:"name"`
	BaseURL          string            `json:"base_url"`
	TLS              bool              `json:"tls"`
	Rules            []RuleReport      `json:"rules"`
	Credential       *CredentialReport `json:"credential,omitempty"`
	Timeout          string            `json:"timeout"`
	MaxResponseBytes int64             `json:"max_response_bytes"`
	MaxRequestBytes  int64             `json:"max_request_bytes"`
}

// RuleReport is one allow rule.
type RuleReport struct {
	Rule     string   `json:"rule"`
	Methods  []string `json:"methods"` // empty means any method
	Wildcard bool     `json:"wildcard"`
}

// CredentialReport names a credential and how it is injected.
type CredentialReport struct {
	Name      string `json:"name"`
	Source    string `json:"source"`    // env, file, vault or aws
	Injection string `json:"injection"` // e.g. "header Authorization: Bearer {secret}"
}

// LimitsReport is a task's effective limits.
type LimitsReport struct {
	MemoryBytes int64  `json:"memory_bytes"`
	Timeout     string `json:"timeout"`
	OutputBytes int64  `json:"output_bytes"`
	HTTPCalls   int    `json:"http_calls"`
	LogBytes    int64  `json:"log_bytes"`
}

// Finding is one thing a reviewer should look at.
type Finding struct {
	Severity Severity `json:"severity"`
	Code     string   `json:"code"`
	Task     string   `json:"task,omitempty"`
	Endpoint string   `json:"endpoint,omitempty"`
	Message  string   `json:"message"`
}

// Counts counts findings by severity.
type Counts struct {
	High   int `json:"high"`
	Medium int `json:"medium"`
	Low    int `json:"low"`
}

// Finding codes.
const (
	CodeUnsigned           = "unsigned_module"
	CodeUnpinned           = "unpinned_module"
	CodeRefused            = "plugin_refused"
	CodeNoGrant            = "plugin_without_grant"
	CodeWildcard           = "wildcard_rule"
	CodeNoTLS              = "endpoint_without_tls"
	CodeVaultNoTLS         = "vault_without_tls"
	CodeSharedCredential   = "shared_credential"
	CodeUnusedGrant        = "unused_grant"
	CodeRequestedMore      = "requested_not_granted"
	CodeHTTPGrantNotImport = "endpoint_grant_without_http_import"
	CodeReadOnlyWrites     = "read_only_task_may_write"
)

// Max returns the highest severity among the findings, or "" when there are none.
func (r *Report) Max() Severity {
	var max Severity
	for _, f := range r.Findings {
		if f.Severity.Rank() > max.Rank() {
			max = f.Severity
		}
	}
	return max
}

// AtLeast returns the findings at or above sev.
func (r *Report) AtLeast(sev Severity) []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if f.Severity.Rank() >= sev.Rank() {
			out = append(out, f)
		}
	}
	return out
}

// Audit reviews pol and, when pluginsDir is not empty, every plugin in it, exactly as the
// worker would load them (manifest, digest, signature, grant, import audit), without running
// anything or reading any credential. Modules are compiled to list their imports.
func Audit(ctx context.Context, pol *policy.Policy, pluginsDir string) (*Report, error) {
	trust, err := LoadTrust(pol.Plugins.TrustedPublishers...)
	if err != nil {
		return nil, err
	}
	engine, err := runtime.NewEngine(runtime.Config{})
	if err != nil {
		return nil, err
	}
	defer func() { _ = engine.Close(context.WithoutCancel(ctx)) }()
	a := &auditor{pol: pol, engine: engine, r: &Report{
		Policy: pol.Path, PluginsDir: pluginsDir,
		Plugins:  PluginSettings{RequireSigned: pol.Plugins.RequireSigned, Strict: pol.Plugins.Strict, TrustedPublishers: trust.KeyIDs()},
		Tasks:    []TaskReport{},
		Findings: []Finding{},
	}}
	if a.r.Plugins.TrustedPublishers == nil {
		a.r.Plugins.TrustedPublishers = []string{}
	}
	seenPlugin := map[string]bool{}
	if pluginsDir != "" {
		names, err := Names(pluginsDir)
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			seenPlugin[n] = true
			a.plugin(ctx, pluginsDir, n, trust)
		}
	}
	for _, n := range pol.TaskNames() {
		pt := pol.Tasks[n]
		if !pt.IsPluginGrant() {
			a.policyTask(ctx, pt)
		} else if !seenPlugin[n] {
			a.add(Low, CodeUnusedGrant, n, "", "the policy grants task %q to a plugin, but the plugins directory has none by that name", n)
		}
	}
	a.endpoints()
	a.vault()
	r := a.r
	sort.Slice(r.Tasks, func(i, j int) bool { return r.Tasks[i].Name < r.Tasks[j].Name })
	sort.SliceStable(r.Findings, func(i, j int) bool {
		fi, fj := r.Findings[i], r.Findings[j]
		if fi.Severity.Rank() != fj.Severity.Rank() {
			return fi.Severity.Rank() > fj.Severity.Rank()
		}
		if fi.Code != fj.Code {
			return fi.Code < fj.Code
		}
		if fi.Task != fj.Task {
			return fi.Task < fj.Task
		}
		return fi.Endpoint < fj.Endpoint
	})
	for _, f := range r.Findings {
		switch f.Severity {
		case High:
			r.Counts.High++
		case Medium:
			r.Counts.Medium++
		case Low:
			r.Counts.Low++
		}
	}
	return r, nil
}

type auditor struct {
	pol    *policy.Policy
	engine *runtime.Engine
	r      *Report
	used   map[string]bool // endpoints in some effective grant
}

func (a *auditor) add(sev Severity, code, task, endpoint, format string, args ...any) {
	a.r.Findings = append(a.r.Findings, Finding{Severity: sev, Code: code, Task: task, Endpoint: endpoint, Message: fmt.Sprintf(format, args...)})
}

func (a *auditor) plugin(ctx context.Context, root, name string, trust *Trust) {
	tr := TaskReport{Name: name, Source: "plugin", Status: "loads", Imports: []string{}, Endpoints: []EndpointReport{}, Differences: []Diff{}}
	if g, ok := a.pol.Tasks[name]; ok && g.IsPluginGrant() {
		tr.Annotations = annotationsReport(g.Annotations)
	}
	p, err := Open(root, name, a.pol, trust)
	if p != nil {
		tr.Version = p.Manifest.Version
		tr.Title = p.Manifest.Title
		tr.OutputSchema = p.Manifest.OutputSchema != nil
		tr.Module = filepath.ToSlash(filepath.Join(name, p.Manifest.Module))
		tr.SHA256 = p.Digest
		if p.Signature != nil {
			tr.Signer = p.Signature.KeyID
		}
		if p.Diffs != nil {
			tr.Differences = p.Diffs
		}
	}
	if err == nil {
		err = a.compile(ctx, &tr, p.Grant, p.Wasm, true)
	}
	if err != nil {
		tr.Status, tr.Refused = "refused", strings.TrimPrefix(outcome.Message(err), fmt.Sprintf("plugin %q (%s): ", name, filepath.Join(root, name)))
		var perr *policy.Error
		if errors.As(err, &perr) {
			tr.Refused = "invalid manifest:\n" + perr.Error()
		}
		if _, granted := a.pol.Tasks[name]; !granted && p != nil && p.Grant == nil {
			a.add(Medium, CodeNoGrant, name, "", "plugin %q has no grant in the policy and will not run; add tasks.%s (without module) to the policy, or remove the plugin", name, name)
		} else {
			a.add(High, CodeRefused, name, "", "plugin %q is refused: %s", name, firstLine(tr.Refused))
		}
	}
	if p != nil && p.Signature == nil {
		a.add(High, CodeUnsigned, name, "", "plugin %q is not signed: anyone with write access to the plugins directory can change its code", name)
	}
	if p != nil && p.Grant != nil {
		for _, d := range p.Diffs {
			a.add(Low, CodeRequestedMore, name, "", "plugin %q: %s", name, d)
		}
		req := map[string]bool{}
		for _, e := range p.Manifest.Endpoints {
			req[e] = true
		}
		for _, e := range a.pol.Tasks[name].Endpoints {
			if !req[e] {
				a.add(Low, CodeUnusedGrant, name, e, "the policy grants endpoint %q to task %q, but its plugin does not request it (it is not given); remove the grant", e, name)
			}
		}
	}
	a.r.Tasks = append(a.r.Tasks, tr)
}

func (a *auditor) policyTask(ctx context.Context, pt *policy.Task) {
	tr := TaskReport{Name: pt.Name, Source: "policy", Status: "loads", Version: pt.Version,
		Title: pt.Title, Annotations: annotationsReport(pt.Annotations), OutputSchema: pt.OutputSchema != "",
		Imports: []string{}, Endpoints: []EndpointReport{}, Differences: []Diff{}}
	tr.Module = pt.Module
	if dir := filepath.Dir(a.pol.Path); dir != "" {
		if abs, err := filepath.Abs(dir); err == nil {
			if rel, err := filepath.Rel(abs, pt.Module); err == nil && !strings.HasPrefix(rel, "..") {
				tr.Module = filepath.ToSlash(rel)
			}
		}
	}
	wasm, err := readFile(pt.Module)
	if err == nil {
		tr.SHA256 = digest(wasm)
		err = a.compile(ctx, &tr, pt, wasm, false)
	}
	if err != nil {
		tr.Status, tr.Refused = "refused", outcome.Message(err)
		a.add(High, CodeRefused, pt.Name, "", "task %q does not load: %s", pt.Name, firstLine(tr.Refused))
	}
	if pt.SHA256 == "" {
		a.add(Medium, CodeUnpinned, pt.Name, "", "task %q has no sha256 pin in the policy: whoever can write %s changes its code", pt.Name, tr.Module)
	}
	a.r.Tasks = append(a.r.Tasks, tr)
}

// compile loads the module as the worker would, to list its imports and run the import
// audit, and fills the grant part of tr. plugin is true for a plugin's module.
func (a *auditor) compile(ctx context.Context, tr *TaskReport, g *policy.Task, wasm []byte, plugin bool) error {
	lim := g.Limits
	tr.Limits = &LimitsReport{MemoryBytes: int64(lim.MemoryPages) * policy.WasmPageSize, Timeout: lim.Timeout.String(),
		OutputBytes: lim.OutputBytes, HTTPCalls: lim.HTTPCalls, LogBytes: lim.LogBytes}
	for _, e := range g.Endpoints {
		tr.Endpoints = append(tr.Endpoints, a.endpoint(a.pol.Endpoints[e]))
	}
	// NoSnapshot: the audit runs no guest code (a snapshot would run _initialize); the
	// snapshot never changes whether a module loads, only how its instances start.
	m, err := a.engine.Load(ctx, runtime.ModuleConfig{Name: g.Name, Wasm: wasm, SHA256: g.SHA256, Entry: g.Entry, NoPool: true,
		NoSnapshot: true, Limits: runtime.Limits{MemoryPages: lim.MemoryPages, Timeout: lim.Timeout}})
	if err != nil {
		return err
	}
	defer func() { _ = m.Close(ctx) }()
	imps := m.Imports()
	for _, imp := range imps {
		tr.Imports = append(tr.Imports, imp.String())
	}
	// Load above accepted the module exactly as the worker's does (native or Extism); the
	// worker then checks a plugin's imports against its grant, and so does the audit. A
	// policy task's endpoints are the security team's own grant, which the worker takes as is.
	if bad := CheckImports(imps, g.Endpoints); plugin && len(bad) > 0 {
		return outcome.New(outcome.ModuleRejected, "forbidden imports: %s", strings.Join(bad, "; "))
	}
	if a.used == nil {
		a.used = map[string]bool{}
	}
	for _, e := range g.Endpoints {
		a.used[e] = true
	}
	a.readOnly(g)
	if len(g.Endpoints) > 0 && !UsesHTTP(imps) {
		a.add(Low, CodeHTTPGrantNotImport, g.Name, "", "task %q is granted %s but its module imports no http_* function; the grant is unused", g.Name, strings.Join(g.Endpoints, ", "))
	}
	return nil
}

// readOnly adds a finding when the policy calls a task read-only but grants it a rule that
// allows a method which may change data: agents are told (as an MCP hint) that calling it
// changes nothing, and the gateway would let it.
func (a *auditor) readOnly(g *policy.Task) {
	if g.Annotations == nil || g.Annotations.ReadOnly == nil || !*g.Annotations.ReadOnly {
		return
	}
	for _, en := range g.Endpoints {
		for _, r := range a.pol.Endpoints[en].Rules {
			if writes(r.Methods()) {
				a.add(Medium, CodeReadOnlyWrites, g.Name, en, "task %q is annotated read_only, but endpoint %q allows %q: agents are told it changes nothing; narrow the rule or drop read_only", g.Name, en, r.String())
			}
		}
	}
}

// writes reports whether a rule's methods include one that may change data (no methods
// means any method).
func writes(methods []string) bool {
	if len(methods) == 0 {
		return true
	}
	for _, m := range methods {
		switch m {
		case "GET", "HEAD", "OPTIONS":
		default:
			return true
		}
	}
	return false
}

func (a *auditor) endpoint(e *egress.Endpoint) EndpointReport {
	er := EndpointReport{Name: e.Name, BaseURL: e.BaseURL.String(), TLS: e.BaseURL.Scheme == "https",
		Rules: []RuleReport{}, Timeout: e.Timeout.String(), MaxResponseBytes: e.MaxResponseBytes, MaxRequestBytes: e.MaxRequestBytes}
	for _, r := range e.Rules {
		m := r.Methods()
		if m == nil {
			m = []string{}
		}
		er.Rules = append(er.Rules, RuleReport{Rule: r.String(), Methods: m, Wildcard: r.Wildcard()})
	}
	if e.Auth.Kind != egress.AuthNone {
		er.Credential = &CredentialReport{Name: e.Auth.Credential, Source: a.pol.Credentials[e.Auth.Credential].Source(), Injection: e.Auth.String()}
	}
	return er
}

// endpoints adds the findings about the policy's endpoints themselves.
func (a *auditor) endpoints() {
	names := make([]string, 0, len(a.pol.Endpoints))
	for n := range a.pol.Endpoints {
		names = append(names, n)
	}
	sort.Strings(names)
	byCred := map[string][]string{}
	for _, n := range names {
		e := a.pol.Endpoints[n]
		for _, r := range e.Rules {
			if r.Wildcard() {
				a.add(Medium, CodeWildcard, "", n, "endpoint %q allows %q: a wildcard (any method, \"*\" or \"**\") allows more than one request shape; check it is meant", n, r.String())
			}
		}
		if e.BaseURL.Scheme != "https" {
			if e.Auth.Kind != egress.AuthNone {
				a.add(High, CodeNoTLS, "", n, "endpoint %q is plain http and carries credential %q: it crosses the network unencrypted", n, e.Auth.Credential)
			} else {
				a.add(Medium, CodeNoTLS, "", n, "endpoint %q is plain http: requests and responses are neither encrypted nor authenticated", n)
			}
		}
		if e.Auth.Kind != egress.AuthNone {
			byCred[e.Auth.Credential] = append(byCred[e.Auth.Credential], n)
		}
		if !a.used[n] {
			a.add(Low, CodeUnusedGrant, "", n, "endpoint %q is reachable by no loaded task; remove it or its grants", n)
		}
	}
	creds := make([]string, 0, len(byCred))
	for c := range byCred {
		creds = append(creds, c)
	}
	sort.Strings(creds)
	for _, c := range creds {
		if eps := byCred[c]; len(eps) > 1 {
			a.add(Medium, CodeSharedCredential, "", strings.Join(eps, ","), "credential %q is injected into %d endpoints (%s): a compromise of one system exposes the others", c, len(eps), strings.Join(eps, ", "))
		}
	}
}

// vault adds a finding when credentials are read from a Vault whose address is plain http:
// the Vault token (and AppRole's secret id) goes out with every request, and every secret
// comes back, unencrypted. An address left to VAULT_ADDR is only known where the worker runs.
func (a *auditor) vault() {
	v := a.pol.Vault
	if v == nil || v.Address == "" || !strings.HasPrefix(strings.ToLower(v.Address), "http://") {
		return
	}
	var names []string
	for n, c := range a.pol.Credentials {
		if c.Vault != nil {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return // no credential comes from Vault: the worker never contacts it
	}
	sort.Strings(names)
	what := "credential " + quoteList(names) + " is"
	if len(names) > 1 {
		what = "credentials " + quoteList(names) + " are"
	}
	a.add(High, CodeVaultNoTLS, "", "", "the vault address is plain http and %s read from it: the Vault token and every secret read cross the network unencrypted", what)
}

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

package policy

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/strictyaml"
	"github.com/castellan-dev/castellan/secrets"
)

// Policy is a loaded, fully validated policy: every reference resolves, every default is
// applied, and endpoints are ready for the egress gateway.
type Policy struct {
	Path        string                      // file it was loaded from (the name given to Parse)
	Vault       *secrets.VaultConfig        // nil when the policy has no vault section
	Credentials map[string]secrets.Spec     // by credential name
	Endpoints   map[string]*egress.Endpoint // by endpoint name; BaseURL, Rules and Auth built, defaults applied
	Tasks       map[string]*Task            // by task name
	Plugins     Plugins                     // how plugins are trusted; defaults applied
}

// Task is one task the worker may run.
type Task struct {
	Name string
	// Module is the absolute, cleaned path of the .wasm file. Empty for a plugin grant
	// (IsPluginGrant): the module then comes from the plugin of the same name, and Entry,
	// Version, Description and the schemas from its manifest.
	Module      string
	SHA256      string // lower-case hex pin of the module file; empty when unpinned
	Entry       string // exported function to call, default "run"
	Version     string // sent to the control plane catalog, default "0"
	Description string
	// Title is a short human-readable name for the task, shown to people and AI agents (as
	// the MCP tool's title). Optional; for a plugin it comes from the manifest.
	Title string
	// Annotations are the security team's statement of what the task does to the systems it
	// calls, published as MCP tool hints. They come from the policy only, never from a
	// plugin's manifest: a module's author cannot declare their own code read-only. Nil when
	// the policy sets none.
	Annotations *Annotations
	// InputSchema and OutputSchema are paths of JSON Schema files describing the task's input
	// and output, published to the control plane's catalog, which validates every submitted
	// input against the input schema. Optional: without one the catalog accepts any JSON object.
	InputSchema  string
	OutputSchema string
	// Endpoints are the logical endpoint names the task may call, in policy order. Every name
	// is a key of Policy.Endpoints.
	Endpoints        []string
	OnSecretInOutput string // "fail" or "redact"
	Limits           Limits
}

// Annotations describe a task's effect, as set in the policy. A nil field was not set:
// clients must not assume either answer.
type Annotations struct {
	ReadOnly    *bool // the task changes nothing in the systems it calls
	Destructive *bool // the task may delete or overwrite data
	Idempotent  *bool // running it again with the same input has no further effect
}

// String lists the annotations set, e.g. "read_only, idempotent, not destructive", or
// "none set"; for summaries and the audit report.
func (a *Annotations) String() string {
	if a == nil {
		return "none set"
	}
	var parts []string
	for _, f := range []struct {
		name string
		v    *bool
	}{{"read_only", a.ReadOnly}, {"destructive", a.Destructive}, {"idempotent", a.Idempotent}} {
		switch {
		case f.v == nil:
		case *f.v:
			parts = append(parts, f.name)
		default:
			parts = append(parts, "not "+f.name)
		}
	}
	if len(parts) == 0 {
		return "none set"
	}
	return strings.Join(parts, ", ")
}

// Limits bound one run of a task. Every field is set (defaults applied), so zero means zero:
// HTTPCalls 0 forbids calls and LogBytes 0 drops every log line.
type Limits struct {
	MemoryPages uint32        // 64 KiB WebAssembly pages
	Timeout     time.Duration // wall clock for the whole job
	OutputBytes int64
	HTTPCalls   int
	LogBytes    int64
}

// Defaults and bounds, as documented in docs/policy.md.
const (
	DefaultEntry            = "run"
	DefaultTaskVersion      = "0"
	DefaultOnSecretInOutput = "fail"

	// MaxTitle is the longest task title, in bytes.
	MaxTitle = 128

	WasmPageSize       = 64 << 10
	DefaultMemory      = 64 << 20
	MinMemory          = 64 << 10
	MaxMemory          = 1 << 30
	DefaultTimeout     = 30 * time.Second
	MaxTimeout         = time.Hour
	DefaultOutput      = 1 << 20
	MaxOutput          = 64 << 20
	DefaultHTTPCalls   = 100
	MaxHTTPCalls       = 100000
	DefaultLogBytes    = 64 << 10
	MaxLogBytes        = 64 << 20
	MaxEndpointBytes   = 1 << 30
	MaxEndpointTimeout = time.Hour

	DefaultVaultMount          = "secret"
	DefaultVaultAuthMethod     = "token"
	DefaultVaultTokenEnv       = "VAULT_TOKEN"
	DefaultVaultAppRoleMount   = "approle"
	DefaultVaultCacheTTL       = 5 * time.Minute
	DefaultVaultRequestTimeout = 10 * time.Second
)

// Load reads and parses the policy file at path. Relative paths inside it (modules, credential
// files, Vault CA and token files) resolve against the file's directory. Any problem, including
// an unreadable file, is returned as *Error.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Problems: []Problem{{File: path, Msg: readErrorMsg(err)}}}
	}
	dir := filepath.Dir(path)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return Parse(path, data, dir)
}

func readErrorMsg(err error) string {
	switch {
	case os.IsNotExist(err):
		return "cannot read the policy: file does not exist; check the path (or --policy flag)"
	case os.IsPermission(err):
		return "cannot read the policy: permission denied; the worker's user needs read access"
	}
	// A *PathError repeats the path, which the Problem already names.
	if pe, ok := err.(*os.PathError); ok {
		err = pe.Err
	}
	return "cannot read the policy: " + err.Error()
}

// Parse parses policy data. name is used in error messages and as Policy.Path; relative paths
// inside the policy resolve against baseDir (made absolute with the working directory if it is
// relative). Every problem found is returned, together, as *Error.
func Parse(name string, data []byte, baseDir string) (*Policy, error) {
	if name == "" {
		name = "policy"
	}
	d := &decoder{Decoder: strictyaml.Decoder{File: name, Kind: "policy file"}, baseDir: baseDir}
	p := d.policy(data)
	if err := d.Err(); err != nil {
		return nil, err
	}
	p.Path = name
	return p, nil
}

// TaskNames returns the task names in sorted order.
func (p *Policy) TaskNames() []string {
	names := make([]string, 0, len(p.Tasks))
	for n := range p.Tasks {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

package plugins

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/policy"
)

// Plugin is one plugin read from its directory and checked against the policy: manifest
// parsed, module read once (the same bytes are hashed, verified and compiled), signature
// verified, effective grant computed. It is not compiled yet.
type Plugin struct {
	Name           string
	Dir            string // the plugin's directory
	Manifest       *policy.Manifest
	Wasm           []byte
	Digest         string     // hex SHA-256 of Wasm
	ManifestDigest string     // hex SHA-256 of plugin.yaml
	Signature      *Signature // nil when the plugin is unsigned
	// Grant is the task to compile: the policy's grant narrowed to what the manifest
	// requests, with Module, Entry, Version, Title, Description taken from the manifest (Annotations
	// stay the policy's). Nil when
	// the policy grants nothing to this name.
	Grant *policy.Task
	// Diffs lists what the manifest requests beyond the grant (loaded without it, or refused
	// when the policy is strict).
	Diffs []Diff

	files map[string][]byte // every file the signature covers, by name in the plugin directory
}

// Diff is one capability a manifest requests that the policy does not grant.
type Diff struct {
	Field     string `json:"field"`     // "endpoints" or "limits.<key>"
	Requested string `json:"requested"` // what the manifest asks for
	Granted   string `json:"granted"`   // what the policy allows instead ("not granted" for an endpoint)
}

func (d Diff) String() string {
	if d.Field == "endpoints" {
		return fmt.Sprintf("endpoint %s requested but not granted", d.Requested)
	}
	return fmt.Sprintf("%s: requested %s, granted %s", d.Field, d.Requested, d.Granted)
}

// Names returns the plugin names in root: its subdirectories (and symbolic links, which Open
// refuses), sorted. Names starting with "."
// are skipped: they are copies in progress (write to .NAME.tmp, then rename; docs/plugins.md).
func Names(root string) ([]string, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("plugins directory %s: %w", root, unwrapPath(err))
	}
	var out []string
	for _, e := range ents {
		// A link is listed so that Open refuses it by name rather than it being skipped unseen.
		if (e.IsDir() || e.Type()&fs.ModeSymlink != 0) && !Ignored(e.Name()) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// Ignored reports whether a file or directory name is skipped by the loader and the watcher:
// hidden names (".NAME.tmp", editors' swap files) and backups ending in "~".
func Ignored(name string) bool {
	return strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~")
}

// Open reads and checks the plugin named name in root against pol, trusting the publisher
// keys in trust (which may be nil when no key is trusted). Every refusal is an *outcome.Error
// with code ModuleRejected whose message names the plugin, the file and what to do; a manifest
// problem also unwraps to the *policy.Error listing file:line: field problems.
//
// When the plugin is refused for its signature or its grant, Open still returns the Plugin
// with every field it could fill, for the audit report; callers that serve jobs must check
// the error first.
func Open(root, name string, pol *policy.Policy, trust *Trust) (*Plugin, error) {
	dir := filepath.Join(root, name)
	p := &Plugin{Name: name, Dir: dir, files: map[string][]byte{}}
	refuse := func(format string, args ...any) error {
		return outcome.New(outcome.ModuleRejected, "plugin %q (%s): %s", name, dir, fmt.Sprintf(format, args...))
	}
	pdir, err := openDir(dir)
	if err != nil {
		return nil, refuse("%v", err)
	}
	defer pdir.Close()
	mfPath := filepath.Join(dir, policy.ManifestFile)
	mfData, err := readIn(pdir, policy.ManifestFile)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, refuse("no %s; every plugin directory needs a manifest (docs/plugins.md)", policy.ManifestFile)
		}
		return nil, refuse("cannot read %v", err)
	}
	mf, err := policy.ParseManifest(mfPath, mfData, reader(pdir))
	if err != nil {
		return nil, outcome.Wrap(outcome.ModuleRejected, err, "plugin %q: invalid manifest:\n%s", name, err)
	}
	if mf.Name != name {
		return nil, outcome.Wrap(outcome.ModuleRejected, &policy.Error{Problems: []policy.Problem{{
			File: mfPath, Line: 1, Field: "name",
			Msg: fmt.Sprintf("is %q but the plugin directory is %q; they must match (the name is the task the policy grants)", mf.Name, name)}}},
			"plugin %q: invalid manifest:\n%s:1: name: is %q but the plugin directory is %q; they must match", name, mfPath, mf.Name, name)
	}
	p.Manifest = mf
	p.ManifestDigest = digest(mfData)
	p.files[policy.ManifestFile] = mfData
	for key, file := range mf.SchemaFiles {
		if key == "input_schema" {
			p.files[file] = mf.InputSchema
		} else {
			p.files[file] = mf.OutputSchema
		}
	}

	wasm, err := readIn(pdir, mf.Module)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, refuse("module file %s does not exist (manifest field module; default NAME.wasm)", mf.Module)
	case err != nil:
		return nil, refuse("module %v", err)
	case len(wasm) == 0:
		return nil, refuse("module %s is empty (0 bytes); a copy still in progress? write to a temporary name, then rename", mf.Module)
	}
	p.Wasm = wasm
	p.Digest = digest(wasm)
	p.files[mf.Module] = wasm

	// The signature is checked before the grant: a tampered plugin is reported as tampered
	// even when its (tampered) manifest also asks for too much.
	sig, err := p.verify(pdir, trust)
	p.Signature = sig
	if err != nil {
		return p, refuse("%v", err)
	}
	if sig == nil && pol.Plugins.RequireSigned {
		return p, refuse("unsigned (no %s) and the policy requires signed plugins; sign it with `castellan plugin sign --key KEY %s`, or set plugins.require_signed: false in the policy", SignatureFile, dir)
	}
	if err := p.grant(pol); err != nil {
		return p, refuse("%v", err)
	}
	return p, nil
}

// grant computes the effective grant: the policy's task narrowed to the manifest's requests.
func (p *Plugin) grant(pol *policy.Policy) error {
	mf := p.Manifest
	pt, ok := pol.Tasks[p.Name]
	if !ok {
		return fmt.Errorf("the policy %s grants nothing to task %q; the security team adds `tasks: {%s: {endpoints: [...]}}` (without module) to let it run", pol.Path, p.Name, p.Name)
	}
	if !pt.IsPluginGrant() {
		return fmt.Errorf("task %q has a module in the policy (%s); a plugin cannot replace it: rename the plugin or remove module from the policy's task", p.Name, pt.Module)
	}
	if pt.SHA256 != "" && pt.SHA256 != p.Digest {
		return fmt.Errorf("module sha256 is %s, the policy pins %s", p.Digest, pt.SHA256)
	}
	g := *pt
	g.Module = filepath.Join(p.Dir, mf.Module)
	g.Entry = mf.Entry
	g.Version = mf.Version
	g.Title = mf.Title
	g.Description = mf.Description
	g.InputSchema, g.OutputSchema = "", ""
	granted := map[string]bool{}
	for _, e := range pt.Endpoints {
		granted[e] = true
	}
	g.Endpoints = []string{}
	var diffs []Diff
	for _, e := range mf.Endpoints {
		if granted[e] {
			g.Endpoints = append(g.Endpoints, e)
		} else {
			diffs = append(diffs, Diff{Field: "endpoints", Requested: e, Granted: "not granted"})
		}
	}
	req, lim := mf.Limits, &g.Limits
	for _, k := range mf.LimitsSet {
		switch k {
		case "memory":
			narrow(&diffs, k, req.MemoryPages, &lim.MemoryPages, func(v uint32) string { return bytesString(int64(v) * policy.WasmPageSize) })
		case "timeout":
			narrow(&diffs, k, req.Timeout, &lim.Timeout, func(v time.Duration) string { return v.String() })
		case "output_bytes":
			narrow(&diffs, k, req.OutputBytes, &lim.OutputBytes, bytesString)
		case "http_calls":
			narrow(&diffs, k, req.HTTPCalls, &lim.HTTPCalls, func(v int) string { return fmt.Sprint(v) })
		case "log_bytes":
			narrow(&diffs, k, req.LogBytes, &lim.LogBytes, bytesString)
		}
	}
	p.Diffs = diffs
	p.Grant = &g
	if len(diffs) > 0 && pol.Plugins.Strict {
		lines := make([]string, len(diffs))
		for i, d := range diffs {
			lines[i] = d.String()
		}
		return fmt.Errorf("requests more than the policy grants and the policy is strict:\n  %s\nask the security team to widen tasks.%s, or request less in %s", strings.Join(lines, "\n  "), p.Name, policy.ManifestFile)
	}
	return nil
}

func narrow[T uint32 | int | int64 | time.Duration](diffs *[]Diff, key string, req T, lim *T, format func(T) string) {
	if req > *lim {
		*diffs = append(*diffs, Diff{Field: "limits." + key, Requested: format(req), Granted: format(*lim)})
		return
	}
	*lim = req
}

func bytesString(v int64) string { return fmt.Sprintf("%d bytes", v) }

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// Fingerprint identifies this exact plugin: every file it consists of and its signer. Two
// reads with the same fingerprint are the same plugin.
func (p *Plugin) Fingerprint() string {
	names := make([]string, 0, len(p.files))
	for n := range p.files {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n + "=" + digest(p.files[n]) + "\n")
	}
	if p.Signature != nil {
		b.WriteString("signer=" + p.Signature.KeyID + "\n")
	}
	return digest([]byte(b.String()))
}

func readFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, outcome.New(outcome.ModuleRejected, "cannot read module %s: %v", path, unwrapPath(err))
	}
	return b, nil
}

package policy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/castellan-dev/castellan/internal/strictyaml"
)

// Manifest is a plugin's plugin.yaml, written by the task's author: what the module is and
// what it asks for. It grants nothing; the policy's task of the same name does
// (docs/plugins.md). It is parsed as strictly as the policy, with the same file:line: field
// problems, because a misspelt capability silently dropped would make the audit lie.
type Manifest struct {
	File        string // the manifest file, as named to ParseManifest
	Name        string
	Version     string
	Module      string // file name of the module inside the plugin directory; default NAME.wasm
	Entry       string // default "run"
	Title       string
	Description string
	// InputSchema and OutputSchema are JSON Schema documents (JSON text), written inline in
	// YAML or read from a file in the plugin directory; nil when absent.
	InputSchema  json.RawMessage
	OutputSchema json.RawMessage
	// SchemaFiles maps "input_schema"/"output_schema" to the file (relative to the plugin
	// directory) the schema was read from, for signing; absent for inline schemas.
	SchemaFiles map[string]string
	// Endpoints are the endpoint names the plugin requests, in manifest order.
	Endpoints []string
	// Limits are the limits requested; only the keys listed in LimitsSet were written.
	Limits    Limits
	LimitsSet []string // subset of memory, timeout, output_bytes, http_calls, log_bytes
}

// ManifestFile is the manifest's file name inside a plugin directory.
const ManifestFile = "plugin.yaml"

// ParseManifest parses manifest data. name is used in problems and as Manifest.File.
// readFile reads a schema file the manifest names (a plain file name in the plugin's
// directory); the caller decides what may be read, so that a link or another file that is
// not the plugin's own is refused in one place (package plugins). A nil readFile refuses
// every schema file. Every problem is returned as *Error.
func ParseManifest(name string, data []byte, readFile func(file string) ([]byte, error)) (*Manifest, error) {
	d := &decoder{Decoder: strictyaml.Decoder{File: name, Kind: "plugin manifest"}}
	mf := d.manifest(data, readFile)
	if err := d.Err(); err != nil {
		return nil, err
	}
	mf.File = name
	return mf, nil
}

// A plugin's version and description are published in the control plane's catalog, which
// refuses the whole catalog for one bad entry; they are held to the catalog's rules here, so
// that one plugin is refused at load instead.
var versionRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$`)

// MaxDescription is the longest description the control plane's catalog accepts, in bytes.
const MaxDescription = 1024

var limitKeys = []string{"memory", "timeout", "output_bytes", "http_calls", "log_bytes"}

func (d *decoder) manifest(data []byte, readFile func(string) ([]byte, error)) *Manifest {
	mf := &Manifest{Entry: DefaultEntry, SchemaFiles: map[string]string{}}
	n := d.root(data)
	if n == nil {
		return mf
	}
	top, ok := d.Mapping(n, "", n.Line, []string{"name", "version", "module", "entry", "title", "description", "input_schema", "output_schema", "annotations", "capabilities"})
	if !ok {
		return mf
	}
	if v := top.Get("name"); v == nil {
		d.Add(n.Line, "name", "missing; set the plugin's name (the task name the policy grants, and the directory's name)")
	} else if s, ok := d.text(v, "name"); ok {
		d.name("plugin", s, v.Line, "name")
		mf.Name = s
	}
	if v := top.Get("version"); v == nil {
		d.Add(n.Line, "version", "missing; set the plugin's version, e.g. version: \"1.0.0\"")
	} else if s, ok := d.text(v, "version"); ok {
		if !versionRE.MatchString(s) {
			d.Add(v.Line, "version", "%q must be 1-64 of A-Z a-z 0-9 _ . + - starting with a letter or digit (what the control plane accepts in its catalog)", s)
		}
		mf.Version = s
	}
	mf.Module = mf.Name + ".wasm"
	if v := top.Get("module"); v != nil {
		if s, ok := d.plainFile(v, "module"); ok {
			mf.Module = s
		}
	}
	if v := top.Get("entry"); v != nil {
		if s, ok := d.text(v, "entry"); ok {
			if len(s) > 256 {
				d.Add(v.Line, "entry", "export name longer than 256 bytes")
			}
			mf.Entry = s
		}
	}
	if v := top.Get("annotations"); v != nil {
		// Known only to say why it is refused: what a task does to the systems it calls is
		// the security team's statement, not the author's claim about their own code.
		d.Add(top.KeyLine["annotations"], "annotations", "a plugin cannot set its own annotations (read_only, destructive, idempotent); the policy's task %q sets them", mf.Name)
	}
	if v := top.Get("title"); v != nil {
		mf.Title, _ = d.title(v, "title")
	}
	if v := top.Get("description"); v != nil {
		mf.Description, _ = d.Str(v, "description")
		if len(mf.Description) > MaxDescription {
			d.Add(v.Line, "description", "is %d bytes, at most %d (what the control plane accepts in its catalog)", len(mf.Description), MaxDescription)
		}
	}
	for _, key := range []string{"input_schema", "output_schema"} {
		v := top.Get(key)
		if v == nil {
			continue
		}
		schema, file := d.schema(v, key, readFile)
		if key == "input_schema" {
			mf.InputSchema = schema
		} else {
			mf.OutputSchema = schema
		}
		if file != "" {
			mf.SchemaFiles[key] = file
		}
	}
	if v := top.Get("capabilities"); v != nil {
		c, _ := d.Mapping(v, "capabilities", top.KeyLine["capabilities"], []string{"endpoints", "limits"})
		if ev := c.Get("endpoints"); ev != nil {
			items, _ := d.List(ev, "capabilities.endpoints")
			seen := map[string]int{}
			for i, it := range items {
				ipath := strictyaml.Index("capabilities.endpoints", i)
				s, ok := d.text(it, ipath)
				if !ok {
					continue
				}
				d.name("endpoint", s, it.Line, ipath)
				if first, dup := seen[s]; dup {
					d.Add(it.Line, ipath, "endpoint %q is already requested at capabilities.endpoints[%d]; remove one", s, first)
					continue
				}
				seen[s] = i
				mf.Endpoints = append(mf.Endpoints, s)
			}
		}
		if lv := c.Get("limits"); lv != nil {
			mf.Limits = d.limits(lv, "capabilities.limits", c.KeyLine["limits"])
			if lv.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(lv.Content); i += 2 {
					if k := lv.Content[i].Value; slices.Contains(limitKeys, k) && !slices.Contains(mf.LimitsSet, k) {
						mf.LimitsSet = append(mf.LimitsSet, k)
					}
				}
			}
		}
	}
	return mf
}

// plainFile checks a file name inside the plugin directory: no directory part, so a manifest
// can never point the worker at a file outside the plugin it came with.
func (d *decoder) plainFile(n *yaml.Node, path string) (string, bool) {
	s, ok := d.text(n, path)
	if !ok {
		return "", false
	}
	if s != filepath.Base(s) || strings.ContainsAny(s, `/\`) || s == "." || s == ".." || strings.HasPrefix(s, ".") {
		d.Add(n.Line, path, "%q must be a plain file name inside the plugin directory (no \"/\", no leading \".\")", s)
		return "", false
	}
	return s, true
}

// schema decodes an inline YAML schema (a mapping, converted to JSON) or a file name of a
// JSON document in the plugin directory, read with readFile.
func (d *decoder) schema(n *yaml.Node, path string, readFile func(string) ([]byte, error)) (json.RawMessage, string) {
	if n.Kind == yaml.MappingNode {
		if d.HasAlias(n, path) {
			return nil, ""
		}
		var v any
		if err := n.Decode(&v); err != nil {
			d.Add(n.Line, path, "inline schema: %v", err)
			return nil, ""
		}
		b, err := json.Marshal(v)
		if err != nil {
			d.Add(n.Line, path, "inline schema cannot be written as JSON (%v); keys must be strings", err)
			return nil, ""
		}
		return b, ""
	}
	name, ok := d.plainFile(n, path)
	if !ok {
		return nil, ""
	}
	if readFile == nil {
		d.Add(n.Line, path, "schema file %s: no files can be read here; write the schema inline", name)
		return nil, ""
	}
	b, err := readFile(name)
	if err != nil {
		d.Add(n.Line, path, "cannot read schema file %s: %v", name, unwrapPathError(err))
		return nil, ""
	}
	var obj map[string]any
	if err := json.Unmarshal(b, &obj); err != nil {
		d.Add(n.Line, path, "schema file %s is not a JSON object: %v", name, err)
		return nil, ""
	}
	return json.RawMessage(b), name
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

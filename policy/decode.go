package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// decoder walks the yaml.Node tree and collects problems instead of stopping at the first.
// Helpers report their own problems and return ok=false; callers just skip the value.
type decoder struct {
	file    string
	baseDir string
	probs   []Problem
}

func (d *decoder) add(line int, field, format string, args ...any) {
	d.probs = append(d.probs, Problem{File: d.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) err() error {
	if len(d.probs) == 0 {
		return nil
	}
	sort.SliceStable(d.probs, func(i, j int) bool { return d.probs[i].Line < d.probs[j].Line })
	return &Error{Problems: d.probs}
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// root decodes the single YAML document. It returns nil (and records a problem) on a syntax
// error, and an empty mapping for an empty file so that "version is missing" is reported.
func (d *decoder) root(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return &yaml.Node{Kind: yaml.MappingNode, Line: 1}
		}
		d.syntaxError(err)
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		d.syntaxError(err)
		return nil
	default:
		d.add(extra.Line, "", "a second YAML document starts here; a policy file holds exactly one (remove the \"---\")")
		return nil
	}
	if len(doc.Content) == 0 {
		return &yaml.Node{Kind: yaml.MappingNode, Line: 1}
	}
	return doc.Content[0]
}

func (d *decoder) syntaxError(err error) {
	d.probs = append(d.probs, SyntaxProblem(d.file, err))
}

// SyntaxProblem turns a YAML decoder's error ("yaml: line N: ...", the form of yaml.v3 and
// its successor go.yaml.in/yaml/v3) into a Problem at that line of file. Other strict YAML
// files of Castellan (approval rules) report syntax errors through it, so every file names
// the line the same way.
func SyntaxProblem(file string, err error) Problem {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return Problem{File: file, Line: line, Msg: "invalid YAML: " + m[2]}
	}
	return Problem{File: file, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

// field joins a path and a key; keys that are not plain names are quoted so that the path
// stays unambiguous.
func field(path, key string) string {
	if !plainKeyRE.MatchString(key) {
		key = strconv.Quote(key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

var plainKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.ShortTag() {
	case "!!null":
		return "empty"
	case "!!bool":
		return "a boolean"
	case "!!int":
		return "a whole number"
	case "!!float":
		return "a decimal number"
	case "!!str":
		return "a string"
	}
	return "a value tagged " + n.ShortTag()
}

// alias reports YAML aliases: they make a reviewer chase anchors across the file to know what
// a grant is, so the policy must spell every value out.
func (d *decoder) alias(n *yaml.Node, path string) bool {
	if n.Kind == yaml.AliasNode {
		d.add(n.Line, path, "YAML aliases (*%s) are not supported in a policy; write the value out in full", n.Value)
		return true
	}
	return false
}

// mapping is a decoded YAML mapping with its keys in file order.
type mapping struct {
	path    string
	line    int // line of the key owning this mapping, for "missing field" problems
	keys    []string
	vals    map[string]*yaml.Node
	keyLine map[string]int
}

func (m *mapping) get(key string) *yaml.Node { return m.vals[key] }

// mapping decodes n as a mapping. known lists the allowed keys (nil allows any key, for maps
// of names). A null value is an empty mapping.
func (d *decoder) mapping(n *yaml.Node, path string, line int, known []string) (*mapping, bool) {
	m := &mapping{path: path, line: line, vals: map[string]*yaml.Node{}, keyLine: map[string]int{}}
	if n == nil || isNull(n) {
		return m, true
	}
	if d.alias(n, path) {
		return m, false
	}
	if n.Kind != yaml.MappingNode {
		d.add(n.Line, path, "must be a mapping (indented \"key: value\" lines), not %s", describe(n))
		return m, false
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || (k.ShortTag() != "!!str" && k.ShortTag() != "!!int") {
			d.add(k.Line, path, "keys must be plain names, not %s", describe(k))
			continue
		}
		key := k.Value
		if known != nil && !contains(known, key) {
			d.add(k.Line, field(path, key), "unknown key%s; allowed here: %s", suggest(key, known), strings.Join(known, ", "))
			continue
		}
		if first, dup := m.keyLine[key]; dup {
			d.add(k.Line, field(path, key), "duplicate key (first at line %d); remove one", first)
			continue
		}
		m.keys = append(m.keys, key)
		m.vals[key] = v
		m.keyLine[key] = k.Line
	}
	return m, true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Suggest returns ` (did you mean "x"?)` for a near miss among known keys, or "" when no
// known key is within two edits. Other strict files of Castellan use it for their unknown
// keys, so every file suggests the same way.
func Suggest(key string, known []string) string { return suggest(key, known) }

// suggest returns ` (did you mean "x"?)` for a near miss among known keys.
func suggest(key string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		if dist := editDistance(key, k); dist < bestDist {
			best, bestDist = k, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// str decodes a scalar as text, exactly as written. Numbers are accepted as text (a version
// "1.0" or a digest that happens to look numeric); booleans and nulls are not.
func (d *decoder) str(n *yaml.Node, path string) (string, bool) {
	if d.alias(n, path) {
		return "", false
	}
	if n.Kind != yaml.ScalarNode {
		d.add(n.Line, path, "must be a string, not %s", describe(n))
		return "", false
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float":
		return n.Value, true
	}
	d.add(n.Line, path, "must be a string, not %s (quote it if you mean the text)", describe(n))
	return "", false
}

// text is str for a required, non-empty, single-line value.
func (d *decoder) text(n *yaml.Node, path string) (string, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return "", false
	}
	if strings.TrimSpace(s) == "" {
		d.add(n.Line, path, "must not be empty")
		return "", false
	}
	if hasControl(s) {
		d.add(n.Line, path, "must be a single line without control characters")
		return "", false
	}
	return s, true
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

// integer decodes a whole number within [lo, hi].
func (d *decoder) integer(n *yaml.Node, path string, lo, hi int64) (int64, bool) {
	if d.alias(n, path) {
		return 0, false
	}
	var v int64
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&v) != nil {
		d.add(n.Line, path, "must be a whole number such as 1, not %s", describe(n))
		return 0, false
	}
	if v < lo || v > hi {
		d.add(n.Line, path, "%d is out of range; use %d to %d", v, lo, hi)
		return 0, false
	}
	return v, true
}

var sizeRE = regexp.MustCompile(`^([0-9]+)(KiB|MiB|GiB)?$`)

// size decodes "1048576", "256KiB", "1MiB" or "1GiB" within [lo, hi] bytes.
func (d *decoder) size(n *yaml.Node, path string, lo, hi int64) (int64, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return 0, false
	}
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		hint := ""
		if u := strings.ToUpper(s); strings.HasSuffix(u, "KB") || strings.HasSuffix(u, "MB") || strings.HasSuffix(u, "GB") {
			hint = " (KB/MB/GB are ambiguous: write KiB, MiB or GiB)"
		}
		d.add(n.Line, path, "size %q: want a whole number of bytes, optionally with a KiB, MiB or GiB suffix, e.g. 256KiB or 1MiB%s", s, hint)
		return 0, false
	}
	v, err := strconv.ParseInt(m[1], 10, 64)
	mult := map[string]int64{"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[m[2]]
	if err != nil || v > math.MaxInt64/mult {
		d.add(n.Line, path, "size %q is too large; the maximum here is %s", s, formatSize(hi))
		return 0, false
	}
	v *= mult
	if v < lo || v > hi {
		d.add(n.Line, path, "size %s is out of range; use %s to %s", s, formatSize(lo), formatSize(hi))
		return 0, false
	}
	return v, true
}

// duration decodes a Go duration such as "500ms", "10s" or "5m" within (0, hi].
func (d *decoder) duration(n *yaml.Node, path string, hi time.Duration) (time.Duration, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return 0, false
	}
	if n.ShortTag() == "!!int" || n.ShortTag() == "!!float" {
		d.add(n.Line, path, "duration %s needs a unit, e.g. %ss (units: ms, s, m, h)", s, s)
		return 0, false
	}
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		d.add(n.Line, path, "duration %q: want a number with a unit, e.g. 500ms, 10s, 5m or 1h", s)
		return 0, false
	}
	if v <= 0 || v > hi {
		d.add(n.Line, path, "duration %s is out of range; use more than 0 and at most %s", s, formatDuration(hi))
		return 0, false
	}
	return v, true
}

// list decodes a sequence; a null value is an empty list.
func (d *decoder) list(n *yaml.Node, path string) ([]*yaml.Node, bool) {
	if isNull(n) {
		return nil, true
	}
	if d.alias(n, path) {
		return nil, false
	}
	if n.Kind != yaml.SequenceNode {
		d.add(n.Line, path, "must be a list (\"- item\" lines or [a, b]), not %s", describe(n))
		return nil, false
	}
	return n.Content, true
}

// path resolves a host file path against the policy's directory.
func (d *decoder) path(n *yaml.Node, path string) (string, bool) {
	s, ok := d.text(n, path)
	if !ok {
		return "", false
	}
	if strings.ContainsRune(s, 0) {
		d.add(n.Line, path, "path must not contain NUL")
		return "", false
	}
	if !filepath.IsAbs(s) {
		s = filepath.Join(d.baseDir, s)
	}
	if abs, err := filepath.Abs(s); err == nil {
		return abs, true
	}
	return filepath.Clean(s), true
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// name checks a credential, endpoint or task name.
func (d *decoder) name(kind, key string, line int, path string) {
	if !nameRE.MatchString(key) {
		d.add(line, path, "%s name %q must match ^[a-z][a-z0-9_-]{0,62}$ (a lower-case letter, then up to 62 lower-case letters, digits, \"_\" or \"-\")", kind, key)
	}
}

var envRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func (d *decoder) envName(n *yaml.Node, path string) (string, bool) {
	s, ok := d.text(n, path)
	if !ok {
		return "", false
	}
	if !envRE.MatchString(s) {
		d.add(n.Line, path, "environment variable name %q must be letters, digits and \"_\", not starting with a digit", s)
		return "", false
	}
	return s, true
}

func formatSize(n int64) string {
	switch {
	case n != 0 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n != 0 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n != 0 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	case n == 1:
		return "1 byte"
	}
	return fmt.Sprintf("%d bytes", n)
}

// formatDuration prints 5m rather than 5m0s.
func formatDuration(v time.Duration) string {
	s := v.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

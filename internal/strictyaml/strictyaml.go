// Package strictyaml reads the YAML files that people write for Castellan (the policy, plugin
// manifests, approval rules) the one strict way they all share: exactly one document, unknown
// keys refused with a "did you mean", duplicate keys and aliases refused, and every problem
// named by file, line and field path. All problems are collected, so one check shows
// everything to fix.
//
// Parsing is go.yaml.in/yaml/v3's; this package only walks its yaml.Node tree. What a field
// means (a URL, a size, a CEL expression) is the caller's business: a Decoder checks shapes
// and scalars and records problems, and the caller adds its own through Add.
package strictyaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Problem is one thing wrong with a file.
type Problem struct {
	File  string // the file, as the caller named it
	Line  int    // 1-based; 0 when the problem is not tied to a line (the file cannot be read)
	Field string // dotted path such as "endpoints.crm.allow[1]"; empty for syntax errors
	Msg   string // what is wrong and what to do; never a secret value
}

// String formats the problem as "file:line: field: message", the form editors and CI
// annotations recognise.
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Error is every problem found in a file, in line order.
type Error struct {
	Problems []Problem
}

// Error prints one problem per line.
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Decoder collects the problems of one file. Its methods report their own problems and
// return ok=false; a caller just skips the value.
type Decoder struct {
	File  string // named in every problem
	Kind  string // what the file is, for messages: "policy file", "rules file"
	probs []Problem
}

// Add records a problem at line (0: not tied to a line) and field.
func (d *Decoder) Add(line int, field, format string, args ...any) {
	d.probs = append(d.probs, Problem{File: d.File, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// Err returns the problems recorded so far as *Error, in line order, or nil when there are
// none.
func (d *Decoder) Err() error {
	if len(d.probs) == 0 {
		return nil
	}
	sort.SliceStable(d.probs, func(i, j int) bool { return d.probs[i].Line < d.probs[j].Line })
	return &Error{Problems: d.probs}
}

// Root decodes data as exactly one YAML document and returns its top node. It returns
// (nil, true) for an empty document, so that the caller says what is missing, and
// (nil, false) after recording a syntax error or a second document.
func (d *Decoder) Root(data []byte) (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, true
		}
		d.probs = append(d.probs, SyntaxProblem(d.File, err))
		return nil, false
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		d.probs = append(d.probs, SyntaxProblem(d.File, err))
		return nil, false
	default:
		d.Add(max(extra.Line, 1), "", "a second YAML document starts here; a %s holds exactly one (remove the \"---\")", d.Kind)
		return nil, false
	}
	if len(doc.Content) == 0 {
		return nil, true
	}
	return doc.Content[0], true
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// SyntaxProblem turns a YAML decoder's error ("yaml: line N: ...", the form of
// go.yaml.in/yaml/v3) into a Problem at that line of file.
func SyntaxProblem(file string, err error) Problem {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return Problem{File: file, Line: line, Msg: "invalid YAML: " + m[2]}
	}
	return Problem{File: file, Msg: "invalid YAML: " + strings.TrimPrefix(msg, "yaml: ")}
}

var plainKeyRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Field joins a path and a key; keys that are not plain names are quoted so that the path
// stays unambiguous.
func Field(path, key string) string {
	if !plainKeyRE.MatchString(key) {
		key = strconv.Quote(key)
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

// Index names item i of the list at path.
func Index(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

// IsNull reports an empty value (nothing after the colon, "~" or "null").
func IsNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// Describe names what n is, for "must be X, not Y" messages.
func Describe(n *yaml.Node) string {
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

// Alias reports a YAML alias: it makes a reviewer chase anchors across the file to know what
// a value is, so every value must be spelled out where it stands.
func (d *Decoder) Alias(n *yaml.Node, path string) bool {
	if n.Kind == yaml.AliasNode {
		d.Add(n.Line, path, "YAML aliases (*%s) are not supported in a %s; write the value out in full", n.Value, d.Kind)
		return true
	}
	return false
}

// HasAlias is Alias for n and everything below it.
func (d *Decoder) HasAlias(n *yaml.Node, path string) bool {
	if d.Alias(n, path) {
		return true
	}
	for _, c := range n.Content {
		if d.HasAlias(c, path) {
			return true
		}
	}
	return false
}

// Mapping is a decoded YAML mapping with its keys in file order.
type Mapping struct {
	Path    string
	Line    int // line of the key owning this mapping, for "missing field" problems
	Keys    []string
	Vals    map[string]*yaml.Node
	KeyLine map[string]int
}

// Get returns the value of key, or nil when the key is absent.
func (m *Mapping) Get(key string) *yaml.Node { return m.Vals[key] }

// Mapping decodes n as a mapping at path, owned by the key on line. known lists the allowed
// keys (nil allows any key, for maps of names). A null value is an empty mapping. The
// returned Mapping is never nil, so that a caller may go on looking for further problems.
func (d *Decoder) Mapping(n *yaml.Node, path string, line int, known []string) (*Mapping, bool) {
	m := &Mapping{Path: path, Line: line, Vals: map[string]*yaml.Node{}, KeyLine: map[string]int{}}
	if n == nil || IsNull(n) {
		return m, true
	}
	if d.Alias(n, path) {
		return m, false
	}
	if n.Kind != yaml.MappingNode {
		d.Add(n.Line, path, "must be a mapping (indented \"key: value\" lines or {key: value}), not %s", Describe(n))
		return m, false
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || (k.ShortTag() != "!!str" && k.ShortTag() != "!!int") {
			d.Add(k.Line, path, "keys must be plain names, not %s", Describe(k))
			continue
		}
		key := k.Value
		if known != nil && !slices.Contains(known, key) {
			d.Add(k.Line, Field(path, key), "unknown key%s; allowed here: %s", Suggest(key, known), strings.Join(known, ", "))
			continue
		}
		if first, dup := m.KeyLine[key]; dup {
			d.Add(k.Line, Field(path, key), "duplicate key (first at line %d); remove one", first)
			continue
		}
		m.Keys = append(m.Keys, key)
		m.Vals[key] = v
		m.KeyLine[key] = k.Line
	}
	return m, true
}

// List decodes a sequence; a null value is an empty list.
func (d *Decoder) List(n *yaml.Node, path string) ([]*yaml.Node, bool) {
	if IsNull(n) {
		return nil, true
	}
	if d.Alias(n, path) {
		return nil, false
	}
	if n.Kind != yaml.SequenceNode {
		d.Add(n.Line, path, "must be a list (\"- item\" lines or [a, b]), not %s", Describe(n))
		return nil, false
	}
	return n.Content, true
}

// Suggest returns ` (did you mean "x"?)` for a near miss among known, or "" when no known
// name is within two edits.
func Suggest(key string, known []string) string {
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

// Str decodes a scalar as text, exactly as written. Numbers are accepted as text (a version
// "1.0" or a digest that happens to look numeric); booleans and nulls are not.
func (d *Decoder) Str(n *yaml.Node, path string) (string, bool) {
	if d.Alias(n, path) {
		return "", false
	}
	if n.Kind != yaml.ScalarNode {
		d.Add(n.Line, path, "must be a string, not %s", Describe(n))
		return "", false
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float":
		return n.Value, true
	}
	d.Add(n.Line, path, "must be a string, not %s (quote it if you mean the text)", Describe(n))
	return "", false
}

// TextRule says what Text accepts beyond a non-empty single line. The zero TextRule accepts
// numbers as text (as Str does) and any length.
type TextRule struct {
	StringsOnly bool // refuse unquoted numbers, so that `reason: 1.0` is not silently text
	MaxChars    int  // at most this many characters; 0: no limit
	Multiline   bool // allow line breaks and tabs (a CEL expression in a block scalar)
}

// Text decodes a required, non-empty value without control characters.
func (d *Decoder) Text(n *yaml.Node, path string, r TextRule) (string, bool) {
	if r.StringsOnly && n.Kind != yaml.AliasNode && (n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str") {
		d.Add(n.Line, path, "must be a string, not %s (quote it if you mean the text)", Describe(n))
		return "", false
	}
	s, ok := d.Str(n, path)
	if !ok {
		return "", false
	}
	switch {
	case strings.TrimSpace(s) == "":
		d.Add(n.Line, path, "must not be empty")
		return "", false
	case r.MaxChars > 0 && len([]rune(s)) > r.MaxChars:
		d.Add(n.Line, path, "is %d characters; at most %d", len([]rune(s)), r.MaxChars)
		return "", false
	case hasControl(s, r.Multiline):
		d.Add(n.Line, path, "must be a single line without control characters")
		return "", false
	}
	return s, true
}

func hasControl(s string, multiline bool) bool {
	for _, r := range s {
		if (r < 0x20 || r == 0x7f) && !(multiline && (r == '\n' || r == '\t')) {
			return true
		}
	}
	return false
}

// Int decodes a whole number within [lo, hi].
func (d *Decoder) Int(n *yaml.Node, path string, lo, hi int64) (int64, bool) {
	if d.Alias(n, path) {
		return 0, false
	}
	var v int64
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&v) != nil {
		d.Add(n.Line, path, "must be a whole number such as 1, not %s", Describe(n))
		return 0, false
	}
	if v < lo || v > hi {
		d.Add(n.Line, path, "%d is out of range; use %d to %d", v, lo, hi)
		return 0, false
	}
	return v, true
}

// Bool decodes true or false.
func (d *Decoder) Bool(n *yaml.Node, path string) (bool, bool) {
	if d.Alias(n, path) {
		return false, false
	}
	var b bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&b) != nil {
		d.Add(n.Line, path, "must be true or false, not %s", Describe(n))
		return false, false
	}
	return b, true
}

// Duration decodes a Go duration such as "500ms", "10s" or "5m". The range is the caller's
// to check, with a message that says why it is what it is.
func (d *Decoder) Duration(n *yaml.Node, path string) (time.Duration, bool) {
	if d.Alias(n, path) {
		return 0, false
	}
	if n.Kind == yaml.ScalarNode && (n.ShortTag() == "!!int" || n.ShortTag() == "!!float") {
		d.Add(n.Line, path, "duration %s needs a unit, e.g. %ss (units: ms, s, m, h)", n.Value, n.Value)
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		d.Add(n.Line, path, "must be a duration such as 10s, not %s", Describe(n))
		return 0, false
	}
	v, err := time.ParseDuration(strings.TrimSpace(n.Value))
	if err != nil {
		d.Add(n.Line, path, "duration %q: want a number with a unit, e.g. 500ms, 10s, 5m or 1h", n.Value)
		return 0, false
	}
	return v, true
}

// FormatDuration prints 5m rather than 5m0s, and 1h rather than 1h0m0s.
func FormatDuration(v time.Duration) string {
	s := v.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"cel.dev/cel-go/cel"
	"go.yaml.in/yaml/v3"

	"github.com/castellan-dev/castellan/policy"
)

// Bounds of a rules file. A rules file is written by people; anything beyond these is a
// mistake or an attempt to make the approver slow.
const (
	MaxFileBytes       = 1 << 20
	MaxRules           = 1000
	MaxExpressionChars = 4096
	MaxReasonChars     = 200
	MaxTTL             = 24 * time.Hour // the worker's default maximum approval lifetime
	MaxAttemptsLimit   = 100
)

// Load reads and checks the rules file at path. Problems are returned together as a
// *policy.Error, each naming the file and line.
func Load(path string) (*RuleSet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fileError(path, "cannot read the rules file: %v", errors.Unwrap(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fileError(path, "cannot read the rules file: %v", err)
	}
	return Parse(path, data)
}

// Parse checks data as a rules file called name (used in every problem).
func Parse(name string, data []byte) (*RuleSet, error) {
	if name == "" {
		name = "rules"
	}
	if len(data) > MaxFileBytes {
		return nil, fileError(name, "the rules file is larger than %d bytes", MaxFileBytes)
	}
	env, err := newEnv()
	if err != nil {
		return nil, fileError(name, "internal error preparing CEL: %v", err)
	}
	d := &decoder{file: name, env: env}
	s := d.ruleSet(data)
	if len(d.probs) > 0 {
		sort.SliceStable(d.probs, func(i, j int) bool { return d.probs[i].Line < d.probs[j].Line })
		return nil, &policy.Error{Problems: d.probs}
	}
	s.file = name
	return s, nil
}

func fileError(file, format string, args ...any) error {
	return &policy.Error{Problems: []policy.Problem{{File: file, Msg: fmt.Sprintf(format, args...)}}}
}

type decoder struct {
	file  string
	env   *cel.Env
	probs []policy.Problem
}

func (d *decoder) add(line int, field, format string, args ...any) {
	d.probs = append(d.probs, policy.Problem{File: d.file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) ruleSet(data []byte) *RuleSet {
	s := &RuleSet{}
	root := d.root(data)
	if root == nil {
		return s
	}
	top := d.mapping(root, "", []string{"rules"})
	if top == nil {
		return s
	}
	list, ok := top.vals["rules"]
	if !ok {
		d.add(root.Line, "rules", "missing; the file is a mapping with one key, \"rules\", holding a list of rules")
		return s
	}
	items := d.list(list, "rules")
	if len(items) > MaxRules {
		d.add(list.Line, "rules", "%d rules; at most %d", len(items), MaxRules)
		return s
	}
	names := map[string]int{}
	for i, n := range items {
		if r := d.rule(n, fmt.Sprintf("rules[%d]", i), names); r != nil {
			s.rules = append(s.rules, *r)
		}
	}
	return s
}

// root decodes the single YAML document.
func (d *decoder) root(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.add(1, "rules", "missing; the file is empty")
			return nil
		}
		d.probs = append(d.probs, policy.SyntaxProblem(d.file, err))
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		d.probs = append(d.probs, policy.SyntaxProblem(d.file, err))
		return nil
	default:
		d.add(max(extra.Line, 1), "", "a second YAML document starts here; a rules file holds exactly one (remove the \"---\")")
		return nil
	}
	if len(doc.Content) == 0 {
		d.add(1, "rules", "missing; the file is empty")
		return nil
	}
	return doc.Content[0]
}

type mapping struct {
	vals    map[string]*yaml.Node
	keyLine map[string]int
}

// mapping decodes n as a mapping with only the known keys. A null value is an empty mapping.
func (d *decoder) mapping(n *yaml.Node, path string, known []string) *mapping {
	m := &mapping{vals: map[string]*yaml.Node{}, keyLine: map[string]int{}}
	if isNull(n) {
		return m
	}
	if d.alias(n, path) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.add(n.Line, path, "must be a mapping (\"key: value\" lines or {key: value}), not %s", describe(n))
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" {
			d.add(k.Line, path, "keys must be plain names, not %s", describe(k))
			continue
		}
		f := join(path, k.Value)
		if !contains(known, k.Value) {
			d.add(k.Line, f, "unknown key%s; allowed here: %s", policy.Suggest(k.Value, known), strings.Join(known, ", "))
			continue
		}
		if first, dup := m.keyLine[k.Value]; dup {
			d.add(k.Line, f, "duplicate key (first at line %d); remove one", first)
			continue
		}
		m.vals[k.Value] = v
		m.keyLine[k.Value] = k.Line
	}
	return m
}

func (d *decoder) list(n *yaml.Node, path string) []*yaml.Node {
	if isNull(n) {
		return nil
	}
	if d.alias(n, path) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.add(n.Line, path, "must be a list (\"- item\" lines), not %s", describe(n))
		return nil
	}
	return n.Content
}

// alias refuses YAML aliases: a reviewer must read each rule where it stands.
func (d *decoder) alias(n *yaml.Node, path string) bool {
	if n.Kind == yaml.AliasNode {
		d.add(n.Line, path, "YAML aliases (*%s) are not supported in a rules file; write the value out in full", n.Value)
		return true
	}
	return false
}

// text decodes a single-line string of at most limit characters; numbers and booleans are
// refused so that `reason: yes` does not silently become "true".
func (d *decoder) text(n *yaml.Node, path string, limit int, multiline bool) (string, bool) {
	if d.alias(n, path) {
		return "", false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		d.add(n.Line, path, "must be a string, not %s (quote it if you mean the text)", describe(n))
		return "", false
	}
	s := n.Value
	switch {
	case strings.TrimSpace(s) == "":
		d.add(n.Line, path, "must not be empty")
		return "", false
	case len([]rune(s)) > limit:
		d.add(n.Line, path, "is %d characters; at most %d", len([]rune(s)), limit)
		return "", false
	case hasControl(s, multiline):
		d.add(n.Line, path, "must be a single line without control characters")
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

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

func (d *decoder) rule(n *yaml.Node, path string, names map[string]int) *rule {
	m := d.mapping(n, path, []string{"name", "when", "approve", "deny", "ask"})
	if m == nil {
		return nil
	}
	if isNull(n) {
		d.add(n.Line, path, "is empty; a rule needs a name, a when expression and one action (approve, deny or ask)")
		return nil
	}
	r := &rule{line: n.Line}
	ok := true
	if v := m.vals["name"]; v == nil {
		d.add(n.Line, join(path, "name"), "missing; every rule has a name, which approvals record")
		ok = false
	} else if s, good := d.text(v, join(path, "name"), 63, false); !good {
		ok = false
	} else if !nameRE.MatchString(s) {
		d.add(v.Line, join(path, "name"), "rule name %q must match ^[a-z][a-z0-9_-]{0,62}$ (a lower-case letter, then lower-case letters, digits, \"_\" or \"-\")", s)
		ok = false
	} else if first, dup := names[s]; dup {
		d.add(v.Line, join(path, "name"), "rule name %q is used twice (first at line %d); approvals record the name, so it must be unique", s, first)
		ok = false
	} else {
		names[s] = v.Line
		r.name = s
		path = fmt.Sprintf("%s(%s)", path, s)
	}
	if v := m.vals["when"]; v == nil {
		d.add(n.Line, join(path, "when"), "missing; write the CEL condition, e.g. when: 'task == \"crm-lookup\"'")
		ok = false
	} else if prg, good := d.expression(v, join(path, "when")); good {
		r.prg = prg
	} else {
		ok = false
	}

	var actions []string
	for _, a := range []string{"approve", "deny", "ask"} {
		if _, has := m.vals[a]; has {
			actions = append(actions, a)
		}
	}
	sort.Slice(actions, func(i, j int) bool { return m.keyLine[actions[i]] < m.keyLine[actions[j]] })
	switch len(actions) {
	case 0:
		d.add(n.Line, path, "missing action; a rule takes exactly one of approve, deny or ask")
		return nil
	case 1:
	default:
		d.add(m.keyLine[actions[1]], join(path, actions[1]), "a rule takes exactly one action, but this one has %s; split it into two rules", strings.Join(actions, " and "))
		return nil
	}
	a := actions[0]
	v, ap := m.vals[a], join(path, a)
	switch a {
	case "approve":
		r.action = Approve
		am := d.mapping(v, ap, []string{"ttl", "max_attempts"})
		if am == nil {
			return nil
		}
		if t := am.vals["ttl"]; t == nil {
			d.add(m.keyLine[a], join(ap, "ttl"), "missing; say how long the approval is valid, e.g. ttl: 10m (at most %s)", fmtDuration(MaxTTL))
			ok = false
		} else if ttl, good := d.duration(t, join(ap, "ttl")); good {
			r.ttl = ttl
		} else {
			ok = false
		}
		r.maxAttempts = 1
		if t := am.vals["max_attempts"]; t != nil {
			if n, good := d.integer(t, join(ap, "max_attempts"), 1, MaxAttemptsLimit); good {
				r.maxAttempts = n
			} else {
				ok = false
			}
		}
	case "deny":
		r.action = Deny
		dm := d.mapping(v, ap, []string{"reason"})
		if dm == nil {
			return nil
		}
		if t := dm.vals["reason"]; t == nil {
			d.add(m.keyLine[a], join(ap, "reason"), "missing; the submitter sees the reason, so say why")
			ok = false
		} else if s, good := d.text(t, join(ap, "reason"), MaxReasonChars, false); good {
			r.reason = s
		} else {
			ok = false
		}
	case "ask":
		r.action = Ask
		am := d.mapping(v, ap, []string{"reason"})
		if am == nil {
			return nil
		}
		if t := am.vals["reason"]; t != nil {
			if s, good := d.text(t, join(ap, "reason"), MaxReasonChars, false); good {
				r.reason = s
			} else {
				ok = false
			}
		}
	}
	if !ok {
		return nil
	}
	return r
}

var undeclaredRE = regexp.MustCompile(`undeclared reference to '([^']+)'`)

// expression compiles a when expression; CEL's problems are reported at the file line they
// fall on.
func (d *decoder) expression(n *yaml.Node, path string) (cel.Program, bool) {
	src, ok := d.text(n, path, MaxExpressionChars, true)
	if !ok {
		return nil, false
	}
	ast, iss := d.env.Compile(src)
	if iss != nil && iss.Err() != nil {
		for _, e := range iss.Errors() {
			// CEL counts lines within the expression; a block scalar (| or >) starts on
			// the line after its indicator, a quoted or plain one on the key's line.
			line := n.Line + e.Location.Line() - 1
			if n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
				line++
			}
			msg := e.Message
			if m := undeclaredRE.FindStringSubmatch(msg); m != nil {
				msg = fmt.Sprintf("unknown variable or function %q%s; the variables are %s", m[1], policy.Suggest(m[1], d.names()), strings.Join(variables, ", "))
			}
			d.add(line, path, "CEL: %s (column %d)", msg, e.Location.Column()+1)
		}
		return nil, false
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		d.add(n.Line, path, "the expression is of type %s, not bool; a condition must be true or false (for a field of the input, compare it: input.flag == true)", ast.OutputType())
		return nil, false
	}
	prg, err := d.env.Program(ast,
		cel.CostLimit(CostLimit),
		cel.InterruptCheckFrequency(100),
	)
	if err != nil {
		d.add(n.Line, path, "CEL: %v", err)
		return nil, false
	}
	return prg, true
}

// names are the variables and functions a when expression may use, for suggestions.
func (d *decoder) names() []string {
	names := slices.Clone(variables)
	for f := range d.env.Functions() {
		if nameRE.MatchString(strings.ToLower(f)) {
			names = append(names, f)
		}
	}
	slices.Sort(names[len(variables):])
	return names
}

func (d *decoder) duration(n *yaml.Node, path string) (time.Duration, bool) {
	if d.alias(n, path) {
		return 0, false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		if n.Kind == yaml.ScalarNode && (n.ShortTag() == "!!int" || n.ShortTag() == "!!float") {
			d.add(n.Line, path, "duration %s needs a unit, e.g. %ss or %sm", n.Value, n.Value, n.Value)
		} else {
			d.add(n.Line, path, "must be a duration such as 10m, not %s", describe(n))
		}
		return 0, false
	}
	v, err := time.ParseDuration(strings.TrimSpace(n.Value))
	if err != nil {
		d.add(n.Line, path, "duration %q: want a number with a unit, e.g. 30s, 10m or 1h", n.Value)
		return 0, false
	}
	if v < time.Second || v > MaxTTL {
		d.add(n.Line, path, "ttl %s is out of range; use 1s to %s (workers refuse longer approvals)", n.Value, fmtDuration(MaxTTL))
		return 0, false
	}
	return v, true
}

func (d *decoder) integer(n *yaml.Node, path string, lo, hi int) (int, bool) {
	if d.alias(n, path) {
		return 0, false
	}
	var v int
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

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

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

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func fmtDuration(v time.Duration) string {
	s := v.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

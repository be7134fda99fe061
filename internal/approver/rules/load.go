package rules

import (
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

	"github.com/castellan-dev/castellan/internal/strictyaml"
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
	d := &decoder{Decoder: strictyaml.Decoder{File: name, Kind: "rules file"}, env: env}
	s := d.ruleSet(data)
	if err := d.Err(); err != nil {
		return nil, err
	}
	s.file = name
	return s, nil
}

func fileError(file, format string, args ...any) error {
	return &policy.Error{Problems: []policy.Problem{{File: file, Msg: fmt.Sprintf(format, args...)}}}
}

// decoder is the strict YAML reader of Castellan with the CEL environment rules compile in.
type decoder struct {
	strictyaml.Decoder
	env *cel.Env
}

func (d *decoder) ruleSet(data []byte) *RuleSet {
	s := &RuleSet{}
	root, ok := d.Root(data)
	if !ok {
		return s
	}
	if root == nil {
		d.Add(1, "rules", "missing; the file is empty")
		return s
	}
	top, ok := d.Mapping(root, "", root.Line, []string{"rules"})
	if !ok {
		return s
	}
	list := top.Get("rules")
	if list == nil {
		d.Add(root.Line, "rules", "missing; the file is a mapping with one key, \"rules\", holding a list of rules")
		return s
	}
	items, _ := d.List(list, "rules")
	if len(items) > MaxRules {
		d.Add(list.Line, "rules", "%d rules; at most %d", len(items), MaxRules)
		return s
	}
	names := map[string]int{}
	for i, n := range items {
		if r := d.rule(n, strictyaml.Index("rules", i), names); r != nil {
			s.rules = append(s.rules, *r)
		}
	}
	return s
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

func (d *decoder) rule(n *yaml.Node, path string, names map[string]int) *rule {
	m, good := d.Mapping(n, path, n.Line, []string{"name", "when", "approve", "deny", "ask"})
	if !good {
		return nil
	}
	if strictyaml.IsNull(n) {
		d.Add(n.Line, path, "is empty; a rule needs a name, a when expression and one action (approve, deny or ask)")
		return nil
	}
	r := &rule{line: n.Line}
	ok := true
	if v := m.Get("name"); v == nil {
		d.Add(n.Line, strictyaml.Field(path, "name"), "missing; every rule has a name, which approvals record")
		ok = false
	} else if s, good := d.Text(v, strictyaml.Field(path, "name"), strictyaml.TextRule{StringsOnly: true, MaxChars: 63}); !good {
		ok = false
	} else if !nameRE.MatchString(s) {
		d.Add(v.Line, strictyaml.Field(path, "name"), "rule name %q must match ^[a-z][a-z0-9_-]{0,62}$ (a lower-case letter, then lower-case letters, digits, \"_\" or \"-\")", s)
		ok = false
	} else if first, dup := names[s]; dup {
		d.Add(v.Line, strictyaml.Field(path, "name"), "rule name %q is used twice (first at line %d); approvals record the name, so it must be unique", s, first)
		ok = false
	} else {
		names[s] = v.Line
		r.name = s
		path = fmt.Sprintf("%s(%s)", path, s)
	}
	if v := m.Get("when"); v == nil {
		d.Add(n.Line, strictyaml.Field(path, "when"), "missing; write the CEL condition, e.g. when: 'task == \"crm-lookup\"'")
		ok = false
	} else if prg, good := d.expression(v, strictyaml.Field(path, "when")); good {
		r.prg = prg
	} else {
		ok = false
	}

	var actions []string
	for _, a := range []string{"approve", "deny", "ask"} {
		if m.Get(a) != nil {
			actions = append(actions, a)
		}
	}
	sort.Slice(actions, func(i, j int) bool { return m.KeyLine[actions[i]] < m.KeyLine[actions[j]] })
	switch len(actions) {
	case 0:
		d.Add(n.Line, path, "missing action; a rule takes exactly one of approve, deny or ask")
		return nil
	case 1:
	default:
		d.Add(m.KeyLine[actions[1]], strictyaml.Field(path, actions[1]), "a rule takes exactly one action, but this one has %s; split it into two rules", strings.Join(actions, " and "))
		return nil
	}
	a := actions[0]
	v, ap := m.Get(a), strictyaml.Field(path, a)
	switch a {
	case "approve":
		r.action = Approve
		am, good := d.Mapping(v, ap, m.KeyLine[a], []string{"ttl", "max_attempts"})
		if !good {
			return nil
		}
		if t := am.Get("ttl"); t == nil {
			d.Add(m.KeyLine[a], strictyaml.Field(ap, "ttl"), "missing; say how long the approval is valid, e.g. ttl: 10m (at most %s)", strictyaml.FormatDuration(MaxTTL))
			ok = false
		} else if ttl, good := d.ttl(t, strictyaml.Field(ap, "ttl")); good {
			r.ttl = ttl
		} else {
			ok = false
		}
		r.maxAttempts = 1
		if t := am.Get("max_attempts"); t != nil {
			if n, good := d.Int(t, strictyaml.Field(ap, "max_attempts"), 1, MaxAttemptsLimit); good {
				r.maxAttempts = int(n)
			} else {
				ok = false
			}
		}
	case "deny":
		r.action = Deny
		dm, good := d.Mapping(v, ap, m.KeyLine[a], []string{"reason"})
		if !good {
			return nil
		}
		if t := dm.Get("reason"); t == nil {
			d.Add(m.KeyLine[a], strictyaml.Field(ap, "reason"), "missing; the submitter sees the reason, so say why")
			ok = false
		} else if s, good := d.Text(t, strictyaml.Field(ap, "reason"), strictyaml.TextRule{StringsOnly: true, MaxChars: MaxReasonChars}); good {
			r.reason = s
		} else {
			ok = false
		}
	case "ask":
		r.action = Ask
		am, good := d.Mapping(v, ap, m.KeyLine[a], []string{"reason"})
		if !good {
			return nil
		}
		if t := am.Get("reason"); t != nil {
			if s, good := d.Text(t, strictyaml.Field(ap, "reason"), strictyaml.TextRule{StringsOnly: true, MaxChars: MaxReasonChars}); good {
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
	src, ok := d.Text(n, path, strictyaml.TextRule{StringsOnly: true, MaxChars: MaxExpressionChars, Multiline: true})
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
				msg = fmt.Sprintf("unknown variable or function %q%s; the variables are %s", m[1], strictyaml.Suggest(m[1], d.names()), strings.Join(variables, ", "))
			}
			d.Add(line, path, "CEL: %s (column %d)", msg, e.Location.Column()+1)
		}
		return nil, false
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		d.Add(n.Line, path, "the expression is of type %s, not bool; a condition must be true or false (for a field of the input, compare it: input.flag == true)", ast.OutputType())
		return nil, false
	}
	prg, err := d.env.Program(ast,
		cel.CostLimit(CostLimit),
		cel.InterruptCheckFrequency(100),
	)
	if err != nil {
		d.Add(n.Line, path, "CEL: %v", err)
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

// ttl decodes an approval lifetime: a duration the workers accept.
func (d *decoder) ttl(n *yaml.Node, path string) (time.Duration, bool) {
	v, ok := d.Duration(n, path)
	if !ok {
		return 0, false
	}
	if v < time.Second || v > MaxTTL {
		d.Add(n.Line, path, "ttl %s is out of range; use 1s to %s (workers refuse longer approvals)", n.Value, strictyaml.FormatDuration(MaxTTL))
		return 0, false
	}
	return v, true
}

package strictyaml

import (
	"errors"
	"strings"
	"testing"
)

// decodeAll walks src the way a caller does: the root must be a mapping of known keys whose
// values are a list of strings ("names"), a whole number ("count") or a duration ("wait").
func decodeAll(src string) error {
	d := &Decoder{File: "f.yaml", Kind: "test file"}
	root, ok := d.Root([]byte(src))
	if !ok {
		return d.Err()
	}
	if root == nil {
		d.Add(1, "", "empty")
		return d.Err()
	}
	m, ok := d.Mapping(root, "", root.Line, []string{"names", "count", "wait", "labels"})
	if !ok {
		return d.Err()
	}
	if v := m.Get("names"); v != nil {
		items, _ := d.List(v, "names")
		for i, it := range items {
			d.Text(it, Index("names", i), TextRule{StringsOnly: true, MaxChars: 5})
		}
	}
	if v := m.Get("count"); v != nil {
		d.Int(v, "count", 1, 9)
	}
	if v := m.Get("wait"); v != nil {
		d.Duration(v, "wait")
	}
	if v := m.Get("labels"); v != nil {
		d.Mapping(v, "labels", m.KeyLine["labels"], nil)
	}
	return d.Err()
}

// TestDecoderProblems: each class of mistake is named with file:line: field and says what to
// do; the file's kind is named where the rule is the file's.
func TestDecoderProblems(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, src, want string }{
		{"empty", "", "f.yaml:1: empty"},
		{"second document", "count: 1\n---\ncount: 2\n", `f.yaml:2: a second YAML document starts here; a test file holds exactly one (remove the "---")`},
		{"syntax", "count: 1\n  x: y\n", "f.yaml:2: invalid YAML: mapping values are not allowed in this context"},
		{"not a mapping", "- a\n", `f.yaml:1: must be a mapping (indented "key: value" lines or {key: value}), not a list`},
		{"unknown key with hint", "count: 1\ncuont: 2\n", `f.yaml:2: cuont: unknown key (did you mean "count"?); allowed here: names, count, wait, labels`},
		{"unknown key quoted", "count: 1\n\"a b\": 2\n", `f.yaml:2: "a b": unknown key; allowed here`},
		{"duplicate key", "count: 1\ncount: 2\n", "f.yaml:2: count: duplicate key (first at line 1); remove one"},
		{"duplicate free key", "labels: {a: 1, a: 2}\n", "f.yaml:1: labels.a: duplicate key (first at line 1)"},
		{"alias", "names: &n [a]\nlabels: *n\n", "f.yaml:2: labels: YAML aliases (*n) are not supported in a test file"},
		{"not a list", "names: a\n", `f.yaml:1: names: must be a list ("- item" lines or [a, b]), not a string`},
		{"number for a string", "names: [1]\n", "f.yaml:1: names[0]: must be a string, not a whole number (quote it if you mean the text)"},
		{"too long", "names: [abcdef]\n", "f.yaml:1: names[0]: is 6 characters; at most 5"},
		{"empty text", "names: ['  ']\n", "f.yaml:1: names[0]: must not be empty"},
		{"control character", "names: [\"a\\tb\"]\n", "f.yaml:1: names[0]: must be a single line without control characters"},
		{"out of range", "count: 10\n", "f.yaml:1: count: 10 is out of range; use 1 to 9"},
		{"not a number", "count: x\n", "f.yaml:1: count: must be a whole number such as 1, not a string"},
		{"duration without unit", "wait: 10\n", "f.yaml:1: wait: duration 10 needs a unit, e.g. 10s"},
		{"duration not a scalar", "wait: [1]\n", "f.yaml:1: wait: must be a duration such as 10s, not a list"},
		{"duration unparsable", "wait: soon\n", `f.yaml:1: wait: duration "soon": want a number with a unit`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := decodeAll(tt.src)
			var e *Error
			if !errors.As(err, &e) || len(e.Problems) != 1 {
				t.Fatalf("decode(%q) = %v, want one problem", tt.src, err)
			}
			if got := e.Problems[0].String(); !strings.HasPrefix(got, tt.want) {
				t.Fatalf("decode(%q) = %q, want prefix %q", tt.src, got, tt.want)
			}
		})
	}
}

// TestDecoderSortsByLine: problems come out in file order whatever order they were found in.
func TestDecoderSortsByLine(t *testing.T) {
	t.Parallel()
	d := &Decoder{File: "f"}
	d.Add(3, "c", "third")
	d.Add(1, "a", "first")
	d.Add(2, "b", "second")
	want := "f:1: a: first\nf:2: b: second\nf:3: c: third"
	if got := d.Err().Error(); got != want {
		t.Fatalf("Err() = %q, want %q", got, want)
	}
	if err := (&Decoder{}).Err(); err != nil {
		t.Fatalf("Err() with no problems = %v, want nil", err)
	}
}

// TestValid: a good file has no problems.
func TestValid(t *testing.T) {
	t.Parallel()
	if err := decodeAll("names: [ab, cd]\ncount: 3\nwait: 10s\nlabels: {x: 1, 2: y}\n"); err != nil {
		t.Fatalf("decode = %v, want nil", err)
	}
}

func TestSuggest(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		key  string
		want string
	}{
		{"when", ` (did you mean "when"?)`},
		{"wehn", ` (did you mean "when"?)`},
		{"approev", ` (did you mean "approve"?)`},
		{"zzzzzz", ""},
	} {
		if got := Suggest(tt.key, []string{"when", "approve", "deny"}); got != tt.want {
			t.Errorf("Suggest(%q) = %q, want %q", tt.key, got, tt.want)
		}
	}
}

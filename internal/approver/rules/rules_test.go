package rules

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/policy"
)

func mustParse(t testing.TB, src string) *RuleSet {
	t.Helper()
	s, err := Parse("rules.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse(rules.yaml) = %v", err)
	}
	return s
}

// TestParseProblems: each class of mistake is refused with a message naming the file, the
// line it is on and what to do.
func TestParseProblems(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, src string
		line      int
		want      string
	}{
		{"empty file", "", 1, "rules: missing"},
		{"not a mapping", "- a\n", 1, "must be a mapping"},
		{"unknown top-level key", "rules: []\nrule: []\n", 2, `unknown key (did you mean "rules"?)`},
		{"unknown rule key", "rules:\n  - name: a\n    wehn: 'true'\n    ask: {}\n", 3, `unknown key (did you mean "when"?)`},
		{"unknown approve key", "rules:\n  - name: a\n    when: 'true'\n    approve: {ttl: 1m, max_atempts: 2}\n", 4, `did you mean "max_attempts"?`},
		{"two documents", "rules: []\n---\nrules: []\n", 2, "a second YAML document"},
		{"YAML syntax", "rules:\n  - name: a\n    when: x: y\n", 3, "invalid YAML: mapping values"},
		{"bad CEL syntax", "rules:\n  - name: a\n    when: 'task == '\n    ask: {}\n", 3, "CEL: Syntax error"},
		{"bad CEL syntax in a block, on its own line", "rules:\n  - name: a\n    when: |\n      task == \"x\"\n        && )\n    ask: {}\n", 5, "CEL: Syntax error"},
		{"non-bool expression", "rules:\n  - name: a\n    when: 'input.flag'\n    ask: {}\n", 3, "of type dyn, not bool"},
		{"string expression", "rules:\n  - name: a\n    when: 'task + \"x\"'\n    ask: {}\n", 3, "of type string, not bool"},
		{"unknown variable", "rules:\n  - name: a\n    when: 'tsk == \"x\"'\n    ask: {}\n", 3, `unknown variable or function "tsk" (did you mean "task"?)`},
		{"unknown function", "rules:\n  - name: a\n    when: 'task.startWith(\"x\")'\n    ask: {}\n", 3, `"startWith" (did you mean "startsWith"?)`},
		{"missing action", "rules:\n  - name: a\n    when: 'true'\n", 2, "missing action"},
		{"two actions", "rules:\n  - name: a\n    when: 'true'\n    ask: {}\n    deny: {reason: no}\n", 5, "exactly one action"},
		{"ttl too long", "rules:\n  - name: a\n    when: 'true'\n    approve: {ttl: 25h}\n", 4, "ttl 25h is out of range"},
		{"ttl without unit", "rules:\n  - name: a\n    when: 'true'\n    approve: {ttl: 600}\n", 4, "needs a unit"},
		{"ttl missing", "rules:\n  - name: a\n    when: 'true'\n    approve: {}\n", 4, "ttl: missing"},
		{"max_attempts too high", "rules:\n  - name: a\n    when: 'true'\n    approve: {ttl: 1m, max_attempts: 1000}\n", 4, "out of range"},
		{"deny without reason", "rules:\n  - name: a\n    when: 'true'\n    deny: {}\n", 4, "reason: missing"},
		{"reason not a string", "rules:\n  - name: a\n    when: 'true'\n    deny: {reason: true}\n", 4, "must be a string, not a boolean"},
		{"reason too long", "rules:\n  - name: a\n    when: 'true'\n    deny: {reason: " + strings.Repeat("x", 201) + "}\n", 4, "at most 200"},
		{"name missing", "rules:\n  - when: 'true'\n    ask: {}\n", 2, "name: missing"},
		{"bad name", "rules:\n  - name: Read Only\n    when: 'true'\n    ask: {}\n", 2, "must match"},
		{"duplicate name", "rules:\n  - name: a\n    when: 'true'\n    ask: {}\n  - name: a\n    when: 'false'\n    ask: {}\n", 5, "used twice (first at line 2)"},
		{"duplicate key", "rules:\n  - name: a\n    when: 'true'\n    when: 'false'\n    ask: {}\n", 4, "duplicate key"},
		{"alias", "rules:\n  - name: a\n    when: &w 'true'\n    ask: {}\n  - name: b\n    when: *w\n    ask: {}\n", 6, "aliases"},
		{"when missing", "rules:\n  - name: a\n    ask: {}\n", 2, "when: missing"},
		{"rules not a list", "rules: {a: 1}\n", 1, "must be a list"},
		{"empty rule", "rules:\n  -\n", 2, "is empty"},
		{"expression too long", "rules:\n  - name: a\n    when: '" + strings.Repeat("true && ", 600) + "true'\n    ask: {}\n", 3, "at most 4096"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("rules.yaml", []byte(tt.src))
			var pe *policy.Error
			if !errors.As(err, &pe) {
				t.Fatalf("Parse(%q) = %v, want a *policy.Error", tt.src, err)
			}
			want := fmt.Sprintf("rules.yaml:%d: ", tt.line)
			for _, p := range pe.Problems {
				if strings.HasPrefix(p.String(), want) && strings.Contains(p.String(), tt.want) {
					return
				}
			}
			t.Fatalf("Parse(%q) = %v, want a problem starting %q that mentions %q", tt.src, err, want, tt.want)
		})
	}
}

func TestLoadExample(t *testing.T) {
	t.Parallel()
	s, err := Load(filepath.Join("testdata", "example.yaml"))
	if err != nil {
		t.Fatalf("Load(testdata/example.yaml) = %v", err)
	}
	if s.Len() != 4 {
		t.Fatalf("Load(testdata/example.yaml).Len() = %d, want 4", s.Len())
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml: cannot read") {
		t.Fatalf("Load(missing) = %v, want a read error naming the file", err)
	}
	big := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(big, make([]byte, MaxFileBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "big.yaml: the rules file is larger") {
		t.Fatalf("Load(big) = %v, want a size error naming the file", err)
	}
}

var (
	saturday = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	tuesday  = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
)

func TestDecide(t *testing.T) {
	t.Parallel()
	s, err := Load(filepath.Join("testdata", "example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		req  Request
		want Decision
	}{
		{"lookup approved", Request{Task: "crm-lookup", Version: "1", Pool: "default", Input: []byte(`{"customer_id":"c-42"}`), Now: tuesday},
			Decision{Action: Approve, Rule: "read-only-lookups", TTL: 10 * time.Minute, MaxAttempts: 3}},
		{"lookup with a long id falls to the default", Request{Task: "crm-lookup", Pool: "default", Input: []byte(`{"customer_id":"c-4242424242424242"}`), Now: tuesday},
			Decision{Action: Ask, Reason: "no rule matched"}},
		{"lookup in another pool", Request{Task: "crm-lookup", Pool: "prod", Input: []byte(`{"customer_id":"c-42"}`), Now: tuesday},
			Decision{Action: Ask, Reason: "no rule matched"}},
		{"erp at the weekend", Request{Task: "erp-post", Pool: "default", Input: []byte(`{}`), Now: saturday},
			Decision{Action: Deny, Rule: "no-weekend-writes", Reason: "no ERP changes at weekends"}},
		{"erp on a weekday", Request{Task: "erp-post", Pool: "default", Input: []byte(`{}`), Now: tuesday},
			Decision{Action: Ask, Reason: "no rule matched"}},
		{"big refund, decimal", Request{Task: "refund", Input: []byte(`{"amount":1000.5}`), Requester: "billing-bot", Now: tuesday},
			Decision{Action: Ask, Rule: "big-refunds", Reason: "refund over 1000"}},
		{"small refund", Request{Task: "refund", Input: []byte(`{"amount":1000}`), Requester: "billing-bot", Now: tuesday},
			Decision{Action: Approve, Rule: "small-refunds", TTL: 5 * time.Minute, MaxAttempts: 1}},
		{"small refund, other requester", Request{Task: "refund", Input: []byte(`{"amount":10}`), Requester: "mallory", Now: tuesday},
			Decision{Action: Ask, Reason: "no rule matched"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := s.Decide(t.Context(), tt.req)
			if got.Err != nil || got != tt.want {
				t.Fatalf("Decide(%+v) = %+v, want %+v", tt.req, got, tt.want)
			}
		})
	}
}

// TestDecideErrorAsks: an input that makes a deny rule fail must not slip past it to an
// approve rule below. Were a failing rule merely skipped, leaving out "amount" would make
// "cap" not match and "everything" approve.
func TestDecideErrorAsks(t *testing.T) {
	t.Parallel()
	s := mustParse(t, `rules:
  - name: cap
    when: 'input.amount > 100'
    deny: {reason: too much}
  - name: everything
    when: 'true'
    approve: {ttl: 1m}
`)
	for _, input := range []string{`{}`, `{"amount":"lots"}`, `[1]`, `"x"`, `null`, ``} {
		d := s.Decide(t.Context(), Request{Task: "t", Input: []byte(input), Now: tuesday})
		var ee *EvalError
		if d.Action != Ask || d.Rule != "cap" || !errors.As(d.Err, &ee) || ee.Line != 2 || !strings.Contains(d.Reason, `rule "cap" (line 2) could not be evaluated`) {
			t.Errorf("Decide(input %s) = %+v, want Ask by rule cap with an EvalError", input, d)
		}
	}
	if d := s.Decide(t.Context(), Request{Task: "t", Input: []byte(`{"amount":5}`), Now: tuesday}); d.Action != Approve {
		t.Fatalf("Decide(amount 5) = %+v, want Approve", d)
	}
}

// TestDecideInputNotIJSON: a rule sees the same document the approval hashes. Duplicate
// members would let a rule read one amount and the task another; such inputs are asked
// about without any rule being tried.
func TestDecideInputNotIJSON(t *testing.T) {
	t.Parallel()
	s := mustParse(t, "rules:\n  - name: small\n    when: 'input.amount < 10'\n    approve: {ttl: 1m}\n")
	for _, input := range []string{`{"amount":1,"amount":5000}`, `{"amount":5000,"amount":1}`, `{"amount":1`, `{"amount":9007199254740993}`, "{\"a\":\"\xff\"}"} {
		d := s.Decide(t.Context(), Request{Task: "t", Input: []byte(input), Now: tuesday})
		if d.Action != Ask || d.Rule != "" || d.Err == nil {
			t.Errorf("Decide(input %q) = %+v, want Ask by no rule with an error", input, d)
		}
	}
}

// TestDecideSeesCanonicalInput: inputs with one hash (so one approval) get one decision,
// however the numbers are spelt.
func TestDecideSeesCanonicalInput(t *testing.T) {
	t.Parallel()
	s := mustParse(t, "rules:\n  - name: whole\n    when: 'type(input.n) == int && input.n == 100'\n    approve: {ttl: 1m}\n")
	for _, input := range []string{`{"n":100}`, `{"n":100.0}`, `{"n":1E2}`, `{"n":1e2}`, `{ "n" : 100.00 }`} {
		if d := s.Decide(t.Context(), Request{Task: "t", Input: []byte(input), Now: tuesday}); d.Action != Approve || d.Rule != "whole" {
			t.Errorf("Decide(input %s) = %+v, want Approve by rule whole", input, d)
		}
	}
}

// TestDecideCostLimit: a rule that is quadratic in the input cannot be made to spin by a
// large input; it reaches the cost limit and the job is asked about.
func TestDecideCostLimit(t *testing.T) {
	t.Parallel()
	s := mustParse(t, "rules:\n  - name: pairs\n    when: 'input.items.exists(a, input.items.exists(b, a + b == -1))'\n    approve: {ttl: 1m}\n")
	items := strings.TrimSuffix(strings.Repeat("1,", 5000), ",")
	d := s.Decide(t.Context(), Request{Task: "t", Input: []byte(`{"items":[` + items + `]}`), Now: tuesday})
	if d.Action != Ask || d.Rule != "pairs" || d.Err == nil || !strings.Contains(d.Err.Error(), "cost limit") {
		t.Fatalf("Decide(5000 items) = %+v, want Ask by rule pairs, cost limit exceeded", d)
	}
	if d := s.Decide(t.Context(), Request{Task: "t", Input: []byte(`{"items":[1,-2]}`), Now: tuesday}); d.Action != Approve {
		t.Fatalf("Decide(2 items) = %+v, want Approve", d)
	}
}

// TestDecideCancelled: a cancelled context stops evaluation and asks.
func TestDecideCancelled(t *testing.T) {
	t.Parallel()
	s := mustParse(t, "rules:\n  - name: walk\n    when: 'input.items.all(a, a > 0)'\n    approve: {ttl: 1m}\n")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	items := strings.TrimSuffix(strings.Repeat("1,", 1000), ",")
	d := s.Decide(ctx, Request{Task: "t", Input: []byte(`{"items":[` + items + `]}`), Now: tuesday})
	if d.Action != Ask || d.Err == nil {
		t.Fatalf("Decide(cancelled) = %+v, want Ask with an error", d)
	}
}

// TestDecideNowDefault: a zero Now means the current time.
func TestDecideNowDefault(t *testing.T) {
	t.Parallel()
	s := mustParse(t, "rules:\n  - name: recent\n    when: 'time > timestamp(\"2026-01-01T00:00:00Z\")'\n    approve: {ttl: 1m}\n")
	if d := s.Decide(t.Context(), Request{Task: "t"}); d.Action != Approve {
		t.Fatalf("Decide(zero Now) = %+v, want Approve", d)
	}
}

// FuzzRulesLoad: any file content is either a rule set or problems that all name the file;
// it never panics.
func FuzzRulesLoad(f *testing.F) {
	ex, err := os.ReadFile(filepath.Join("testdata", "example.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ex)
	f.Add([]byte("rules: []\n---\n"))
	f.Add([]byte("rules:\n  - name: a\n    when: 'input.x.exists(a, a)'\n    ask: {}\n"))
	f.Add([]byte("rules:\n  - name: a\n    when: |\n      task ==\n    approve: {ttl: 1m}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("fuzz.yaml", data)
		if err == nil {
			if s == nil || s.File() != "fuzz.yaml" {
				t.Fatalf("Parse(%q) = %v, nil", data, s)
			}
			s.Decide(t.Context(), Request{Task: "t", Input: []byte(`{"a":1}`), Now: tuesday})
			return
		}
		var pe *policy.Error
		if !errors.As(err, &pe) || len(pe.Problems) == 0 {
			t.Fatalf("Parse(%q) = %v, want a *policy.Error with problems", data, err)
		}
		for _, p := range pe.Problems {
			if p.File != "fuzz.yaml" || !strings.HasPrefix(p.String(), "fuzz.yaml") {
				t.Fatalf("Parse(%q) problem %q does not name the file", data, p)
			}
		}
	})
}

// BenchmarkDecide: a 20-rule set where the request matches only the last rule, so every
// rule is evaluated.
func BenchmarkDecide(b *testing.B) {
	var src strings.Builder
	src.WriteString("rules:\n")
	for i := range 19 {
		fmt.Fprintf(&src, "  - name: r%d\n    when: 'task == \"t%d\" && pool == \"default\" && size(input.customer_id) < 16'\n    approve: {ttl: 10m}\n", i, i)
	}
	src.WriteString("  - name: last\n    when: 'task.startsWith(\"crm-\") && time.getDayOfWeek() in [1, 2, 3, 4, 5] && input.amount <= 1000'\n    approve: {ttl: 10m}\n")
	s := mustParse(b, src.String())
	req := Request{Task: "crm-lookup", Version: "1", Pool: "default", Input: []byte(`{"customer_id":"c-42","amount":12.5}`), Requester: "agent", Now: tuesday}
	ctx := context.Background()
	if d := s.Decide(ctx, req); d.Rule != "last" {
		b.Fatalf("Decide = %+v, want rule last", d)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.Decide(ctx, req)
	}
}

// TestDecideRequesterUnknown: when the approver cannot learn who submitted a job, a rule that
// reads requester cannot be evaluated and the job is asked about; binding "" would let the
// job pass a deny rule on the requester's name and reach the approve rule below it.
func TestDecideRequesterUnknown(t *testing.T) {
	t.Parallel()
	s := mustParse(t, `rules:
  - name: no-intern
    when: 'requester == "intern-bot"'
    deny: {reason: "interns do not refund"}
  - name: all-refunds
    when: 'task == "refund"'
    approve: {ttl: 1m}
`)
	req := Request{Task: "refund", Version: "1", Pool: "p", Input: []byte(`{}`), Requester: "intern-bot"}
	if d := s.Decide(t.Context(), req); d.Action != Deny {
		t.Fatalf("Decide(requester known) = %+v, want deny", d)
	}
	req.Requester, req.RequesterUnknown = "", true
	d := s.Decide(t.Context(), req)
	if d.Action != Ask || d.Rule != "no-intern" || d.Err == nil {
		t.Fatalf("Decide(requester unknown) = %+v, want ask by rule no-intern with an evaluation error", d)
	}
	s2 := mustParse(t, "rules:\n  - name: all\n    when: 'task == \"refund\"'\n    approve: {ttl: 1m}\n")
	if d := s2.Decide(t.Context(), req); d.Action != Approve {
		t.Fatalf("Decide(requester unknown, rule does not read it) = %+v, want approve", d)
	}
}

package rules

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"cel.dev/cel-go/cel"

	"github.com/castellan-dev/castellan/approval"
)

// Action is what a rule, or the rule set as a whole, decides for a job.
type Action string

const (
	Approve Action = "approve" // sign an approval with the rule's TTL and max attempts
	Deny    Action = "deny"    // refuse the job with the rule's reason
	Ask     Action = "ask"     // leave the job for a person
)

// CostLimit bounds the work one rule may do on one request, in CEL's cost units (roughly
// one per operation, plus the size of strings and lists traversed). The input is written by
// the submitter, so a rule that walks it (input.items.exists(...)) must not be made to spin
// by a large input; an evaluation that reaches the limit fails and the job is asked about.
const CostLimit = 1_000_000

// variables are the names a when expression may use; docs/approvals.md lists their types.
var variables = []string{"task", "version", "pool", "input", "requester", "time"}

// newEnv is built once: a CEL environment is immutable and safe for concurrent use, and
// building the standard library's declarations dominates the cost of a small rules file.
var newEnv = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("task", cel.StringType),
		cel.Variable("version", cel.StringType),
		cel.Variable("pool", cel.StringType),
		cel.Variable("input", cel.DynType),
		cel.Variable("requester", cel.StringType),
		cel.Variable("time", cel.TimestampType),
		// input.amount > 1000 must hold for 1000.5 as for 1001, whatever number type the
		// JSON held.
		cel.CrossTypeNumericComparisons(true),
		cel.ParserExpressionSizeLimit(MaxExpressionChars),
	)
})

// RuleSet is a checked rules file. It is safe for concurrent use.
type RuleSet struct {
	file  string
	rules []rule
}

type rule struct {
	name        string
	line        int
	prg         cel.Program
	action      Action
	reason      string
	ttl         time.Duration
	maxAttempts int
}

// Request is a job pending approval, as the approver sees it.
type Request struct {
	Task, Version, Pool string
	// Input is the job's JSON input; empty means null. It must be I-JSON
	// (approval.CheckIJSON), as any input that can be approved is.
	Input []byte
	// Requester is the name of the token that submitted the job.
	Requester string
	// RequesterUnknown says the approver could not learn the submitting token's name. The
	// variable requester is then left unbound, so a rule that reads it fails to evaluate and
	// the job is asked about: binding "" or the token id instead would let a job slip past
	// a deny rule written against a name.
	RequesterUnknown bool
	// Now is the decision time, the CEL variable time. Optional; default time.Now().
	Now time.Time
}

// Decision is the outcome of Decide.
type Decision struct {
	Action Action
	// Rule names the rule that decided; "" when no rule matched (or the input could not be
	// read), and the job is asked about.
	Rule string
	// Reason is the deny or ask reason: the rule's own, or why no rule could decide.
	Reason string
	// TTL and MaxAttempts are the approval's lifetime and attempts; set only for Approve.
	TTL         time.Duration
	MaxAttempts int
	// Err is the evaluation error that turned this decision into Ask; nil otherwise.
	Err error
}

// File is the name the rule set was loaded from.
func (s *RuleSet) File() string { return s.file }

// Len is the number of rules.
func (s *RuleSet) Len() int { return len(s.rules) }

// Decide tries the rules in order and returns the first match's decision, or Ask when none
// matches. A rule whose expression fails to evaluate (a missing input member, a type
// mismatch, the cost limit, ctx done) ends the search with Ask naming that rule, with Err
// set: skipping it could reach an approve rule that the failing rule was meant to pre-empt.
func (s *RuleSet) Decide(ctx context.Context, r Request) Decision {
	input, err := decodeInput(r.Input)
	if err != nil {
		return Decision{Action: Ask, Reason: "no rule was tried: " + err.Error(), Err: err}
	}
	now := r.Now
	if now.IsZero() {
		now = time.Now()
	}
	vars := map[string]any{
		"task":      r.Task,
		"version":   r.Version,
		"pool":      r.Pool,
		"input":     input,
		"requester": r.Requester,
		"time":      now.UTC(),
	}
	if r.RequesterUnknown {
		delete(vars, "requester")
	}
	act, err := cel.NewActivation(vars)
	if err != nil {
		return Decision{Action: Ask, Reason: "no rule was tried: " + err.Error(), Err: err}
	}
	for i := range s.rules {
		ru := &s.rules[i]
		val, _, err := ru.prg.ContextEval(ctx, act)
		if err == nil {
			if _, isBool := val.Value().(bool); !isBool {
				err = fmt.Errorf("the expression gave %s, not a bool", val.Type())
			}
		}
		if err != nil {
			err = &EvalError{Rule: ru.name, Line: ru.line, Err: err}
			return Decision{Action: Ask, Rule: ru.name, Reason: err.Error(), Err: err}
		}
		if val.Value() != true {
			continue
		}
		d := Decision{Action: ru.action, Rule: ru.name, Reason: ru.reason}
		if ru.action == Approve {
			d.TTL, d.MaxAttempts = ru.ttl, ru.maxAttempts
		}
		return d
	}
	return Decision{Action: Ask, Reason: "no rule matched"}
}

// EvalError is a rule that could not be evaluated for a request.
type EvalError struct {
	Rule string
	Line int // line of the rule in its file
	Err  error
}

func (e *EvalError) Error() string {
	return fmt.Sprintf("rule %q (line %d) could not be evaluated: %v", e.Rule, e.Line, e.Err)
}

func (e *EvalError) Unwrap() error { return e.Err }

// decodeInput reads the job input for CEL: objects become map[string]any, arrays []any,
// whole numbers int64 (so input.count == 3 and input.ids[0] behave as a person expects) and
// other numbers float64. Rules read the input's canonical form (approval.CanonicalJSON),
// the one the approval hashes: an input with duplicate member names, which could read one
// way here and another way in the task, has none and is refused; and 1.0 and 1, which share
// one hash and so one approval, read alike.
func decodeInput(raw []byte) (any, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, nil
	}
	canon, err := approval.CanonicalJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("the input is not I-JSON: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(canon))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("the input is not JSON: %w", err)
	}
	return convertNumbers(v), nil
}

func convertNumbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = convertNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = convertNumbers(e)
		}
	case json.Number:
		if !strings.ContainsAny(string(x), ".eE") {
			if n, err := x.Int64(); err == nil {
				return n
			}
		}
		if f, err := x.Float64(); err == nil {
			return f
		}
		return string(x)
	}
	return v
}

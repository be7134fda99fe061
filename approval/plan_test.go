package approval

import (
	"encoding/base64"
	stdjson "encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// planRequest is a three-step plan whose steps differ in every bound field, so that a step
// presented as another always differs somewhere.
func planRequest() PlanRequest {
	return PlanRequest{
		PlanID: "plan-7",
		Steps: []PlanStep{
			{JobID: "job-a", Task: "crm-lookup", TaskVersion: "1.2.0", Pool: "default", Input: []byte(`{"customer_id":"c-42"}`)},
			{JobID: "job-b", Task: "refund", TaskVersion: "3", Pool: "payments", Input: []byte(`{"account":"acct-9","amount":12.5}`)},
			{JobID: "job-c", Task: "notify", TaskVersion: "1", Pool: "mail", Input: []byte(`{"text":"refunded","to":"c-42"}`)},
		},
		TTL: 15 * time.Minute, MaxAttempts: 2, ApprovedBy: &ApprovedBy{Person: "alice@example.com"},
	}
}

func expectStep(s PlanStep) Expect {
	return Expect{JobID: s.JobID, Task: s.Task, TaskVersion: s.TaskVersion, Pool: s.Pool, Input: s.Input, Attempt: 1}
}

func mustSignPlan(t testing.TB, key jose.JSONWebKey, r PlanRequest, now time.Time) (string, Claims) {
	t.Helper()
	tok, c, err := signPlanAt(key, r, now)
	if err != nil {
		t.Fatalf("signPlanAt(%q, plan %q) = %v", key.KeyID, r.PlanID, err)
	}
	return tok, c
}

type planEnv struct {
	priv, pub, evil, other jose.JSONWebKey
	req                    PlanRequest
	token                  string
	claims                 Claims
}

func newPlanEnv(t *testing.T) planEnv {
	t.Helper()
	var e planEnv
	e.priv, e.pub = newKey(t, "alice-2026")
	e.evil, _ = newKey(t, "alice-2026")
	e.other, _ = newKey(t, "mallory")
	e.req = planRequest()
	e.token, e.claims = mustSignPlan(t, e.priv, e.req, t0)
	return e
}

func (e planEnv) verifier(store ReplayStore, opts ...VerifierOption) *Verifier {
	return NewVerifier(keySet(e.pub), store, append([]VerifierOption{WithClock(clockAt(t0))}, opts...)...)
}

// payload returns the plan's signed claims as a map, after mutate.
func (e planEnv) payload(t *testing.T, mutate func(m map[string]any)) []byte {
	t.Helper()
	m := claimsMap(t, e.claims)
	mutate(m)
	return mustJSON(t, m)
}

// resealed puts a changed payload between the genuine header and signature, as a queue or
// control plane that edits the token would.
func (e planEnv) resealed(t *testing.T, mutate func(m map[string]any)) string {
	parts := strings.Split(e.token, ".")
	return parts[0] + "." + b64(e.payload(t, mutate)) + "." + parts[2]
}

func steps(m map[string]any) []any { return m["steps"].([]any) }

// TestPlanVerifyEachStep: the one plan token verifies for each of its steps, and Verify
// reports which step and the binding it checked.
func TestPlanVerifyEachStep(t *testing.T) {
	t.Parallel()
	e := newPlanEnv(t)
	v := e.verifier(NewMemoryReplayStore())
	for i, s := range e.req.Steps {
		c, err := v.Verify(t.Context(), e.token, expectStep(s))
		if err != nil {
			t.Fatalf("Verify(plan token, step %d %s) = %v, want success", i+1, s.JobID, err)
		}
		hash, _ := InputHash(s.Input)
		if c.Step != i+1 || c.Plan != "plan-7" || len(c.Steps) != 3 || c.JobID != s.JobID || c.Task != s.Task ||
			c.TaskVersion != s.TaskVersion || c.Pool != s.Pool || c.InputSHA256 != hash || c.MaxAttempts != 2 ||
			c.ApprovedBy == nil || c.ApprovedBy.Person != "alice@example.com" {
			t.Fatalf("Verify(plan token, step %d) claims = %+v, want step %d's binding", i+1, c, i+1)
		}
	}
	// Inspect shows the plan as signed: no single-job binding of its own.
	c, kid, err := Inspect(e.token)
	if err != nil || kid != "alice-2026" || c.Plan != "plan-7" || c.JobID != "" || c.Step != 0 || !reflect.DeepEqual(c.Steps, e.claims.Steps) {
		t.Fatalf("Inspect(plan token) = %+v, %q, %v", c, kid, err)
	}
}

// TestPlanStepBinding is generated: for every step, each bound field changed on its own,
// and every step's work presented under every other step's job ID. One approval is never
// stretched to work that is not exactly a listed step.
func TestPlanStepBinding(t *testing.T) {
	t.Parallel()
	e := newPlanEnv(t)
	type attack struct {
		name   string
		want   Expect
		reason Reason
	}
	var attacks []attack
	for i, s := range e.req.Steps {
		for _, m := range []struct {
			field  string
			reason Reason
			change func(*Expect)
		}{
			{"job not in the plan", WrongJob, func(w *Expect) { w.JobID = s.JobID + "-x" }},
			{"empty job", WrongJob, func(w *Expect) { w.JobID = "" }},
			{"task", WrongTask, func(w *Expect) { w.Task = "delete-account" }},
			{"version", WrongVersion, func(w *Expect) { w.TaskVersion += ".1" }},
			{"pool", WrongPool, func(w *Expect) { w.Pool = "admin" }},
			{"input value", InputMismatch, func(w *Expect) { w.Input = []byte(strings.Replace(string(w.Input), `:"`, `:"x`, 1)) }},
			{"input wrapped in an array", InputMismatch, func(w *Expect) { w.Input = []byte("[" + string(w.Input) + "]") }},
			{"input with a field added", InputMismatch, func(w *Expect) { w.Input = []byte(`{"extra":1,` + string(w.Input[1:])) }},
			{"input null", InputMismatch, func(w *Expect) { w.Input = nil }},
		} {
			w := expectStep(s)
			m.change(&w)
			attacks = append(attacks, attack{fmt.Sprintf("step %d %s", i+1, m.field), w, m.reason})
		}
		for j, other := range e.req.Steps {
			if j == i {
				continue
			}
			w := expectStep(s)
			w.JobID = other.JobID
			attacks = append(attacks, attack{fmt.Sprintf("step %d's work under step %d's job", i+1, j+1), w, WrongTask})
			// The other step's task, version and pool, with this step's input.
			w = expectStep(other)
			w.Input = s.Input
			attacks = append(attacks, attack{fmt.Sprintf("step %d with step %d's input", j+1, i+1), w, InputMismatch})
		}
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			t.Parallel()
			store := NewMemoryReplayStore()
			_, err := e.verifier(store).Verify(t.Context(), e.token, a.want)
			wantReason(t, "Verify("+a.name+")", err, a.reason, e.token)
			if store.Len() != 0 {
				t.Errorf("a refused step used up an attempt: the store holds %d records", store.Len())
			}
		})
	}
}

// TestPlanTokenAttacks: plan tokens edited after signing, signed by the wrong key, or
// signed but shaped in a way SignPlan never makes, are refused with the reason given.
func TestPlanTokenAttacks(t *testing.T) {
	t.Parallel()
	e := newPlanEnv(t)
	stepA, stepB := expectStep(e.req.Steps[0]), expectStep(e.req.Steps[1])
	signed := func(t *testing.T, mutate func(m map[string]any)) string {
		return mustSignPayload(t, e.priv, string(e.payload(t, mutate)))
	}
	appended := func(m map[string]any) {
		m["steps"] = append(steps(m), map[string]any{"job": "job-z", "task": "wipe", "task_version": "1", "pool": "admin",
			"input_sha256": strings.Repeat("0", 64)})
	}
	many := func(n int) func(m map[string]any) {
		return func(m map[string]any) {
			var s []any
			for i := range n {
				s = append(s, map[string]any{"job": fmt.Sprintf("job-%03d", i), "task": "t", "task_version": "1", "pool": "default",
					"input_sha256": e.claims.Steps[0].InputSHA256})
			}
			m["steps"] = s
		}
	}
	for _, tt := range []struct {
		name   string
		token  func(t *testing.T) string
		want   Expect
		opts   []VerifierOption
		reason Reason // "" means accepted
		detail string
	}{
		{name: "genuine", token: func(t *testing.T) string { return e.token }, want: stepB},

		// Edited after signing.
		{name: "steps reordered after signing", token: func(t *testing.T) string {
			return e.resealed(t, func(m map[string]any) { s := steps(m); s[0], s[1] = s[1], s[0] })
		}, want: stepB, reason: BadSignature},
		{name: "step appended after signing", token: func(t *testing.T) string { return e.resealed(t, appended) },
			want: Expect{JobID: "job-z", Task: "wipe", TaskVersion: "1", Pool: "admin", Attempt: 1}, reason: BadSignature},
		{name: "step removed after signing", token: func(t *testing.T) string {
			return e.resealed(t, func(m map[string]any) { m["steps"] = steps(m)[1:] })
		}, want: stepB, reason: BadSignature},
		{name: "step's input hash replaced after signing", token: func(t *testing.T) string {
			return e.resealed(t, func(m map[string]any) {
				h, _ := InputHash([]byte(`{"account":"acct-666","amount":1e6}`))
				steps(m)[1].(map[string]any)["input_sha256"] = h
			})
		}, want: Expect{JobID: "job-b", Task: "refund", TaskVersion: "3", Pool: "payments", Input: []byte(`{"account":"acct-666","amount":1e6}`), Attempt: 1}, reason: BadSignature},
		{name: "step's pool changed after signing", token: func(t *testing.T) string {
			return e.resealed(t, func(m map[string]any) { steps(m)[1].(map[string]any)["pool"] = "admin" })
		}, want: func() Expect { w := stepB; w.Pool = "admin"; return w }(), reason: BadSignature},
		{name: "plan turned into a single-job approval after signing", token: func(t *testing.T) string {
			return e.resealed(t, func(m map[string]any) {
				s := steps(m)[1].(map[string]any)
				delete(m, "plan")
				delete(m, "steps")
				for k, v := range s {
					m[k] = v
				}
			})
		}, want: stepB, reason: BadSignature},
		{name: "signature truncated", token: func(t *testing.T) string {
			parts := strings.Split(e.token, ".")
			sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
			return parts[0] + "." + parts[1] + "." + b64(sig[:60])
		}, want: stepB, reason: BadSignature},

		// Keys and time.
		{name: "signed by an untrusted key", token: func(t *testing.T) string { tok, _ := mustSignPlan(t, e.other, e.req, t0); return tok },
			want: stepA, reason: UnknownKey},
		{name: "signed by another key under the trusted kid", token: func(t *testing.T) string { tok, _ := mustSignPlan(t, e.evil, e.req, t0); return tok },
			want: stepA, reason: BadSignature},
		{name: "expired plan", token: func(t *testing.T) string { return e.token }, want: stepB,
			opts: []VerifierOption{WithClock(clockAt(t0.Add(15*time.Minute + DefaultLeeway + time.Second)))}, reason: Expired},
		{name: "plan issued in the future", token: func(t *testing.T) string { return e.token }, want: stepB,
			opts: []VerifierOption{WithClock(clockAt(t0.Add(-DefaultLeeway - time.Second)))}, reason: NotYetValid},
		{name: "plan valid for longer than the worker allows", token: func(t *testing.T) string { return e.token }, want: stepB,
			opts: []VerifierOption{WithMaxTTL(10 * time.Minute)}, reason: TTLTooLong},
		{name: "step beyond max_attempts", token: func(t *testing.T) string { return e.token },
			want: func() Expect { w := stepB; w.Attempt = 3; return w }(), reason: AttemptsExhausted},

		// A single job's approval is not a plan's.
		{name: "single-job approval for another job", token: func(t *testing.T) string {
			tok, _ := mustSign(t, e.priv, Request{JobID: "job-a", Task: stepB.Task, TaskVersion: stepB.TaskVersion, Pool: stepB.Pool, Input: stepB.Input}, t0)
			return tok
		}, want: stepB, reason: WrongJob},

		// Signed by the trusted key, but not what SignPlan makes.
		{name: "same job listed twice", token: func(t *testing.T) string {
			return signed(t, func(m map[string]any) { s := steps(m); m["steps"] = append(s, s[1]) })
		}, want: stepB, reason: Malformed, detail: `both job "job-b"`},
		{name: "same job listed twice with different inputs", token: func(t *testing.T) string {
			return signed(t, func(m map[string]any) {
				s := steps(m)
				dup := map[string]any{}
				for k, v := range s[0].(map[string]any) {
					dup[k] = v
				}
				dup["job"] = "job-b"
				m["steps"] = append(s, dup)
			})
		}, want: stepB, reason: Malformed, detail: "both job"},
		{name: "zero steps", token: func(t *testing.T) string { return signed(t, func(m map[string]any) { m["steps"] = []any{} }) },
			want: stepA, reason: Malformed, detail: "0 steps"},
		{name: "steps null", token: func(t *testing.T) string { return signed(t, func(m map[string]any) { m["steps"] = nil }) },
			want: stepA, reason: Malformed, detail: "0 steps"},
		{name: "steps absent", token: func(t *testing.T) string { return signed(t, func(m map[string]any) { delete(m, "steps") }) },
			want: stepA, reason: Malformed, detail: "0 steps"},
		{name: "the maximum number of steps", token: func(t *testing.T) string { return signed(t, many(MaxPlanSteps)) },
			want: Expect{JobID: "job-099", Task: "t", TaskVersion: "1", Pool: "default", Input: stepA.Input, Attempt: 1}},
		{name: "one step more than the maximum", token: func(t *testing.T) string { return signed(t, many(MaxPlanSteps+1)) },
			want:   Expect{JobID: "job-000", Task: "t", TaskVersion: "1", Pool: "default", Input: stepA.Input, Attempt: 1},
			reason: Malformed, detail: fmt.Sprintf("%d steps", MaxPlanSteps+1)},
		{name: "plan id missing", token: func(t *testing.T) string { return signed(t, func(m map[string]any) { delete(m, "plan") }) },
			want: stepA, reason: Malformed, detail: `"plan"`},
		{name: "plan id too long", token: func(t *testing.T) string {
			return signed(t, func(m map[string]any) { m["plan"] = strings.Repeat("p", MaxPlanIDBytes+1) })
		}, want: stepA, reason: Malformed, detail: `"plan"`},
		{name: "plan with a single-job claim as well", token: func(t *testing.T) string {
			return signed(t, func(m map[string]any) {
				for k, v := range steps(m)[0].(map[string]any) {
					m[k] = v
				}
			})
		}, want: stepA, reason: Malformed, detail: `claim "job"`},
		{name: "plan with a top-level input hash", token: func(t *testing.T) string {
			return signed(t, func(m map[string]any) { m["input_sha256"] = e.claims.Steps[0].InputSHA256 })
		}, want: stepA, reason: Malformed, detail: `"input_sha256"`},
		{name: "step with an unknown member", token: func(t *testing.T) string {
			return signed(t, func(m map[string]any) { steps(m)[0].(map[string]any)["max_attempts"] = 9 })
		}, want: stepA, reason: UnknownClaim, detail: `"steps.0.max_attempts"`},
		{name: "step with a member in other case", token: func(t *testing.T) string {
			return signed(t, func(m map[string]any) { s := steps(m)[0].(map[string]any); s["Pool"] = s["pool"]; delete(s, "pool") })
		}, want: stepA, reason: UnknownClaim, detail: `"steps.0.Pool"`},
		{name: "step without a pool", token: func(t *testing.T) string {
			return signed(t, func(m map[string]any) { delete(steps(m)[1].(map[string]any), "pool") })
		}, want: stepB, reason: Malformed, detail: `"steps.1.pool"`},
		{name: "step with an upper-case hash", token: func(t *testing.T) string {
			return signed(t, func(m map[string]any) {
				s := steps(m)[1].(map[string]any)
				s["input_sha256"] = strings.ToUpper(s["input_sha256"].(string))
			})
		}, want: stepB, reason: Malformed, detail: "steps.1.input_sha256"},
		{name: "step job as a number", token: func(t *testing.T) string {
			return signed(t, func(m map[string]any) { steps(m)[0].(map[string]any)["job"] = 7 })
		}, want: stepA, reason: Malformed, detail: `"steps.0.job"`},
		{name: "steps as an object", token: func(t *testing.T) string {
			return signed(t, func(m map[string]any) { m["steps"] = map[string]any{"0": steps(m)[0]} })
		}, want: stepA, reason: Malformed, detail: `"steps"`},
		{name: "duplicate member in a step", token: func(t *testing.T) string {
			p := string(e.payload(t, func(map[string]any) {}))
			p = strings.Replace(p, `"pool":"default"`, `"pool":"default","pool":"admin"`, 1)
			return mustSignPayload(t, e.priv, p)
		}, want: stepA, reason: Malformed, detail: "duplicate"},
		{name: "token larger than the maximum", token: func(t *testing.T) string {
			return e.token[:strings.LastIndex(e.token, ".")] + strings.Repeat("A", MaxTokenBytes)
		}, want: stepA, reason: Malformed, detail: "bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := NewMemoryReplayStore()
			token := tt.token(t)
			c, err := e.verifier(store, tt.opts...).Verify(t.Context(), token, tt.want)
			if tt.reason == "" {
				if err != nil || c.JobID != tt.want.JobID || c.Plan == "" {
					t.Fatalf("Verify(%s) = %+v, %v, want success", tt.name, c, err)
				}
				return
			}
			wantReason(t, "Verify("+tt.name+")", err, tt.reason, token)
			if !strings.Contains(err.Error(), tt.detail) {
				t.Errorf("Verify(%s) = %v, want the detail to mention %s", tt.name, err, tt.detail)
			}
			if store.Len() != 0 {
				t.Errorf("a refused token used up an attempt: the store holds %d records", store.Len())
			}
		})
	}
}

// TestPlanTokenTruncated: every proper prefix of a plan token, and the token with every
// suffix cut from its payload, is refused.
func TestPlanTokenTruncated(t *testing.T) {
	t.Parallel()
	e := newPlanEnv(t)
	v := e.verifier(NewMemoryReplayStore())
	want := expectStep(e.req.Steps[0])
	parts := strings.Split(e.token, ".")
	var cuts []string
	for n := range len(e.token) {
		cuts = append(cuts, e.token[:n])
	}
	for n := range len(parts[1]) {
		cuts = append(cuts, parts[0]+"."+parts[1][:n]+"."+parts[2])
	}
	for _, tok := range cuts {
		if _, err := v.Verify(t.Context(), tok, want); ReasonOf(err) == "" {
			t.Fatalf("Verify(token cut to %d bytes) = %v, want a rejection", len(tok), err)
		}
	}
}

// TestPlanReplay: one plan token runs each step's attempts once, on either store, also
// across a restart of the SQLite store; its uses do not collide with a single-job approval.
// With the replay store keyed on the nonce alone, step 2 was refused as a nonce reused.
func TestPlanReplay(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			e := newPlanEnv(t)
			store, reopen := st.open(t, clockAt(t0))
			v := e.verifier(store)
			ctx := t.Context()
			for i, s := range e.req.Steps {
				if _, err := v.Verify(ctx, e.token, expectStep(s)); err != nil {
					t.Fatalf("Verify(step %d, attempt 1) = %v, want success", i+1, err)
				}
			}
			if reopen != nil {
				v = e.verifier(reopen(clockAt(t0)))
			}
			for i, s := range e.req.Steps {
				_, err := v.Verify(ctx, e.token, expectStep(s))
				wantReason(t, fmt.Sprintf("Verify(step %d, attempt 1 again)", i+1), err, Replayed, e.token)
			}
			w := expectStep(e.req.Steps[1])
			w.Attempt = 2
			if _, err := v.Verify(ctx, e.token, w); err != nil {
				t.Fatalf("Verify(step 2, attempt 2) = %v, want success (max_attempts 2)", err)
			}
			_, err := v.Verify(ctx, e.token, w)
			wantReason(t, "Verify(step 2, attempt 2 again)", err, Replayed, e.token)

			// A single-job approval for a step's job is its own approval.
			s := e.req.Steps[0]
			single, _ := mustSign(t, e.priv, Request{JobID: s.JobID, Task: s.Task, TaskVersion: s.TaskVersion, Pool: s.Pool, Input: s.Input}, t0)
			if _, err := v.Verify(ctx, single, expectStep(s)); err != nil {
				t.Fatalf("Verify(single-job approval of step 1) = %v, want success", err)
			}
		})
	}
}

// TestPlanConcurrentReplay: the same step delivered many times at once runs once, while the
// other steps of the plan, delivered at the same moment, each run once too.
func TestPlanConcurrentReplay(t *testing.T) {
	t.Parallel()
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			e := newPlanEnv(t)
			store, _ := st.open(t, clockAt(t0))
			v := e.verifier(store)
			const copies = 8
			var mu sync.Mutex
			ran := map[string]int{}
			var wg sync.WaitGroup
			for range copies {
				for _, s := range e.req.Steps {
					wg.Add(1)
					go func() {
						defer wg.Done()
						_, err := v.Verify(t.Context(), e.token, expectStep(s))
						switch ReasonOf(err) {
						case "":
							if err != nil {
								t.Errorf("Verify(%s) = %v", s.JobID, err)
								return
							}
							mu.Lock()
							ran[s.JobID]++
							mu.Unlock()
						case Replayed:
						default:
							t.Errorf("Verify(%s) = %v, want success or replayed", s.JobID, err)
						}
					}()
				}
			}
			wg.Wait()
			for _, s := range e.req.Steps {
				if ran[s.JobID] != 1 {
					t.Errorf("step %s ran %d times under one approval, want 1", s.JobID, ran[s.JobID])
				}
			}
		})
	}
}

func TestSignPlanValidation(t *testing.T) {
	t.Parallel()
	priv, pub := newKey(t, "alice-2026")
	noKid := priv
	noKid.KeyID = ""
	long := strings.Repeat("x", 200)
	for _, tt := range []struct {
		name   string
		key    jose.JSONWebKey
		change func(*PlanRequest)
		want   string
	}{
		{"public key", pub, func(*PlanRequest) {}, "not an Ed25519 private key"},
		{"key without kid", noKid, func(*PlanRequest) {}, "no kid"},
		{"no plan id", priv, func(r *PlanRequest) { r.PlanID = "" }, "PlanID is required"},
		{"plan id too long", priv, func(r *PlanRequest) { r.PlanID = strings.Repeat("p", MaxPlanIDBytes+1) }, "PlanID is 129 bytes"},
		{"no steps", priv, func(r *PlanRequest) { r.Steps = nil }, "0 steps"},
		{"too many steps", priv, func(r *PlanRequest) {
			r.Steps = make([]PlanStep, MaxPlanSteps+1)
			for i := range r.Steps {
				r.Steps[i] = PlanStep{JobID: fmt.Sprint("j", i), Task: "t", TaskVersion: "1", Pool: "p"}
			}
		}, "101 steps"},
		{"same job twice", priv, func(r *PlanRequest) { r.Steps = append(r.Steps, r.Steps[0]) }, `Steps[0] and Steps[3] are both job "job-a"`},
		{"step without task", priv, func(r *PlanRequest) { r.Steps[1].Task = "" }, "Steps[1].Task is required"},
		{"step without pool", priv, func(r *PlanRequest) { r.Steps[2].Pool = "" }, "Steps[2].Pool is required"},
		{"step input not I-JSON", priv, func(r *PlanRequest) { r.Steps[1].Input = []byte(`{"a":1,"a":2}`) }, "Steps[1] input"},
		{"TTL below 1s", priv, func(r *PlanRequest) { r.TTL = time.Millisecond }, "PlanRequest.TTL"},
		{"negative max attempts", priv, func(r *PlanRequest) { r.MaxAttempts = -1 }, "PlanRequest.MaxAttempts"},
		{"approved_by both", priv, func(r *PlanRequest) { r.ApprovedBy = &ApprovedBy{Rule: "r", Person: "p"} }, "PlanRequest.ApprovedBy"},
		{"token too large", priv, func(r *PlanRequest) {
			r.Steps = make([]PlanStep, MaxPlanSteps)
			for i := range r.Steps {
				r.Steps[i] = PlanStep{JobID: fmt.Sprint(long, i), Task: long, TaskVersion: long, Pool: long}
			}
		}, "more than the"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := planRequest()
			tt.change(&r)
			tok, _, err := signPlanAt(tt.key, r, t0)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("SignPlan(%s) = %q, %v, want an error mentioning %q", tt.name, tok, err, tt.want)
			}
		})
	}
	// The largest ordinary plan fits: 100 steps with 32-byte job ids and task names.
	r := planRequest()
	r.Steps = make([]PlanStep, MaxPlanSteps)
	for i := range r.Steps {
		r.Steps[i] = PlanStep{JobID: fmt.Sprintf("%032d", i), Task: strings.Repeat("t", 32), TaskVersion: "1.0.0", Pool: "default", Input: []byte(`{"q":1}`)}
	}
	tok, _, err := signPlanAt(priv, r, t0)
	if err != nil {
		t.Fatalf("SignPlan(100 ordinary steps) = %v", err)
	}
	if err := CheckShape(tok); err != nil {
		t.Fatalf("CheckShape(100-step plan of %d bytes) = %v, want the control plane to accept it", len(tok), err)
	}
}

// planOK is a plan payload as SignPlan writes it.
const planOK = `{"iat":1789990000,"exp":1790000000,"nonce":"AAAAAAAAAAAAAAAAAAAAAA","max_attempts":1,"plan":"p1","steps":[` +
	`{"job":"a","task":"t","task_version":"1","pool":"p","input_sha256":"74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"},` +
	`{"job":"b","task":"t","task_version":"1","pool":"p","input_sha256":"74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"}]}`

// FuzzDecodePlanClaims: a payload decodeClaims accepts is one form or the other; a plan has
// 1 to MaxPlanSteps well-formed steps with distinct jobs and no binding of its own, each
// step is found by its job, and encoding/json reads the same claims.
func FuzzDecodePlanClaims(f *testing.F) {
	f.Add([]byte(planOK))
	f.Add([]byte(strings.Replace(planOK, `"job":"b"`, `"job":"a"`, 1)))
	f.Add([]byte(strings.Replace(planOK, `"plan":"p1",`, `"plan":"p1","job":"a",`, 1)))
	f.Add([]byte(strings.Replace(planOK, `"pool":"p"}`, `"pool":"p","x":1}`, 1)))
	f.Add([]byte(strings.Replace(planOK, `"steps":[`, `"steps":[],"s":[`, 1)))
	f.Add([]byte(claimsOK))
	f.Fuzz(func(t *testing.T, payload []byte) {
		c, rej := decodeClaims(payload)
		if rej != nil {
			return
		}
		var std Claims
		if err := stdjson.Unmarshal(payload, &std); err != nil || !reflect.DeepEqual(std, c) {
			t.Fatalf("decodeClaims(%q) = %+v; encoding/json reads %+v, %v", payload, c, std, err)
		}
		if c.Plan == "" {
			if c.Steps != nil || c.JobID == "" {
				t.Fatalf("decodeClaims(%q) accepted a single-job approval with steps %v or no job", payload, c.Steps)
			}
			return
		}
		if c.JobID != "" || c.Task != "" || c.TaskVersion != "" || c.Pool != "" || c.InputSHA256 != "" {
			t.Fatalf("decodeClaims(%q) accepted a plan with a binding of its own: %+v", payload, c)
		}
		if len(c.Steps) < 1 || len(c.Steps) > MaxPlanSteps {
			t.Fatalf("decodeClaims(%q) accepted %d steps", payload, len(c.Steps))
		}
		for i, s := range c.Steps {
			got, rej := stepFor(c, s.JobID)
			if rej != nil || got.Step != i+1 || got.InputSHA256 != s.InputSHA256 || !lowerHex(s.InputSHA256, 32) || s.Task == "" || s.Pool == "" || s.TaskVersion == "" {
				t.Fatalf("decodeClaims(%q): step %d (%+v) is found as %+v, %v", payload, i+1, s, got, rej)
			}
		}
	})
}

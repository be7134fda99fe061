package approval

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/outcome"
)

// Reason is the stable, machine-readable cause of a rejected approval. The values appear in
// logs, metrics and the control plane: never rename one.
type Reason string

const (
	Unsigned          Reason = "unsigned"           // no token, a bare JSON document, alg none, or no signature
	Malformed         Reason = "malformed"          // not a well-formed compact JWS approval (header, encoding, claims)
	UnknownKey        Reason = "unknown_key"        // no usable trusted key has the token's kid
	BadSignature      Reason = "bad_signature"      // the signature does not verify with the trusted key
	BadAlgorithm      Reason = "bad_algorithm"      // alg is something other than EdDSA (HS256, RS256, ...)
	Expired           Reason = "expired"            // exp + leeway is in the past
	NotYetValid       Reason = "not_yet_valid"      // iat is further in the future than the leeway
	TTLTooLong        Reason = "ttl_too_long"       // exp - iat exceeds the worker's maximum
	WrongJob          Reason = "wrong_job"          // signed for another job ID
	WrongTask         Reason = "wrong_task"         // signed for another task
	WrongVersion      Reason = "wrong_version"      // signed for another version of the task
	WrongPool         Reason = "wrong_pool"         // signed for another worker pool
	InputMismatch     Reason = "input_mismatch"     // the job input is not the approved input
	Replayed          Reason = "replayed"           // this approval was already used for this attempt
	AttemptsExhausted Reason = "attempts_exhausted" // the attempt number exceeds max_attempts
	UnknownClaim      Reason = "unknown_claim"      // the payload has a claim this worker does not know
)

// Reasons lists every reason, for documentation and validation. It returns a new slice each
// time: callers cannot change what another caller sees.
func Reasons() []Reason { return slices.Clone(reasons) }

var reasons = []Reason{Unsigned, Malformed, UnknownKey, BadSignature, BadAlgorithm, Expired, NotYetValid,
	TTLTooLong, WrongJob, WrongTask, WrongVersion, WrongPool, InputMismatch, Replayed, AttemptsExhausted, UnknownClaim}

// RejectError says why an approval was refused. Detail is written for an operator and
// never contains the token (a token is a bearer credential until it expires).
type RejectError struct {
	Reason Reason
	Detail string
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("approval rejected (%s): %s", e.Reason, e.Detail)
}

func reject(r Reason, detail string) *RejectError { return &RejectError{Reason: r, Detail: detail} }

// outcome wraps e so that callers find both outcome.Rejected (through *outcome.Error) and
// the precise reason (through *RejectError) with errors.As.
func (e *RejectError) outcome() *outcome.Error {
	return &outcome.Error{Code: outcome.Rejected, Msg: e.Error(), Err: e}
}

// ReasonOf returns the rejection reason in err's chain, or "" if err is not a rejection.
func ReasonOf(err error) Reason {
	var re *RejectError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

// Defaults and bounds of the Verifier options.
const (
	DefaultLeeway = 30 * time.Second
	MaxLeeway     = 10 * time.Minute
	DefaultMaxTTL = 24 * time.Hour
)

// Expect is what the worker knows about the job it is about to run, from the queue message
// and its own configuration. The approval must match it exactly.
type Expect struct {
	JobID, Task, TaskVersion, Pool string
	// Input is the job input as delivered (canonicalised before comparison; empty means null).
	Input []byte
	// Attempt is this execution's number, starting at 1.
	Attempt int
}

// Verifier checks approvals against a set of trusted keys. It is safe for concurrent use.
type Verifier struct {
	keys   map[string]trustedKey
	replay ReplayStore
	now    func() time.Time
	leeway time.Duration
	maxTTL time.Duration
}

// VerifierOption configures a Verifier.
type VerifierOption func(*Verifier)

// WithClock sets the clock used for exp and iat checks. Optional; default time.Now.
func WithClock(now func() time.Time) VerifierOption {
	return func(v *Verifier) {
		if now != nil {
			v.now = now
		}
	}
}

// WithLeeway sets the clock skew tolerated between signer and worker. Optional; default
// DefaultLeeway (30s). Negative values mean 0, values above MaxLeeway (10m) are clamped: a
// large leeway silently extends every approval's lifetime.
func WithLeeway(d time.Duration) VerifierOption {
	return func(v *Verifier) { v.leeway = min(max(d, 0), MaxLeeway) }
}

// WithMaxTTL sets the longest lifetime (exp - iat) an approval may claim. Optional; default
// DefaultMaxTTL (24h); zero or negative means the default. It bounds how long a leaked or
// stolen token is worth anything, whatever the signer chose.
func WithMaxTTL(d time.Duration) VerifierOption {
	return func(v *Verifier) {
		if d > 0 {
			v.maxTTL = d
		}
	}
}

// NewVerifier returns a Verifier that trusts the Ed25519 public keys in keys (normally from
// LoadKeySet) and records used approvals in replay. Keys of other types in the set are never
// used; a token naming one is rejected as unknown_key with an explanation. replay must not
// be nil: Verify refuses every token without one.
func NewVerifier(keys *jose.JSONWebKeySet, replay ReplayStore, opts ...VerifierOption) *Verifier {
	v := &Verifier{
		keys:   publicKeys(keys),
		replay: replay,
		now:    time.Now,
		leeway: DefaultLeeway,
		maxTTL: DefaultMaxTTL,
	}
	for _, o := range opts {
		o(v)
	}
	return v
}

// Verify decides whether token authorises running the job described by want, and if so
// records the use so that the same approval cannot authorise the same attempt again.
//
// token is either a single-job approval (Sign) or a plan approval (SignPlan); the worker
// does not choose, and neither does the queue. A plan approval is accepted only for a job
// listed among its steps, and that step's task, version, pool and input hash are checked
// as a single approval's are; its uses are recorded per (nonce, job), so each step runs
// its attempts once under the one signature. The returned Claims carry the matched step's
// binding in JobID..InputSHA256, with Plan, Steps and Step set.
//
// A refusal is an *outcome.Error with Code outcome.Rejected whose cause is a *RejectError;
// a failure of the replay store is outcome.Internal (retryable: the approval may be fine).
// The checks run in this order, and the replay store is touched only when all others pass,
// so a forged or mismatched token can never use up a legitimate approval's attempts:
// structure and header, trusted key by kid, signature, claims (strictly), time (exp, iat,
// max TTL, with leeway), the plan's step for the job (plan approvals), job/task/version/pool,
// input hash, attempt bound, replay.
func (v *Verifier) Verify(ctx context.Context, token string, want Expect) (Claims, error) {
	if want.Attempt < 1 {
		return Claims{}, outcome.New(outcome.Internal, "approval: Expect.Attempt is %d; attempts are numbered from 1", want.Attempt)
	}
	if v.replay == nil {
		return Claims{}, outcome.New(outcome.Internal, "approval: the verifier has no replay store; refusing to accept approvals that could be replayed")
	}
	c, rej := v.check(token, want)
	if rej != nil {
		return Claims{}, rej.outcome()
	}
	keepUntil := time.Unix(c.Expiry, 0).Add(v.leeway)
	if err := v.replay.Consume(ctx, replayKey(c), c.JobID, want.Attempt, c.MaxAttempts, keepUntil); err != nil {
		var re *RejectError
		switch {
		case errors.As(err, &re):
			return Claims{}, re.outcome()
		case ctx.Err() != nil:
			return Claims{}, outcome.Wrap(outcome.CodeOf(ctx.Err()), err, "approval: interrupted while recording the approval's use")
		}
		return Claims{}, outcome.Wrap(outcome.Internal, err, "approval: the replay store failed; the job was not started")
	}
	return c, nil
}

// check runs every verification step except the replay store.
func (v *Verifier) check(token string, want Expect) (Claims, *RejectError) {
	p, rej := parseToken(token)
	if rej != nil {
		return Claims{}, rej
	}
	key, ok := v.keys[p.Kid]
	if !ok {
		return Claims{}, reject(UnknownKey, fmt.Sprintf("no trusted key has kid %q (is the signer's public key in this worker's key set?)", p.Kid))
	}
	if key.problem != "" {
		return Claims{}, reject(UnknownKey, key.problem)
	}
	payload, ok := p.Verify(key.pub)
	if !ok {
		return Claims{}, reject(BadSignature, fmt.Sprintf("the signature does not verify with trusted key %q: the token was altered or signed by another key", p.Kid))
	}
	c, rej := decodeClaims(payload)
	if rej != nil {
		return Claims{}, rej
	}

	now := v.now()
	iat, exp := time.Unix(c.IssuedAt, 0), time.Unix(c.Expiry, 0)
	switch {
	case now.After(exp.Add(v.leeway)):
		return Claims{}, reject(Expired, fmt.Sprintf("the approval expired at %s (now %s, leeway %s)", stamp(exp), stamp(now), v.leeway))
	case iat.After(now.Add(v.leeway)):
		return Claims{}, reject(NotYetValid, fmt.Sprintf("the approval was issued at %s, in the future (now %s, leeway %s): check the signer's clock", stamp(iat), stamp(now), v.leeway))
	case exp.Sub(iat) > v.maxTTL:
		return Claims{}, reject(TTLTooLong, fmt.Sprintf("the approval is valid for %s, longer than this worker's maximum of %s", exp.Sub(iat), v.maxTTL))
	}

	if c.Plan != "" {
		// A plan approval authorises its listed steps and nothing else: the job must be one
		// of them, and from here on that step's binding is checked exactly as a single-job
		// approval's.
		if c, rej = stepFor(c, want.JobID); rej != nil {
			return Claims{}, rej
		}
	}

	for _, f := range []struct {
		reason    Reason
		what      string
		got, want string
	}{
		{WrongJob, "job", c.JobID, want.JobID},
		{WrongTask, "task", c.Task, want.Task},
		{WrongVersion, "task version", c.TaskVersion, want.TaskVersion},
		{WrongPool, "pool", c.Pool, want.Pool},
	} {
		if f.got != f.want {
			return Claims{}, reject(f.reason, fmt.Sprintf("the approval is for %s %q, not %q", f.what, f.got, f.want))
		}
	}

	hash, err := InputHash(want.Input)
	if err != nil {
		return Claims{}, reject(InputMismatch, fmt.Sprintf("the job input cannot be hashed, so it cannot match the approved input: %v", err))
	}
	if subtle.ConstantTimeCompare([]byte(hash), []byte(c.InputSHA256)) != 1 {
		return Claims{}, reject(InputMismatch, "the job input differs from the input that was approved (SHA-256 of the canonical JSON does not match)")
	}

	if want.Attempt > c.MaxAttempts {
		return Claims{}, reject(AttemptsExhausted, fmt.Sprintf("this is attempt %d; the approval allows %d", want.Attempt, c.MaxAttempts))
	}
	return c, nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

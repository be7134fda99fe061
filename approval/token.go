package approval

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"

	"github.com/castellan-dev/castellan/internal/jws"
)

// TokenType is the JWS "typ" header of an approval. Verification requires it, so that a
// JWS signed by the same key for another purpose can never pass as an approval.
const TokenType = "castellan-approval+jws"

// DefaultTTL is the lifetime Sign gives an approval when Request.TTL is zero.
const DefaultTTL = time.Hour

// Claims is what an approval asserts. Every field except Approver, Auto and ApprovedBy is
// required;
// a token whose payload has any other member is rejected (unknown_claim), so a newer
// signer cannot add a restriction that an older worker would silently ignore.
type Claims struct {
	JobID       string `json:"job"`
	Task        string `json:"task"`
	TaskVersion string `json:"task_version"`
	InputSHA256 string `json:"input_sha256"` // hex SHA-256 of CanonicalJSON(input)
	Pool        string `json:"pool"`
	IssuedAt    int64  `json:"iat"`          // Unix seconds
	Expiry      int64  `json:"exp"`          // Unix seconds
	Nonce       string `json:"nonce"`        // 128 random bits, unpadded base64url
	MaxAttempts int    `json:"max_attempts"` // executions (first run plus retries) this approval allows, >= 1
	Approver    string `json:"sub,omitempty"`
	Auto        bool   `json:"auto,omitzero"` // signed by a server-side auto-approve key
	// ApprovedBy records what decided the approval: an approval rule or a person. Optional;
	// nil in tokens signed before the claim existed.
	ApprovedBy *ApprovedBy `json:"approved_by,omitzero"`

	// Plan and Steps are set in a plan approval (SignPlan) and only there: one signature over
	// every step of a plan. Such a token has no job, task, task_version, pool or input_sha256
	// claim of its own; each step names them. Verify returns a plan approval's claims with
	// JobID, Task, TaskVersion, Pool and InputSHA256 copied from the step it verified, and
	// Step set to that step's number.
	Plan  string       `json:"plan,omitzero"`
	Steps []StepClaims `json:"steps,omitzero"`
	// Step is the 1-based number of the step of Steps that Verify matched to the job; 0 for
	// a single-job approval and in claims from Inspect. It is not a claim.
	Step int `json:"-"`
}

// ApprovedBy is the approved_by claim: exactly one of Rule (the approval rule that
// approved, see internal/approver/rules) or Person (who clicked Approve) is set, non-empty,
// at most MaxApprovedByBytes long and without control characters. Unlike the kid it is
// what the signer wrote: it records why the signer signed, it authenticates no one.
type ApprovedBy struct {
	Rule   string `json:"rule,omitzero"`
	Person string `json:"person,omitzero"`
}

// MaxApprovedByBytes bounds the rule or person named in the approved_by claim.
const MaxApprovedByBytes = 128

// problem says what is wrong with a, or "" if nothing is.
func (a ApprovedBy) problem() string {
	v := a.Rule
	switch {
	case a.Rule != "" && a.Person != "":
		return "names both a rule and a person; it holds exactly one"
	case a.Rule == "" && a.Person == "":
		return "names neither a rule nor a person; it holds exactly one, non-empty"
	case a.Rule == "":
		v = a.Person
	}
	if len(v) > MaxApprovedByBytes {
		return fmt.Sprintf("is %d bytes long; at most %d", len(v), MaxApprovedByBytes)
	}
	for _, r := range v {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return "contains a control character"
		}
	}
	return ""
}

// Request describes the job an approver signs for.
type Request struct {
	JobID, Task, TaskVersion, Pool string
	// Input is the job input as JSON; it is canonicalised before hashing. Empty means null.
	Input []byte
	// TTL is how long the approval stays valid. Optional; default DefaultTTL. Workers
	// reject approvals valid for longer than their maximum (24h unless configured).
	TTL time.Duration
	// MaxAttempts is how many executions the approval authorises. Optional; default 1.
	MaxAttempts int
	// Approver names who approved (informational, not verified). Optional.
	Approver string
	// Auto marks an approval signed by a server-side auto-approve key. Optional.
	Auto bool
	// ApprovedBy records the rule or person that approved (claim approved_by). Optional;
	// when set, exactly one of its fields must be.
	ApprovedBy *ApprovedBy
}

// Sign issues an approval for r, signed with key (a private Ed25519 JWK with a kid), as a
// JWS compact serialization with header {"alg":"EdDSA","kid":...,"typ":TokenType}.
func Sign(key jose.JSONWebKey, r Request) (token string, claims Claims, err error) {
	return signAt(key, r, time.Now())
}

func signAt(key jose.JSONWebKey, r Request, now time.Time) (string, Claims, error) {
	for _, f := range []struct{ name, v string }{{"JobID", r.JobID}, {"Task", r.Task}, {"TaskVersion", r.TaskVersion}, {"Pool", r.Pool}} {
		if f.v == "" {
			return "", Claims{}, fmt.Errorf("approval: Request.%s is required", f.name)
		}
	}
	hash, err := InputHash(r.Input)
	if err != nil {
		return "", Claims{}, fmt.Errorf("approval: job input: %w", err)
	}
	c, err := terms{ttl: r.TTL, maxAttempts: r.MaxAttempts, approver: r.Approver, auto: r.Auto, approvedBy: r.ApprovedBy}.claims("Request", key, now)
	if err != nil {
		return "", Claims{}, err
	}
	c.JobID, c.Task, c.TaskVersion, c.InputSHA256, c.Pool = r.JobID, r.Task, r.TaskVersion, hash, r.Pool
	return signClaims(key, c)
}

// terms are what single-job and plan approvals share: validity, attempts and who approved.
type terms struct {
	ttl         time.Duration
	maxAttempts int
	approver    string
	auto        bool
	approvedBy  *ApprovedBy
}

// claims checks the key and t (naming fields of the request type what) and returns the
// claims they give, with a fresh nonce, issued at now.
func (t terms) claims(what string, key jose.JSONWebKey, now time.Time) (Claims, error) {
	if _, ok := key.Key.(ed25519.PrivateKey); !ok {
		return Claims{}, fmt.Errorf("approval: signing key %q is not an Ed25519 private key", key.KeyID)
	}
	if key.KeyID == "" {
		return Claims{}, errors.New("approval: signing key has no kid; workers find their trusted key by kid")
	}
	ttl := t.ttl
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if ttl < time.Second {
		return Claims{}, fmt.Errorf("approval: %s.TTL %v must be at least 1s", what, t.ttl)
	}
	attempts := t.maxAttempts
	if attempts == 0 {
		attempts = 1
	}
	if attempts < 1 {
		return Claims{}, fmt.Errorf("approval: %s.MaxAttempts %d must be >= 1", what, t.maxAttempts)
	}
	var by *ApprovedBy
	if t.approvedBy != nil {
		if p := t.approvedBy.problem(); p != "" {
			return Claims{}, fmt.Errorf("approval: %s.ApprovedBy %s", what, p)
		}
		copied := *t.approvedBy
		by = &copied
	}
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return Claims{}, fmt.Errorf("approval: generating a nonce: %w", err)
	}
	return Claims{
		IssuedAt:    now.Unix(),
		Expiry:      now.Add(ttl).Unix(),
		Nonce:       base64.RawURLEncoding.EncodeToString(nonce[:]),
		MaxAttempts: attempts,
		Approver:    t.approver,
		Auto:        t.auto,
		ApprovedBy:  by,
	}, nil
}

// signClaims encodes c and signs it, refusing a token larger than MaxTokenBytes (the
// control plane would refuse it at the door).
func signClaims(key jose.JSONWebKey, c Claims) (string, Claims, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return "", Claims{}, fmt.Errorf("approval: encoding claims: %w", err)
	}
	token, err := signPayload(key, payload)
	if err != nil {
		return "", Claims{}, err
	}
	if len(token) > MaxTokenBytes {
		return "", Claims{}, fmt.Errorf("approval: the signed approval is %d bytes, more than the %d a control plane accepts; shorten the names or split the plan", len(token), MaxTokenBytes)
	}
	return token, c, nil
}

// signPayload signs raw payload bytes as a compact JWS with header
// {"alg":"EdDSA","kid":...,"typ":TokenType}; tests use it to sign payloads Sign would never
// make. Plugin signatures are made by the same code (internal/jws, go-jose underneath).
func signPayload(key jose.JSONWebKey, payload []byte) (string, error) {
	priv, ok := key.Key.(ed25519.PrivateKey)
	if !ok {
		return "", fmt.Errorf("approval: signing key %q is not an Ed25519 private key", key.KeyID)
	}
	tok, err := jws.Sign(priv, key.KeyID, TokenType, payload)
	if err != nil {
		return "", fmt.Errorf("approval: signing: %v", err)
	}
	return tok, nil
}

// Inspect decodes an approval WITHOUT verifying its signature, expiry or anything else.
// Its result is untrusted: use it to display an approval or for bookkeeping on the control
// plane, never to decide whether a job may run (that is Verifier.Verify). It still rejects
// tokens that are not well-formed approvals, with the same errors as Verify.
func Inspect(token string) (Claims, string, error) {
	p, rej := parseToken(token)
	if rej != nil {
		return Claims{}, "", rej.outcome()
	}
	c, rej := decodeClaims(p.UnsafePayload())
	if rej != nil {
		return Claims{}, "", rej.outcome()
	}
	return c, p.Kid, nil
}

// parseToken checks the token's structure and header (internal/jws, shared with plugin
// signatures) and maps each refusal to its reason. The accepted header is exactly
// {alg, kid, typ}.
func parseToken(token string) (*jws.Token, *RejectError) {
	// No trimming: the compact form is exact, and whitespace around or inside a token is
	// refused by jws.Parse (a token with only whitespace is no token at all).
	if strings.TrimSpace(token) == "" {
		return nil, reject(Unsigned, "the job carries no approval token")
	}
	if len(token) > MaxTokenBytes {
		return nil, reject(Malformed, fmt.Sprintf("the token is %d bytes; an approval is at most %d", len(token), MaxTokenBytes))
	}
	if strings.HasPrefix(token, "{") {
		var probe map[string]jsontext.Value
		if json.Unmarshal([]byte(token), &probe) == nil {
			_, s1 := probe["signature"]
			_, s2 := probe["signatures"]
			if s1 || s2 {
				return nil, reject(Malformed, "JWS JSON serialization is not accepted; approvals use the compact serialization")
			}
		}
		return nil, reject(Unsigned, "the approval is a bare JSON document, not a signed JWS")
	}
	t, err := jws.Parse(token, TokenType)
	if err != nil {
		var je *jws.Error
		if !errors.As(err, &je) {
			return nil, reject(Malformed, "the token is not a compact JWS")
		}
		reason := Malformed
		switch je.Problem {
		case jws.Unsigned:
			reason = Unsigned
		case jws.BadAlgorithm:
			reason = BadAlgorithm
		}
		detail := je.Msg
		if strings.Contains(detail, "typ is") {
			detail += " (this JWS is not an approval)"
		}
		return nil, reject(reason, detail)
	}
	return t, nil
}

// decodeClaims decodes a payload strictly, in one pass with go-json-experiment/json:
// exact member names ("JOB" is not "job"), no duplicates, no unknown members, values of the
// right type (integers written as integers), then every required claim present and
// well-formed.
func decodeClaims(payload []byte) (Claims, *RejectError) {
	var c Claims
	if err := json.Unmarshal(payload, &c, json.RejectUnknownMembers(true)); err != nil {
		return Claims{}, claimsError(err)
	}
	return checkClaims(c)
}

// claimsError turns a strict decoding failure into a rejection that names the claim, never
// its value.
func claimsError(err error) *RejectError {
	var syn *jsontext.SyntacticError
	var sem *json.SemanticError
	switch {
	case errors.Is(err, jsontext.ErrDuplicateName) && errors.As(err, &syn):
		return reject(Malformed, fmt.Sprintf("the claims have a duplicate member name %q", syn.JSONPointer.LastToken()))
	case errors.As(err, &sem) && errors.Is(sem.Err, json.ErrUnknownName):
		return reject(UnknownClaim, fmt.Sprintf("the approval has claim %q, which this worker does not understand; upgrade the worker or re-sign without it", claimName(sem.JSONPointer)))
	case errors.As(err, &sem) && sem.JSONPointer == "":
		return reject(Malformed, "the claims are not a JSON object")
	case errors.As(err, &sem):
		return reject(Malformed, fmt.Sprintf("a claim has the wrong type: %q is %s", claimName(sem.JSONPointer), kindName(sem.JSONKind)))
	}
	return reject(Malformed, "the claims are not valid JSON")
}

// claimName names the claim at p, dotted for a member of an object claim
// ("approved_by.rule").
func claimName(p jsontext.Pointer) string {
	var parts []string
	for tok := range p.Tokens() {
		parts = append(parts, tok)
	}
	return strings.Join(parts, ".")
}

// kindName names a JSON kind for messages, never the value.
func kindName(k jsontext.Kind) string {
	switch k {
	case '"':
		return "a string, not of the claim's type"
	case '0':
		return "a number that is not a whole number in range"
	case 't', 'f':
		return "a boolean"
	case '{':
		return "an object"
	case '[':
		return "an array"
	}
	return "not of the claim's type"
}

// lowerHex reports whether s is the lowercase hex form of n bytes.
func lowerHex(s string, n int) bool {
	if len(s) != 2*n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// checkClaims makes the checks on decoded claims that the types alone do not.
func checkClaims(c Claims) (Claims, *RejectError) {
	if c.Plan != "" || c.Steps != nil {
		if rej := checkPlan(c); rej != nil {
			return Claims{}, rej
		}
	} else if rej := checkTarget("", c.JobID, c.Task, c.TaskVersion, c.Pool, c.InputSHA256); rej != nil {
		return Claims{}, rej
	}
	if c.Nonce == "" {
		return Claims{}, reject(Malformed, "the required claim \"nonce\" is missing or empty")
	}
	var nonce [18]byte
	if len(c.Nonce) != 22 {
		return Claims{}, reject(Malformed, "the nonce claim is not 128 bits of unpadded base64url")
	}
	if n, err := base64.RawURLEncoding.Strict().Decode(nonce[:], []byte(c.Nonce)); err != nil || n != 16 {
		return Claims{}, reject(Malformed, "the nonce claim is not 128 bits of unpadded base64url")
	}
	if c.IssuedAt <= 0 {
		return Claims{}, reject(Malformed, "the required claim \"iat\" is missing or not a positive Unix time")
	}
	if c.Expiry <= c.IssuedAt {
		return Claims{}, reject(Malformed, "the \"exp\" claim is missing or not after \"iat\"")
	}
	if c.MaxAttempts < 1 {
		return Claims{}, reject(Malformed, "the \"max_attempts\" claim is missing or below 1")
	}
	if c.ApprovedBy != nil {
		if p := c.ApprovedBy.problem(); p != "" {
			return Claims{}, reject(Malformed, "the \"approved_by\" claim "+p)
		}
	}
	return c, nil
}

// checkTarget checks the claims that bind an approval to one job: those of a single-job
// approval (prefix "") or of one step of a plan (prefix "steps.N.").
func checkTarget(prefix, job, task, version, pool, hash string) *RejectError {
	for _, f := range []struct{ name, v string }{
		{"job", job}, {"task", task}, {"task_version", version}, {"pool", pool}, {"input_sha256", hash},
	} {
		if f.v == "" {
			return reject(Malformed, fmt.Sprintf("the required claim %q is missing or empty", prefix+f.name))
		}
	}
	if !lowerHex(hash, 32) {
		return reject(Malformed, fmt.Sprintf("the %sinput_sha256 claim is not 64 lowercase hex digits", prefix))
	}
	return nil
}

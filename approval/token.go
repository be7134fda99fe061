package approval

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// TokenType is the JWS "typ" header of an approval. Verification requires it, so that a
// JWS signed by the same key for another purpose can never pass as an approval.
const TokenType = "castellan-approval+jws"

// DefaultTTL is the lifetime Sign gives an approval when Request.TTL is zero.
const DefaultTTL = time.Hour

// Claims is what an approval asserts. Every field except Approver and Auto is required;
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
	Auto        bool   `json:"auto,omitempty"` // signed by a server-side auto-approve key
}

// headerNames are the protected header parameters an approval may have. Anything else
// (crit, b64, jwk, jku, x5u, x5c, ...) is refused: each is a way to change how the token
// is checked, and an approval has no use for any of them.
var headerNames = map[string]bool{"alg": true, "kid": true, "typ": true}

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
}

// Sign issues an approval for r, signed with key (a private Ed25519 JWK with a kid), as a
// JWS compact serialization with header {"alg":"EdDSA","kid":...,"typ":TokenType}.
func Sign(key jose.JSONWebKey, r Request) (token string, claims Claims, err error) {
	return signAt(key, r, time.Now())
}

func signAt(key jose.JSONWebKey, r Request, now time.Time) (string, Claims, error) {
	if _, ok := key.Key.(ed25519.PrivateKey); !ok {
		return "", Claims{}, fmt.Errorf("approval: signing key %q is not an Ed25519 private key", key.KeyID)
	}
	if key.KeyID == "" {
		return "", Claims{}, errors.New("approval: signing key has no kid; workers find their trusted key by kid")
	}
	for _, f := range []struct{ name, v string }{{"JobID", r.JobID}, {"Task", r.Task}, {"TaskVersion", r.TaskVersion}, {"Pool", r.Pool}} {
		if f.v == "" {
			return "", Claims{}, fmt.Errorf("approval: Request.%s is required", f.name)
		}
	}
	ttl := r.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	if ttl < time.Second {
		return "", Claims{}, fmt.Errorf("approval: Request.TTL %v must be at least 1s", r.TTL)
	}
	attempts := r.MaxAttempts
	if attempts == 0 {
		attempts = 1
	}
	if attempts < 1 {
		return "", Claims{}, fmt.Errorf("approval: Request.MaxAttempts %d must be >= 1", r.MaxAttempts)
	}
	hash, err := InputHash(r.Input)
	if err != nil {
		return "", Claims{}, fmt.Errorf("approval: job input: %w", err)
	}
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", Claims{}, fmt.Errorf("approval: generating a nonce: %w", err)
	}
	c := Claims{
		JobID:       r.JobID,
		Task:        r.Task,
		TaskVersion: r.TaskVersion,
		InputSHA256: hash,
		Pool:        r.Pool,
		IssuedAt:    now.Unix(),
		Expiry:      now.Add(ttl).Unix(),
		Nonce:       base64.RawURLEncoding.EncodeToString(nonce[:]),
		MaxAttempts: attempts,
		Approver:    r.Approver,
		Auto:        r.Auto,
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", Claims{}, fmt.Errorf("approval: encoding claims: %w", err)
	}
	token, err := signPayload(key, payload)
	if err != nil {
		return "", Claims{}, err
	}
	return token, c, nil
}

// signPayload signs raw payload bytes as a compact JWS (RFC 7515) with the EdDSA algorithm
// (RFC 8037); tests use it to sign payloads Sign would never make. It is written out rather
// than built with go-jose's signer, which cost more than the signature itself; the
// interoperability test checks that go-jose verifies what it makes.
func signPayload(key jose.JSONWebKey, payload []byte) (string, error) {
	priv, ok := key.Key.(ed25519.PrivateKey)
	if !ok || len(priv) != ed25519.PrivateKeySize {
		return "", fmt.Errorf("approval: signing key %q is not an Ed25519 private key", key.KeyID)
	}
	header, err := json.Marshal(struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
		Typ string `json:"typ"`
	}{string(jose.EdDSA), key.KeyID, TokenType})
	if err != nil {
		return "", fmt.Errorf("approval: encoding the header: %w", err)
	}
	enc := base64.RawURLEncoding
	signed := enc.EncodeToString(header) + "." + enc.EncodeToString(payload)
	return signed + "." + enc.EncodeToString(ed25519.Sign(priv, []byte(signed))), nil
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
	c, rej := decodeClaims(p.payload)
	if rej != nil {
		return Claims{}, "", rej.outcome()
	}
	return c, p.kid, nil
}

type parsedToken struct {
	kid     string
	signed  string // BASE64URL(header) "." BASE64URL(payload): what the signature covers
	payload []byte // unverified until verify succeeds
	sig     []byte
}

// verify checks the Ed25519 signature over the JWS signing input (RFC 7515 section 5.2,
// RFC 8037 section 3.1). The header was checked by parseToken to be exactly alg EdDSA, a
// kid and the approval typ, so nothing in it can change how the signature is checked.
func (p parsedToken) verify(pub ed25519.PublicKey) bool {
	return len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, []byte(p.signed), p.sig)
}

// parseToken checks the token's structure and header and decodes its payload and
// signature. Every refusal has a precise reason, and the accepted header is exactly
// {alg, kid, typ}.
func parseToken(token string) (parsedToken, *RejectError) {
	token = strings.TrimSpace(token)
	if token == "" {
		return parsedToken{}, reject(Unsigned, "the job carries no approval token")
	}
	if strings.HasPrefix(token, "{") {
		var probe map[string]json.RawMessage
		if json.Unmarshal([]byte(token), &probe) == nil {
			_, s1 := probe["signature"]
			_, s2 := probe["signatures"]
			if s1 || s2 {
				return parsedToken{}, reject(Malformed, "JWS JSON serialization is not accepted; approvals use the compact serialization")
			}
		}
		return parsedToken{}, reject(Unsigned, "the approval is a bare JSON document, not a signed JWS")
	}
	if n := strings.Count(token, ".") + 1; n != 3 {
		return parsedToken{}, reject(Malformed, fmt.Sprintf("a compact JWS has 3 dot-separated parts, this token has %d", n))
	}
	dot := strings.LastIndexByte(token, '.')
	signed, rawSig := token[:dot], token[dot+1:]
	rawHeader, rawPayload, _ := strings.Cut(signed, ".")
	kid, rej := checkHeader(rawHeader, rawSig == "")
	if rej != nil {
		return parsedToken{}, rej
	}
	payload, err := base64.RawURLEncoding.Strict().DecodeString(rawPayload)
	if err != nil {
		return parsedToken{}, reject(Malformed, "the JWS payload is not unpadded base64url")
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(rawSig)
	if err != nil {
		return parsedToken{}, reject(Malformed, "the JWS signature is not unpadded base64url")
	}
	return parsedToken{kid: kid, signed: signed, payload: payload, sig: sig}, nil
}

// Every approval from one signer carries the same header, so headers that passed
// checkHeader are remembered (up to maxCachedHeaders of them; a refused header is never
// remembered): checking one was a fifth of a verification.
const maxCachedHeaders = 64

var (
	headerMu    sync.RWMutex
	headerCache = map[string]string{} // base64url header -> kid
)

// checkHeader checks the base64url protected header and returns its kid. noSignature says
// the token's signature part is empty, which is reported (as unsigned) after an unusable
// algorithm and before the other header problems.
func checkHeader(encoded string, noSignature bool) (string, *RejectError) {
	headerMu.RLock()
	kid, ok := headerCache[encoded]
	headerMu.RUnlock()
	if ok {
		if noSignature {
			return "", reject(Unsigned, "the token has an empty signature")
		}
		return kid, nil
	}
	rawHeader, err := base64.RawURLEncoding.Strict().DecodeString(encoded)
	if err != nil {
		return "", reject(Malformed, "the JWS header is not unpadded base64url")
	}
	// parseJSON refuses duplicate names, which encoding/json would silently resolve.
	tree, err := parseJSON(rawHeader)
	if err != nil {
		return "", reject(Malformed, fmt.Sprintf("the JWS header is not valid JSON: %v", err))
	}
	if tree.kind != 'o' {
		return "", reject(Malformed, "the JWS header is not a JSON object")
	}
	var alg, typ string
	for _, m := range tree.members { // sorted: the same token always gets the same message
		if !headerNames[m.name] {
			return "", reject(Malformed, fmt.Sprintf("the JWS header has parameter %q; an approval header may hold only alg, kid and typ", m.name))
		}
		s, ok := m.value.stringValue()
		if !ok {
			return "", reject(Malformed, fmt.Sprintf("the JWS header parameter %q must be a string", m.name))
		}
		switch m.name {
		case "alg":
			alg = s
		case "kid":
			kid = s
		case "typ":
			typ = s
		}
	}
	switch {
	case alg == "" || strings.EqualFold(alg, "none"):
		return "", reject(Unsigned, fmt.Sprintf("the token is not signed (alg %q)", alg))
	case alg != string(jose.EdDSA):
		return "", reject(BadAlgorithm, fmt.Sprintf("alg %q is not accepted; approvals are signed with EdDSA (Ed25519)", alg))
	case noSignature:
		return "", reject(Unsigned, "the token has an empty signature")
	case kid == "":
		return "", reject(Malformed, "the JWS header has no kid, so no trusted key can be chosen")
	case typ != TokenType:
		return "", reject(Malformed, fmt.Sprintf("the JWS typ is %q, want %q (this JWS is not an approval)", typ, TokenType))
	}
	headerMu.Lock()
	if len(headerCache) < maxCachedHeaders {
		headerCache[encoded] = kid
	}
	headerMu.Unlock()
	return kid, nil
}

// decodeClaims decodes a payload strictly: exact member names, no duplicates, no unknown
// members, right types, every required claim present and well-formed.
//
// A well-formed payload (every member a known claim with a scalar value of its type) is read
// in one pass without building a tree: that is every token a worker sees in normal work, and
// the tree cost more than the rest of Verify after the signature. Anything else goes through
// the tree, which finds and reports the problem in a stable order.
func decodeClaims(payload []byte) (Claims, *RejectError) {
	c, present, ok := scanClaims(payload)
	if !ok {
		var rej *RejectError
		if c, present, rej = treeClaims(payload); rej != nil {
			return Claims{}, rej
		}
	}
	return checkClaims(c, present)
}

// Claim bits for the presence set of scanClaims and treeClaims.
const (
	claimJob = 1 << iota
	claimTask
	claimTaskVersion
	claimInputSHA256
	claimPool
	claimNonce
	claimSub
	claimIat
	claimExp
	claimMaxAttempts
	claimAuto
)

// claimBit returns the bit of a claim name, 0 for a name that is not a claim. Names match
// exactly (encoding/json alone would also accept "JOB" or "Job" for "job").
func claimBit(name string) uint16 {
	switch name {
	case "job":
		return claimJob
	case "task":
		return claimTask
	case "task_version":
		return claimTaskVersion
	case "input_sha256":
		return claimInputSHA256
	case "pool":
		return claimPool
	case "nonce":
		return claimNonce
	case "sub":
		return claimSub
	case "iat":
		return claimIat
	case "exp":
		return claimExp
	case "max_attempts":
		return claimMaxAttempts
	case "auto":
		return claimAuto
	}
	return 0
}

// scanClaims is decodeClaims's one-pass reader. ok is false whenever the payload is not a
// plain object of known claims with values of their types; the caller then decodes it
// through the tree, which accepts or rejects it with the full rules. scanClaims therefore
// never rejects anything itself, and what it accepts the tree would decode the same way.
func scanClaims(payload []byte) (c Claims, present uint16, ok bool) {
	p := parser{data: payload}
	p.skipSpace()
	if p.pos >= len(p.data) || p.data[p.pos] != '{' {
		return Claims{}, 0, false
	}
	p.pos++
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
	} else {
		for {
			p.skipSpace()
			if p.pos >= len(p.data) || p.data[p.pos] != '"' {
				return Claims{}, 0, false
			}
			name, err := p.string()
			if err != nil {
				return Claims{}, 0, false
			}
			bit := claimBit(name)
			if bit == 0 || present&bit != 0 {
				return Claims{}, 0, false // unknown or duplicate: the tree reports it
			}
			present |= bit
			p.skipSpace()
			if p.pos >= len(p.data) || p.data[p.pos] != ':' {
				return Claims{}, 0, false
			}
			p.pos++
			p.skipSpace()
			if !p.scanClaim(&c, bit) {
				return Claims{}, 0, false
			}
			p.skipSpace()
			if p.pos >= len(p.data) {
				return Claims{}, 0, false
			}
			if p.data[p.pos] == ',' {
				p.pos++
				continue
			}
			if p.data[p.pos] != '}' {
				return Claims{}, 0, false
			}
			p.pos++
			break
		}
	}
	p.skipSpace()
	return c, present, p.pos == len(p.data)
}

// Claim kinds, by bit: which JSON type a claim's value must have.
const (
	intClaims    = claimIat | claimExp | claimMaxAttempts
	boolClaims   = claimAuto
	stringClaims = claimJob | claimTask | claimTaskVersion | claimInputSHA256 | claimPool | claimNonce | claimSub
)

// setString, setInt and setBool store a claim's value; both readers use them. setInt is
// false for a max_attempts beyond int.
func (c *Claims) setString(bit uint16, s string) {
	switch bit {
	case claimJob:
		c.JobID = s
	case claimTask:
		c.Task = s
	case claimTaskVersion:
		c.TaskVersion = s
	case claimInputSHA256:
		c.InputSHA256 = s
	case claimPool:
		c.Pool = s
	case claimNonce:
		c.Nonce = s
	case claimSub:
		c.Approver = s
	}
}

func (c *Claims) setInt(bit uint16, n int64) bool {
	switch bit {
	case claimIat:
		c.IssuedAt = n
	case claimExp:
		c.Expiry = n
	case claimMaxAttempts:
		c.MaxAttempts = int(n)
		return int64(c.MaxAttempts) == n
	}
	return true
}

// scanClaim reads the value of one claim into c; false means "not the plain case".
func (p *parser) scanClaim(c *Claims, bit uint16) bool {
	if p.pos >= len(p.data) {
		return false
	}
	switch ch := p.data[p.pos]; {
	case ch == 'n':
		_, err := p.literal("null")
		return err == nil // null is an absent claim, as encoding/json reads it
	case bit&boolClaims != 0:
		word := "false"
		if ch == 't' {
			word = "true"
		}
		_, err := p.literal(word)
		c.Auto = word == "true"
		return err == nil
	case bit&intClaims != 0:
		n, ok := p.scanInt()
		return ok && c.setInt(bit, n)
	case ch == '"':
		s, err := p.string()
		if err != nil {
			return false
		}
		c.setString(bit, s)
		return true
	}
	return false
}

// scanInt reads a number that is a plain integer of at most 15 digits, which a float64
// holds exactly, so the tree's canonical number text would be the same digits. Fractions,
// exponents and longer numbers are left to the tree.
func (p *parser) scanInt() (int64, bool) {
	i, neg := p.pos, false
	if i < len(p.data) && p.data[i] == '-' {
		neg, i = true, i+1
	}
	start := i
	var n int64
	for i < len(p.data) && p.data[i] >= '0' && p.data[i] <= '9' {
		n = n*10 + int64(p.data[i]-'0')
		i++
	}
	digits := i - start
	if digits == 0 || digits > 15 || (digits > 1 && p.data[start] == '0') {
		return 0, false
	}
	if i < len(p.data) && (p.data[i] == '.' || p.data[i] == 'e' || p.data[i] == 'E') {
		return 0, false
	}
	p.pos = i
	if neg {
		n = -n
	}
	return n, true
}

// treeClaims decodes the claims through the parsed tree, whose members are sorted: the
// same token always gets the same message.
func treeClaims(payload []byte) (Claims, uint16, *RejectError) {
	tree, err := parseJSON(payload)
	if err != nil {
		return Claims{}, 0, reject(Malformed, fmt.Sprintf("the claims are not valid JSON: %v", err))
	}
	if tree.kind != 'o' {
		return Claims{}, 0, reject(Malformed, "the claims are not a JSON object")
	}
	for _, m := range tree.members {
		if claimBit(m.name) == 0 {
			return Claims{}, 0, reject(UnknownClaim, fmt.Sprintf("the approval has claim %q, which this worker does not understand; upgrade the worker or re-sign without it", m.name))
		}
	}
	var c Claims
	var present uint16
	for _, m := range tree.members {
		present |= claimBit(m.name)
		v := m.value
		if v.kind == 's' && v.text == "null" {
			continue // null is an absent claim, as encoding/json reads it
		}
		var ok bool
		switch bit := claimBit(m.name); {
		case bit&stringClaims != 0:
			var str string
			if str, ok = v.stringValue(); ok {
				c.setString(bit, str)
			}
		case bit&intClaims != 0:
			var n int64
			n, ok = v.intValue()
			ok = ok && c.setInt(bit, n)
		case bit&boolClaims != 0:
			c.Auto, ok = v.boolValue()
		}
		if !ok {
			return Claims{}, 0, reject(Malformed, fmt.Sprintf("a claim has the wrong type: %q is %s", m.name, v.describe()))
		}
	}
	return c, present, nil
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

// checkClaims makes the checks on decoded claims that do not depend on how they were read.
func checkClaims(c Claims, present uint16) (Claims, *RejectError) {
	for _, f := range []struct{ name, v string }{
		{"job", c.JobID}, {"task", c.Task}, {"task_version", c.TaskVersion}, {"pool", c.Pool},
		{"input_sha256", c.InputSHA256}, {"nonce", c.Nonce},
	} {
		if f.v == "" {
			return Claims{}, reject(Malformed, fmt.Sprintf("the required claim %q is missing or empty", f.name))
		}
	}
	if !lowerHex(c.InputSHA256, 32) {
		return Claims{}, reject(Malformed, "the input_sha256 claim is not 64 lowercase hex digits")
	}
	var nonce [18]byte
	if len(c.Nonce) != 22 {
		return Claims{}, reject(Malformed, "the nonce claim is not 128 bits of unpadded base64url")
	}
	if n, err := base64.RawURLEncoding.Strict().Decode(nonce[:], []byte(c.Nonce)); err != nil || n != 16 {
		return Claims{}, reject(Malformed, "the nonce claim is not 128 bits of unpadded base64url")
	}
	if present&claimIat == 0 || c.IssuedAt <= 0 {
		return Claims{}, reject(Malformed, "the required claim \"iat\" is missing or not a positive Unix time")
	}
	if present&claimExp == 0 || c.Expiry <= c.IssuedAt {
		return Claims{}, reject(Malformed, "the \"exp\" claim is missing or not after \"iat\"")
	}
	if c.MaxAttempts < 1 {
		return Claims{}, reject(Malformed, "the \"max_attempts\" claim is missing or below 1")
	}
	return c, nil
}

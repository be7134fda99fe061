// Package jws reads and writes the one JWS form Castellan uses, for approvals and plugin
// signatures alike: compact serialization (RFC 7515 section 7.1), EdDSA over Ed25519
// (RFC 8037), and a protected header of exactly "alg", "kid" and "typ".
//
// go-jose parses and signs the JWS and crypto/ed25519 checks the signature (through
// go-jose). This package adds only what go-jose leaves to its callers: the token must be
// exactly its compact form (go-jose's base64 decoder skips line breaks inside a part), and
// the header is read strictly (go-jose resolves duplicate names and keeps unknown ones).
package jws

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// Problem classifies why Parse refused a token.
type Problem int

const (
	// Malformed: not exactly a compact JWS, or a header other than alg, kid and typ strings,
	// a missing kid, or another typ than the caller's.
	Malformed Problem = iota + 1
	// Unsigned: alg is empty or "none", or the signature part is empty.
	Unsigned
	// BadAlgorithm: alg names an algorithm other than EdDSA.
	BadAlgorithm
)

// Error is a refusal by Parse. Msg never holds the token or any part of it.
type Error struct {
	Problem Problem
	Msg     string
}

func (e *Error) Error() string { return e.Msg }

func refuse(p Problem, format string, args ...any) *Error {
	return &Error{Problem: p, Msg: fmt.Sprintf(format, args...)}
}

// Token is a parsed compact JWS whose header passed every check. Its payload is untrusted
// until Verify succeeds.
type Token struct {
	Kid string
	sig *jose.JSONWebSignature
}

// header is the whole protected header an accepted token may have.
type header struct {
	Alg *string `json:"alg"`
	Kid *string `json:"kid"`
	Typ *string `json:"typ"`
}

// CheckCompact reports whether tok is exactly a compact JWS: three parts separated by two
// dots, each unpadded base64url (RFC 4648 section 5) in its canonical form, and nothing
// else: no whitespace or line break anywhere, not even around the token. It checks nothing
// inside the parts. An empty part is allowed here (Parse decides what an empty one means).
func CheckCompact(tok string) error {
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			what := fmt.Sprintf("byte %#02x", c)
			switch c {
			case ' ', '\t', '\n', '\r', '\v', '\f':
				what = fmt.Sprintf("whitespace (%q)", c)
			case '=':
				what = "padding ('=')"
			}
			return fmt.Errorf("the token has %s at offset %d; a compact JWS holds only base64url characters and two dots", what, i)
		}
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return fmt.Errorf("a compact JWS has 3 dot-separated parts, this token has %d", len(parts))
	}
	for i, p := range parts {
		if _, err := base64.RawURLEncoding.Strict().DecodeString(p); err != nil {
			return fmt.Errorf("part %d of the token is not canonical unpadded base64url", i+1)
		}
	}
	return nil
}

// Parse checks that token is exactly a compact JWS signed with EdDSA whose protected header
// is {"alg":"EdDSA","kid":<non-empty>,"typ":typ} (no other member, no duplicate, every
// value a string), and returns it for Verify. A refusal is an *Error.
func Parse(token, typ string) (*Token, error) {
	if err := CheckCompact(token); err != nil {
		return nil, refuse(Malformed, "%v", err)
	}
	rawHeader, _, _ := strings.Cut(token, ".")
	noSignature := strings.HasSuffix(token, ".")
	hb, _ := base64.RawURLEncoding.DecodeString(rawHeader) // checked by CheckCompact
	var h header
	if err := json.Unmarshal(hb, &h, json.RejectUnknownMembers(true)); err != nil {
		return nil, headerError(err)
	}
	alg, kid, gotTyp := deref(h.Alg), deref(h.Kid), deref(h.Typ)
	switch {
	case alg == "" || strings.EqualFold(alg, "none"):
		return nil, refuse(Unsigned, "the token is not signed (alg %q)", alg)
	case alg != string(jose.EdDSA):
		return nil, refuse(BadAlgorithm, "alg %q is not accepted; only EdDSA (Ed25519) signatures are", alg)
	case noSignature:
		return nil, refuse(Unsigned, "the token has an empty signature")
	case kid == "":
		return nil, refuse(Malformed, "the JWS header has no kid, so no trusted key can be chosen")
	case gotTyp != typ:
		return nil, refuse(Malformed, "the JWS typ is %q, want %q", gotTyp, typ)
	}
	sig, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return nil, refuse(Malformed, "the token is not a compact JWS: %s", strings.TrimPrefix(err.Error(), "go-jose/go-jose: "))
	}
	if len(sig.Signatures) != 1 {
		return nil, refuse(Malformed, "the token must hold exactly one signature")
	}
	return &Token{Kid: kid, sig: sig}, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// headerError turns a strict decoding failure of the header into a refusal naming the
// parameter, never its value.
func headerError(err error) *Error {
	var syn *jsontext.SyntacticError
	var sem *json.SemanticError
	switch {
	case errors.Is(err, jsontext.ErrDuplicateName) && errors.As(err, &syn):
		return refuse(Malformed, "the JWS header has a duplicate parameter %q", syn.JSONPointer.LastToken())
	case errors.As(err, &sem) && errors.Is(sem.Err, json.ErrUnknownName):
		return refuse(Malformed, "the JWS header has parameter %q; the header may hold only alg, kid and typ", sem.JSONPointer.LastToken())
	case errors.As(err, &sem) && sem.JSONPointer == "":
		return refuse(Malformed, "the JWS header is not a JSON object")
	case errors.As(err, &sem):
		return refuse(Malformed, "the JWS header parameter %q must be a string", sem.JSONPointer.LastToken())
	}
	return refuse(Malformed, "the JWS header is not valid JSON")
}

// Verify checks the Ed25519 signature with pub (crypto/ed25519, through go-jose) and
// returns the payload. ok is false for a wrong key or an invalid signature.
func (t *Token) Verify(pub ed25519.PublicKey) (payload []byte, ok bool) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, false
	}
	payload, err := t.sig.Verify(pub)
	return payload, err == nil
}

// UnsafePayload returns the payload without checking the signature. It is untrusted: for
// display and bookkeeping only.
func (t *Token) UnsafePayload() []byte { return t.sig.UnsafePayloadWithoutVerification() }

// Sign signs payload with priv as a compact JWS whose protected header is exactly
// {"alg":"EdDSA","kid":kid,"typ":typ}.
func Sign(priv ed25519.PrivateKey, kid, typ string, payload []byte) (string, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return "", errors.New("the signing key is not an Ed25519 private key")
	}
	if kid == "" {
		return "", errors.New("the signing key has no kid")
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: priv},
		(&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader("kid", kid))
	if err != nil {
		return "", err
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		return "", err
	}
	return obj.CompactSerialize()
}

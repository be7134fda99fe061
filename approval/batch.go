package approval

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"sync"
	"time"

	"filippo.io/edwards25519"
)

// Batch verification.
//
// A worker that leases jobs in batches checks their signatures together: the randomised
// batch equation of RFC 8032 section 5.1.7 (as in "High-speed high-security signatures",
// Bernstein et al., section 5) takes one multi-scalar multiplication for n signatures by
// one key instead of n double scalar multiplications, about a third of the cost per
// signature at 16. Verify of a token found valid in a batch then skips its own signature
// check; every other check still runs.
//
// What a batch accepts: with random 128-bit z_i, it checks
//
//	[8] ( sum z_i R_i + (sum z_i k_i) A - (sum z_i S_i) B ) = 0
//
// for k_i = SHA-512(R_i || A || M_i) mod L and canonical S_i. A batch holding a signature
// that single verification rejects passes with probability at most 2^-128 unless the
// signer chose a signature with a small-order component, which only the holder of the
// private key can do and which gains nothing (it can sign anything anyway). A failed
// batch is halved and each half checked again, down to single checks, so one bad token
// cannot stop the others from being preverified, and a bad token is never marked.

// minBatch is the smallest group worth a batch equation; below it, single checks are as
// cheap.
const minBatch = 3

// preverified remembers tokens whose signatures a batch found valid, until Verify consumes
// them. Entries are keyed by the signature and hold the exact signed text and kid, so a
// signature reused over other text is checked afresh.
type preverified struct {
	mu sync.Mutex
	m  map[string]preEntry
}

type preEntry struct {
	kid, signed string
	until       time.Time
}

// maxPreverified bounds the entries kept; preverifyTTL is how long one waits for its Verify
// (a leased job is verified at once; a job whose Verify never comes must not pin memory).
const (
	maxPreverified = 8192
	preverifyTTL   = 5 * time.Minute
)

func (p *preverified) add(now time.Time, toks []parsedToken) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]preEntry{}
	}
	if len(p.m)+len(toks) > maxPreverified {
		for k, e := range p.m {
			if now.After(e.until) {
				delete(p.m, k)
			}
		}
		if len(p.m)+len(toks) > maxPreverified {
			return // full of live entries: those Verify calls check singly
		}
	}
	for _, t := range toks {
		p.m[string(t.sig)] = preEntry{kid: t.kid, signed: t.signed, until: now.Add(preverifyTTL)}
	}
}

// take reports whether t's signature was found valid by a batch, and forgets it.
func (p *preverified) take(now time.Time, t parsedToken) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	e, ok := p.m[string(t.sig)]
	if !ok {
		return false
	}
	delete(p.m, string(t.sig))
	return e.kid == t.kid && e.signed == t.signed && !now.After(e.until)
}

// Preverify checks the signatures of tokens (normally the approvals of one lease) together
// and remembers the valid ones, so that Verify of each skips its own signature check.
// It never rejects anything: malformed tokens, unknown keys and bad signatures are left to
// Verify, which reports them. It is an optimisation only, and safe for concurrent use.
func (v *Verifier) Preverify(tokens []string) {
	byKey := map[string][]parsedToken{}
	for _, tok := range tokens {
		p, rej := parseToken(tok)
		if rej != nil {
			continue
		}
		if k, ok := v.keys[p.kid]; !ok || k.problem != "" || len(k.pub) != ed25519.PublicKeySize {
			continue
		}
		byKey[p.kid] = append(byKey[p.kid], p)
	}
	now := v.now()
	for kid, toks := range byKey {
		if len(toks) < minBatch {
			continue
		}
		v.pre.add(now, verifyGroup(v.keys[kid].pub, toks, nil))
	}
}

// verifyGroup returns the tokens of toks whose signatures by pub are valid, appended to
// good: the whole group if its batch equation holds, else each half checked the same way.
func verifyGroup(pub ed25519.PublicKey, toks []parsedToken, good []parsedToken) []parsedToken {
	if len(toks) < minBatch {
		for _, t := range toks {
			if t.verify(pub) {
				good = append(good, t)
			}
		}
		return good
	}
	if batchValid(pub, toks) {
		return append(good, toks...)
	}
	half := len(toks) / 2
	good = verifyGroup(pub, toks[:half], good)
	return verifyGroup(pub, toks[half:], good)
}

// batchValid checks the batch equation for signatures of toks by pub.
func batchValid(pub ed25519.PublicKey, toks []parsedToken) bool {
	A, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return false
	}
	n := len(toks)
	scalars := make([]*edwards25519.Scalar, 0, n+2)
	points := make([]*edwards25519.Point, 0, n+2)
	sumS := edwards25519.NewScalar() // sum z_i S_i
	sumK := edwards25519.NewScalar() // sum z_i k_i
	var zb [32]byte
	var buf [64]byte
	for _, t := range toks {
		if len(t.sig) != ed25519.SignatureSize {
			return false
		}
		R, err := new(edwards25519.Point).SetBytes(t.sig[:32])
		if err != nil {
			return false
		}
		S, err := edwards25519.NewScalar().SetCanonicalBytes(t.sig[32:])
		if err != nil {
			return false
		}
		h := sha512.New()
		h.Write(t.sig[:32])
		h.Write(pub)
		h.Write([]byte(t.signed))
		k, err := edwards25519.NewScalar().SetUniformBytes(h.Sum(buf[:0]))
		if err != nil {
			return false
		}
		// z: 128 random bits, little-endian; below the group order, so canonical.
		if _, err := rand.Read(zb[:16]); err != nil {
			return false
		}
		z, err := edwards25519.NewScalar().SetCanonicalBytes(zb[:])
		if err != nil {
			return false
		}
		sumS.MultiplyAdd(z, S, sumS)
		sumK.MultiplyAdd(z, k, sumK)
		scalars = append(scalars, z)
		points = append(points, R)
	}
	scalars = append(scalars, sumK, edwards25519.NewScalar().Negate(sumS))
	points = append(points, A, edwards25519.NewGeneratorPoint())
	check := new(edwards25519.Point).VarTimeMultiScalarMult(scalars, points)
	check.MultByCofactor(check)
	return check.Equal(edwards25519.NewIdentityPoint()) == 1
}

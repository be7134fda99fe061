package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TokenPrefix starts every bearer token, so that secret scanners can find leaked ones.
const TokenPrefix = api.TokenPrefix

// ErrTokenInvalid is returned by Authenticate for a missing, malformed, unknown or revoked token.
var ErrTokenInvalid = errors.New("invalid bearer token")

// Principal is an authenticated caller (the /v1 layer's).
type Principal = controlplane.Principal

// CreateToken makes a new random bearer token for role and pool that never expires; see
// CreateTokenFor.
func (s *Store) CreateToken(ctx context.Context, role api.Role, pool, name string, now time.Time) (api.Token, error) {
	return s.CreateTokenFor(ctx, api.TokenCreateRequest{Role: role, Pool: pool, Name: name}, now)
}

// CreateTokenFor makes a new random bearer token as req asks, stores only its SHA-256
// hash, and returns the token's description with Secret set. The secret is never
// retrievable again: print it once. Workers must name one pool; other roles may use "*".
// With req.TTLSeconds the token stops authenticating that long after now.
func (s *Store) CreateTokenFor(ctx context.Context, req api.TokenCreateRequest, now time.Time) (api.Token, error) {
	var t api.Token
	err := s.tx(ctx, func(tx *txn) error {
		var err error
		t, err = insertToken(ctx, tx, req, now)
		return err
	})
	return t, err
}

// tokenRequestError is a token request refused for what it asks.
type tokenRequestError struct{ error }

// insertToken checks req and stores a new token in tx.
func insertToken(ctx context.Context, tx *txn, req api.TokenCreateRequest, now time.Time) (api.Token, error) {
	req, err := api.CheckTokenRequest(req)
	if err != nil {
		return api.Token{}, tokenRequestError{err}
	}
	role, pool, name := req.Role, req.Pool, req.Name
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return api.Token{}, err
	}
	secret := TokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	sum := sha256.Sum256([]byte(secret))
	id := "tok_" + hex.EncodeToString(sum[:6])
	var expires sql.NullInt64
	if req.TTLSeconds > 0 {
		expires = sql.NullInt64{Int64: now.Add(time.Duration(req.TTLSeconds) * time.Second).UnixMilli(), Valid: true}
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO tokens(id, hash, role, pool, name, created_at, expires_at) VALUES (?,?,?,?,?,?,?)`,
		id, sum[:], string(role), pool, name, now.UnixMilli(), expires)
	if err != nil {
		return api.Token{}, fmt.Errorf("store token: %w", err)
	}
	return api.Token{ID: id, Role: role, Pool: pool, Name: name, CreatedAt: msTime(now.UnixMilli()),
		ExpiresAt: msTimePtr(expires), Secret: secret}, nil
}

// ErrRegistrationUsed is an exchange with a registration token already used (or revoked
// since it authenticated).
var ErrRegistrationUsed = controlplane.ErrRegistrationUsed

// ExchangeRegistration uses up the registration token p and returns a new worker token of
// its pool named name, in one transaction: a token exchanged twice at once yields one
// worker token. The exchange is audited (token.exchange, by the registration token).
func (s *Store) ExchangeRegistration(ctx context.Context, p Principal, name string, now time.Time) (api.Token, error) {
	if p.Role != api.RoleRegistration {
		return api.Token{}, fmt.Errorf("a %s token cannot be exchanged", p.Role)
	}
	var t api.Token
	err := s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `UPDATE tokens SET revoked_at = ? WHERE id = ? AND role = 'registration' AND revoked_at IS NULL`, now.UnixMilli(), p.TokenID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return ErrRegistrationUsed
		}
		if t, err = insertToken(ctx, tx, api.TokenCreateRequest{Role: api.RoleWorker, Pool: p.Pool, Name: name}, now); err != nil {
			return err
		}
		detail, _ := json.Marshal(map[string]string{"id": t.ID, "name": name, "pool": t.Pool})
		return audit(ctx, tx, now, p.TokenID, string(p.Role), "token.exchange", "", string(detail))
	})
	s.toks.invalidate() // the registration token is used up
	return t, err
}

// RevokeToken marks a token revoked; it authenticates nothing afterwards.
func (s *Store) RevokeToken(ctx context.Context, id string, now time.Time) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL`, now.UnixMilli(), id)
	s.toks.invalidate()
	if err != nil {
		return false, err
	}
	n, _ := res.RowsAffected()
	return n == 1, nil
}

// ListTokens returns every token, without secrets or hashes.
func (s *Store) ListTokens(ctx context.Context) ([]api.Token, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, role, pool, name, created_at, revoked_at, expires_at FROM tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Token{}
	for rows.Next() {
		var t api.Token
		var created int64
		var revoked, expires sql.NullInt64
		if err := rows.Scan(&t.ID, &t.Role, &t.Pool, &t.Name, &created, &revoked, &expires); err != nil {
			return nil, err
		}
		t.CreatedAt = msTime(created)
		t.RevokedAt = msTimePtr(revoked)
		t.ExpiresAt = msTimePtr(expires)
		out = append(out, t)
	}
	return out, rows.Err()
}

// TokenCacheTTL bounds how long a token this process verified is trusted without reading
// it again: a revocation made in the database by another process (`castellan token revoke
// --db`) takes effect within it. Revocations through this process take effect at once.
const TokenCacheTTL = time.Second

// maxCachedTokens bounds the cache; past it, it starts over.
const maxCachedTokens = 4096

// tokenCache holds the principals of tokens verified less than TokenCacheTTL ago, keyed by
// the token's SHA-256, so that a request does not read its token from the database: that
// read was 7-18% of the server's CPU per job in profiles. Only valid tokens are cached, so unknown
// or revoked ones are read every time. Expiry stays exact: the principal carries ExpiresAt
// and the /v1 layer checks it at each request.
//
// gen orders a lookup against a revocation in this process: a lookup that read the
// database before the revocation committed may not cache what it read after the
// revocation cleared the cache (invalidate runs after the commit).
type tokenCache struct {
	mu  sync.Mutex
	gen uint64
	m   map[[sha256.Size]byte]cachedToken
	now func() time.Time // the cache's clock (monotonic); tests move it
}

type cachedToken struct {
	p  Principal
	at time.Time
}

// clock reads the cache's clock.
func (c *tokenCache) clock() time.Time {
	c.mu.Lock()
	now := c.now
	c.mu.Unlock()
	return now()
}

func (c *tokenCache) get(sum [sha256.Size]byte) (p Principal, ok bool, gen uint64) {
	now := c.clock()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[sum]
	if ok && now.Sub(e.at) < TokenCacheTTL && !now.Before(e.at) {
		return e.p, true, c.gen
	}
	return Principal{}, false, c.gen
}

// put caches p, read from the database in a lookup that began at gen.
func (c *tokenCache) put(sum [sha256.Size]byte, p Principal, gen uint64, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	if c.m == nil || len(c.m) >= maxCachedTokens {
		c.m = map[[sha256.Size]byte]cachedToken{}
	}
	c.m[sum] = cachedToken{p: p, at: at}
}

// invalidate forgets every cached token; call it after a transaction that revoked one.
func (c *tokenCache) invalidate() {
	c.mu.Lock()
	c.gen++
	c.m = nil
	c.mu.Unlock()
}

// Authenticate resolves a bearer token to its principal: ErrTokenInvalid for a missing,
// malformed, unknown or revoked token. A token past its expiry resolves, with ExpiresAt
// set: the /v1 layer refuses it (controlplane), so that expiry is checked in one place.
// A revocation in another process is seen within TokenCacheTTL (see tokenCache).
func (s *Store) Authenticate(ctx context.Context, secret string) (Principal, error) {
	body, ok := strings.CutPrefix(secret, TokenPrefix)
	if !ok || len(body) != 43 {
		return Principal{}, ErrTokenInvalid
	}
	if b, err := base64.RawURLEncoding.DecodeString(body); err != nil || len(b) != 32 {
		return Principal{}, ErrTokenInvalid
	}
	sum := sha256.Sum256([]byte(secret))
	cached, ok, gen := s.toks.get(sum)
	if ok {
		return cached, nil
	}
	readAt := s.toks.clock()
	var p Principal
	var stored []byte
	var revoked, expires sql.NullInt64
	var created int64
	err := s.queryRow(ctx, qTokenByHash, sum[:]).
		Scan(&p.TokenID, &stored, &p.Role, &p.Pool, &revoked, &p.Name, &expires, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return Principal{}, ErrTokenInvalid
	}
	if err != nil {
		return Principal{}, err
	}
	// The index lookup already matched; the constant-time compare keeps the check honest
	// if the lookup ever changes to a prefix or id match.
	if subtle.ConstantTimeCompare(stored, sum[:]) != 1 || revoked.Valid {
		return Principal{}, ErrTokenInvalid
	}
	p.CreatedAt, p.ExpiresAt = msTime(created), msTimePtr(expires)
	s.toks.put(sum, p, gen, readAt)
	return p, nil
}

// Hot-path statements (see stmts.go).
var qTokenByHash = hot(`SELECT id, hash, role, pool, revoked_at, name, expires_at, created_at FROM tokens WHERE hash = ?`)

// tokenAuditDetail is the audit detail of a created token: never its secret.
func tokenAuditDetail(t api.Token) string {
	b, _ := json.Marshal(controlplane.TokenAuditDetail(t))
	return string(b)
}

// CreateTokenDirect is CreateTokenFor for direct database access (`castellan token create
// --db`), recorded in the audit log as done by actor, like the API's token.create.
func (s *Store) CreateTokenDirect(ctx context.Context, req api.TokenCreateRequest, actor string, now time.Time) (api.Token, error) {
	return s.createTokenAudited(ctx, req, actor, "direct", now)
}

// createTokenAudited creates a token and its token.create audit entry in one transaction.
func (s *Store) createTokenAudited(ctx context.Context, req api.TokenCreateRequest, actor, role string, now time.Time) (api.Token, error) {
	var t api.Token
	err := s.tx(ctx, func(tx *txn) error {
		var err error
		if t, err = insertToken(ctx, tx, req, now); err != nil {
			return err
		}
		return audit(ctx, tx, now, actor, role, "token.create", "", tokenAuditDetail(t))
	})
	return t, err
}

// RevokeTokenDirect is RevokeToken for direct database access, recorded in the audit log
// as done by actor, like the API's token.revoke.
func (s *Store) RevokeTokenDirect(ctx context.Context, id, actor string, now time.Time) (bool, error) {
	return s.revokeTokenAudited(ctx, id, actor, "direct", now)
}

// revokeTokenAudited revokes a token and records token.revoke in one transaction; false
// when there is no active token id.
func (s *Store) revokeTokenAudited(ctx context.Context, id, actor, role string, now time.Time) (bool, error) {
	revoked := false
	err := s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL`, now.UnixMilli(), id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return nil
		}
		revoked = true
		return audit(ctx, tx, now, actor, role, "token.revoke", "", fmt.Sprintf(`{"id":%q}`, id))
	})
	s.toks.invalidate()
	return revoked && err == nil, err
}

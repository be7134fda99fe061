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
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TokenPrefix starts every bearer token, so that secret scanners can find leaked ones.
const TokenPrefix = api.TokenPrefix

// ErrTokenInvalid is returned by Authenticate for a missing, malformed, unknown or revoked token.
var ErrTokenInvalid = errors.New("invalid bearer token")

// Principal is an authenticated caller.
type Principal struct {
	TokenID   string
	Role      api.Role
	Pool      string // api.AllPools for tokens not bound to one pool
	Name      string
	CreatedAt time.Time
	ExpiresAt *time.Time // nil: never expires
}

// Token describes the principal's own token, without its secret (GET /v1/whoami).
func (p Principal) Token() api.Token {
	return api.Token{ID: p.TokenID, Role: p.Role, Pool: p.Pool, Name: p.Name, CreatedAt: p.CreatedAt, ExpiresAt: p.ExpiresAt}
}

// canPool reports whether p may act on pool.
func (p Principal) canPool(pool string) bool {
	return p.Role == api.RoleAdmin || p.Pool == api.AllPools || p.Pool == pool
}

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
	role, pool, name := req.Role, req.Pool, req.Name
	bad := func(format string, args ...any) (api.Token, error) {
		return api.Token{}, tokenRequestError{fmt.Errorf(format, args...)}
	}
	if !slices.Contains(api.Roles, role) {
		return bad("role %q is not one of worker, client, approver, admin, registration", role)
	}
	if pool == "" && role == api.RoleAdmin {
		pool = api.AllPools
	}
	if pool != api.AllPools && !api.ValidPoolName(pool) {
		return bad("pool %q is invalid: use 1-63 of a-z 0-9 _ . - starting with a letter or digit, or \"*\"", pool)
	}
	if (role == api.RoleWorker || role == api.RoleRegistration) && pool == api.AllPools {
		return bad(`a %s token must name one pool, not "*"`, role)
	}
	if len(name) > 128 {
		return bad("token name is %d bytes, at most 128", len(name))
	}
	if err := api.CheckTokenTTL(req.TTLSeconds); err != nil {
		return bad("%v", err)
	}
	if role == api.RoleRegistration && (req.TTLSeconds == 0 || req.TTLSeconds > api.MaxRegistrationTTLSeconds) {
		return bad("a registration token must be short-lived: give ttl_seconds 1..%d (--ttl, e.g. 1h)", api.MaxRegistrationTTLSeconds)
	}
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
	_, err := tx.ExecContext(ctx, `INSERT INTO tokens(id, hash, role, pool, name, created_at, expires_at) VALUES (?,?,?,?,?,?,?)`,
		id, sum[:], string(role), pool, name, now.UnixMilli(), expires)
	if err != nil {
		return api.Token{}, fmt.Errorf("store token: %w", err)
	}
	return api.Token{ID: id, Role: role, Pool: pool, Name: name, CreatedAt: msTime(now.UnixMilli()),
		ExpiresAt: msTimePtr(expires), Secret: secret}, nil
}

// ErrRegistrationUsed is an exchange with a registration token already used (or revoked
// since it authenticated).
var ErrRegistrationUsed = errors.New("the registration token was already used")

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
	return t, err
}

// hRegisterExchange is POST /v1/register/exchange (registration tokens only).
func (s *Server) hRegisterExchange(w http.ResponseWriter, r *http.Request, p Principal) error {
	var req api.RegisterExchangeRequest
	if e := decode(w, r, smallBody, &req, false); e != nil {
		return e
	}
	if req.Name == "" || len(req.Name) > maxWorkerNameSize {
		return errf(http.StatusBadRequest, api.CodeInvalidField, "name is required (the worker's name), at most %d bytes", maxWorkerNameSize)
	}
	t, err := s.store.ExchangeRegistration(r.Context(), p, req.Name, s.cfg.Now())
	if errors.Is(err, ErrRegistrationUsed) {
		return errf(http.StatusUnauthorized, api.CodeUnauthenticated, "the registration token was already used: create a new one (castellan token create --role registration)")
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, t)
	return nil
}

// RevokeToken marks a token revoked; it authenticates nothing afterwards.
func (s *Store) RevokeToken(ctx context.Context, id string, now time.Time) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL`, now.UnixMilli(), id)
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

// Authenticate resolves a bearer token to its principal at the current time.
func (s *Store) Authenticate(ctx context.Context, secret string) (Principal, error) {
	return s.AuthenticateAt(ctx, secret, time.Now())
}

// AuthenticateAt resolves a bearer token to its principal as of now: ErrTokenInvalid for a
// missing, malformed, unknown or revoked token, a *TokenExpiredError for one past its
// expiry.
func (s *Store) AuthenticateAt(ctx context.Context, secret string, now time.Time) (Principal, error) {
	body, ok := strings.CutPrefix(secret, TokenPrefix)
	if !ok || len(body) != 43 {
		return Principal{}, ErrTokenInvalid
	}
	if b, err := base64.RawURLEncoding.DecodeString(body); err != nil || len(b) != 32 {
		return Principal{}, ErrTokenInvalid
	}
	sum := sha256.Sum256([]byte(secret))
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
	if p.ExpiresAt != nil && !now.Before(*p.ExpiresAt) {
		return Principal{}, &TokenExpiredError{ID: p.TokenID, At: *p.ExpiresAt}
	}
	return p, nil
}

// TokenExpiredError is a known token past its expiry. It names the token's id and the
// time, never the secret.
type TokenExpiredError = api.TokenExpiredError

// Hot-path statements (see stmts.go).
var qTokenByHash = hot(`SELECT id, hash, role, pool, revoked_at, name, expires_at, created_at FROM tokens WHERE hash = ?`)

// authRefusal is the 401 for an authentication failure, nil for any other error: an
// expired token is told apart from an unknown one, so its holder knows to ask for a new one.
func authRefusal(err error) *apiError {
	var exp *TokenExpiredError
	switch {
	case errors.Is(err, ErrTokenInvalid):
		return errf(http.StatusUnauthorized, api.CodeUnauthenticated, "the bearer token is malformed, unknown or revoked")
	case errors.As(err, &exp):
		return errf(http.StatusUnauthorized, api.CodeUnauthenticated, "%s", exp.Error())
	}
	return nil
}

// tokenAuditDetail is the audit detail of a created token: never its secret.
func tokenAuditDetail(t api.Token) string {
	d := map[string]any{"id": t.ID, "role": t.Role, "pool": t.Pool}
	if t.ExpiresAt != nil {
		d["expires_at"] = t.ExpiresAt.Format(time.RFC3339Nano)
	}
	b, _ := json.Marshal(d)
	return string(b)
}

// CreateTokenDirect is CreateTokenFor for direct database access (`castellan token create
// --db`), recorded in the audit log as done by actor, like the API's token.create.
func (s *Store) CreateTokenDirect(ctx context.Context, req api.TokenCreateRequest, actor string, now time.Time) (api.Token, error) {
	t, err := s.CreateTokenFor(ctx, req, now)
	if err != nil {
		return t, err
	}
	return t, s.tx(ctx, func(tx *txn) error {
		return audit(ctx, tx, now, actor, "direct", "token.create", "", tokenAuditDetail(t))
	})
}

// RevokeTokenDirect is RevokeToken for direct database access, recorded in the audit log
// as done by actor, like the API's token.revoke.
func (s *Store) RevokeTokenDirect(ctx context.Context, id, actor string, now time.Time) (bool, error) {
	ok, err := s.RevokeToken(ctx, id, now)
	if err != nil || !ok {
		return ok, err
	}
	return true, s.tx(ctx, func(tx *txn) error {
		return audit(ctx, tx, now, actor, "direct", "token.revoke", "", fmt.Sprintf(`{"id":%q}`, id))
	})
}

// hWhoami is GET /v1/whoami: the caller's own token, for any role.
func (s *Server) hWhoami(w http.ResponseWriter, r *http.Request, p Principal) error {
	if e := onlyParams(r); e != nil {
		return e
	}
	writeJSON(w, http.StatusOK, p.Token())
	return nil
}

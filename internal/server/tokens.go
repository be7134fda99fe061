package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
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

// CreateToken makes a new random bearer token for role and pool, stores only its SHA-256
// hash, and returns the token's description with Secret set. The secret is never
// retrievable again: print it once. Workers must name one pool; other roles may use "*".
func (s *Store) CreateToken(ctx context.Context, role api.Role, pool, name string, now time.Time) (api.Token, error) {
	if !slices.Contains(api.Roles, role) {
		return api.Token{}, fmt.Errorf("role %q is not one of worker, client, approver, admin", role)
	}
	if pool == "" && role == api.RoleAdmin {
		pool = api.AllPools
	}
	if pool != api.AllPools && !api.ValidPoolName(pool) {
		return api.Token{}, fmt.Errorf("pool %q is invalid: use 1-63 of a-z 0-9 _ . - starting with a letter or digit, or \"*\"", pool)
	}
	if role == api.RoleWorker && pool == api.AllPools {
		return api.Token{}, errors.New(`a worker token must name one pool, not "*"`)
	}
	if len(name) > 128 {
		return api.Token{}, fmt.Errorf("token name is %d bytes, at most 128", len(name))
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return api.Token{}, err
	}
	secret := TokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	sum := sha256.Sum256([]byte(secret))
	id := "tok_" + hex.EncodeToString(sum[:6])
	_, err := s.db.ExecContext(ctx, `INSERT INTO tokens(id, hash, role, pool, name, created_at) VALUES (?,?,?,?,?,?)`,
		id, sum[:], string(role), pool, name, now.UnixMilli())
	if err != nil {
		return api.Token{}, fmt.Errorf("store token: %w", err)
	}
	return api.Token{ID: id, Role: role, Pool: pool, Name: name, CreatedAt: msTime(now.UnixMilli()), Secret: secret}, nil
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
	rows, err := s.db.QueryContext(ctx, `SELECT id, role, pool, name, created_at, revoked_at FROM tokens ORDER BY created_at, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []api.Token{}
	for rows.Next() {
		var t api.Token
		var created int64
		var revoked sql.NullInt64
		if err := rows.Scan(&t.ID, &t.Role, &t.Pool, &t.Name, &created, &revoked); err != nil {
			return nil, err
		}
		t.CreatedAt = msTime(created)
		t.RevokedAt = msTimePtr(revoked)
		out = append(out, t)
	}
	return out, rows.Err()
}

// Authenticate resolves a bearer token to its principal.
func (s *Store) Authenticate(ctx context.Context, secret string) (Principal, error) {
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
	var revoked sql.NullInt64
	err := s.queryRow(ctx, qTokenByHash, sum[:]).
		Scan(&p.TokenID, &stored, &p.Role, &p.Pool, &revoked, &p.Name)
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
	return p, nil
}

// Hot-path statements (see stmts.go).
var qTokenByHash = hot(`SELECT id, hash, role, pool, revoked_at, name FROM tokens WHERE hash = ?`)

package controlplane

import (
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// Principal is an authenticated caller: a bearer token's id, name, role and pool.
type Principal struct {
	TokenID string
	Name    string // "" when the token has none
	Role    api.Role
	Pool    string // api.AllPools for a token not bound to one pool
	// CreatedAt and ExpiresAt are the token's; ExpiresAt nil for one that never expires.
	// A backend resolves an expired token too: the layer refuses it (auth), in one place.
	CreatedAt time.Time
	ExpiresAt *time.Time
}

// Token describes p's own token, without its secret (GET /v1/whoami).
func (p Principal) Token() api.Token {
	return api.Token{ID: p.TokenID, Role: p.Role, Pool: p.Pool, Name: p.Name, CreatedAt: p.CreatedAt, ExpiresAt: p.ExpiresAt}
}

// Expired reports whether p's token has expired at now.
func (p Principal) Expired(now time.Time) bool { return p.Token().Expired(now) }

// CanPool reports whether p may act on pool.
func (p Principal) CanPool(pool string) bool {
	return p.Role == api.RoleAdmin || p.Pool == api.AllPools || p.Pool == pool
}

// Who is how p is named to people: the token's name, or its id when it has none.
func (p Principal) Who() string {
	if p.Name != "" {
		return p.Name
	}
	return p.TokenID
}

package controlplane

import "github.com/castellan-dev/castellan/internal/server/api"

// Principal is an authenticated caller: a bearer token's id, name, role and pool.
type Principal struct {
	TokenID string
	Name    string // "" when the token has none
	Role    api.Role
	Pool    string // api.AllPools for a token not bound to one pool
}

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

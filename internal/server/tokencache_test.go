package server

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// cacheClock gives the store's token cache a clock the test moves.
func (e *env) cacheClock() *fakeClock {
	c := &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	e.s.store.toks.mu.Lock()
	e.s.store.toks.now = c.Now
	e.s.store.toks.m = nil
	e.s.store.toks.mu.Unlock()
	return c
}

// TestRevocationThroughThisServerIsImmediate: a token that has just authenticated (and is
// therefore in the server's cache of verified tokens) is revoked through this server, in
// each way the server offers; the very next request with it is refused, though the cache
// clock has not moved at all.
func TestRevocationThroughThisServerIsImmediate(t *testing.T) {
	t.Parallel()
	cases := map[string]func(t *testing.T, e *env, tok api.Token){
		"DELETE /v1/tokens/{id}": func(t *testing.T, e *env, tok api.Token) {
			if err := e.admin.RevokeToken(t.Context(), tok.ID); err != nil {
				t.Fatal(err)
			}
		},
		"RevokeTokenDirect": func(t *testing.T, e *env, tok api.Token) {
			if ok, err := e.s.Store().RevokeTokenDirect(t.Context(), tok.ID, "cli --db", e.clock.Now()); !ok || err != nil {
				t.Fatalf("RevokeTokenDirect = %v, %v", ok, err)
			}
		},
		"RevokeToken": func(t *testing.T, e *env, tok api.Token) {
			if ok, err := e.s.Store().RevokeToken(t.Context(), tok.ID, e.clock.Now()); !ok || err != nil {
				t.Fatalf("RevokeToken = %v, %v", ok, err)
			}
		},
	}
	for name, revoke := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.cacheClock() // never moved
			tok, err := e.s.Store().CreateToken(t.Context(), api.RoleClient, "alpha", "victim", e.clock.Now())
			if err != nil {
				t.Fatal(err)
			}
			c, _ := client.New(e.url, tok.Secret)
			for range 3 { // the first read caches it; the others are served from the cache
				if _, err := c.List(t.Context(), client.ListOptions{}); err != nil {
					t.Fatalf("List before revocation = %v", err)
				}
			}
			revoke(t, e, tok)
			_, err = c.List(t.Context(), client.ListOptions{})
			wantCode(t, "List right after revocation", err, http.StatusUnauthorized, api.CodeUnauthenticated)
		})
	}
}

// TestRevocationByAnotherProcessWithinTheBound: `castellan token revoke --db` revokes a
// token in the database from another process, which this server's cache cannot hear of. A
// request within TokenCacheTTL of the token's last verification may still pass; from
// TokenCacheTTL on, every request is refused.
func TestRevocationByAnotherProcessWithinTheBound(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cc := e.cacheClock()
	ctx := t.Context()
	tok, err := e.s.Store().CreateToken(ctx, api.RoleClient, "alpha", "victim", e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, _ := client.New(e.url, tok.Secret)
	if _, err := c.List(ctx, client.ListOptions{}); err != nil {
		t.Fatalf("List before revocation = %v", err)
	}
	other, err := OpenStore(context.Background(), e.dbPath) // what `token revoke --db` opens
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := other.RevokeTokenDirect(ctx, tok.ID, "cli --db", e.clock.Now()); !ok || err != nil {
		t.Fatalf("RevokeTokenDirect (other process) = %v, %v", ok, err)
	}
	other.Close()
	cc.Advance(TokenCacheTTL - time.Millisecond)
	if _, err := c.List(ctx, client.ListOptions{}); err != nil {
		t.Logf("List within the bound = %v (refusing early is allowed)", err)
	}
	cc.Advance(time.Millisecond)
	_, err = c.List(ctx, client.ListOptions{})
	wantCode(t, "List at TokenCacheTTL after the revocation", err, http.StatusUnauthorized, api.CodeUnauthenticated)
}

// TestCachedTokenExpiresExactly: a token with a TTL, verified and cached a moment before it
// expires, is refused from its expiry on: the cache keeps the expiry, and the layer checks
// it at each request with its own clock.
func TestCachedTokenExpiresExactly(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.cacheClock() // never moved: the cache alone would keep it forever
	ctx := t.Context()
	tok, err := e.s.Store().CreateTokenFor(ctx, api.TokenCreateRequest{Role: api.RoleClient, Pool: "alpha", Name: "short", TTLSeconds: 60}, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, _ := client.New(e.url, tok.Secret)
	e.clock.Advance(60*time.Second - time.Millisecond)
	if _, err := c.List(ctx, client.ListOptions{}); err != nil {
		t.Fatalf("List 1 ms before expiry = %v", err)
	}
	e.clock.Advance(time.Millisecond)
	_, err = c.List(ctx, client.ListOptions{})
	wantCode(t, "List at expiry", err, http.StatusUnauthorized, api.CodeUnauthenticated)
}

// TestTokenCacheLookupRacingARevocation: a lookup that read the token from the database
// before a revocation committed must not put it in the cache after the revocation cleared
// it, or the revoked token would pass for another TokenCacheTTL.
func TestTokenCacheLookupRacingARevocation(t *testing.T) {
	t.Parallel()
	var c tokenCache
	c.now = time.Now
	var sum [32]byte
	_, _, gen := c.get(sum) // the lookup begins and reads the database...
	c.invalidate()          // ...a revocation commits and clears the cache...
	c.put(sum, Principal{TokenID: "tok_x"}, gen, time.Now())
	if _, ok, _ := c.get(sum); ok {
		t.Fatal("a lookup begun before the revocation cached the token after it")
	}
	_, _, gen = c.get(sum)
	c.put(sum, Principal{TokenID: "tok_x"}, gen, time.Now())
	if _, ok, _ := c.get(sum); !ok {
		t.Fatal("a lookup begun after the last revocation was not cached")
	}
}

package mcp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// Principal is who a bearer token belongs to, as the control plane sees it.
type Principal struct {
	TokenID string   // the token's id (never its secret), for logs
	Name    string   // token name
	Role    api.Role // token role: client or admin (the roles that may submit)
	// Pool is the one pool whose tasks become tools: the token's own, or for a token of
	// every pool ("*") the one the session chose (PoolParam, PoolHeader).
	Pool string
	// Token is the caller's bearer secret, forwarded to the control plane on every call so
	// that the control plane, not this layer, decides what the caller may do. Never log it.
	Token string
}

// Backend is what the MCP layer needs from a control plane. Every method acts with the
// caller's own authority: an implementation must not widen access, approve, or skip the
// control plane's validation.
type Backend interface {
	// Authenticate resolves a bearer token for a session of pool (empty: the token's own).
	// An error wrapping ErrUnauthenticated means the token is missing, unknown, revoked,
	// expired or of a role that cannot submit jobs; one wrapping ErrPoolChoice means the
	// pool asked for does not fit the token (a token of every pool must name one).
	Authenticate(ctx context.Context, bearer, pool string) (Principal, error)
	// Tasks lists the tasks published in the principal's pool. The handler polls it to
	// learn of catalog changes (see Options.CatalogPoll).
	Tasks(ctx context.Context, p Principal) ([]api.TaskDef, error)
	// Submit creates a job, or returns the existing one for a repeated idempotency key.
	Submit(ctx context.Context, p Principal, req api.SubmitRequest) (api.Job, error)
	// Get returns one job.
	Get(ctx context.Context, p Principal, id string) (api.Job, error)
	// Wait returns the job as soon as it is terminal, or after timeout with the job as it
	// is then. It should be a long-poll: the result is what a caller waits for.
	Wait(ctx context.Context, p Principal, id string, timeout time.Duration) (api.Job, error)
	// Cancel cancels a job.
	Cancel(ctx context.Context, p Principal, id string) (api.Job, error)
}

// ErrUnauthenticated is wrapped by Backend.Authenticate for tokens that must get a 401.
var ErrUnauthenticated = errors.New("unauthenticated")

// ErrPoolChoice is wrapped by Backend.Authenticate when the session's pool choice does not
// fit the token; /mcp answers 400.
var ErrPoolChoice = errors.New("pool choice")

// V1Backend implements Backend over the control plane's own /v1 HTTP API, forwarding the
// caller's bearer token. It works with both control-plane modes, since both serve /v1.
type V1Backend struct {
	baseURL string
	opts    []client.Option
	// authTTL bounds how long a successful Authenticate is reused. Calls are still sent
	// with the token, so a revoked token stops submitting at once; only listing lags.
	authTTL time.Duration

	mu      sync.Mutex
	clients map[[32]byte]*v1Entry
}

type v1Entry struct {
	c       *client.Client
	tok     api.Token
	checked time.Time
}

// NewV1Backend returns a backend for the control plane at baseURL (e.g.
// "https://cp.example:8443"); opts configure the HTTP client (TLS roots).
func NewV1Backend(baseURL string, opts ...client.Option) (*V1Backend, error) {
	if _, err := client.New(baseURL, "probe", opts...); err != nil {
		return nil, err
	}
	return &V1Backend{baseURL: baseURL, opts: opts, authTTL: 5 * time.Second, clients: map[[32]byte]*v1Entry{}}, nil
}

var _ Backend = (*V1Backend)(nil)

func (b *V1Backend) entry(token string) (*v1Entry, error) {
	key := sha256.Sum256([]byte(token))
	b.mu.Lock()
	defer b.mu.Unlock()
	if e, ok := b.clients[key]; ok {
		return e, nil
	}
	c, err := client.New(b.baseURL, token, b.opts...)
	if err != nil {
		return nil, err
	}
	if len(b.clients) > 4096 {
		b.clients = map[[32]byte]*v1Entry{}
	}
	e := &v1Entry{c: c}
	b.clients[key] = e
	return e, nil
}

func (b *V1Backend) client(p Principal) (*client.Client, error) {
	e, err := b.entry(p.Token)
	if err != nil {
		return nil, err
	}
	return e.c, nil
}

// whoami is (*client.Client).Whoami (GET /v1/whoami), which control planes without that
// route lack; Authenticate then learns the token's pool from GET /v1/catalog instead.
type whoami interface {
	Whoami(ctx context.Context) (api.Token, error)
}

// Authenticate describes the token (cached for authTTL) and settles the session's pool:
// a token of one pool serves that pool (pool, if given, must name it); a token of every
// pool ("*") serves the pool the session names, which it must.
func (b *V1Backend) Authenticate(ctx context.Context, bearer, pool string) (Principal, error) {
	if bearer == "" {
		return Principal{}, fmt.Errorf("%w: no bearer token", ErrUnauthenticated)
	}
	if pool != "" && !api.ValidPoolName(pool) {
		return Principal{}, fmt.Errorf("%w: %q is not a pool name", ErrPoolChoice, pool)
	}
	e, err := b.entry(bearer)
	if err != nil {
		return Principal{}, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	b.mu.Lock()
	tok, fresh := e.tok, !e.checked.IsZero() && time.Since(e.checked) < b.authTTL
	b.mu.Unlock()
	if !fresh {
		if tok, err = b.describe(ctx, e.c); err != nil {
			return Principal{}, err
		}
		b.mu.Lock()
		e.tok, e.checked = tok, time.Now()
		b.mu.Unlock()
	}
	if tok.Role != "" && tok.Role != api.RoleClient && tok.Role != api.RoleAdmin {
		return Principal{}, fmt.Errorf("%w: a %s token cannot submit jobs; use a client token", ErrUnauthenticated, tok.Role)
	}
	switch {
	case tok.Pool == api.AllPools && pool == "":
		return Principal{}, fmt.Errorf("%w: this token serves every pool; choose the pool whose tasks become tools with ?%s=NAME on the /mcp URL or the %s header",
			ErrPoolChoice, PoolParam, PoolHeader)
	case tok.Pool != api.AllPools && pool != "" && pool != tok.Pool:
		return Principal{}, fmt.Errorf("%w: this token is bound to pool %s, not %s", ErrPoolChoice, tok.Pool, pool)
	case pool == "":
		pool = tok.Pool
	}
	return Principal{TokenID: tok.ID, Name: tok.Name, Role: tok.Role, Pool: pool, Token: bearer}, nil
}

// describe is GET /v1/whoami, or without it what GET /v1/catalog tells: the pool (the
// catalog names the token's own pool; a token of every pool is refused a catalog without
// ?pool=), and no id, name or role.
func (b *V1Backend) describe(ctx context.Context, c *client.Client) (api.Token, error) {
	refused := func(err error) (api.Token, error) {
		var ae *client.APIError
		if errors.As(err, &ae) && ae.Status == http.StatusUnauthorized {
			return api.Token{}, fmt.Errorf("%w: %s", ErrUnauthenticated, ae.Message)
		}
		return api.Token{}, errors.New("control plane unavailable")
	}
	if w, ok := any(c).(whoami); ok {
		tok, err := w.Whoami(ctx)
		if err != nil {
			return refused(err)
		}
		return tok, nil
	}
	cat, err := c.Catalog(ctx, "")
	switch {
	case err == nil:
		return api.Token{Pool: cat.Pool}, nil
	case client.IsCode(err, api.CodeInvalidField):
		return api.Token{Pool: api.AllPools}, nil // a token of every pool must name one
	}
	return refused(err)
}

// Tasks is GET /v1/catalog for the principal's pool.
func (b *V1Backend) Tasks(ctx context.Context, p Principal) ([]api.TaskDef, error) {
	c, err := b.client(p)
	if err != nil {
		return nil, err
	}
	cat, err := c.Catalog(ctx, p.Pool)
	return cat.Tasks, err
}

// Submit is POST /v1/jobs.
func (b *V1Backend) Submit(ctx context.Context, p Principal, req api.SubmitRequest) (api.Job, error) {
	c, err := b.client(p)
	if err != nil {
		return api.Job{}, err
	}
	return c.Submit(ctx, req)
}

// Get is GET /v1/jobs/{id}.
func (b *V1Backend) Get(ctx context.Context, p Principal, id string) (api.Job, error) {
	c, err := b.client(p)
	if err != nil {
		return api.Job{}, err
	}
	return c.Get(ctx, id)
}

// Wait long-polls GET /v1/jobs/{id}/wait, which answers within milliseconds of the job
// ending: one request per minute of waiting (the API's longest wait), the last one cut at
// timeout to the millisecond (the API counts whole seconds).
func (b *V1Backend) Wait(ctx context.Context, p Principal, id string, timeout time.Duration) (api.Job, error) {
	c, err := b.client(p)
	if err != nil {
		return api.Job{}, err
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return c.Get(ctx, id)
		}
		secs := min((left+time.Second-1)/time.Second*time.Second, api.MaxWaitSeconds*time.Second)
		wctx, cancel := context.WithDeadline(ctx, deadline)
		j, err := c.WaitOnce(wctx, id, secs)
		cut := wctx.Err() != nil && ctx.Err() == nil
		cancel()
		switch {
		case cut:
			continue // the deadline came first: read the job as it is now
		case err != nil || j.State.Terminal():
			return j, err
		}
	}
}

// Cancel is POST /v1/jobs/{id}/cancel.
func (b *V1Backend) Cancel(ctx context.Context, p Principal, id string) (api.Job, error) {
	c, err := b.client(p)
	if err != nil {
		return api.Job{}, err
	}
	return c.Cancel(ctx, id)
}

// tokenKey names a token in logs and session bindings without revealing it.
func tokenKey(token string) string {
	s := sha256.Sum256([]byte(token))
	return hex.EncodeToString(s[:16])
}

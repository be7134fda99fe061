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
	Name string   // token name, when the backend knows it
	Role api.Role // token role, when the backend knows it
	Pool string   // the one pool whose tasks become tools
	// Token is the caller's bearer secret, forwarded to the control plane on every call so
	// that the control plane, not this layer, decides what the caller may do. Never log it.
	Token string
}

// Backend is what the MCP layer needs from a control plane. Every method acts with the
// caller's own authority: an implementation must not widen access, approve, or skip the
// control plane's validation.
type Backend interface {
	// Authenticate resolves a bearer token. An error wrapping ErrUnauthenticated means
	// the token is missing, unknown, revoked or not usable for MCP (bound to no one pool).
	Authenticate(ctx context.Context, bearer string) (Principal, error)
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
	p       Principal
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

// Authenticate asks GET /v1/catalog with the token: the /v1 API has no "who am I", so the
// pool comes from the catalog answer, and Name and Role stay empty. A token bound to all
// pools ("*") is refused: a session's tools are the tasks of one pool.
func (b *V1Backend) Authenticate(ctx context.Context, bearer string) (Principal, error) {
	if bearer == "" {
		return Principal{}, fmt.Errorf("%w: no bearer token", ErrUnauthenticated)
	}
	e, err := b.entry(bearer)
	if err != nil {
		return Principal{}, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	b.mu.Lock()
	p, fresh := e.p, !e.checked.IsZero() && time.Since(e.checked) < b.authTTL
	b.mu.Unlock()
	if fresh {
		return p, nil
	}
	cat, err := e.c.Catalog(ctx, "")
	if err != nil {
		var ae *client.APIError
		if errors.As(err, &ae) {
			switch {
			case ae.Status == http.StatusUnauthorized:
				return Principal{}, fmt.Errorf("%w: %s", ErrUnauthenticated, ae.Message)
			case ae.Code == api.CodeInvalidField || ae.Status == http.StatusForbidden:
				return Principal{}, fmt.Errorf("%w: this token is not bound to one pool; use a client token of the pool whose tasks the agent may call", ErrUnauthenticated)
			}
		}
		return Principal{}, errors.New("control plane unavailable")
	}
	p = Principal{Pool: cat.Pool, Token: bearer}
	b.mu.Lock()
	e.p, e.checked = p, time.Now()
	b.mu.Unlock()
	return p, nil
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

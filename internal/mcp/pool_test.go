package mcp_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/server/api"
)

type headers struct {
	h    http.Header
	base http.RoundTripper
}

func (hs headers) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range hs.h {
		r.Header[k] = v
	}
	return hs.base.RoundTrip(r)
}

// connectAt opens a session at endpoint with token and extra headers.
func (e *env) connectAt(ctx context.Context, endpoint, token string, extra http.Header) *sdk.ClientSession {
	e.t.Helper()
	h := http.Header{"Authorization": {"Bearer " + token}}
	for k, v := range extra {
		h[k] = v
	}
	c := sdk.NewClient(&sdk.Implementation{Name: "test-agent", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &sdk.StreamableClientTransport{Endpoint: endpoint, HTTPClient: &http.Client{Transport: headers{h, http.DefaultTransport}}}, nil)
	if err != nil {
		e.t.Fatalf("Connect(%s) = %v", endpoint, err)
	}
	e.t.Cleanup(func() { cs.Close() })
	return cs
}

// TestPoolChoice: a token of every pool ("*") works on /mcp once the session names its
// pool (?pool= or X-Castellan-Pool), and its tools are that pool's; a token of one pool may
// name only its own; a bad or contradictory choice is a 400 that says how to choose.
func TestPoolChoice(t *testing.T) {
	t.Parallel()
	e := newEnv(t, true, mcp.Options{})
	ctx := t.Context()
	admin := e.secrets["admin"]

	cs := e.connectAt(ctx, e.url+mcp.Path+"?pool=alpha", admin, nil)
	if names := toolNames(t, ctx, cs); !slices.Contains(names, "echo") || slices.Contains(names, "beta-only") {
		t.Errorf("tools of a * token with ?pool=alpha = %v, want alpha's", names)
	}
	r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": 6}})
	if err != nil || r.IsError || !jsonEqual([]byte(text(r)), []byte(`{"n":6}`)) {
		t.Fatalf("CallTool(echo) on a * token's alpha session = %v, %+v", err, r)
	}
	cs = e.connectAt(ctx, e.url+mcp.Path, admin, http.Header{mcp.PoolHeader: {"beta"}})
	if names := toolNames(t, ctx, cs); slices.Contains(names, "echo") || !slices.Contains(names, "beta-only") {
		t.Errorf("tools of a * token with %s: beta = %v, want beta's", mcp.PoolHeader, names)
	}
	e.connectAt(ctx, e.url+mcp.Path+"?pool=alpha", e.secrets["client"], nil) // its own pool

	for _, tc := range []struct {
		name, query, header, token, want string
	}{
		{"* token, no pool", "", "", admin, "?pool="},
		{"one-pool token, another pool", "?pool=beta", "", e.secrets["client"], "bound to pool alpha"},
		{"one-pool token, another pool by header", "", "beta", e.secrets["client"], "bound to pool alpha"},
		{"contradictory choice", "?pool=alpha", "beta", admin, "different pools"},
		{"not a pool name", "?pool=Al%20pha", "", admin, "not a pool name"},
	} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+mcp.Path+tc.query, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Authorization", "Bearer "+tc.token)
		if tc.header != "" {
			req.Header.Set(mcp.PoolHeader, tc.header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), tc.want) {
			t.Errorf("%s: %d %q, want 400 naming %q", tc.name, resp.StatusCode, body, tc.want)
		}
	}
}

// TestSessionBoundToPool: a session opened for one pool cannot be used naming another.
func TestSessionBoundToPool(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	ctx := t.Context()
	cs := e.connectAt(ctx, e.url+mcp.Path+"?pool=alpha", e.secrets["admin"], nil)
	for _, tc := range []struct {
		pool string
		ok   bool
	}{{"alpha", true}, {"beta", false}} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.url+mcp.Path+"?pool="+tc.pool, strings.NewReader(`{"jsonrpc":"2.0","id":5,"method":"tools/list","params":{}}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("Authorization", "Bearer "+e.secrets["admin"])
		req.Header.Set("Mcp-Session-Id", cs.ID())
		req.Header.Set("Mcp-Protocol-Version", cs.InitializeResult().ProtocolVersion)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := resp.StatusCode == http.StatusOK && strings.Contains(string(body), `"echo"`); got != tc.ok {
			t.Errorf("tools/list on an alpha session naming pool %s = %d %q, want ok=%v", tc.pool, resp.StatusCode, body, tc.ok)
		}
	}
}

// TestPrincipalNamesCaller: with GET /v1/whoami the principal carries the token's id, name
// and role, and tokens that cannot submit (approver, worker) are refused; a control plane
// without that route still yields the pool, from the catalog.
func TestPrincipalNamesCaller(t *testing.T) {
	t.Parallel()
	e := newEnv(t, false, mcp.Options{})
	ctx := t.Context()
	b, err := mcp.NewV1Backend(e.url)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/whoami", nil)
	req.Header.Set("Authorization", "Bearer "+e.secrets["client"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	hasWhoami := resp.StatusCode == http.StatusOK
	t.Logf("GET /v1/whoami = %d", resp.StatusCode)

	p, err := b.Authenticate(ctx, e.secrets["client"], "")
	if err != nil || p.Pool != "alpha" || p.Token != e.secrets["client"] {
		t.Fatalf("Authenticate(client) = %+v, %v; want pool alpha", p, err)
	}
	if hasWhoami && (p.Name != "client" || p.Role != api.RoleClient || p.TokenID == "") {
		t.Errorf("Authenticate(client) = name %q role %q id %q, want client, client and an id", p.Name, p.Role, p.TokenID)
	}
	p, err = b.Authenticate(ctx, e.secrets["admin"], "beta")
	if err != nil || p.Pool != "beta" {
		t.Errorf("Authenticate(admin, beta) = %+v, %v; want pool beta", p, err)
	}
	if _, err := b.Authenticate(ctx, e.secrets["admin"], ""); !errors.Is(err, mcp.ErrPoolChoice) {
		t.Errorf("Authenticate(admin, no pool) = %v, want ErrPoolChoice", err)
	}
	if !hasWhoami {
		return // the catalog tells no role: approvers and workers are refused at submit instead
	}
	e.newClient("worker-x", api.RoleWorker, "alpha")
	for _, name := range []string{"approver", "worker-x"} {
		if _, err := b.Authenticate(ctx, e.secrets[name], "alpha"); !errors.Is(err, mcp.ErrUnauthenticated) {
			t.Errorf("Authenticate(%s) = %v, want ErrUnauthenticated", name, err)
		}
	}
}

package server

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/server/apitest"
)

// TestAPISuite runs the shared behavioural suite of the /v1 contract (internal/server/apitest)
// against the SQLite control plane, with its real clock and back-off.
func TestAPISuite(t *testing.T) {
	t.Parallel()
	apitest.Run(t, nil, func(t *testing.T, o apitest.Options) *apitest.Backend {
		clock := &apitest.Clock{}
		cfg := Config{DBPath: filepath.Join(t.TempDir(), "cp.db"), RecheckInterval: 20 * time.Millisecond, Now: clock.Now}
		if o.AutoApprove {
			cfg.AutoApprover, cfg.AutoApproveTasks = &fakeApprover{}, []string{"echo"}
		}
		if o.ShortLease {
			cfg.LeaseTTL, cfg.ReapInterval = time.Second, 20*time.Millisecond
		}
		s, err := New(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, stop := context.WithCancel(context.Background())
		reaped := make(chan struct{})
		go func() { s.RunReaper(ctx); close(reaped) }()
		t.Cleanup(func() { stop(); <-reaped })
		hs := httptest.NewServer(s.Handler())
		t.Cleanup(func() { hs.Close(); s.Close() })
		newToken := func(t testing.TB, role api.Role, pool string) api.Token {
			tok, err := s.Store().CreateToken(context.Background(), role, pool, string(role), s.cfg.Now())
			if err != nil {
				t.Fatalf("CreateToken(%s, %s) = %v", role, pool, err)
			}
			return tok
		}
		newTokenTTL := func(t testing.TB, role api.Role, pool string, ttl time.Duration) api.Token {
			tok, err := s.Store().CreateTokenFor(context.Background(), api.TokenCreateRequest{Role: role, Pool: pool,
				Name: string(role), TTLSeconds: int64(ttl / time.Second)}, clock.Now())
			if err != nil {
				t.Fatalf("CreateTokenFor(%s, %s, %v) = %v", role, pool, ttl, err)
			}
			return tok
		}
		newWorker := func(t testing.TB, name string) *client.Client {
			c, err := client.New(hs.URL, newToken(t, api.RoleWorker, apitest.Pool).Secret)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Register(context.Background(), api.RegisterRequest{Name: name, AgentVersion: "test"}); err != nil {
				t.Fatal(err)
			}
			return c
		}
		w := newWorker(t, "w1")
		if _, err := w.PublishCatalog(context.Background(), apitest.Catalog); err != nil {
			t.Fatal(err)
		}
		w2 := newWorker(t, "w2")
		return &apitest.Backend{URL: hs.URL, NewToken: newToken, Worker: w, HTTPWorkers: true, NewTokenTTL: newTokenTTL, Clock: clock,
			Waiters: func() int { return int(s.cp.Waiters()) },
			PublishCatalog: func(ctx context.Context, tasks []api.TaskDef) error {
				_, err := w2.PublishCatalog(ctx, tasks)
				return err
			}}
	})
}

package natsq_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/server/apitest"
)

// TestAPISuite runs the shared behavioural suite of the /v1 contract (internal/server/apitest)
// against the JetStream control plane: the HTTP API of one replica, and a WorkerQueue as the
// worker's side.
func TestAPISuite(t *testing.T) {
	t.Parallel()
	apitest.Run(t, apitest.GapNATS(), func(t *testing.T, o apitest.Options) *apitest.Backend {
		natsURL := startNATS(t).ClientURL()
		clock := &apitest.Clock{}
		opts := natsq.Options{Now: clock.Now}
		if o.ShortLease {
			opts.AckWait = time.Second
		}
		if o.AutoApprove {
			opts.API.AutoApprover, opts.API.AutoApproveTasks = apitest.Approver{}, []string{"echo"}
		}
		rep := startAPIWith(t, natsURL, opts)
		nc := dial(t, natsURL)
		newToken := func(t testing.TB, role api.Role, pool string) api.Token {
			tok, err := natsq.CreateToken(context.Background(), nc, role, pool, string(role), 1)
			if err != nil {
				t.Fatalf("CreateToken(%s, %s) = %v", role, pool, err)
			}
			return tok
		}
		newTokenTTL := func(t testing.TB, role api.Role, pool string, ttl time.Duration) api.Token {
			tok, err := natsq.NewToken(context.Background(), nc, api.TokenCreateRequest{Role: role, Pool: pool,
				Name: string(role), TTLSeconds: int64(ttl / time.Second)}, 1, clock.Now())
			if err != nil {
				t.Fatalf("NewToken(%s, %s, %v) = %v", role, pool, ttl, err)
			}
			return tok
		}
		newWorker := func(t testing.TB) *natsq.WorkerQueue {
			q, err := natsq.DialWorker(context.Background(), natsURL, natsq.Options{Pool: apitest.Pool, AckWait: opts.AckWait})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = q.Close() })
			if _, err := q.Register(context.Background(), api.RegisterRequest{Name: "w", AgentVersion: "test"}); err != nil {
				t.Fatal(err)
			}
			return q
		}
		w := newWorker(t)
		if _, err := w.PublishCatalog(context.Background(), apitest.Catalog); err != nil {
			t.Fatal(err)
		}
		admin, err := natsq.CreateToken(context.Background(), nc, api.RoleAdmin, api.AllPools, "setup", 1)
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.New(rep.url, admin.Secret)
		if err != nil {
			t.Fatal(err)
		}
		poll(t, 20*time.Second, "the published catalog", func() bool {
			cat, err := c.Catalog(context.Background(), apitest.Pool)
			return err == nil && len(cat.Tasks) > 0
		})
		w2 := newWorker(t)
		return &apitest.Backend{URL: rep.url, NewToken: newToken, Worker: w, NewTokenTTL: newTokenTTL, Clock: clock,
			Waiters: func() int { return int(rep.srv.ParkedWaits()) },
			PublishCatalog: func(ctx context.Context, tasks []api.TaskDef) error {
				_, err := w2.PublishCatalog(ctx, tasks)
				return err
			}}
	})
}

// TestAPIIgnoresInvalidCatalogEntries: a catalog entry written to the bucket directly, past
// the control plane's checks of a publication (by a user with access to the bucket), with a
// schema that does not compile is ignored: a submit of its task is unknown_task, not a 500
// internal.
func TestAPIIgnoresInvalidCatalogEntries(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	rep := startAPI(t, natsURL)
	nc := dial(t, natsURL)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(t.Context(), natsq.CatalogBucket)
	if err != nil {
		t.Fatal(err)
	}
	before := rep.srv.CatalogUpdates()
	entry := `{"pool":"` + pool + `","tasks":[{"name":"bad","version":"1","input_schema":{"type":"nope"}}]}`
	if _, err := kv.Put(t.Context(), pool+".hostile", []byte(entry)); err != nil {
		t.Fatal(err)
	}
	poll(t, 20*time.Second, "the catalog entry to be seen", func() bool { return rep.srv.CatalogUpdates() > before })
	c := apiClient(t, natsURL, rep.url, api.RoleClient, pool)
	_, err = c.Submit(t.Context(), api.SubmitRequest{Task: "bad", Pool: pool, Input: json.RawMessage(`{}`)})
	if !client.IsCode(err, api.CodeUnknownTask) {
		t.Fatalf("Submit(task of an invalid catalog entry) = %v, want %s", err, api.CodeUnknownTask)
	}
}

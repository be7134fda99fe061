package controlplane

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// stubBackend answers Authenticate (one admin secret) and ListTokens; the rest is never
// called by the test. The behavioural suite (internal/server/apitest) runs the layer over
// the real backends.
type stubBackend struct{ Backend }

func (stubBackend) Authenticate(_ context.Context, secret string) (Principal, error) {
	if secret != "cst_admin" {
		return Principal{}, ErrTokenInvalid
	}
	return Principal{TokenID: "tok_admin", Role: api.RoleAdmin, Pool: api.AllPools}, nil
}

func (stubBackend) ListTokens(context.Context) ([]api.Token, error) { return nil, nil }

// TestObserveSeesEveryRequest: the metrics hook gets the route pattern and the status of
// answered and refused requests alike.
func TestObserveSeesEveryRequest(t *testing.T) {
	t.Parallel()
	type seen struct {
		route  string
		status int
	}
	var mu sync.Mutex
	var got []seen
	s, err := New(stubBackend{}, Config{Observe: func(route string, status int, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, seen{route, status})
		if d < 0 {
			t.Errorf("Observe(%s) duration %s", route, d)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		secret string
		want   int
	}{{"cst_admin", http.StatusOK}, {"cst_other", http.StatusUnauthorized}} {
		req := httptest.NewRequest("GET", "/v1/tokens", nil)
		req.Header.Set("Authorization", "Bearer "+c.secret)
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, req)
		if rec.Code != c.want {
			t.Fatalf("GET /v1/tokens with %s = %d, want %d", c.secret, rec.Code, c.want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []seen{{"GET /v1/tokens", 200}, {"GET /v1/tokens", 401}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("Observe saw %+v, want %+v", got, want)
	}
}

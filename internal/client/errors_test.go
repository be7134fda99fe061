package client

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestRefusalsMatchTypedErrors: the answers a worker acts on match the api sentinels with
// errors.Is, through wrapping, and nothing else does.
func TestRefusalsMatchTypedErrors(t *testing.T) {
	t.Parallel()
	type answer struct {
		status int
		body   string
	}
	var next answer
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(next.status)
		w.Write([]byte(next.body))
	}))
	defer srv.Close()
	c, err := New(srv.URL, "cst_x")
	if err != nil {
		t.Fatal(err)
	}
	all := []error{api.ErrLeaseLost, api.ErrJobCancelled, api.ErrFenced, api.ErrNotRegistered, api.ErrFinal}
	js := func(code string) string { return `{"error":{"code":"` + code + `","message":"m"}}` }
	for _, tc := range []struct {
		a    answer
		want []error
	}{
		{answer{409, js(api.CodeLeaseLost)}, []error{api.ErrLeaseLost, api.ErrFinal}},
		{answer{409, js(api.CodeJobCancelled)}, []error{api.ErrJobCancelled, api.ErrFinal}},
		{answer{409, js(api.CodeLeaseConflict)}, []error{api.ErrFenced, api.ErrFinal}},
		{answer{409, js(api.CodeNotRegistered)}, []error{api.ErrNotRegistered, api.ErrFinal}},
		{answer{401, js(api.CodeUnauthenticated)}, []error{api.ErrFinal}},
		{answer{400, js(api.CodeInvalidField)}, []error{api.ErrFinal}},
		{answer{404, "not json"}, []error{api.ErrFinal}},
		{answer{429, js("rate_limited")}, nil},
		{answer{408, "slow"}, nil},
		{answer{500, js(api.CodeInternal)}, nil},
		{answer{502, "bad gateway"}, nil},
		{answer{503, js(api.CodeUnavailable)}, nil},
	} {
		next = tc.a
		_, err := c.Heartbeat(t.Context(), "lease_x")
		if err == nil {
			t.Fatalf("%d %s: no error", tc.a.status, tc.a.body)
		}
		wrapped := fmt.Errorf("worker: %w", err)
		for _, target := range all {
			want := false
			for _, w := range tc.want {
				want = want || w == target
			}
			if got := errors.Is(wrapped, target); got != want {
				t.Errorf("%d %s: errors.Is(%v) = %v, want %v", tc.a.status, tc.a.body, target, got, want)
			}
		}
	}
	// A transport failure is an outage, not a refusal.
	srv.Close()
	_, err = c.Heartbeat(t.Context(), "lease_x")
	for _, target := range all {
		if errors.Is(err, target) {
			t.Errorf("server down: errors.Is(%v) = true", target)
		}
	}
}

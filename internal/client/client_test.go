package client

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ url, token string }{
		{"ftp://x", "cst_x"}, {"http://", "cst_x"}, {"http://x", ""}, {"::", "cst_x"},
	} {
		if _, err := New(tc.url, tc.token); err == nil {
			t.Errorf("New(%q, %q) = nil error, want one", tc.url, tc.token)
		}
	}
}

func TestErrorsAreTypedAndHideLeaseTokens(t *testing.T) {
	t.Parallel()
	var gotAuth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		switch r.URL.Path {
		case "/v1/jobs/job_1":
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"error":{"code":"not_found","message":"no job"}}`))
		default:
			w.WriteHeader(http.StatusBadGateway)
			w.Write([]byte("upstream proxy says no"))
		}
	}))
	defer srv.Close()
	c, err := New(srv.URL+"/", "cst_secret")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(t.Context(), "job_1")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 404 || ae.Code != "not_found" || !IsCode(err, "not_found") {
		t.Fatalf("Get() = %v, want *APIError 404 not_found", err)
	}
	if gotAuth != "Bearer cst_secret" {
		t.Fatalf("Authorization = %q, want the bearer token", gotAuth)
	}
	_, err = c.Heartbeat(t.Context(), "lease_SECRET")
	if !errors.As(err, &ae) || ae.Status != 502 || ae.Code != "http_502" {
		t.Fatalf("Heartbeat() = %v, want *APIError 502 http_502", err)
	}

	// A transport error must not carry the URL, which holds the lease token.
	srv.Close()
	_, err = c.Heartbeat(t.Context(), "lease_SECRET")
	if err == nil || strings.Contains(err.Error(), "lease_SECRET") {
		t.Fatalf("Heartbeat(server down) = %v, want an error without the lease token", err)
	}
}

func TestLongPollDeadlineCoversWait(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(1500 * time.Millisecond) // a slow server: simulates a held long-poll, not a test wait
		w.Write([]byte(`{"jobs":[]}`))
	}))
	defer srv.Close()
	c, _ := New(srv.URL, "cst_x", WithRequestTimeout(500*time.Millisecond))
	if _, err := c.Lease(t.Context(), 1, 2*time.Second); err != nil {
		t.Fatalf("Lease(wait 2s) with 500ms request timeout = %v, want the long-poll to be allowed its wait", err)
	}
	if _, err := c.Get(t.Context(), "job_1"); err == nil {
		t.Fatal("Get() on a 1.5s response with a 500ms request timeout = nil, want a timeout")
	}
}

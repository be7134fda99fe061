package egress

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The two benchmarks make the same request to the same loopback server and drain the same
// body, so that their ratio is the gateway's overhead: policy checks, credential lookup,
// header filtering and streaming redaction.

var benchBody = strings.Repeat(`{"id":42,"name":"Ada Lovelace","email":"ada@example.com"},`, 18) // ~1 KiB

func benchServer(b *testing.B) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, benchBody)
	}))
	b.Cleanup(srv.Close)
	return srv
}

func BenchmarkGatewayGET(b *testing.B) {
	srv := benchServer(b)
	f := newFixture(b, srv.URL, "/api", bearer, "GET /customers/*")
	req := Request{Endpoint: "crm", Method: "GET", Target: "/customers/42?expand=orders",
		Header: http.Header{"Accept": {"application/json"}}}
	b.ReportAllocs()
	for b.Loop() {
		resp, err := f.gw.Do(b.Context(), JobRef{Task: "t", Job: "j"}, req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
}

func BenchmarkNativeGET(b *testing.B) {
	srv := benchServer(b)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32, ForceAttemptHTTP2: true}}
	b.Cleanup(client.CloseIdleConnections)
	b.ReportAllocs()
	for b.Loop() {
		req, err := http.NewRequestWithContext(b.Context(), "GET", srv.URL+"/api/customers/42?expand=orders", nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Accept", "application/json")
		req.Header.Set("Authorization", "Bearer "+testSecret)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
	}
}

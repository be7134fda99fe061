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

// memTransport answers every request in memory with a fresh copy of a typical small JSON
// response, so that BenchmarkGatewayCPU measures the gateway's own work without a network.
type memTransport struct{}

func (memTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{
		StatusCode: 200, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Request: r,
		Header: http.Header{
			"Content-Type":   {"application/json"},
			"Content-Length": {"33"},
			"Date":           {"Wed, 26 Nov 2026 02:45:49 GMT"},
		},
		Body:          io.NopCloser(strings.NewReader(`{"id":"42","name":"Ada Lovelace"}`)),
		ContentLength: 33,
	}, nil
}

// BenchmarkGatewayCPU is the gateway's cost per call on top of the transport: policy checks,
// URL and request building, credential injection, header filtering, the redacting body and
// the audit event. The "client" case is the same request through a bare http.Client.
func BenchmarkGatewayCPU(b *testing.B) {
	b.Run("gateway", func(b *testing.B) {
		ep := &Endpoint{Name: "crm", BaseURL: mustURL(b, "http://crm.internal/api"), Auth: bearer,
			Rules: []Rule{MustParseRule("GET /customers/*")}}
		gw, err := New(Config{Endpoints: []*Endpoint{ep}, Credentials: &fakeCreds{values: map[string]string{testCredential: testSecret}},
			Redactor: newSet(b, testSecret), Audit: func(Event) {}, Transport: memTransport{}})
		if err != nil {
			b.Fatal(err)
		}
		req := Request{Endpoint: "crm", Method: "GET", Target: "/customers/42"}
		buf := make([]byte, 4096)
		b.ReportAllocs()
		for b.Loop() {
			resp, err := gw.Do(b.Context(), JobRef{Task: "t", Job: "j"}, req)
			if err != nil {
				b.Fatal(err)
			}
			for {
				if _, err := resp.Body.Read(buf); err != nil {
					break
				}
			}
			resp.Body.Close()
		}
	})
	b.Run("client", func(b *testing.B) {
		client := &http.Client{Transport: memTransport{}}
		buf := make([]byte, 4096)
		b.ReportAllocs()
		for b.Loop() {
			req, err := http.NewRequestWithContext(b.Context(), "GET", "http://crm.internal/api/customers/42", nil)
			if err != nil {
				b.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+testSecret)
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			for {
				if _, err := resp.Body.Read(buf); err != nil {
					break
				}
			}
			resp.Body.Close()
		}
	})
}

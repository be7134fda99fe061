package tracing_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/castellan-dev/castellan/internal/tracing"
)

// receiver is an in-test OTLP/HTTP collector: it records the path and size of every export.
type receiver struct {
	mu     sync.Mutex
	paths  []string
	status int // answer with this status; 0 for 200
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	b, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	if req.Method == http.MethodPost && req.Header.Get("Content-Type") == "application/x-protobuf" && len(b) > 0 {
		r.paths = append(r.paths, req.URL.Path)
	}
	if r.status != 0 {
		w.WriteHeader(r.status)
		return
	}
	if req.URL.Path != "/v1/traces" && req.URL.Path != "/custom/traces" {
		http.NotFound(w, req)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
}

func (r *receiver) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.paths...)
}

// TestEndpointFlag: --otlp-endpoint takes the value operators give OTEL_EXPORTER_OTLP_ENDPOINT
// (a base URL; the exporter appends /v1/traces), and a URL with a path as it is.
func TestEndpointFlag(t *testing.T) {
	t.Parallel()
	tests := []struct{ suffix, want string }{
		{"", "/v1/traces"},
		{"/", "/v1/traces"},
		{"/v1/traces", "/v1/traces"},
		{"/custom/traces", "/custom/traces"},
	}
	for _, tt := range tests {
		t.Run(tt.suffix, func(t *testing.T) {
			t.Parallel()
			rec := &receiver{}
			srv := httptest.NewServer(rec)
			t.Cleanup(srv.Close)
			tp, shutdown, err := tracing.NewProvider(t.Context(), tracing.Options{Endpoint: srv.URL + tt.suffix, Service: "test"})
			if err != nil {
				t.Fatal(err)
			}
			_, span := tp.Tracer("test").Start(t.Context(), "job")
			span.End()
			if err := shutdown(t.Context()); err != nil {
				t.Fatalf("shutdown (flush to %s) = %v, want nil", srv.URL+tt.suffix, err)
			}
			if got := rec.got(); len(got) != 1 || got[0] != tt.want {
				t.Fatalf("NewProvider(Endpoint: URL%q) exported to %q, want one export to %s", tt.suffix, got, tt.want)
			}
		})
	}
	for _, bad := range []string{"127.0.0.1:4318", "ftp://x:1", "http://"} {
		if _, _, err := tracing.NewProvider(t.Context(), tracing.Options{Endpoint: bad}); err == nil {
			t.Errorf("NewProvider(Endpoint: %q) = nil error, want one", bad)
		}
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestExportErrorsLogged: an export the collector refuses is reported as a zap JSON line,
// not as plain text from the standard log package. Not parallel: the OpenTelemetry error
// handler and the batch delay are process-wide.
func TestExportErrorsLogged(t *testing.T) {
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "10") // ms: export soon, through the background path
	rec := &receiver{status: http.StatusBadRequest}
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	var logs syncBuf
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&logs), zap.InfoLevel))
	tp, shutdown, err := tracing.NewProvider(t.Context(), tracing.Options{Endpoint: srv.URL, Service: "test", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = shutdown(t.Context()) })
	_, span := tp.Tracer("test").Start(t.Context(), "job")
	span.End()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "trace export failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no export error logged within 20s; log %q, exports %q", logs.String(), rec.got())
		}
		time.Sleep(10 * time.Millisecond) // polling for the background export
	}
	line, _, _ := strings.Cut(logs.String(), "\n")
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil || m["level"] != "warn" || !strings.Contains(m["error"].(string), "400") {
		t.Fatalf("log line %q = %v, %v; want a zap JSON warning carrying the exporter's error", line, m, err)
	}
}

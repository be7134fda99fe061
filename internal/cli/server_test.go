package cli

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// startServer runs `castellan server` with cfg until the test ends and returns its base URL
// and its log.
func startServer(t *testing.T, cfg ServerConfig) (base string, stderr *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- Server(ctx, cfg, stdout, stderr, nil) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, rest, ok := strings.Cut(stdout.String(), "listening on "); ok {
			return strings.TrimSpace(rest), stderr
		}
		select {
		case err := <-done:
			t.Fatalf("Server(%+v) = %v before listening; stderr %q", cfg, err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("Server(%+v) printed %q, stderr %q; want a listening line", cfg, stdout.String(), stderr.String())
		}
		time.Sleep(5 * time.Millisecond) // polling for the listening line
	}
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var metricsURL = regexp.MustCompile(`http://127\.0\.0\.1:\d+/metrics`)

// TestServerMetricsAndHealth: `castellan server --metrics-addr` serves the control-plane
// metrics (a submit shows in castellan_server_jobs_submitted_total, the job in
// castellan_server_jobs), and the API answers /healthz and /readyz.
func TestServerMetricsAndHealth(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "cp.db")
	var discard strings.Builder
	wtok, err := TokenCreate(t.Context(), TokenConfig{DB: db, Role: "worker", Pool: "default"}, &discard)
	must(t, err)
	ctok, err := TokenCreate(t.Context(), TokenConfig{DB: db, Role: "client", Pool: "default"}, &discard)
	must(t, err)
	base, stderr := startServer(t, ServerConfig{DB: db, Listen: "127.0.0.1:0", LeaseTTL: time.Minute, MetricsAddr: "127.0.0.1:0", LogLevel: "info"})

	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := httpGet(t, base+path); code != http.StatusOK || !json.Valid([]byte(body)) {
			t.Fatalf("GET %s = %d %q, want 200 and JSON", path, code, body)
		}
	}
	murl := metricsURL.FindString(stderr.String())
	if murl == "" {
		t.Fatalf("server log %q names no metrics listener", stderr.String())
	}

	w, err := client.New(base, wtok.Secret)
	must(t, err)
	_, err = w.Register(t.Context(), api.RegisterRequest{Name: "w1", AgentVersion: "test"})
	must(t, err)
	_, err = w.PublishCatalog(t.Context(), []api.TaskDef{{Name: "echo", Version: "1.0.0", InputSchema: json.RawMessage(`{"type":"object"}`)}})
	must(t, err)
	c, err := client.New(base, ctok.Secret)
	must(t, err)
	_, err = c.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: "default", Input: json.RawMessage(`{}`)})
	must(t, err)

	code, body := httpGet(t, murl)
	for _, want := range []string{`castellan_server_jobs_submitted_total{task="echo"} 1`, `castellan_server_jobs{state="pending_approval"} 1`, "go_goroutines"} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Fatalf("GET %s = %d, body without %q:\n%s", murl, code, want, body)
		}
	}
}

// TestServerMetricsAddrTaken: a --metrics-addr that cannot be opened is a configuration
// error before the API starts.
func TestServerMetricsAddrTaken(t *testing.T) {
	t.Parallel()
	base, _ := startServer(t, ServerConfig{DB: filepath.Join(t.TempDir(), "a.db"), Listen: "127.0.0.1:0", LeaseTTL: time.Minute, LogLevel: "error"})
	taken := strings.TrimPrefix(base, "http://")
	err := Server(t.Context(), ServerConfig{DB: filepath.Join(t.TempDir(), "b.db"), Listen: "127.0.0.1:0", LeaseTTL: time.Minute,
		MetricsAddr: taken, LogLevel: "error"}, io.Discard, io.Discard, make(chan os.Signal))
	if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), "--metrics-addr") {
		t.Fatalf("Server(--metrics-addr %s, in use) = %v, want a usage error naming --metrics-addr", taken, err)
	}
}

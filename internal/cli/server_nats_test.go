package cli

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestServerNATSMode: `castellan token create --nats` and `castellan server --nats` against an
// embedded JetStream server; the client API answers with the token and refuses without it.
func TestServerNATSMode(t *testing.T) {
	t.Parallel()
	natsURL := startEmbeddedNATS(t)

	var out bytes.Buffer
	tok, err := TokenCreate(t.Context(), TokenConfig{NATS: natsURL, Role: "client", Pool: "default", Name: "ci"}, &out)
	if err != nil || strings.TrimSpace(out.String()) != tok.Secret || !strings.HasPrefix(tok.Secret, "cst_") {
		t.Fatalf("TokenCreate(--nats) = %q, %v, want the secret printed alone", out.String(), err)
	}
	if _, err := TokenCreate(t.Context(), TokenConfig{NATS: natsURL, DB: "x.db", Role: "client"}, &out); err == nil {
		t.Fatal("TokenCreate(--nats and --db) = nil error, want a usage error")
	}
	if _, err := TokenCreate(t.Context(), TokenConfig{NATS: natsURL, Role: "worker", Pool: "default"}, &out); err == nil {
		t.Fatal("TokenCreate(--nats, role worker) = nil error, want a refusal")
	}
	if err := Server(t.Context(), ServerConfig{DB: "x.db", NATS: natsURL}, &out, &out, nil); err == nil {
		t.Fatal("Server(--db and --nats) = nil error, want a usage error")
	}

	ctx, cancel := context.WithCancel(t.Context())
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	sigs := make(chan os.Signal, 2)
	done := make(chan error, 1)
	go func() {
		done <- Server(ctx, ServerConfig{NATS: natsURL, Listen: "127.0.0.1:0", Replicas: 1, LogLevel: "error"}, stdout, stderr, sigs)
	}()
	t.Cleanup(func() { cancel(); <-done })
	var base string
	deadline := time.Now().Add(20 * time.Second)
	for base == "" {
		if _, rest, ok := strings.Cut(stdout.String(), "listening on "); ok {
			base = strings.TrimSpace(rest)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Server(--nats) printed %q, stderr %q; want a listening line", stdout.String(), stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	c, err := client.New(base, tok.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if cat, err := c.Catalog(t.Context(), "default"); err != nil || cat.Pool != "default" || len(cat.Tasks) != 0 {
		t.Fatalf("Catalog(default) = %+v, %v, want an empty catalog", cat, err)
	}
	if _, err := c.Get(t.Context(), "job_000000000000000000000000"); !client.IsCode(err, api.CodeNotFound) {
		t.Fatalf("Get(unknown) = %v, want %s", err, api.CodeNotFound)
	}
	if code, body := httpGet(t, base+"/readyz"); code != 200 || !strings.Contains(body, "ready") {
		t.Fatalf("GET /readyz = %d %q, want 200 ready", code, body)
	}
	bad, _ := client.New(base, "cst_nope")
	if _, err := bad.Catalog(t.Context(), "default"); !client.IsCode(err, api.CodeUnauthenticated) {
		t.Fatalf("Catalog(bad token) = %v, want %s", err, api.CodeUnauthenticated)
	}
	sigs <- os.Interrupt
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("Server(--nats) after a signal = %v, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Server(--nats) did not stop after a signal")
	}
}

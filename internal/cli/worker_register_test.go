package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestWorkerRegistrationToken: a worker started with --registration-token-file exchanges it
// once for a worker token of the registration token's pool, named after the worker, stored
// 0600 in STATE-DIR; a restart uses the stored token (the registration token is used up by
// then), and no second worker token is made.
func TestWorkerRegistrationToken(t *testing.T) {
	t.Parallel()
	cp := startControlPlane(t)
	reg, err := cp.srv.Store().CreateTokenFor(t.Context(), api.TokenCreateRequest{Role: api.RoleRegistration, Pool: "default", Name: "dc3", TTLSeconds: 3600}, time.Now())
	must(t, err)
	regFile := cp.writeToken("registration.token", reg.Secret)
	cfg := cp.workerConfig("")
	cfg.RegistrationTokenFile, cfg.Name = regFile, "dc3-w1"
	workerTokens := func() []api.Token {
		t.Helper()
		list, err := cp.srv.Store().ListTokens(t.Context())
		must(t, err)
		var out []api.Token
		for _, tk := range list {
			if tk.Role == api.RoleWorker {
				out = append(out, tk)
			}
		}
		return out
	}
	run := func() {
		t.Helper()
		stderr := &syncBuffer{}
		sigs := make(chan os.Signal, 1)
		done := runWorker(context.Background(), cfg, stderr, sigs)
		waitFor(t, "the worker to be ready", func() bool { return strings.Contains(stderr.String(), "worker ready") })
		sigs <- os.Interrupt
		if err := result(t, done, stderr); err != nil {
			t.Fatalf("Worker() = %v; stderr:\n%s", err, stderr)
		}
		if strings.Contains(stderr.String(), reg.Secret) {
			t.Fatal("the registration token was logged")
		}
	}
	run()
	stored := filepath.Join(cfg.StateDir, "worker.token")
	fi, err := os.Stat(stored)
	must(t, err)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode of %s = %o, want 600", stored, fi.Mode().Perm())
	}
	b, err := os.ReadFile(stored)
	must(t, err)
	ws := workerTokens()
	if len(ws) != 1 || ws[0].Pool != "default" || ws[0].Name != "dc3-w1" || !strings.HasPrefix(string(b), api.TokenPrefix) {
		t.Fatalf("worker tokens after the first start = %+v (stored %q), want one of pool default named dc3-w1", ws, b)
	}
	workers, err := cp.srv.Store().ListWorkers(t.Context(), "default", time.Minute, time.Now())
	must(t, err)
	if len(workers.Workers) != 1 || workers.Workers[0].ID != ws[0].ID || workers.Workers[0].Name != "dc3-w1" {
		t.Fatalf("registered workers = %+v, want dc3-w1 under the exchanged token %s", workers.Workers, ws[0].ID)
	}

	run() // the registration token is used up: the stored worker token serves
	if again := workerTokens(); len(again) != 1 {
		t.Fatalf("worker tokens after a restart = %+v, want still the one", again)
	}

	// Without the stored token, the used registration token is refused: exit 2, one line.
	cfg.StateDir = filepath.Join(t.TempDir(), "fresh")
	stderr := &syncBuffer{}
	err = result(t, runWorker(context.Background(), cfg, stderr, make(chan os.Signal)), stderr)
	if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), "refused the registration token") || strings.Contains(err.Error(), reg.Secret) {
		t.Fatalf("Worker(used registration token, new state dir) = %v (exit %d), want exit 2 naming the refusal", err, ExitCode(err))
	}
}

// TestWorkerRegistrationTokenUsage: --registration-token-file with --token-file, or with a
// NATS control plane, is a usage error, and so is a registration token in NATS mode.
func TestWorkerRegistrationTokenUsage(t *testing.T) {
	t.Parallel()
	cp := startControlPlane(t)
	regFile := cp.writeToken("registration.token", "cst_x")
	for _, mod := range []func(*WorkerConfig){
		func(c *WorkerConfig) { c.TokenFile = regFile },
		func(c *WorkerConfig) { c.Server, c.Pool = "nats://127.0.0.1:4222", "default" },
	} {
		cfg := cp.workerConfig("")
		cfg.RegistrationTokenFile = regFile
		mod(&cfg)
		stderr := &syncBuffer{}
		err := result(t, runWorker(context.Background(), cfg, stderr, make(chan os.Signal)), stderr)
		if ExitCode(err) != ExitUsage {
			t.Fatalf("Worker(%+v) = %v, want a usage error", cfg, err)
		}
	}
	var out strings.Builder
	_, err := TokenCreate(t.Context(), TokenConfig{NATS: startEmbeddedNATS(t), Role: "registration", Pool: "default", TTL: time.Hour}, &out)
	if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), "NATS credentials") {
		t.Fatalf("token create --nats --role registration = %v, want a usage error saying why", err)
	}
}

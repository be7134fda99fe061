package cli

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// controlPlane is a real SQLite control plane on loopback, with the files of a worker
// serving the echo task from it.
type controlPlane struct {
	t    *testing.T
	srv  *server.Server
	base string
	dir  string
	priv jose.JSONWebKey
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{DBPath: filepath.Join(dir, "cp.db"), LeaseTTL: 30 * time.Second})
	must(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	served := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(served) }()
	t.Cleanup(func() { cancel(); <-served; _ = srv.Close() })

	priv, pub, err := approval.GenerateKey("approver-1")
	must(t, err)
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}})
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "approvers.jwks.json"), jwks, 0o644))
	wasm, err := os.ReadFile(filepath.Join("..", "..", "runtime", "testdata", "echo.wasm"))
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "echo.wasm"), wasm, 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte("version: 1\ntasks:\n  echo:\n    module: echo.wasm\n    version: \"1\"\n"), 0o644))
	return &controlPlane{t: t, srv: srv, base: "http://" + ln.Addr().String(), dir: dir, priv: priv}
}

func (cp *controlPlane) token(role api.Role) api.Token {
	tok, err := cp.srv.Store().CreateToken(context.Background(), role, "default", string(role), time.Now())
	must(cp.t, err)
	return tok
}

func (cp *controlPlane) revoke(tok api.Token) {
	ok, err := cp.srv.Store().RevokeToken(context.Background(), tok.ID, time.Now())
	must(cp.t, err)
	if !ok {
		cp.t.Fatalf("token %s was not revoked", tok.ID)
	}
}

func (cp *controlPlane) client(role api.Role) *client.Client {
	c, err := client.New(cp.base, cp.token(role).Secret)
	must(cp.t, err)
	return c
}

// workerConfig is a worker of cp with its token in tokenFile, tuned for short waits.
func (cp *controlPlane) workerConfig(tokenFile string) WorkerConfig {
	return WorkerConfig{Server: cp.base, TokenFile: tokenFile,
		Policy: filepath.Join(cp.dir, "policy.yaml"), TrustedKeys: []string{filepath.Join(cp.dir, "approvers.jwks.json")},
		StateDir: filepath.Join(cp.t.TempDir(), "state"), CacheDir: "off", Concurrency: 1, Grace: time.Minute,
		StopTimeout: 2 * time.Second, Pool: "default", LogLevel: "info", LogFormat: "console",
		leaseWait: time.Second, backoffMin: 10 * time.Millisecond, backoffMax: 50 * time.Millisecond, authWindow: time.Nanosecond}
}

func (cp *controlPlane) writeToken(name, secret string) string {
	p := filepath.Join(cp.t.TempDir(), name)
	must(cp.t, os.WriteFile(p, []byte(secret+"\n"), 0o600))
	return p
}

// submit queues an approved echo job.
func (cp *controlPlane) submit(sub, appr *client.Client, input string) api.Job {
	t := cp.t
	t.Helper()
	j, err := sub.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: "default", Input: json.RawMessage(input), MaxAttempts: 1})
	must(t, err)
	tok, _, err := approval.Sign(cp.priv, approval.Request{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool,
		Input: []byte(input), MaxAttempts: j.MaxAttempts})
	must(t, err)
	j, err = appr.Approve(t.Context(), j.ID, tok)
	must(t, err)
	return j
}

// waitFor polls cond until it holds or 30 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runWorker starts Worker and returns its result channel.
func runWorker(ctx context.Context, cfg WorkerConfig, stderr *syncBuffer, sigs chan os.Signal) <-chan error {
	done := make(chan error, 1)
	go func() { done <- Worker(ctx, cfg, stderr, sigs) }()
	return done
}

func result(t *testing.T, done <-chan error, stderr *syncBuffer) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(60 * time.Second):
		t.Fatalf("Worker() still running after 60s; stderr:\n%s", stderr)
		return nil
	}
}

// TestWorkerConfigErrorsExit2: every configuration or authentication failure at start
// exits 2 (the unit's RestartPreventExitStatus, so no restart loop) with one line naming
// what to fix.
func TestWorkerConfigErrorsExit2(t *testing.T) {
	t.Parallel()
	cp := startControlPlane(t)
	revoked := cp.token(api.RoleWorker)
	cp.revoke(revoked)
	good := cp.writeToken("worker.token", cp.token(api.RoleWorker).Secret)
	for _, tc := range []struct {
		name string
		edit func(*WorkerConfig)
		want string
	}{
		{"ftp scheme", func(c *WorkerConfig) { c.Server = "ftp://" + strings.TrimPrefix(cp.base, "http://") }, `scheme "ftp" is not supported`},
		{"no scheme", func(c *WorkerConfig) { c.Server = strings.TrimPrefix(cp.base, "http://") }, "has no scheme; use https://"},
		{"no scheme, user info not echoed", func(c *WorkerConfig) { c.Server = "admin:hunter2@cp.example" }, "--server has no scheme"},
		{"no host", func(c *WorkerConfig) { c.Server = "https://" }, "no host"},
		{"missing token file", func(c *WorkerConfig) { c.TokenFile = filepath.Join(t.TempDir(), "absent") }, "--token-file"},
		{"empty token file", func(c *WorkerConfig) { c.TokenFile = cp.writeToken("empty", "  ") }, "is empty"},
		{"revoked token", func(c *WorkerConfig) { c.TokenFile = cp.writeToken("revoked", revoked.Secret) }, "refused the token (401)"},
		{"unknown token", func(c *WorkerConfig) { c.TokenFile = cp.writeToken("unknown", "cst_not-a-token-at-all-0123456789") }, "refused the token (401)"},
		{"client token", func(c *WorkerConfig) { c.TokenFile = cp.writeToken("client", cp.token(api.RoleClient).Secret) }, "refused the token (403): the worker's token is not a worker token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := cp.workerConfig(good)
			tc.edit(&cfg)
			stderr := &syncBuffer{}
			err := result(t, runWorker(t.Context(), cfg, stderr, make(chan os.Signal)), stderr)
			if code := ExitCode(err); code != ExitUsage {
				t.Fatalf("Worker() = %v (exit %d), want exit %d; stderr:\n%s", err, code, ExitUsage, stderr)
			}
			if !Unreported(err) {
				t.Errorf("Worker() = %v is not printed by main", err)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) {
				t.Errorf("Worker() = %q, want one line containing %q", msg, tc.want)
			}
			if strings.Contains(msg, "hunter2") || strings.Contains(stderr.String(), "hunter2") {
				t.Errorf("the password in --server was echoed: %q", msg)
			}
			if strings.Contains(stderr.String(), "refused") {
				t.Errorf("the refusal was also logged (two lines for one failure):\n%s", stderr)
			}
		})
	}
}

// TestWorkerSignalBeforeConnecting: a worker stopped while its control plane is still
// unreachable stops cleanly (exit 0): nothing ran.
func TestWorkerSignalBeforeConnecting(t *testing.T) {
	t.Parallel()
	cp := startControlPlane(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	down := "http://" + ln.Addr().String()
	must(t, ln.Close())
	cfg := cp.workerConfig(cp.writeToken("worker.token", cp.token(api.RoleWorker).Secret))
	cfg.Server = down
	stderr := &syncBuffer{}
	sigs := make(chan os.Signal, 1)
	done := runWorker(t.Context(), cfg, stderr, sigs)
	waitFor(t, "a failed connection", func() bool { return strings.Contains(stderr.String(), "control plane unreachable") })
	sigs <- syscall.SIGTERM
	if err := result(t, done, stderr); ExitCode(err) != ExitOK {
		t.Fatalf("Worker() after SIGTERM before the first connection = %v (exit %d), want exit 0", err, ExitCode(err))
	}

	// Two signals (systemd's stop, then an impatient operator): still nothing ran.
	stderr = &syncBuffer{}
	sigs = make(chan os.Signal, 2)
	done = runWorker(t.Context(), cfg, stderr, sigs)
	waitFor(t, "a failed connection", func() bool { return strings.Contains(stderr.String(), "control plane unreachable") })
	sigs <- syscall.SIGTERM
	sigs <- syscall.SIGTERM
	if err := result(t, done, stderr); ExitCode(err) != ExitOK {
		t.Fatalf("Worker() after two signals before the first connection = %v (exit %d), want exit 0", err, ExitCode(err))
	}
}

// TestWorkerTokenRevokedWhileRunning: a token revoked under a running worker stops it with
// exit 2 and one ERROR line, instead of a WARN retried forever.
func TestWorkerTokenRevokedWhileRunning(t *testing.T) {
	t.Parallel()
	cp := startControlPlane(t)
	tok := cp.token(api.RoleWorker)
	file := cp.writeToken("worker.token", tok.Secret)
	stderr := &syncBuffer{}
	done := runWorker(t.Context(), cp.workerConfig(file), stderr, make(chan os.Signal))
	waitFor(t, "the worker to be ready", func() bool { return strings.Contains(stderr.String(), "worker ready") })
	cp.revoke(tok)
	err := result(t, done, stderr)
	if code := ExitCode(err); code != ExitUsage {
		t.Fatalf("Worker() after its token was revoked = %v (exit %d), want exit %d; stderr:\n%s", err, code, ExitUsage, stderr)
	}
	if Unreported(err) {
		t.Errorf("Worker() = %v would be printed again by main after the ERROR line", err)
	}
	var errLines []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "ERROR") {
			errLines = append(errLines, l)
		}
	}
	if len(errLines) != 1 || !strings.Contains(errLines[0], "put a token from `castellan token create --role worker` in --token-file "+file) {
		t.Errorf("ERROR lines = %q, want one naming the token file to fix", errLines)
	}
	if strings.Contains(stderr.String(), tok.Secret) {
		t.Error("the token was logged")
	}
}

// TestWorkerTokenRotation: an operator writes a new token to --token-file and revokes the
// old one, in either order; the running worker picks the new one up at a refusal and keeps
// serving. Revoking first leaves refusals until the file changes: the refusal window keeps
// the worker up meanwhile.
func TestWorkerTokenRotation(t *testing.T) {
	t.Parallel()
	for _, revokeFirst := range []bool{false, true} {
		name := "write then revoke"
		if revokeFirst {
			name = "revoke then write"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testTokenRotation(t, revokeFirst)
		})
	}
}

func testTokenRotation(t *testing.T, revokeFirst bool) {
	cp := startControlPlane(t)
	old := cp.token(api.RoleWorker)
	file := cp.writeToken("worker.token", old.Secret)
	stderr := &syncBuffer{}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	sigs := make(chan os.Signal, 1)
	cfg := cp.workerConfig(file)
	cfg.authWindow = time.Hour
	done := runWorker(ctx, cfg, stderr, sigs)
	defer func() {
		if t.Failed() {
			t.Logf("stderr:\n%s", stderr)
		}
	}()
	waitFor(t, "the worker to be ready", func() bool { return strings.Contains(stderr.String(), "worker ready") })

	fresh := cp.token(api.RoleWorker)
	if revokeFirst {
		cp.revoke(old)
		// More refusals than the limit: only the window keeps the worker up.
		waitFor(t, "refusals", func() bool { return strings.Contains(stderr.String(), `"in_a_row": 6`) })
	}
	tmp := file + ".new"
	must(t, os.WriteFile(tmp, []byte(fresh.Secret+"\n"), 0o600))
	must(t, os.Rename(tmp, file))
	if !revokeFirst {
		cp.revoke(old)
	}
	waitFor(t, "the new token to be used", func() bool { return strings.Contains(stderr.String(), "using the new token") })

	sub, appr := cp.client(api.RoleClient), cp.client(api.RoleApprover)
	j := cp.submit(sub, appr, `{"n":1}`)
	waitFor(t, "the job to finish", func() bool {
		got, err := sub.Get(t.Context(), j.ID)
		return err == nil && got.State.Terminal()
	})
	got, err := sub.Get(t.Context(), j.ID)
	must(t, err)
	if got.State != api.StateSucceeded {
		t.Fatalf("job after the rotation = %s/%s %q, want succeeded", got.State, got.Outcome, got.ErrorMessage)
	}
	select {
	case err := <-done:
		t.Fatalf("Worker() stopped after the rotation: %v", err)
	default:
	}
	sigs <- syscall.SIGTERM
	if err := result(t, done, stderr); err != nil {
		t.Fatalf("Worker() after SIGTERM = %v", err)
	}
	if s := stderr.String(); strings.Contains(s, fresh.Secret) || strings.Contains(s, old.Secret) {
		t.Error("a token was logged")
	}
}

// TestWorkerOneJob: an ephemeral worker (--one-job) with two approved jobs queued runs
// exactly one, reports it and exits 0; the other stays queued for another worker.
func TestWorkerOneJob(t *testing.T) {
	t.Parallel()
	cp := startControlPlane(t)
	cfg := cp.workerConfig(cp.writeToken("worker.token", cp.token(api.RoleWorker).Secret))
	cfg.OneJob, cfg.Concurrency = true, 4
	sub, appr := cp.client(api.RoleClient), cp.client(api.RoleApprover)

	// A first worker publishes the catalog, so both jobs can be queued before the ephemeral
	// one starts.
	pcfg := cfg
	pcfg.OneJob = false
	pctx, stopPub := context.WithCancel(t.Context())
	pubDone := runWorker(pctx, pcfg, &syncBuffer{}, make(chan os.Signal))
	waitFor(t, "the catalog", func() bool {
		c, err := sub.Catalog(t.Context(), "default")
		return err == nil && len(c.Tasks) > 0
	})
	stopPub()
	<-pubDone

	a := cp.submit(sub, appr, `{"job":"a"}`)
	b := cp.submit(sub, appr, `{"job":"b"}`)
	for _, j := range []api.Job{a, b} {
		if j.State != api.StateQueued {
			t.Fatalf("job %s = %s, want queued", j.ID, j.State)
		}
	}
	stderr := &syncBuffer{}
	err := result(t, runWorker(t.Context(), cfg, stderr, make(chan os.Signal)), stderr)
	if ExitCode(err) != ExitOK {
		t.Fatalf("Worker(--one-job) = %v (exit %d), want exit 0; stderr:\n%s", err, ExitCode(err), stderr)
	}
	states := map[api.State]int{}
	for _, j := range []api.Job{a, b} {
		got, err := sub.Get(t.Context(), j.ID)
		must(t, err)
		states[got.State]++
	}
	if states[api.StateSucceeded] != 1 || states[api.StateQueued] != 1 {
		t.Errorf("job states after one --one-job worker = %v, want one succeeded and one still queued; stderr:\n%s", states, stderr)
	}
}

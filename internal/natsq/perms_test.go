package natsq_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/runtime"
)

// The permissions of a pool's worker user, exactly as docs/deploy.md section 3 lists them
// for worker-acme. They MUST match the doc: TestDeployDocPermissions compares the two, so
// a change to either fails until the other follows.
var (
	workerAcmePublish = []string{
		"$JS.API.CONSUMER.MSG.NEXT.CASTELLAN_JOBS_acme.*",
		"$JS.API.CONSUMER.INFO.CASTELLAN_JOBS_acme.*",
		"$JS.ACK.CASTELLAN_JOBS_acme.>",
		"castellan.results.acme",
		"castellan.claims.acme",
		"castellan.catalog.acme",
		"castellan.dead.acme.>",
		"$JS.API.STREAM.INFO.KV_castellan_cancel",
		"$JS.API.DIRECT.GET.KV_castellan_cancel.$KV.castellan_cancel.acme.>",
		"$KV.castellan_workers.acme.>",
	}
	workerAcmeSubscribe = []string{"_INBOX_acme.>"}
)

const (
	cpUser, cpPassword     = "control-plane", "cp-password-for-tests"
	acmeUser, acmePassword = "worker-acme", "acme-password-for-tests"
	// worker-acme-inbox has worker-acme's permissions; TestWorkerOwnInbox connects as it with
	// a connection it makes itself, as a program embedding natsq would.
	acmeInboxUser, acmeInboxPrefix = "worker-acme-inbox", "_INBOX_acme"
)

// startAccountsNATS runs an embedded JetStream server with the account of docs/deploy.md
// section 3: JetStream enabled, a control-plane user with full access and worker-acme
// with the permissions above.
func startAccountsNATS(t testing.TB) *natsserver.Server {
	t.Helper()
	acc := natsserver.NewAccount("CASTELLAN")
	s, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		Accounts: []*natsserver.Account{acc},
		Users: []*natsserver.User{
			{Username: cpUser, Password: cpPassword, Account: acc},
			{Username: acmeUser, Password: acmePassword, Account: acc, Permissions: &natsserver.Permissions{
				Publish:   &natsserver.SubjectPermission{Allow: workerAcmePublish},
				Subscribe: &natsserver.SubjectPermission{Allow: workerAcmeSubscribe},
			}},
			{Username: acmeInboxUser, Password: acmePassword, Account: acc, Permissions: &natsserver.Permissions{
				Publish:   &natsserver.SubjectPermission{Allow: workerAcmePublish},
				Subscribe: &natsserver.SubjectPermission{Allow: []string{acmeInboxPrefix + ".>"}},
			}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("the embedded NATS server did not start")
	}
	t.Cleanup(s.Shutdown)
	a, err := s.LookupAccount("CASTELLAN")
	if err != nil {
		t.Fatal(err)
	}
	unlimited := natsserver.JetStreamAccountLimits{MaxMemory: -1, MaxStore: -1, MaxStreams: -1, MaxConsumers: -1,
		MaxAckPending: -1, MemoryMaxStreamBytes: -1, StoreMaxStreamBytes: -1}
	if err := a.EnableJetStream(map[string]natsserver.JetStreamAccountLimits{"": unlimited}, nil); err != nil {
		t.Fatalf("EnableJetStream(CASTELLAN) = %v", err)
	}
	return s
}

// TestDeployDocPermissions: the worker permissions this file tests are the ones
// docs/deploy.md tells operators to configure.
func TestDeployDocPermissions(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/deploy.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(doc), "{ user: worker-acme")
	if !ok {
		t.Fatal("docs/deploy.md has no worker-acme user in section 3")
	}
	block, _, _ = strings.Cut(block, "```")
	list := func(section string) []string {
		_, rest, ok := strings.Cut(block, section+": { allow: [")
		if !ok {
			t.Fatalf("docs/deploy.md worker-acme has no %q allow list", section)
		}
		rest, _, _ = strings.Cut(rest, "]")
		var out []string
		for _, m := range regexp.MustCompile(`"([^"]+)"`).FindAllStringSubmatch(rest, -1) {
			out = append(out, m[1])
		}
		return out
	}
	if got := list("publish"); !slices.Equal(got, workerAcmePublish) {
		t.Errorf("docs/deploy.md publish allow = %q, want %q (perms_test.go)", got, workerAcmePublish)
	}
	if got := list("subscribe"); !slices.Equal(got, workerAcmeSubscribe) {
		t.Errorf("docs/deploy.md subscribe allow = %q, want %q (perms_test.go)", got, workerAcmeSubscribe)
	}
}

// watched is a raw connection that records every asynchronous error the server reports.
type watched struct {
	nc   *nats.Conn
	mu   sync.Mutex
	errs []error
}

func connectAs(t testing.TB, url, user, password string) *watched {
	t.Helper()
	w := &watched{}
	nc, err := nats.Connect(url, nats.UserInfo(user, password), nats.CustomInboxPrefix(acmeInboxPrefix), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		w.mu.Lock()
		w.errs = append(w.errs, err)
		w.mu.Unlock()
	}))
	if err != nil {
		t.Fatalf("connect as %s = %v", user, err)
	}
	t.Cleanup(nc.Close)
	w.nc = nc
	return w
}

// violation reports whether the server refused op ("publish" or "subscription") on subj.
func (w *watched) violation(op, subj string) bool {
	want := strings.ToLower(fmt.Sprintf("%s to %q", op, subj))
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, err := range w.errs {
		if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(strings.ToLower(err.Error()), want) {
			return true
		}
	}
	return false
}

func (w *watched) errors() []error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.errs)
}

// startAccountsControlPlane starts the accounts server and a dispatcher recording results,
// connected as the control-plane user.
func startAccountsControlPlane(t *testing.T) (string, *natsq.Dispatcher) {
	t.Helper()
	url := startAccountsNATS(t).ClientURL()
	cpOpts := natsq.Options{User: cpUser, Password: cpPassword}
	cpNC, err := natsq.Connect(url, cpOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cpNC.Close)
	d, err := natsq.NewDispatcher(t.Context(), cpNC, cpOpts)
	if err != nil {
		t.Fatalf("NewDispatcher(as %s) = %v", cpUser, err)
	}
	runCtx, stopRun := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { _ = d.Run(runCtx, 0); close(runDone) }()
	t.Cleanup(func() { stopRun(); <-runDone })
	return url, d
}

// TestWorkerAccountPermissions proves docs/deploy.md section 3 against a real server: a
// worker of pool acme with exactly the documented permissions runs, heartbeats and
// cancels acme's jobs (and the server reports no violation while it does), and cannot
// touch another pool's jobs, results or cancellations, the control plane's job state, or
// the streams and consumers themselves.
func TestWorkerAccountPermissions(t *testing.T) {
	t.Parallel()
	url, d := startAccountsControlPlane(t)

	s := newSigner(t)
	env := func(id, pool, input string) natsq.Envelope {
		tok, _, err := approval.Sign(s.key, approval.Request{JobID: id, Task: "echo", TaskVersion: "1.0.0", Pool: pool,
			Input: []byte(input), MaxAttempts: 1, Approver: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		return natsq.Envelope{JobID: id, Task: "echo", TaskVersion: "1.0.0", Pool: pool, Input: json.RawMessage(input),
			Approval: tok, MaxAttempts: 1}
	}
	dispatch := func(e natsq.Envelope) {
		t.Helper()
		if _, err := d.Dispatch(t.Context(), e); err != nil {
			t.Fatalf("Dispatch(%s) as %s = %v", e.JobID, cpUser, err)
		}
	}
	// The control plane creates beta's stream and consumer. beta-1 is cancelled before anyone
	// pulls it (its cancel key exists); beta-2 waits in beta's stream.
	dispatch(env("beta-1", "beta", `{"n":1}`))
	dispatch(env("beta-2", "beta", `{"n":2}`))
	if j, err := d.Cancel(t.Context(), "beta-1"); err != nil || j.State != api.StateCancelled {
		t.Fatalf("Cancel(beta-1) = %s, %v, want cancelled", j.State, err)
	}

	// The API server creates the presence bucket; here the test does, as the control plane.
	cpNC, err := natsq.Connect(url, natsq.Options{User: cpUser, Password: cpPassword})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cpNC.Close)
	cpJS, err := jetstream.New(cpNC)
	if err != nil {
		t.Fatal(err)
	}
	presence, err := natsq.EnsureWorkersBucket(t.Context(), cpJS, 1)
	if err != nil {
		t.Fatal(err)
	}

	// (1) A worker of pool acme connected as worker-acme completes acme's jobs.
	core, logs := observer.New(zap.WarnLevel)
	q, err := natsq.DialWorker(t.Context(), url, natsq.Options{Pool: "acme", User: acmeUser, Password: acmePassword, Log: zap.New(core)})
	if err != nil {
		t.Fatalf("DialWorker(as %s) = %v", acmeUser, err)
	}
	started, stopped := make(chan struct{}), make(chan struct{})
	runner := funcRunner(func(ctx context.Context, _, id string, in []byte) runtime.Result {
		if id != "acme-block" {
			return runtime.Result{Output: in, Digest: "sha256:test"}
		}
		// Runs until its heartbeat finds the cancellation in castellan_cancel.
		close(started)
		<-ctx.Done()
		close(stopped)
		return runtime.Result{Err: ctx.Err()}
	})
	w, err := worker.New(worker.Config{Client: q, Runner: runner, Catalog: catalog,
		Verifier:    approval.NewVerifier(s.trusted, approval.NewMemoryReplayStore()),
		Concurrency: 2, LeaseWait: time.Second, Heartbeat: 100 * time.Millisecond,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lease, stopLease := context.WithCancel(context.Background())
	jobs, cancelJobs := context.WithCancel(context.Background())
	workerDone := make(chan error, 1)
	go func() { workerDone <- w.Run(lease, jobs) }()
	t.Cleanup(func() { stopLease(); cancelJobs(); <-workerDone; _ = q.Close() })

	// acme's stream and consumer do not exist yet: the worker may not create them, and
	// binds once the control plane has (docs/deploy.md). Dispatch only after it has tried.
	poll(t, 20*time.Second, "worker-acme to find no consumer to bind", func() bool {
		return logs.FilterMessage("the consumer of a served task is not available yet; retrying").Len() > 0
	})
	dispatch(env("acme-1", "acme", `{"n":1}`))
	waitState(t, d, "acme-1", 30*time.Second, api.StateSucceeded)
	dispatch(env("acme-2", "acme", `{"n":2}`))
	if j := waitState(t, d, "acme-2", 20*time.Second, api.StateSucceeded); string(j.Output) != `{"n":2}` {
		t.Fatalf("acme-2 output = %s, want {\"n\":2}", j.Output)
	}
	dispatch(env("acme-block", "acme", `{"n":3}`))
	select {
	case <-started:
	case <-time.After(20 * time.Second):
		t.Fatal("acme-block did not start")
	}
	if _, err := d.Cancel(t.Context(), "acme-block"); err != nil {
		t.Fatalf("Cancel(acme-block) = %v", err)
	}
	select {
	case <-stopped: // the heartbeat read acme's cancel key
	case <-time.After(20 * time.Second):
		t.Fatal("acme-block was not stopped: the worker could not read its pool's cancellation")
	}
	waitState(t, d, "acme-block", 20*time.Second, api.StateCancelled)
	// It announced its presence in its pool's keys (GET /v1/workers).
	if keys, err := presence.Keys(t.Context()); err != nil || len(keys) != 1 || !strings.HasPrefix(keys[0], "acme.") {
		t.Fatalf("presence keys = %q, %v, want the acme worker's one", keys, err)
	}
	if j, err := d.Get(t.Context(), "beta-2"); err != nil || j.State != api.StateQueued {
		t.Fatalf("beta-2 = %s, %v, want still queued (no beta worker)", j.State, err)
	}
	// The only refusal the worker may have met is its attempt to create acme's consumer
	// before the control plane had: anything else means the doc's list misses a permission.
	expected := strings.ToLower(`publish to "$JS.API.CONSUMER.CREATE.CASTELLAN_JOBS_acme.echo.`)
	for _, e := range logs.All() {
		text := strings.ToLower(fmt.Sprint(e.Message, " ", e.ContextMap()))
		if strings.Contains(text, "permission") && !strings.Contains(text, expected) {
			t.Fatalf("worker-acme logged %q: a documented permission is missing", text)
		}
	}

	// (2) Each request or subscription below, on its own worker-acme connection, must be
	// refused by the server for that subject. The allowed counterparts first: they must
	// answer, so a check that cannot tell the two apart fails here.
	allowed := []struct{ name, subj, body string }{
		{"look up acme's consumer", "$JS.API.CONSUMER.INFO.CASTELLAN_JOBS_acme.echo", ""},
		{"read acme's cancel key", "$JS.API.DIRECT.GET.KV_castellan_cancel.$KV.castellan_cancel.acme.acme-block", ""},
	}
	for _, tt := range allowed {
		t.Run("allowed/"+tt.name, func(t *testing.T) {
			t.Parallel()
			c := connectAs(t, url, acmeUser, acmePassword)
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			m, err := c.nc.RequestWithContext(ctx, tt.subj, []byte(tt.body))
			if err != nil || c.violation("publish", tt.subj) {
				t.Fatalf("request %s as %s = %v (async errors %v), want an answer", tt.subj, acmeUser, err, c.errors())
			}
			if st := m.Header.Get("Status"); st != "" {
				t.Fatalf("request %s as %s = status %s %s, want the message", tt.subj, acmeUser, st, m.Header.Get("Description"))
			}
		})
	}
	// A body cannot widen an allowed direct get to another key: the server refuses it.
	t.Run("allowed/direct get with a sequence in the body", func(t *testing.T) {
		t.Parallel()
		c := connectAs(t, url, acmeUser, acmePassword)
		subj := "$JS.API.DIRECT.GET.KV_castellan_cancel.$KV.castellan_cancel.acme.acme-block"
		for _, body := range []string{`{"seq":1}`, `{"last_by_subj":"$KV.castellan_cancel.beta.beta-1"}`} {
			m, err := c.nc.Request(subj, []byte(body), 10*time.Second)
			if err != nil {
				t.Fatalf("request %s %s = %v", subj, body, err)
			}
			if m.Header.Get("Status") == "" || m.Header.Get("Nats-Subject") != "" {
				t.Fatalf("request %s %s = a message on %q, want a refusal status", subj, body, m.Header.Get("Nats-Subject"))
			}
		}
	})

	denied := []struct {
		name, op, subj string
	}{
		{"pull from beta's consumer", "publish", "$JS.API.CONSUMER.MSG.NEXT.CASTELLAN_JOBS_beta.echo"},
		{"look up beta's consumer", "publish", "$JS.API.CONSUMER.INFO.CASTELLAN_JOBS_beta.echo"},
		{"ack beta's job", "publish", "$JS.ACK.CASTELLAN_JOBS_beta.echo.1.2.2.1700000000000000000.0"},
		{"publish beta's results", "publish", "castellan.results.beta"},
		{"claim beta's jobs", "publish", "castellan.claims.beta"},
		{"dead-letter into beta", "publish", "castellan.dead.beta.echo"},
		{"enqueue a job", "publish", "castellan.jobs.acme.echo"},
		{"write castellan_jobs", "publish", "$KV.castellan_jobs.acme-1"},
		{"read castellan_jobs", "publish", "$JS.API.DIRECT.GET.KV_castellan_jobs.$KV.castellan_jobs.acme-1"},
		{"read beta's cancel key", "publish", "$JS.API.DIRECT.GET.KV_castellan_cancel.$KV.castellan_cancel.beta.beta-1"},
		{"read any cancel key by body", "publish", "$JS.API.DIRECT.GET.KV_castellan_cancel"},
		{"read any cancel key via the stream", "publish", "$JS.API.STREAM.MSG.GET.KV_castellan_cancel"},
		{"write a cancel key", "publish", "$KV.castellan_cancel.acme.acme-2"},
		{"write beta's catalog", "publish", "$KV.castellan_catalog.beta.w1"},
		{"write beta's presence", "publish", "$KV.castellan_workers.beta.w1"},
		{"read the workers' presence", "publish", "$JS.API.STREAM.MSG.GET.KV_castellan_workers"},
		{"write its own catalog unchecked", "publish", "$KV.castellan_catalog.acme.w1"},
		{"publish beta's catalog", "publish", "castellan.catalog.beta"},
		{"read the tokens", "publish", "$JS.API.STREAM.MSG.GET.KV_castellan_tokens"},
		{"create a stream", "publish", "$JS.API.STREAM.CREATE.EVIL"},
		{"update acme's stream", "publish", "$JS.API.STREAM.UPDATE.CASTELLAN_JOBS_acme"},
		{"delete acme's stream", "publish", "$JS.API.STREAM.DELETE.CASTELLAN_JOBS_acme"},
		{"purge acme's stream", "publish", "$JS.API.STREAM.PURGE.CASTELLAN_JOBS_acme"},
		{"create a consumer", "publish", "$JS.API.CONSUMER.CREATE.CASTELLAN_JOBS_acme.evil.castellan.jobs.acme.echo"},
		{"create a durable consumer", "publish", "$JS.API.CONSUMER.DURABLE.CREATE.CASTELLAN_JOBS_acme.evil"},
		{"create a consumer on beta", "publish", "$JS.API.CONSUMER.CREATE.CASTELLAN_JOBS_beta"},
		{"delete acme's consumer", "publish", "$JS.API.CONSUMER.DELETE.CASTELLAN_JOBS_acme.echo"},
		{"snoop on job envelopes", "subscription", "castellan.jobs.>"},
		{"snoop on results", "subscription", "castellan.results.>"},
		{"watch the cancel bucket", "subscription", "$KV.castellan_cancel.>"},
		{"watch job state", "subscription", "$KV.castellan_jobs.>"},
		// "_INBOX.>" would be every reply in the account: other pools' pulled jobs, the
		// control plane's reads of job records with their approvals.
		{"read the account's replies", "subscription", "_INBOX.>"},
		{"read the control plane's replies", "subscription", "_INBOX.*"},
	}
	for _, tt := range denied {
		t.Run("denied/"+tt.name, func(t *testing.T) {
			t.Parallel()
			c := connectAs(t, url, acmeUser, acmePassword)
			var reply *nats.Subscription
			if tt.op == "subscription" {
				if _, err := c.nc.SubscribeSync(tt.subj); err != nil {
					t.Fatal(err)
				}
			} else {
				inbox := c.nc.NewInbox()
				var err error
				if reply, err = c.nc.SubscribeSync(inbox); err != nil {
					t.Fatal(err)
				}
				if err := c.nc.PublishRequest(tt.subj, inbox, []byte(`{"batch":1}`)); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.nc.Flush(); err != nil {
				t.Fatal(err)
			}
			poll(t, 10*time.Second, fmt.Sprintf("a permissions violation for %s to %s", tt.op, tt.subj), func() bool {
				return c.violation(tt.op, tt.subj)
			})
			if reply != nil {
				if m, err := reply.NextMsg(0); err == nil {
					t.Fatalf("%s %s as %s was answered %q, want no answer", tt.op, tt.subj, acmeUser, m.Data)
				}
			}
		})
	}
	t.Cleanup(func() {
		// After every refusal above: nothing of beta's moved.
		if j, err := d.Get(context.Background(), "beta-2"); err != nil || j.State != api.StateQueued {
			t.Errorf("beta-2 after the refused calls = %s, %v, want queued", j.State, err)
		}
		if j, err := d.Get(context.Background(), "acme-1"); err != nil || j.State != api.StateSucceeded {
			t.Errorf("acme-1 after the refused writes = %s, %v, want succeeded", j.State, err)
		}
	})
}

// TestWorkerOwnInbox: a program that embeds natsq and makes its own connection, with the
// pool's inbox prefix, needs subscribe permission on that prefix only: it runs its pool's
// jobs, and cannot subscribe to the account's other replies.
func TestWorkerOwnInbox(t *testing.T) {
	t.Parallel()
	url, d := startAccountsControlPlane(t)
	s := newSigner(t)
	tok, _, err := approval.Sign(s.key, approval.Request{JobID: "acme-1", Task: "echo", TaskVersion: "1.0.0", Pool: "acme",
		Input: []byte(`{"n":1}`), MaxAttempts: 1, Approver: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Dispatch(t.Context(), natsq.Envelope{JobID: "acme-1", Task: "echo", TaskVersion: "1.0.0", Pool: "acme",
		Input: json.RawMessage(`{"n":1}`), Approval: tok, MaxAttempts: 1}); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var asyncErrs []error
	nc, err := nats.Connect(url, nats.UserInfo(acmeInboxUser, acmePassword), nats.CustomInboxPrefix(acmeInboxPrefix),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			asyncErrs = append(asyncErrs, err)
			mu.Unlock()
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	q, err := natsq.NewWorkerQueue(t.Context(), nc, natsq.Options{Pool: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	c := newCounter()
	w, err := worker.New(worker.Config{Client: q, Runner: c.echo(), Catalog: catalog,
		Verifier:    approval.NewVerifier(s.trusted, approval.NewMemoryReplayStore()),
		Concurrency: 1, LeaseWait: time.Second, Heartbeat: 100 * time.Millisecond,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lease, stopLease := context.WithCancel(context.Background())
	jobs, cancelJobs := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(lease, jobs) }()
	t.Cleanup(func() { stopLease(); cancelJobs(); <-done })
	waitState(t, d, "acme-1", 20*time.Second, api.StateSucceeded)
	mu.Lock()
	if len(asyncErrs) > 0 {
		t.Errorf("worker with inbox prefix %s: asynchronous errors %v, want none", acmeInboxPrefix, asyncErrs)
	}
	mu.Unlock()

	snoop := connectAs(t, url, acmeInboxUser, acmePassword)
	if _, err := snoop.nc.SubscribeSync("_INBOX.>"); err != nil {
		t.Fatal(err)
	}
	poll(t, 10*time.Second, "a permissions violation for a subscription to _INBOX.>", func() bool {
		return snoop.violation("subscription", "_INBOX.>")
	})
}

package metrics_test

// One scripted run of the whole stack with every observability feature on: a control plane
// and a worker on loopback, the committed crm-lookup module calling the demo CRM with a
// known test token, approvals signed with a real key. Afterwards the test checks that the
// metrics match what happened, that the span tree links submit → approve → lease → job →
// verify/run → http → complete, that both audit logs verify, and that no form of any test
// secret reached a log line, an audit file or the control plane's database files.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/examples"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/democrm"
	"github.com/castellan-dev/castellan/internal/logging"
	"github.com/castellan-dev/castellan/internal/metrics"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/tasks"
	"github.com/castellan-dev/castellan/internal/tracing"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/runtime"
	"github.com/castellan-dev/castellan/secrets"
)

const (
	crmToken = "e2e-crm-token-7Hq2vN9xLp4ZsW1k" // the credential the worker injects
	pool     = "default"
)

// lockedBuffer collects log lines from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.b.Bytes())
}

type e2e struct {
	dir         string
	logs        *lockedBuffer
	reg         *prometheus.Registry
	spans       *tracetest.SpanRecorder
	workerKey   ed25519.PrivateKey
	serverKey   ed25519.PrivateKey
	bearers     []string           // every bearer token created, also test secrets
	jobs        map[string]api.Job // by input customer id
	workerAudit *audit.Log
	serverAudit *audit.Log
	dbPath      string
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// run performs the scripted run: jobs for customers 42 and 7 (found), 999 (not found: the
// CRM answers 404) and one job whose approval does not verify.
func run(t *testing.T) *e2e {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	e := &e2e{dir: t.TempDir(), logs: &lockedBuffer{}, reg: prometheus.NewRegistry(),
		spans: tracetest.NewSpanRecorder(), jobs: map[string]api.Job{}}
	tp := tracing.NewSDKProvider(e.spans, "castellan-test")
	var err error
	_, e.workerKey, err = ed25519.GenerateKey(nil)
	must(t, err)
	_, e.serverKey, err = ed25519.GenerateKey(nil)
	must(t, err)

	red := redact.NewSet()
	must(t, red.Add(crmToken))
	log, err := logging.New(e.logs, logging.Options{Level: "debug", Format: "json", Scrub: red})
	must(t, err)

	// The CRM and the policy.
	crmURL, stopCRM, err := democrm.Start(ctx, crmToken)
	must(t, err)
	defer stopCRM()
	tokenFile := filepath.Join(e.dir, "crm-token")
	module := filepath.Join(e.dir, "crm-lookup.wasm")
	must(t, os.WriteFile(tokenFile, []byte(crmToken+"\n"), 0o600))
	must(t, os.WriteFile(module, examples.CRMLookupWasm, 0o644))
	for _, f := range []string{"input.schema.json", "output.schema.json"} {
		b, err := os.ReadFile(filepath.Join("../../examples/crm-lookup", f))
		must(t, err)
		must(t, os.WriteFile(filepath.Join(e.dir, f), b, 0o644))
	}
	pol := strings.NewReplacer("{{.TokenFile}}", tokenFile, "{{.CRMURL}}", crmURL, "{{.Module}}", module).Replace(examples.DemoPolicy)
	polPath := filepath.Join(e.dir, "policy.yaml")
	must(t, os.WriteFile(polPath, []byte(pol), 0o644))

	// The control plane.
	e.dbPath = filepath.Join(e.dir, "cp.db")
	e.serverAudit, err = audit.Open(audit.Options{Path: filepath.Join(e.dir, "server-audit.jsonl"), Key: e.serverKey, CheckpointEvery: 5, Scrub: red})
	must(t, err)
	sm, err := metrics.NewServer(e.reg)
	must(t, err)
	srv, err := server.New(ctx, server.Config{DBPath: e.dbPath, LeaseTTL: 5 * time.Second, ReapInterval: 100 * time.Millisecond,
		Logger: log.Named("server"), Audit: e.serverAudit, Metrics: sm, Tracer: tp})
	must(t, err)
	must(t, metrics.RegisterJobGauge(e.reg, func(ctx context.Context) (map[string]int, error) {
		c, err := srv.Store().Count(ctx)
		out := map[string]int{}
		for st, n := range c.Jobs {
			out[string(st)] = n
		}
		return out, err
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	srvDone := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(srvDone) }()
	base := "http://" + ln.Addr().String()
	newClient := func(role api.Role) *client.Client {
		tok, err := srv.Store().CreateToken(context.Background(), role, pool, string(role), time.Now())
		must(t, err)
		e.bearers = append(e.bearers, tok.Secret)
		c, err := client.New(base, tok.Secret)
		must(t, err)
		return c
	}

	// The worker.
	p, err := policy.Load(polPath)
	must(t, err)
	store, err := secrets.NewStore(p.Credentials, p.Vault, red, log.Named("secrets"))
	must(t, err)
	engine, err := runtime.NewEngine(runtime.Config{Logger: log.Named("sandbox")})
	must(t, err)
	defer engine.Close(context.Background())
	wm, err := metrics.NewWorker(e.reg)
	must(t, err)
	wt := tracing.NewWorker(tp)
	e.workerAudit, err = audit.Open(audit.Options{Path: filepath.Join(e.dir, "worker-audit.jsonl"), Key: e.workerKey,
		CheckpointEvery: 4, MaxBytes: 2048, Scrub: red})
	must(t, err)
	httpSink := tasks.LogAudit(log.Named("audit"))
	set, err := tasks.Load(ctx, tasks.Options{Policy: p, Engine: engine, Secrets: store, Redactor: red, Log: log,
		Audit: func(ev egress.Event) {
			httpSink(ev)
			if err := e.workerAudit.Append(audit.HTTPCall(ev)); err != nil {
				t.Errorf("audit Append(http_call) = %v", err)
			}
			wm.HTTPCall(ev)
			wt.HTTPCall(ev)
		}})
	must(t, err)
	defer set.Close(context.Background())
	schema, err := os.ReadFile(filepath.Join(e.dir, "input.schema.json"))
	must(t, err)
	catalog := []api.TaskDef{{Name: "crm-lookup", Version: "1.0.0", InputSchema: schema}}
	approverPriv, approverPub, err := approval.GenerateKey("approver-1")
	must(t, err)
	v := approval.NewVerifier(&jose.JSONWebKeySet{Keys: []jose.JSONWebKey{approverPub}}, approval.NewMemoryReplayStore())
	w, err := worker.New(worker.Config{Client: newClient(api.RoleWorker), Runner: set, Catalog: catalog, Verifier: v,
		Concurrency: 2, LeaseWait: time.Second, Heartbeat: time.Second, BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Log: log.Named("worker"), Audit: e.workerAudit, Observer: multi{wm, wt}})
	must(t, err)
	lease, stopLease := context.WithCancel(ctx)
	workerDone := make(chan error, 1)
	go func() { workerDone <- w.Run(lease, ctx) }()

	submitter, approver := newClient(api.RoleClient), newClient(api.RoleApprover)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := submitter.Catalog(ctx, pool)
		if err == nil && len(c.Tasks) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for the worker's catalog")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stranger, _, err := approval.GenerateKey("approver-1") // a trusted kid, another key
	must(t, err)
	for _, id := range []string{"42", "7", "999", "1"} {
		in := `{"customer_id":"` + id + `"}`
		j, err := submitter.Submit(ctx, api.SubmitRequest{Task: "crm-lookup", Pool: pool, Input: json.RawMessage(in), MaxAttempts: 1})
		must(t, err)
		key := approverPriv
		if id == "1" {
			key = stranger
		}
		tok, _, err := approval.Sign(key, approval.Request{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool,
			Input: []byte(in), MaxAttempts: j.MaxAttempts, Approver: "alice"})
		must(t, err)
		_, err = approver.Approve(ctx, j.ID, tok)
		must(t, err)
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		done, err := submitter.Wait(wctx, j.ID)
		wcancel()
		must(t, err)
		e.jobs[id] = done
	}
	stopLease()
	must(t, <-workerDone)
	cancel()
	<-srvDone
	must(t, e.workerAudit.Close())
	must(t, e.serverAudit.Close())
	must(t, srv.Close())
	return e
}

// multi fans a worker event out to several observers.
type multi []worker.Observer

func (m multi) Observe(ctx context.Context, ev worker.Event) context.Context {
	for _, o := range m {
		ctx = o.Observe(ctx, ev)
	}
	return ctx
}

func TestScriptedRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole stack: skipped with -short")
	}
	t.Parallel()
	e := run(t)

	want := map[string]string{"42": "succeeded", "7": "succeeded", "999": "failed", "1": "rejected"}
	for id, st := range want {
		if got := e.jobs[id]; string(got.State) != st {
			t.Fatalf("job for customer %s = %s (%s: %s), want %s", id, got.State, got.Outcome, got.ErrorMessage, st)
		}
	}

	t.Run("metrics", func(t *testing.T) {
		// The registry after the run must equal what a scrape of the listener returned.
		counters := []struct {
			name, labels string
			want         float64
		}{
			{"castellan_jobs_total", `{outcome="ok",task="crm-lookup"}`, 2},
			{"castellan_jobs_total", `{outcome="task_error",task="crm-lookup"}`, 1},
			{"castellan_jobs_total", `{outcome="rejected",task="crm-lookup"}`, 1},
			{"castellan_http_calls_total", `{decision="allow",endpoint="crm"}`, 3},
			{"castellan_denials_total", `{reason="approval_bad_signature"}`, 1},
			{"castellan_approvals_total", `{result="verified"}`, 3},
			{"castellan_jobs_in_flight", ``, 0},
			{"castellan_free_slots", ``, 2},
			{"castellan_server_jobs_submitted_total", `{task="crm-lookup"}`, 4},
			{"castellan_server_jobs_approved_total", `{task="crm-lookup"}`, 4},
			{"castellan_server_leases_total", `{task="crm-lookup"}`, 4},
			{"castellan_server_jobs_completed_total", `{state="succeeded",task="crm-lookup"}`, 2},
			{"castellan_server_jobs_completed_total", `{state="failed",task="crm-lookup"}`, 1},
			{"castellan_server_jobs_completed_total", `{state="rejected",task="crm-lookup"}`, 1},
			{"castellan_job_duration_seconds_count", `{task="crm-lookup"}`, 4},
			{"castellan_queue_wait_seconds_count", ``, 4},
			{"castellan_sandbox_instantiate_seconds_count", ``, 3}, // the refused job never ran
		}
		got := scrapeValues(t, e.reg)
		for _, c := range counters {
			if v, ok := got[c.name+c.labels]; !ok || v != c.want {
				t.Errorf("metric %s%s = %v (present %v), want %v", c.name, c.labels, v, ok, c.want)
			}
		}
	})

	t.Run("spans", func(t *testing.T) {
		spans := e.spans.Ended()
		byID := map[string]string{}
		for _, s := range spans {
			byID[s.SpanContext().SpanID().String()] = s.Name()
		}
		tree := map[string][]string{} // trace id → "parent>child" edges
		for _, s := range spans {
			edge := byID[s.Parent().SpanID().String()] + ">" + s.Name()
			tree[s.SpanContext().TraceID().String()] = append(tree[s.SpanContext().TraceID().String()], edge)
			for _, a := range s.Attributes() {
				if strings.Contains(a.Value.Emit(), "http://") || strings.Contains(a.Value.Emit(), "/api/") {
					t.Errorf("span %s attribute %s = %q: holds a URL or path", s.Name(), a.Key, a.Value.Emit())
				}
			}
		}
		if len(tree) != 4 {
			t.Fatalf("traces = %d, want one per job (4): %v", len(tree), tree)
		}
		wantOK := []string{">submit", "submit>approve", "submit>lease", "submit>job crm-lookup", "job crm-lookup>verify",
			"job crm-lookup>run", "run>http crm", "submit>complete"}
		okTraces := 0
		for _, edges := range tree {
			if len(edges) == len(wantOK) && containsAll(edges, wantOK) {
				okTraces++
			}
		}
		if okTraces != 3 { // 42, 7 and 999 ran and called the CRM once each
			t.Errorf("traces with the full submit→approve→lease→job(verify, run→http)→complete tree = %d, want 3: %v", okTraces, tree)
		}
	})

	t.Run("audit", func(t *testing.T) {
		for _, tt := range []struct {
			glob    string
			key     ed25519.PrivateKey
			minRecs int
		}{
			{"worker-audit.jsonl*", e.workerKey, 4*3 + 3*2 + 3},
			{"server-audit.jsonl*", e.serverKey, 4 * 4},
		} {
			files, _ := filepath.Glob(filepath.Join(e.dir, tt.glob))
			rep, err := audit.VerifyFiles(files, tt.key.Public().(ed25519.PublicKey))
			if err != nil || rep.Records-rep.Checkpoints < tt.minRecs || rep.Unsealed != 0 {
				t.Errorf("VerifyFiles(%s) = %d records (%d checkpoints, %d unsealed), %v; want ≥%d sealed records",
					tt.glob, rep.Records, rep.Checkpoints, rep.Unsealed, err, tt.minRecs)
			}
		}
	})

	t.Run("no secret anywhere", func(t *testing.T) {
		secrets := append([]string{crmToken}, e.bearers...)
		var forms []string
		for _, s := range secrets {
			forms = append(forms, redact.Forms(s)...)
		}
		artefacts := map[string][]byte{"logs": e.logs.Bytes()}
		files, _ := filepath.Glob(filepath.Join(e.dir, "*audit.jsonl*"))
		dbs, _ := filepath.Glob(e.dbPath + "*") // the database, its WAL and shared memory
		for _, f := range append(files, dbs...) {
			b, err := os.ReadFile(f)
			must(t, err)
			artefacts[filepath.Base(f)] = b
		}
		if len(files) < 3 || len(dbs) == 0 || !bytes.Contains(artefacts["logs"], []byte("http call")) {
			t.Fatalf("artefacts = %d audit files, %d database files, logs with http calls %v; want a rotated worker log, the database and logged calls",
				len(files), len(dbs), bytes.Contains(artefacts["logs"], []byte("http call")))
		}
		for name, b := range artefacts {
			for _, f := range forms {
				if bytes.Contains(b, []byte(f)) {
					t.Errorf("%s holds a form of a test secret (%d bytes long)", name, len(f))
				}
			}
		}
	})
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			if h == w {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// scrapeValues reads every sample of g as name{labels} → value, through the text format a
// scrape returns.
func scrapeValues(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- metrics.ServeListener(ctx, ln, g) }()
	defer func() { cancel(); <-done }()
	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	must(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	must(t, err)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		var v float64
		if err := json.Unmarshal([]byte(line[i+1:]), &v); err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out
}

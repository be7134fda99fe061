package server

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/outcome"
)

func TestHappyPath(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()

	j := e.submit(ctx, 7, false)
	if j.State != api.StatePendingApproval || j.TaskVersion != "1" || j.MaxAttempts != 3 {
		t.Fatalf("Submit() = state %s version %q max %d, want pending_approval 1 3", j.State, j.TaskVersion, j.MaxAttempts)
	}
	if jobs, err := e.worker.Lease(ctx, 5, 0); err != nil || len(jobs) != 0 {
		t.Fatalf("Lease before approval = %d jobs, %v; want 0", len(jobs), err)
	}
	approval := fakeJWS(j.ID)
	if j, err := e.approver.Approve(ctx, j.ID, approval); err != nil || j.State != api.StateQueued {
		t.Fatalf("Approve() = %s, %v; want queued", j.State, err)
	}
	lj := e.leaseOne(ctx, e.worker)
	if lj.JobID != j.ID || lj.Attempt != 1 || lj.Approval != approval || string(lj.Input) != `{"n":7}` ||
		lj.Task != "echo" || lj.Pool != "alpha" || !lj.LeaseExpiresAt.Equal(e.clock.Now().Add(60*time.Second)) {
		t.Fatalf("Lease() = %+v, want job %s attempt 1 with its approval and input", lj, j.ID)
	}
	if st := e.state(ctx, j.ID); st != api.StateRunning {
		t.Fatalf("state after lease = %s, want running", st)
	}
	e.clock.Advance(30 * time.Second)
	hb, err := e.worker.Heartbeat(ctx, lj.LeaseToken)
	if err != nil || hb.CancelRequested || !hb.LeaseExpiresAt.Equal(e.clock.Now().Add(60*time.Second)) {
		t.Fatalf("Heartbeat() = %+v, %v; want extended lease, no cancel", hb, err)
	}
	res, err := e.worker.Complete(ctx, j.ID, api.CompleteRequest{LeaseToken: lj.LeaseToken, Attempt: 1,
		Outcome: string(outcome.OK), Output: json.RawMessage(`{"n": 7}`), DurationMS: 12, ModuleDigest: "sha256:abc"})
	if err != nil || res.State != api.StateSucceeded {
		t.Fatalf("Complete() = %+v, %v; want succeeded", res, err)
	}
	got, err := e.client.WaitOnce(ctx, j.ID, time.Second)
	if err != nil || got.State != api.StateSucceeded || string(got.Output) != `{"n":7}` || got.DurationMS != 12 ||
		got.ModuleDigest != "sha256:abc" || got.Outcome != "ok" || got.FinishedAt == nil {
		t.Fatalf("Wait() = %+v, %v; want succeeded with output", got, err)
	}
	audit, err := e.admin.Audit(ctx, client.AuditOptions{JobID: j.ID})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, a := range audit.Entries {
		actions = append(actions, a.Action)
	}
	if got, want := strings.Join(actions, ","), "job.complete,job.lease,job.approve,job.submit"; got != want {
		t.Fatalf("Audit(job) actions = %s, want %s", got, want)
	}
}

func TestSchemaInvalidInputRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	before := e.snapshot()
	for _, tc := range []struct {
		input, loc, msg string
	}{
		{`{"n":"seven"}`, "/n", "want integer"},
		{`{}`, "", "missing property 'n'"},
		{`{"n":1,"url":"http://10.0.0.1/"}`, "", "additional properties 'url'"},
	} {
		_, err := e.client.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(tc.input)})
		wantCode(t, "Submit("+tc.input+")", err, 400, api.CodeInputInvalid)
		ae := err.(*client.APIError)
		if len(ae.Details) == 0 || ae.Details[0].Location != tc.loc || !strings.Contains(ae.Details[0].Message, tc.msg) ||
			!strings.Contains(ae.Message, tc.msg) {
			t.Errorf("Submit(%s) = %q %+v, want location %q and message containing %q", tc.input, ae.Message, ae.Details, tc.loc, tc.msg)
		}
	}
	if after := e.snapshot(); after != before {
		t.Fatalf("refused submits changed the database:\n%s\nwant\n%s", after, before)
	}
}

func TestIdempotency(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	req := api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{"n":1}`), IdempotencyKey: "order-42"}
	first, err := e.client.Submit(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	req.Input = json.RawMessage(`{ "n" : 1 }`) // same JSON, other whitespace
	second, err := e.client.Submit(ctx, req)
	if err != nil || second.ID != first.ID {
		t.Fatalf("Submit(same key, same body) = %s, %v; want %s", second.ID, err, first.ID)
	}
	req.Input = json.RawMessage(`{"n":2}`)
	_, err = e.client.Submit(ctx, req)
	wantCode(t, "Submit(same key, other body)", err, 409, api.CodeIdempotency)
	if n := e.count(`SELECT COUNT(*) FROM jobs`); n != 1 {
		t.Fatalf("jobs in DB = %d, want 1", n)
	}

	// The raw status distinguishes creation (201) from replay (200).
	body := `{"task":"echo","pool":"alpha","input":{"n":1},"idempotency_key":"order-42"}`
	status, _ := rawRequest(t, e, "client", http.MethodPost, "/v1/jobs", body)
	if status != http.StatusOK {
		t.Fatalf("replayed submit status = %d, want 200", status)
	}
}

func TestLeaseFencing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	j := e.submit(ctx, 1, true)
	lj := e.leaseOne(ctx, e.worker)
	ok := api.CompleteRequest{LeaseToken: lj.LeaseToken, Attempt: 1, Outcome: "ok", Output: json.RawMessage(`{}`)}

	stale := ok
	stale.LeaseToken = "lease_" + strings.Repeat("A", 43)
	_, err := e.worker.Complete(ctx, j.ID, stale)
	wantCode(t, "Complete(stale token)", err, 409, api.CodeLeaseConflict)

	wrongAttempt := ok
	wrongAttempt.Attempt = 2
	_, err = e.worker.Complete(ctx, j.ID, wrongAttempt)
	wantCode(t, "Complete(wrong attempt)", err, 409, api.CodeLeaseConflict)

	if _, err := e.worker.Complete(ctx, j.ID, ok); err != nil {
		t.Fatalf("Complete(current lease) = %v", err)
	}
	dup := ok
	dup.Outcome = "task_error"
	_, err = e.worker.Complete(ctx, j.ID, dup)
	wantCode(t, "Complete(duplicate)", err, 409, api.CodeLeaseConflict)

	if n := e.count(`SELECT COUNT(*) FROM job_attempts WHERE job_id = ? AND finished_at IS NOT NULL`, j.ID); n != 1 {
		t.Fatalf("recorded results = %d, want 1", n)
	}
	if n := e.count(`SELECT COUNT(*) FROM audit WHERE action = 'job.complete' AND job_id = ?`, j.ID); n != 1 {
		t.Fatalf("completion audit entries = %d, want 1", n)
	}
	if st := e.state(ctx, j.ID); st != api.StateSucceeded {
		t.Fatalf("state = %s, want succeeded (the duplicate must not change it)", st)
	}
}

func TestLeaseExpiryReleasesAndFencesLateWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	j := e.submit(ctx, 1, true)
	first := e.leaseOne(ctx, e.worker)

	e.clock.Advance(61 * time.Second)
	if n, err := e.s.reap(ctx); err != nil || n != 1 {
		t.Fatalf("reap() = %d, %v; want 1", n, err)
	}
	if st := e.state(ctx, j.ID); st != api.StateQueued {
		t.Fatalf("state after expiry = %s, want queued", st)
	}
	second := e.leaseOne(ctx, e.worker)
	if second.JobID != j.ID || second.Attempt != 2 || second.LeaseToken == first.LeaseToken {
		t.Fatalf("re-lease = job %s attempt %d, want %s attempt 2 with a new token", second.JobID, second.Attempt, j.ID)
	}
	_, err := e.worker.Heartbeat(ctx, first.LeaseToken)
	wantCode(t, "Heartbeat(expired lease)", err, 409, api.CodeLeaseLost)
	_, err = e.worker.Complete(ctx, j.ID, api.CompleteRequest{LeaseToken: first.LeaseToken, Attempt: 1, Outcome: "ok"})
	wantCode(t, "Complete(late first worker)", err, 409, api.CodeLeaseConflict)
	if _, err := e.worker.Complete(ctx, j.ID, api.CompleteRequest{LeaseToken: second.LeaseToken, Attempt: 2, Outcome: "ok"}); err != nil {
		t.Fatalf("Complete(second lease) = %v", err)
	}
	if n := e.count(`SELECT COUNT(*) FROM job_attempts WHERE job_id = ?`, j.ID); n != 2 {
		t.Fatalf("attempt rows = %d, want 2", n)
	}
	if n := e.count(`SELECT COUNT(*) FROM job_attempts WHERE job_id = ? AND attempt = 1 AND end_reason = 'lease_expired'`, j.ID); n != 1 {
		t.Fatalf("attempt 1 not recorded as lease_expired")
	}
}

func TestRetryBackoffAndDead(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	j := e.submit(ctx, 1, true)

	// Jitter returns its max in tests: attempt 1 waits base (1s), attempt 2 waits 2s.
	for attempt := 1; attempt <= 3; attempt++ {
		lj := e.leaseOne(ctx, e.worker)
		if lj.Attempt != attempt {
			t.Fatalf("lease attempt = %d, want %d", lj.Attempt, attempt)
		}
		res, err := e.worker.Complete(ctx, j.ID, api.CompleteRequest{LeaseToken: lj.LeaseToken, Attempt: attempt,
			Outcome: string(outcome.Timeout), ErrorMessage: "upstream slow"})
		if err != nil {
			t.Fatal(err)
		}
		if attempt == 3 {
			if res.State != api.StateDead {
				t.Fatalf("Complete(last attempt, retryable) = %s, want dead", res.State)
			}
			break
		}
		wantDelay := time.Second << (attempt - 1)
		if res.State != api.StateQueued || res.NotBefore == nil || !res.NotBefore.Equal(e.clock.Now().Add(wantDelay)) {
			t.Fatalf("Complete(attempt %d, retryable) = %+v, want queued not_before now+%s", attempt, res, wantDelay)
		}
		if jobs, err := e.worker.Lease(ctx, 1, 0); err != nil || len(jobs) != 0 {
			t.Fatalf("Lease before not_before = %d jobs, %v; want none", len(jobs), err)
		}
		e.clock.Advance(wantDelay)
	}
	got, _ := e.admin.Get(ctx, j.ID)
	if got.State != api.StateDead || got.Attempt != 3 || got.Outcome != "timeout" || got.ErrorMessage != "upstream slow" {
		t.Fatalf("Get() = %+v, want dead after 3 attempts", got)
	}
}

func TestTerminalOutcomes(t *testing.T) {
	t.Parallel()
	f := false
	tr := true
	for _, tc := range []struct {
		name      string
		outcome   outcome.Code
		retryable *bool
		want      api.State
	}{
		{"task error is final", outcome.TaskError, nil, api.StateFailed},
		{"rejected approval", outcome.Rejected, nil, api.StateRejected},
		{"internal marked non-retryable", outcome.Internal, &f, api.StateFailed},
		{"denied marked retryable", outcome.Denied, &tr, api.StateQueued},
		{"timeout defaults to retry", outcome.Timeout, nil, api.StateQueued},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			ctx := t.Context()
			j := e.submit(ctx, 1, true)
			lj := e.leaseOne(ctx, e.worker)
			res, err := e.worker.Complete(ctx, j.ID, api.CompleteRequest{LeaseToken: lj.LeaseToken, Attempt: 1,
				Outcome: string(tc.outcome), Retryable: tc.retryable})
			if err != nil || res.State != tc.want {
				t.Fatalf("Complete(%s) = %s, %v; want %s", tc.outcome, res.State, err, tc.want)
			}
		})
	}
}

func TestReaperExhaustedAttemptsIsDead(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	j, err := e.client.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{"n":1}`),
		MaxAttempts: 1, Approval: fakeJWS("x")})
	if err != nil {
		t.Fatal(err)
	}
	e.leaseOne(ctx, e.worker)
	e.clock.Advance(2 * time.Minute)
	if _, err := e.s.reap(ctx); err != nil {
		t.Fatal(err)
	}
	if st := e.state(ctx, j.ID); st != api.StateDead {
		t.Fatalf("state after last lease expired = %s, want dead", st)
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()

	pending := e.submit(ctx, 1, false)
	if j, err := e.client.Cancel(ctx, pending.ID); err != nil || j.State != api.StateCancelled {
		t.Fatalf("Cancel(pending) = %s, %v; want cancelled", j.State, err)
	}
	_, err := e.client.Cancel(ctx, pending.ID)
	wantCode(t, "Cancel(cancelled)", err, 409, api.CodeInvalidState)
	_, err = e.approver.Approve(ctx, pending.ID, fakeJWS("x"))
	wantCode(t, "Approve(cancelled)", err, 409, api.CodeInvalidState)

	running := e.submit(ctx, 2, true)
	lj := e.leaseOne(ctx, e.worker)
	if j, err := e.client.Cancel(ctx, running.ID); err != nil || j.State != api.StateCancelRequested {
		t.Fatalf("Cancel(running) = %s, %v; want cancel_requested", j.State, err)
	}
	hb, err := e.worker.Heartbeat(ctx, lj.LeaseToken)
	if err != nil || !hb.CancelRequested {
		t.Fatalf("Heartbeat(cancel requested) = %+v, %v; want cancel_requested true", hb, err)
	}
	res, err := e.worker.Complete(ctx, running.ID, api.CompleteRequest{LeaseToken: lj.LeaseToken, Attempt: 1, Outcome: "cancelled"})
	if err != nil || res.State != api.StateCancelled {
		t.Fatalf("Complete(after cancel) = %s, %v; want cancelled", res.State, err)
	}
	_, err = e.worker.Heartbeat(ctx, lj.LeaseToken)
	wantCode(t, "Heartbeat(cancelled job)", err, 409, api.CodeJobCancelled)

	// A worker that never answers: the reaper finishes the cancellation.
	silent := e.submit(ctx, 3, true)
	lj = e.leaseOne(ctx, e.worker)
	if _, err := e.client.Cancel(ctx, silent.ID); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(61 * time.Second)
	if _, err := e.s.reap(ctx); err != nil {
		t.Fatal(err)
	}
	if st := e.state(ctx, silent.ID); st != api.StateCancelled {
		t.Fatalf("state after cancel_requested lease expired = %s, want cancelled", st)
	}
}

func TestLongPollWakesOnApproval(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.RecheckInterval = time.Hour }) // only the broadcast can wake it
	ctx := t.Context()
	j := e.submit(ctx, 1, false)

	type result struct {
		jobs []api.LeasedJob
		err  error
		took time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		jobs, err := e.worker.Lease(ctx, 1, 30*time.Second)
		done <- result{jobs, err, time.Since(start)}
	}()
	eventually(t, "the lease request to park", func() bool { return e.s.cp.Parked() == 1 })
	if _, err := e.approver.Approve(ctx, j.ID, fakeJWS("x")); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || len(r.jobs) != 1 || r.jobs[0].JobID != j.ID {
		t.Fatalf("parked Lease() = %v, %v; want job %s", r.jobs, r.err, j.ID)
	}
	if r.took > 10*time.Second {
		t.Fatalf("parked Lease() took %s, want prompt wake-up", r.took)
	}

	// Wait wakes on completion the same way.
	waited := make(chan api.Job, 1)
	go func() {
		got, _ := e.client.WaitOnce(ctx, j.ID, 30*time.Second)
		waited <- got
	}()
	if _, err := e.worker.Complete(ctx, j.ID, api.CompleteRequest{LeaseToken: r.jobs[0].LeaseToken, Attempt: 1, Outcome: "ok"}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-waited:
		if got.State != api.StateSucceeded {
			t.Fatalf("Wait() = %s, want succeeded", got.State)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait() did not return after completion")
	}
}

func TestLeaseWaitElapsesEmpty(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	jobs, err := e.worker.Lease(t.Context(), 1, time.Second)
	if err != nil || len(jobs) != 0 {
		t.Fatalf("Lease(idle, 1s) = %d jobs, %v; want 0, nil", len(jobs), err)
	}
}

func TestRestartKeepsState(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg := Config{DBPath: dir + "/cp.db", Now: clock.Now}
	start := func() (*Server, string, func()) {
		s, err := New(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		served := make(chan error, 1)
		go func() { served <- s.Serve(ctx, ln) }()
		return s, "http://" + ln.Addr().String(), func() {
			cancel()
			if err := <-served; err != nil {
				t.Errorf("Serve() = %v", err)
			}
			if err := s.Close(); err != nil {
				t.Errorf("Close() = %v", err)
			}
		}
	}
	s, url, stop := start()
	secrets := map[api.Role]string{}
	tok := func(role api.Role, pool string) *client.Client {
		tk, err := s.Store().CreateToken(t.Context(), role, pool, "", clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		secrets[role] = tk.Secret
		c, _ := client.New(url, tk.Secret)
		return c
	}
	cl, wk := tok(api.RoleClient, "alpha"), tok(api.RoleWorker, "alpha")
	ctx := t.Context()
	if _, err := wk.Register(ctx, api.RegisterRequest{Name: "w"}); err != nil {
		t.Fatal(err)
	}
	if _, err := wk.PublishCatalog(ctx, []api.TaskDef{echoTask()}); err != nil {
		t.Fatal(err)
	}
	a, _ := cl.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{"n":1}`), Approval: fakeJWS("a"), IdempotencyKey: "k1"})
	b, _ := cl.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{"n":2}`)})
	leased, err := wk.Lease(ctx, 1, 0)
	if err != nil || len(leased) != 1 {
		t.Fatalf("Lease() = %v, %v", leased, err)
	}
	stop()

	// Same file, new process state: tokens, jobs, leases and idempotency survive.
	_, url2, stop2 := start()
	defer stop2()
	cl2, _ := client.New(url2, secrets[api.RoleClient])
	wk2, _ := client.New(url2, secrets[api.RoleWorker])
	if j, err := cl2.Get(ctx, a.ID); err != nil || j.State != api.StateRunning || j.Attempt != 1 {
		t.Fatalf("Get(a) after restart = %s/%d, %v; want running/1", j.State, j.Attempt, err)
	}
	if j, err := cl2.Get(ctx, b.ID); err != nil || j.State != api.StatePendingApproval {
		t.Fatalf("Get(b) after restart = %s, %v; want pending_approval", j.State, err)
	}
	if j, err := cl2.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(`{"n":1}`), Approval: leased[0].Approval, IdempotencyKey: "k1"}); err != nil || j.ID != a.ID {
		t.Fatalf("Submit(replay) after restart = %s, %v; want %s", j.ID, err, a.ID)
	}
	if _, err := wk2.Complete(ctx, a.ID, api.CompleteRequest{LeaseToken: leased[0].LeaseToken, Attempt: 1, Outcome: "ok"}); err != nil {
		t.Fatalf("Complete(lease from before restart) = %v", err)
	}
}

func TestThousandJobsThreeWorkersExactlyOnce(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("slow")
	}
	// This test is about exactly-once under concurrency, not the disk: put the database on
	// tmpfs when there is one, so 1,000 fsyncs do not dominate the suite's run time.
	e := newEnv(t, func(c *Config) { c.Now = time.Now; c.DBPath = memDir(t) + "/cp.db" })
	ctx := t.Context()
	const total = 1000
	// Seed through SQL in one transaction: the submit path has its own tests, and 1,000
	// API submits dominate the run time under -race. Leasing and completing go through
	// the API, which is what this test is about.
	now := time.Now().UnixMilli()
	err := e.s.store.tx(ctx, func(tx *sqlTx) error {
		for i := range total {
			if _, err := tx.ExecContext(ctx, `INSERT INTO jobs(id, task, task_version, pool, input, approval, state, max_attempts,
				request_hash, submitted_by, created_at, updated_at) VALUES (?, 'echo', '1', 'alpha', ?, ?, 'queued', 3, x'00', 'test', ?, ?)`,
				api.NewJobID(), `{"n":`+strconv.Itoa(i)+`}`, fakeJWS("x"), now, now); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var completed atomic.Int64
	errs := make(chan error, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for completed.Load() < total {
				jobs, err := e.worker.Lease(ctx, 10, time.Second)
				if err != nil {
					errs <- err
					return
				}
				for _, j := range jobs {
					if _, err := e.worker.Complete(ctx, j.JobID, api.CompleteRequest{LeaseToken: j.LeaseToken,
						Attempt: j.Attempt, Outcome: "ok", Output: j.Input}); err != nil {
						errs <- err
						return
					}
					completed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("worker: %v", err)
	}
	if n := e.count(`SELECT COUNT(*) FROM jobs WHERE state = 'succeeded' AND attempt = 1`); n != total {
		t.Fatalf("succeeded jobs = %d, want %d", n, total)
	}
	if n := e.count(`SELECT COUNT(*) FROM job_attempts WHERE finished_at IS NOT NULL`); n != total {
		t.Fatalf("recorded results = %d, want %d", n, total)
	}
	if n := e.count(`SELECT COUNT(*) FROM audit WHERE action = 'job.complete'`); n != total {
		t.Fatalf("completion audits = %d, want %d", n, total)
	}
	if completed.Load() != total {
		t.Fatalf("completions acknowledged = %d, want %d", completed.Load(), total)
	}
}

func TestAutoApprove(t *testing.T) {
	t.Parallel()
	ap := &fakeApprover{}
	e := newEnv(t, func(c *Config) { c.AutoApprover = ap; c.AutoApproveTasks = []string{"echo"} })
	ctx := t.Context()
	j := e.submit(ctx, 5, false)
	if j.State != api.StateQueued || !j.HasApproval {
		t.Fatalf("Submit(auto-approved task) = %s approval=%v, want queued with approval", j.State, j.HasApproval)
	}
	lj := e.leaseOne(ctx, e.worker)
	if lj.Approval != fakeJWS(j.ID) {
		t.Fatalf("leased approval = %q, want the auto-approver's token", lj.Approval)
	}
	ap.mu.Lock()
	defer ap.mu.Unlock()
	if ap.last.JobID != j.ID || ap.last.Task != "echo" || ap.last.TaskVersion != "1" || string(ap.last.Input) != `{"n":5}` {
		t.Fatalf("auto-approver got %+v, want the job's subject", ap.last)
	}
}

type fakeApprover struct {
	mu   sync.Mutex
	last ApprovalSubject
}

func (a *fakeApprover) Approve(_ context.Context, j ApprovalSubject) (string, error) {
	a.mu.Lock()
	a.last = j
	a.mu.Unlock()
	return fakeJWS(j.JobID), nil
}

func TestSchemaMigrationsRecorded(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	v, err := e.s.Store().SchemaVersion(t.Context())
	if err != nil || v != len(migrations) {
		t.Fatalf("SchemaVersion() = %d, %v; want %d", v, err, len(migrations))
	}
	// Reopening applies nothing twice.
	st, err := OpenStore(t.Context(), e.dbPath)
	if err != nil {
		t.Fatalf("OpenStore(again) = %v", err)
	}
	defer st.Close()
	if n := e.count(`SELECT COUNT(*) FROM schema_migrations`); n != len(migrations) {
		t.Fatalf("schema_migrations rows = %d, want %d", n, len(migrations))
	}
}

// memDir returns a fresh directory on /dev/shm if it exists, else t.TempDir().
func memDir(t *testing.T) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "castellan-test-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

func TestPoolAndCatalogScoping(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	other := api.TaskDef{Name: "other", Version: "1", InputSchema: json.RawMessage(`{}`)}
	betaWorker := e.newWorker("beta-worker", "beta", echoTask())
	narrow := e.newWorker("narrow", "alpha", other) // same pool, does not run echo
	betaClient := e.newClient("beta-client", api.RoleClient, "beta")

	j := e.submit(ctx, 1, true)
	for name, w := range map[string]*client.Client{"other pool": betaWorker, "task not in catalog": narrow} {
		if jobs, err := w.Lease(ctx, 10, 0); err != nil || len(jobs) != 0 {
			t.Fatalf("Lease(%s) = %d jobs, %v; want none", name, len(jobs), err)
		}
	}
	if _, err := betaClient.Get(ctx, j.ID); !client.IsCode(err, api.CodeNotFound) {
		t.Fatalf("Get(other pool's job) = %v, want not_found", err)
	}
	list, err := betaClient.List(ctx, client.ListOptions{})
	if err != nil || len(list.Jobs) != 0 {
		t.Fatalf("List(beta client) = %d jobs, %v; want 0", len(list.Jobs), err)
	}
	list, err = e.admin.List(ctx, client.ListOptions{Pool: "alpha", State: api.StateQueued})
	if err != nil || len(list.Jobs) != 1 || list.Jobs[0].ID != j.ID || list.Jobs[0].Input != nil {
		t.Fatalf("List(admin, alpha, queued) = %+v, %v; want job %s without input", list.Jobs, err, j.ID)
	}
	// Catalogs are per pool: beta's echo is not alpha's.
	cat, err := betaClient.Catalog(ctx, "")
	if err != nil || cat.Pool != "beta" || len(cat.Tasks) != 1 || cat.Tasks[0].Name != "echo" {
		t.Fatalf("Catalog(beta) = %+v, %v; want beta with echo", cat, err)
	}
	lj := e.leaseOne(ctx, e.worker)
	if _, err := betaWorker.Complete(ctx, lj.JobID, api.CompleteRequest{LeaseToken: lj.LeaseToken, Attempt: 1, Outcome: "ok"}); !client.IsCode(err, api.CodeNotFound) {
		t.Fatalf("Complete(from other pool with the right lease) = %v, want not_found", err)
	}
	// Revoked tokens stop working at once.
	toks, err := e.admin.ListTokens(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range toks {
		if tk.Name == "beta-client" {
			if err := e.admin.RevokeToken(ctx, tk.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := betaClient.List(ctx, client.ListOptions{}); !client.IsCode(err, api.CodeUnauthenticated) {
		t.Fatalf("List(revoked token) = %v, want unauthenticated", err)
	}
}

func TestListPagination(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	var want []string
	for i := range 5 {
		want = append([]string{e.submit(ctx, i, false).ID}, want...) // newest first
	}
	var got []string
	cursor := ""
	for range 10 {
		page, err := e.client.List(ctx, client.ListOptions{Limit: 2, Cursor: cursor})
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range page.Jobs {
			got = append(got, j.ID)
		}
		if cursor = page.NextCursor; cursor == "" {
			break
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("paged List() = %v, want %v", got, want)
	}
}

func TestTokenAPIAndStorage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	tk, err := e.admin.CreateToken(ctx, api.TokenCreateRequest{Role: api.RoleClient, Pool: "alpha", Name: "ci"})
	if err != nil || !strings.HasPrefix(tk.Secret, "cst_") || len(tk.Secret) != 4+43 {
		t.Fatalf("CreateToken() = %+v, %v; want a cst_ token of 47 chars", tk, err)
	}
	// Only the hash is stored: the secret appears nowhere in the database.
	if strings.Contains(e.snapshot(), tk.Secret) || strings.Contains(e.snapshot(), tk.Secret[4:]) {
		t.Fatal("the token secret is stored in the database")
	}
	toks, _ := e.admin.ListTokens(ctx)
	for _, x := range toks {
		if x.Secret != "" {
			t.Fatalf("ListTokens() returned a secret for %s", x.ID)
		}
	}
	c, _ := client.New(e.url, tk.Secret)
	if _, err := c.List(ctx, client.ListOptions{}); err != nil {
		t.Fatalf("List(new token) = %v", err)
	}
	if n := e.count(`SELECT COUNT(*) FROM audit WHERE action = 'token.create'`); n != 1 {
		t.Fatalf("token.create audits = %d, want 1", n)
	}
}

// TestLeaseBoundToItsWorker: a second worker of the same pool, with its own token, holds
// the lease token another worker was handed (a leak, a shared log, a hostile peer). It can
// neither extend that lease nor complete its job; the worker that took it still can.
func TestLeaseBoundToItsWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	other := e.newWorker("worker-2", "alpha", echoTask())
	j := e.submit(ctx, 1, true)
	lj := e.leaseOne(ctx, e.worker)
	before := e.snapshot()

	_, err := other.Heartbeat(ctx, lj.LeaseToken)
	wantCode(t, "Heartbeat(another worker's lease)", err, 409, api.CodeLeaseLost)
	_, err = other.Complete(ctx, j.ID, api.CompleteRequest{LeaseToken: lj.LeaseToken, Attempt: lj.Attempt,
		Outcome: "ok", Output: json.RawMessage(`{"forged":true}`)})
	wantCode(t, "Complete(another worker's lease)", err, 409, api.CodeLeaseConflict)
	if after := e.snapshot(); after != before {
		t.Fatalf("a refused heartbeat or completion changed the store:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	if _, err := e.worker.Heartbeat(ctx, lj.LeaseToken); err != nil {
		t.Fatalf("Heartbeat(own lease) = %v", err)
	}
	if _, err := e.worker.Complete(ctx, j.ID, api.CompleteRequest{LeaseToken: lj.LeaseToken, Attempt: lj.Attempt, Outcome: "ok",
		Output: json.RawMessage(`{}`)}); err != nil {
		t.Fatalf("Complete(own lease) = %v", err)
	}
	got, err := e.admin.Get(ctx, j.ID)
	if err != nil || got.State != api.StateSucceeded || string(got.Output) != `{}` {
		t.Fatalf("job = %s output %s, %v; want succeeded with the owner's output", got.State, got.Output, err)
	}
}

// TestDenyIsAudited: a deny is in the audit table with the reason and who denied, and in
// the tamper-evident log as job_denied.
func TestDenyIsAudited(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	j := e.submit(ctx, 1, false)
	d, err := e.approver.Deny(ctx, j.ID, "no refunds on Fridays")
	if err != nil || d.State != api.StateDenied || d.DeniedBy != "approver" {
		t.Fatalf("Deny() = %+v, %v", d, err)
	}
	l, err := e.admin.Audit(ctx, client.AuditOptions{JobID: j.ID, Action: "job.deny"})
	if err != nil || len(l.Entries) != 1 {
		t.Fatalf("Audit(job.deny) = %+v, %v, want one entry", l.Entries, err)
	}
	var detail map[string]string
	if err := json.Unmarshal(l.Entries[0].Detail, &detail); err != nil || detail["reason"] != "no refunds on Fridays" ||
		detail["denied_by"] != "approver" || l.Entries[0].Role != string(api.RoleApprover) {
		t.Fatalf("audit entry = %+v (%v), want the reason and the approver", l.Entries[0], err)
	}
}

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/examples"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// BenchmarkProcesses measures what a user meets, with real processes on loopback, in both
// control-plane modes: the castellan binary (built by TestMain) as `castellan server`
// ("http": SQLite; "nats": --nats, against nats-server with JetStream as a process of its
// own, built from the module's nats-server version), `castellan democrm` and one `castellan
// worker --concurrency 32` running the shipped crm-lookup example (Go), jobs auto-approved
// by the server at submit. The benchmark process is the client.
//
//   - latency: one job at a time, submit to readable result (the result read by a wait on
//     the job); p50/p90/p99 in ms, and the same percentiles of a direct GET to the CRM from
//     this process in the same run (the floor); the phases of each job from its record;
//   - phases (nats only): latency again with this process subscribed to every subject of
//     the NATS server, so that each step of a job (record written, envelope published,
//     delivered to the worker, claimed, granted, result published, acknowledged, recorded)
//     is timed on one clock, and the messages and JetStream API requests per job counted;
//   - throughput-c32: b.N jobs from 32 clients at once; jobs/s, the direct GET at the same
//     concurrency as the floor, and the CPU time each process spent per job;
//   - memory (in throughput-c32): the worker's VmRSS (read from /proc) before the burst and
//     polled for 10 s after it: rss-base-MiB, rss-peak-MiB, rss-10s-MiB, and rss-back-s,
//     the seconds until it was within 1.2x of its baseline (-1: not within 10 s).
//
// Run (a few times, the machine is noisy):
//
//	go test -run '^$' -bench Processes -benchtime 2000x ./internal/e2e/
//	go test -run '^$' -bench Processes/nats -benchtime 2000x ./internal/e2e/
//
// JetStream runs with nats-server's defaults: file storage, fsync every two minutes
// (sync_interval), as a default deployment does.
//
// CASTELLAN_BENCH_BIN runs another castellan binary (an older commit's, to compare in the
// same window) in place of the one TestMain built. CASTELLAN_BENCH_PROFILE=DIR has every
// castellan process write a CPU profile (--cpu-profile) to DIR/<mode>-<command>.prof; the
// processes are then stopped with SIGTERM so that they write it:
//
//	go tool pprof -top castellan DIR/nats-worker.prof
func BenchmarkProcesses(b *testing.B) {
	exe := bin
	if other := os.Getenv("CASTELLAN_BENCH_BIN"); other != "" {
		exe = other
	}
	for _, mode := range []string{"http", "nats"} {
		b.Run(mode, func(b *testing.B) { benchProcesses(b, startProcs(b, exe, mode)) })
	}
}

func benchProcesses(b *testing.B, h *procs) {
	crmGet := func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, "GET", h.crmURL+"/api/customers/42", nil)
		req.Header.Set("Authorization", "Bearer "+crmToken)
		resp, err := h.http.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Body.Close()
	}
	job := func(ctx context.Context) error {
		j, err := h.client.Submit(ctx, api.SubmitRequest{Task: "crm-lookup", Pool: pool, Input: json.RawMessage(`{"customer_id":"42"}`)})
		if err != nil {
			return err
		}
		j, err = h.client.Wait(ctx, j.ID)
		if err != nil {
			return err
		}
		if j.State != api.StateSucceeded {
			return fmt.Errorf("job %s ended %s (%s)", j.ID, j.State, j.Outcome)
		}
		return nil
	}
	// Warm up: the worker's pool, connections, the SQLite caches.
	for range 20 {
		if err := job(b.Context()); err != nil {
			b.Fatal(err)
		}
	}

	// one runs a job and returns the client's times: submit called, submit returned, wait
	// returned, with the job as the wait returned it.
	one := func(b *testing.B) (t0, ts, t1 time.Time, j api.Job) {
		t0 = time.Now()
		j, err := h.client.Submit(b.Context(), api.SubmitRequest{Task: "crm-lookup", Pool: pool, Input: json.RawMessage(`{"customer_id":"42"}`)})
		if err != nil {
			b.Fatal(err)
		}
		ts = time.Now()
		if j, err = h.client.Wait(b.Context(), j.ID); err != nil || j.State != api.StateSucceeded || j.FinishedAt == nil {
			b.Fatalf("job %s: %v %s %s", j.ID, err, j.State, j.Outcome)
		}
		return t0, ts, time.Now(), j
	}

	b.Run("latency", func(b *testing.B) {
		var jobs, direct, submit, dispatch, task, wake []time.Duration
		for b.Loop() {
			t0, ts, t1, j := one(b)
			if err := crmGet(b.Context()); err != nil {
				b.Fatal(err)
			}
			jobs, direct = append(jobs, t1.Sub(t0)), append(direct, time.Since(t1))
			// Where the time goes, from the job record (same host clock): the submit call;
			// from the job's creation to its recorded result, less the task's own run (lease
			// wake-up, approval check, report); the task's run on the worker; from the
			// recorded result to the wait returning it.
			run := time.Duration(j.DurationMS) * time.Millisecond
			submit = append(submit, ts.Sub(t0))
			dispatch = append(dispatch, j.FinishedAt.Sub(j.CreatedAt)-run)
			task = append(task, run)
			wake = append(wake, t1.Sub(*j.FinishedAt))
		}
		reportPercentiles(b, "job", jobs)
		reportPercentiles(b, "crm", direct)
		for name, ds := range map[string][]time.Duration{"submit": submit, "dispatch": dispatch, "task": task, "wait-wake": wake} {
			reportMedian(b, name, ds)
		}
	})

	if h.natsURL != "" {
		b.Run("phases", func(b *testing.B) { natsPhases(b, h, one) })
	}

	b.Run("throughput-c32", func(b *testing.B) {
		base := h.rss(b)
		var peak atomic.Int64
		stopPeak := make(chan struct{})
		go func() {
			for {
				select {
				case <-stopPeak:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if r := h.rssBytes(); r > peak.Load() {
					peak.Store(r)
				}
			}
		}()
		cpu0 := h.cpu()
		b.ResetTimer()
		jobsPerSec := concurrently(b, 32, b.N, job)
		b.StopTimer()
		cpu1 := h.cpu()
		close(stopPeak)
		b.ReportMetric(jobsPerSec, "jobs/s")
		// Where the CPU goes: each process's user+system time per job (10 ms ticks, so
		// meaningful over a few hundred jobs or more).
		for name, t := range cpu1 {
			if t0, ok := cpu0[name]; ok && t >= 0 && t0 >= 0 {
				b.ReportMetric(float64((t-t0).Microseconds())/1000/float64(b.N), name+"-cpu-ms/job")
			}
		}
		b.ReportMetric(concurrently(b, 32, b.N, crmGet), "crm-req/s")

		// Memory comes back: poll the worker's RSS for 10 s.
		start, back := time.Now(), -1.0
		var last int64
		for time.Since(start) < 10*time.Second {
			last = h.rssBytes()
			if back < 0 && float64(last) <= 1.2*float64(base) {
				back = time.Since(start).Seconds()
			}
			time.Sleep(100 * time.Millisecond)
		}
		mib := func(n int64) float64 { return float64(n) / (1 << 20) }
		b.ReportMetric(mib(base), "rss-base-MiB")
		b.ReportMetric(mib(max(peak.Load(), last)), "rss-peak-MiB")
		b.ReportMetric(mib(last), "rss-10s-MiB")
		b.ReportMetric(back, "rss-back-s")
	})
}

func reportMedian(b *testing.B, name string, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, name+"-p50-ms")
}

// concurrently runs n calls of f from c goroutines and returns calls per second.
func concurrently(b *testing.B, c, n int, f func(context.Context) error) float64 {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, c)
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := f(b.Context()); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	return float64(n) / elapsed.Seconds()
}

func reportPercentiles(b *testing.B, name string, ds []time.Duration) {
	slices.Sort(ds)
	at := func(p float64) float64 {
		i := min(int(p*float64(len(ds))), len(ds)-1)
		return float64(ds[i].Microseconds()) / 1000
	}
	b.ReportMetric(at(0.50), name+"-p50-ms")
	b.ReportMetric(at(0.90), name+"-p90-ms")
	b.ReportMetric(at(0.99), name+"-p99-ms")
}

// procs are the processes of BenchmarkProcesses.
type procs struct {
	crmURL  string
	natsURL string // "" in HTTP mode
	http    *http.Client
	client  *client.Client
	worker  *exec.Cmd
	cmds    map[string]*exec.Cmd // every process but this one, by role, for their CPU time
}

// cpu is the CPU time of every process by role ("client" is this one).
func (h *procs) cpu() map[string]time.Duration {
	out := map[string]time.Duration{"client": cpuTime(os.Getpid())}
	for name, c := range h.cmds {
		out[name] = cpuTime(c.Process.Pid)
	}
	return out
}

// cpuTime is the user plus system CPU time process pid has used, from /proc (Linux), or
// -1 where that cannot be read.
func cpuTime(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// Fields after the command name (which may hold spaces) start at state, field 3;
	// utime and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return -1
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(u+st) * 10 * time.Millisecond
}

// rssBytes is the worker's resident set (VmRSS), or 0 when it cannot be read.
func (h *procs) rssBytes() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", h.worker.Process.Pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func (h *procs) rss(b *testing.B) int64 {
	r := h.rssBytes()
	if r == 0 {
		b.Skip("no /proc/PID/status: the worker's memory cannot be read here")
	}
	return r
}

// startProcs starts the processes of mode "http" (server on SQLite) or "nats" (nats-server,
// server --nats) and returns when a first job has succeeded.
func startProcs(b *testing.B, bin, mode string) *procs {
	b.Helper()
	dir := b.TempDir()
	h := &procs{cmds: map[string]*exec.Cmd{}}
	var store []string // where tokens and jobs live
	if mode == "nats" {
		var ns *exec.Cmd
		h.natsURL, ns = startNATSServer(b, dir)
		h.cmds["nats-server"] = ns
		store = []string{"--nats", h.natsURL}
	} else {
		store = []string{"--db", filepath.Join(dir, "cp.db")}
	}
	tokens := map[api.Role]string{}
	for _, role := range []api.Role{api.RoleWorker, api.RoleClient} {
		if role == api.RoleWorker && mode == "nats" {
			// A NATS worker authenticates to NATS (here an open server), not to the API.
			tokens[role] = "unused-by-an-open-nats-server"
		} else {
			args := append(append([]string{"token", "create"}, store...), "--role", string(role), "--pool", pool, "--name", string(role))
			out, err := exec.Command(bin, args...).Output()
			if err != nil {
				b.Fatalf("token create: %v", err)
			}
			tokens[role] = strings.TrimSpace(string(out))
		}
		if err := os.WriteFile(filepath.Join(dir, string(role)+".token"), []byte(tokens[role]+"\n"), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		b.Fatal(err)
	}
	priv, pub, err := approval.WriteKeyFiles(filepath.Join(dir, "keys"), "auto")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "crm-token"), []byte(crmToken), 0o600); err != nil {
		b.Fatal(err)
	}
	crmURL, crm := background(b, bin, mode, "demo CRM listening on ", "democrm", "--listen", "127.0.0.1:0", "--token-file", filepath.Join(dir, "crm-token"))
	crmURL, _, _ = strings.Cut(crmURL, " ")
	srvURL, srv := background(b, bin, mode, "castellan server listening on ", append(append([]string{"server"}, store...), "--listen", "127.0.0.1:0",
		"--auto-approve-key", priv, "--auto-approve-tasks", "crm-lookup")...)
	h.crmURL, h.cmds["crm"], h.cmds["server"] = crmURL, crm, srv

	files := map[string][]byte{"crm-lookup.wasm": examples.CRMLookupWasm}
	for _, s := range []string{"input.schema.json", "output.schema.json"} {
		c, err := os.ReadFile(filepath.Join("..", "..", "examples", "crm-lookup", s))
		if err != nil {
			b.Fatal(err)
		}
		files[s] = c
	}
	var pol bytes.Buffer
	if err := template.Must(template.New("p").Parse(examples.DemoPolicy)).Execute(&pol, map[string]string{
		"CRMURL": crmURL, "TokenFile": filepath.Join(dir, "crm-token"), "Module": filepath.Join(dir, "crm-lookup.wasm")}); err != nil {
		b.Fatal(err)
	}
	files["policy.yaml"] = pol.Bytes()
	for name, c := range files {
		if err := os.WriteFile(filepath.Join(dir, name), c, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	queue := []string{"--server", srvURL}
	if mode == "nats" {
		queue = []string{"--server", h.natsURL, "--pool", pool}
	}
	w := castellanCmd(bin, mode, append(append([]string{"worker"}, queue...), "--token-file", filepath.Join(dir, "worker.token"),
		"--policy", filepath.Join(dir, "policy.yaml"), "--trusted-keys", pub, "--state-dir", filepath.Join(dir, "state"),
		"--cache-dir", cacheDir, "--name", "bench", "--concurrency", "32", "--log-level", "warn")...)
	var werr syncBuffer
	w.Stderr = &werr
	if err := w.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stopProc(w) })
	h.worker, h.cmds["worker"] = w, w

	c, err := client.New(srvURL, tokens[api.RoleClient])
	if err != nil {
		b.Fatal(err)
	}
	// The worker is ready when a job submitted now succeeds.
	ctx, cancel := context.WithTimeout(b.Context(), 2*time.Minute)
	defer cancel()
	j, err := c.Submit(ctx, api.SubmitRequest{Task: "crm-lookup", Pool: pool, Input: json.RawMessage(`{"customer_id":"42"}`)})
	for err != nil && ctx.Err() == nil { // the catalog may not be published yet
		time.Sleep(50 * time.Millisecond)
		j, err = c.Submit(ctx, api.SubmitRequest{Task: "crm-lookup", Pool: pool, Input: json.RawMessage(`{"customer_id":"42"}`)})
	}
	if err != nil {
		b.Fatalf("first submit: %v\nworker: %s", err, werr.String())
	}
	if j, err = c.Wait(ctx, j.ID); err != nil || j.State != api.StateSucceeded {
		b.Fatalf("first job: %v %s %s\nworker: %s", err, j.State, j.Outcome, werr.String())
	}
	h.http = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	h.client = c
	return h
}

// natsServerBin is nats-server built from the module's version of it (the module cache:
// the version the tests embed, no download), once per test binary.
var natsServerBin = sync.OnceValues(func() (string, error) {
	out := filepath.Join(filepath.Dir(bin), "nats-server")
	if msg, err := exec.Command("go", "build", "-o", out, "github.com/nats-io/nats-server/v2").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build nats-server: %v\n%s", err, msg)
	}
	return out, nil
})

// startNATSServer runs nats-server with JetStream (file storage under dir, its defaults
// otherwise) as a process of its own, on a port it picks, and returns its URL when it is
// ready.
func startNATSServer(b *testing.B, dir string) (string, *exec.Cmd) {
	b.Helper()
	exe, err := natsServerBin()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-a", "127.0.0.1", "-p", "-1", "-js", "-sd", filepath.Join(dir, "jetstream"))
	errp, err := cmd.StderrPipe() // nats-server logs to stderr
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan string, 1)
	var logged syncBuffer
	go func() {
		sc := bufio.NewScanner(errp)
		url := ""
		for sc.Scan() {
			l := sc.Text()
			logged.Write([]byte(l + "\n"))
			if _, addr, ok := strings.Cut(l, "Listening for client connections on "); ok {
				url = "nats://" + strings.TrimSpace(addr)
			}
			if strings.Contains(l, "Server is ready") && url != "" {
				ready <- url
				break
			}
		}
		_, _ = io.Copy(io.Discard, errp)
	}()
	select {
	case url := <-ready:
		return url, cmd
	case <-time.After(30 * time.Second):
		b.Fatalf("nats-server was not ready within 30s:\n%s", logged.String())
		return "", nil
	}
}

// background starts a castellan process and returns the rest of the first stdout line that
// starts with prefix.
func background(b *testing.B, bin, mode, prefix string, args ...string) (string, *exec.Cmd) {
	b.Helper()
	cmd := castellanCmd(bin, mode, args...)
	var errb syncBuffer
	cmd.Stderr = &errb
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { stopProc(cmd) })
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), prefix); ok {
				found <- strings.TrimSpace(rest)
				break
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case s := <-found:
		return s, cmd
	case <-time.After(30 * time.Second):
		b.Fatalf("castellan %s printed no %q line within 30s:\n%s", args[0], prefix, errb.String())
		return "", nil
	}
}

// castellanCmd is bin with args, with a CPU profile to write to DIR/<mode>-<command>.prof
// when CASTELLAN_BENCH_PROFILE names a directory DIR.
func castellanCmd(bin, mode string, args ...string) *exec.Cmd {
	if dir := os.Getenv("CASTELLAN_BENCH_PROFILE"); dir != "" {
		args = append([]string{"--cpu-profile", filepath.Join(dir, mode+"-"+args[0]+".prof")}, args...)
	}
	return exec.Command(bin, args...)
}

// stopProc ends a process of the benchmark: SIGTERM and a wait of up to 30 s when it writes
// a profile (it does so at a clean exit), a kill otherwise.
func stopProc(cmd *exec.Cmd) {
	if os.Getenv("CASTELLAN_BENCH_PROFILE") != "" {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
			return
		case <-time.After(30 * time.Second):
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

package natsq_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/runtime"
)

// BenchmarkTransports runs b.N trivial jobs end to end through each transport, with 1 and 4
// workers (each running up to 8 jobs at once): sign the approval, submit or dispatch, lease,
// verify, run a native no-op task, report, and record the result. The metric is jobs/s;
// dispatch-s (NATS) is how long dispatching alone took, approvals signed included.
func BenchmarkTransports(b *testing.B) {
	noop := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		return runtime.Result{Output: in}
	})
	for _, workers := range []int{1, 4} {
		b.Run(fmt.Sprintf("http/workers=%d", workers), func(b *testing.B) { benchHTTP(b, workers, noop) })
		b.Run(fmt.Sprintf("nats/workers=%d", workers), func(b *testing.B) { benchNATS(b, startNATS(b).ClientURL(), 0, workers, noop) })
	}
}

// BenchmarkNATSServerProcess is the JetStream side of BenchmarkTransports with nats-server
// as a process of its own, as it is deployed, rather than embedded in the test process. Its
// extra metrics split the CPU time per job between the two processes.
func BenchmarkNATSServerProcess(b *testing.B) {
	noop := funcRunner(func(ctx context.Context, task, id string, in []byte) runtime.Result {
		return runtime.Result{Output: in}
	})
	for _, workers := range []int{1, 4} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			url, pid := startNATSProcess(b)
			benchNATS(b, url, pid, workers, noop)
		})
	}
}

// benchNATS runs b.N jobs through JetStream at url; natsPID, when not 0, is the server's
// process, whose CPU time is then reported too.
func benchNATS(b *testing.B, url string, natsPID, workers int, r worker.Runner) {
	s := newSigner(b)
	d, nc, _ := startDispatcher(b, url, natsq.Options{})
	for range workers {
		startWorker(b, url, s, r, natsq.Options{}, benchSlots)
	}
	// Warm up: streams, consumers and connections exist before the clock starts.
	warm := s.envelope(b, "warm", `{"n":0}`, 1)
	if _, err := d.Dispatch(b.Context(), warm); err != nil {
		b.Fatal(err)
	}
	waitState(b, d, "warm", 20*time.Second, api.StateSucceeded)
	// Approvals are signed by approvers on their own machines, not by the system under
	// test: sign them before the clock starts.
	ids, envs := signMany(b, s, fmt.Sprintf("bench%d", b.N), b.N)
	b.ResetTimer()
	start := time.Now()
	selfCPU, natsCPU := cpuTime(os.Getpid()), time.Duration(-1)
	if natsPID != 0 {
		natsCPU = cpuTime(natsPID)
	}
	if err := dispatchAll(d, envs); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(time.Since(start).Seconds(), "dispatch-s")
	// The dispatcher acknowledges a result only after recording it: when the results
	// consumer's ack floor covers every result, every job is recorded. One consumer-info
	// request per 10 ms instead of a read per job keeps the watcher's load off the clock.
	waitRecorded(b, nc, 1+b.N, 5*time.Minute)
	elapsed := time.Since(start)
	b.StopTimer()
	if selfCPU >= 0 {
		b.ReportMetric(float64((cpuTime(os.Getpid())-selfCPU).Microseconds())/float64(b.N), "process-cpu-µs/job")
	}
	if natsCPU >= 0 {
		b.ReportMetric(float64((cpuTime(natsPID)-natsCPU).Microseconds())/float64(b.N), "nats-server-cpu-µs/job")
	}
	waitAll(b, d, ids, time.Minute) // every job succeeded, once (checked off the clock)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
}

// waitRecorded waits until the dispatchers have recorded and acknowledged n results.
func waitRecorded(t testing.TB, nc *nats.Conn, n int, within time.Duration) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(within)
	for {
		c, err := js.Consumer(context.Background(), natsq.ResultsStream, natsq.ResultsConsumer)
		if err == nil {
			info := c.CachedInfo()
			if info.AckFloor.Stream >= uint64(n) && info.NumAckPending == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not all %d results recorded after %s (last error: %v)", n, within, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func benchHTTP(b *testing.B, workers int, r worker.Runner) {
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, server.Config{DBPath: filepath.Join(b.TempDir(), "cp.db"), LeaseTTL: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, ln); close(done) }()
	b.Cleanup(func() { cancel(); <-done; _ = srv.Close() })
	url := "http://" + ln.Addr().String()
	newClient := func(role api.Role) *client.Client {
		tok, err := srv.Store().CreateToken(context.Background(), role, pool, string(role), time.Now())
		if err != nil {
			b.Fatal(err)
		}
		c, err := client.New(url, tok.Secret)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	s := newSigner(b)
	for range workers {
		w, err := worker.New(worker.Config{Client: newClient(api.RoleWorker), Runner: r, Catalog: catalog,
			Verifier: approval.NewVerifier(s.trusted, approval.NewMemoryReplayStore()), Concurrency: 8, LeaseWait: time.Second,
			BackoffMin: 10 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		wctx, stop := context.WithCancel(context.Background())
		wdone := make(chan struct{})
		go func() { _ = w.Run(wctx, wctx); close(wdone) }()
		b.Cleanup(func() { stop(); <-wdone })
	}
	submitter, approver := newClient(api.RoleClient), newClient(api.RoleApprover)
	poll(b, 20*time.Second, "the catalog", func() bool {
		c, err := submitter.Catalog(context.Background(), pool)
		return err == nil && len(c.Tasks) > 0
	})
	b.ResetTimer()
	start := time.Now()
	ids := make([]string, b.N)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	var mu sync.Mutex
	next := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= b.N {
					return
				}
				in := fmt.Sprintf(`{"n":%d}`, i)
				j, err := submitter.Submit(context.Background(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(in), MaxAttempts: 3})
				if err == nil {
					var tok string
					tok, _, err = approval.Sign(s.key, approval.Request{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion,
						Pool: pool, Input: []byte(in), MaxAttempts: 3})
					if err == nil {
						_, err = approver.Approve(context.Background(), j.ID, tok)
					}
				}
				if err != nil {
					errs <- err
					return
				}
				ids[i] = j.ID
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	for _, id := range ids {
		wctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		j, err := submitter.Wait(wctx, id)
		cancel()
		if err != nil || j.State != api.StateSucceeded {
			b.Fatalf("Wait(%s) = %s, %v, want succeeded", id, j.State, err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
}

var benchSlots = 32

// natsServerBin is the nats-server binary built for the benchmarks, once per process.
var natsServerBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "castellan-bench-nats")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "nats-server")
	// The module the tests embed, built from the module cache: the same version, no download.
	out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build nats-server: %v\n%s", err, out)
	}
	return bin, nil
})

// startNATSProcess runs nats-server with JetStream as its own process, as it is deployed.
// The tests embed the server in the test process; a benchmark must not, because the server's
// allocations would then drive the garbage collector of the process being measured (one
// heap for server, control plane and workers collects far more often than three would).
func startNATSProcess(b *testing.B) (url string, pid int) {
	b.Helper()
	bin, err := natsServerBin()
	if err != nil {
		b.Fatal(err)
	}
	port := freePort(b)
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", b.TempDir())
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	url = fmt.Sprintf("nats://127.0.0.1:%d", port)
	poll(b, 20*time.Second, "nats-server to accept connections", func() bool {
		nc, err := nats.Connect(url)
		if err != nil {
			return false
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return false
		}
		_, err = js.AccountInfo(context.Background())
		return err == nil
	})
	return url, cmd.Process.Pid
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
	f := strings.Fields(string(data[i+1:]))
	if i < 0 || len(f) < 13 {
		return -1
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(u+s) * 10 * time.Millisecond
}

package natsq_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/runtime"
)

var _ worker.Queue = (*natsq.WorkerQueue)(nil)

const pool = "default"

var catalog = []api.TaskDef{{
	Name: "echo", Version: "1.0.0", Description: "echoes its input",
	InputSchema: json.RawMessage(`{"type":"object"}`),
}}

// startNATS runs one embedded JetStream server on a random loopback port.
func startNATS(t testing.TB) *natsserver.Server {
	t.Helper()
	s, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("the embedded NATS server did not start")
	}
	t.Cleanup(s.Shutdown)
	return s
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startCluster runs a JetStream cluster of n embedded servers and returns them and a
// client URL list naming all of them.
func startCluster(t testing.TB, n int) ([]*natsserver.Server, string) {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ports[i] = freePort(t)
	}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	servers := make([]*natsserver.Server, n)
	var urls []string
	for i := range n {
		opts := &natsserver.Options{
			ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: -1, JetStream: true,
			StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
			Cluster: natsserver.ClusterOpts{Name: "castellan", Host: "127.0.0.1", Port: ports[i]},
			Routes:  natsserver.RoutesFromStr(strings.Join(routes, ",")),
		}
		s, err := natsserver.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		servers[i] = s
		t.Cleanup(s.Shutdown)
	}
	for _, s := range servers {
		if !s.ReadyForConnections(20 * time.Second) {
			t.Fatal("an embedded cluster node did not start")
		}
		urls = append(urls, s.ClientURL())
	}
	url := strings.Join(urls, ",")
	nc := dial(t, url)
	poll(t, 30*time.Second, "a JetStream meta leader", func() bool {
		_, err := nc.Request("$JS.API.INFO", nil, time.Second)
		return err == nil && servers[0].JetStreamIsClustered() && metaReady(servers)
	})
	// A leader can be elected before it has seen every peer: placing an R-n stream then
	// fails with "no suitable peers". Wait until one can be placed.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	poll(t, 30*time.Second, fmt.Sprintf("all %d peers to take an R%d stream", n, n), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PROBE", Subjects: []string{"probe.>"}, Replicas: n}); err != nil {
			return false
		}
		return js.DeleteStream(ctx, "PROBE") == nil
	})
	return servers, url
}

func metaReady(servers []*natsserver.Server) bool {
	for _, s := range servers {
		if s.JetStreamIsLeader() {
			return true
		}
	}
	return false
}

func dial(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := natsq.Connect(url, natsq.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func poll(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// signer issues approvals the workers trust.
type signer struct {
	key     jose.JSONWebKey
	trusted *jose.JSONWebKeySet
}

func newSigner(t testing.TB) signer {
	t.Helper()
	priv, pub, err := approval.GenerateKey("approver-1")
	if err != nil {
		t.Fatal(err)
	}
	return signer{key: priv, trusted: &jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}}}
}

func (s signer) envelope(t testing.TB, id, input string, maxAttempts int) natsq.Envelope {
	t.Helper()
	tok, _, err := approval.Sign(s.key, approval.Request{JobID: id, Task: "echo", TaskVersion: "1.0.0", Pool: pool,
		Input: []byte(input), MaxAttempts: maxAttempts, Approver: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	return natsq.Envelope{JobID: id, Task: "echo", TaskVersion: "1.0.0", Pool: pool, Input: json.RawMessage(input),
		Approval: tok, MaxAttempts: maxAttempts}
}

// funcRunner is a native task whose behaviour the test decides.
type funcRunner func(ctx context.Context, task, jobID string, input []byte) runtime.Result

func (f funcRunner) Run(ctx context.Context, task, jobID string, input []byte) runtime.Result {
	return f(ctx, task, jobID, input)
}

// counter counts runs per job id.
type counter struct {
	mu   sync.Mutex
	runs map[string]int
}

func newCounter() *counter { return &counter{runs: map[string]int{}} }

func (c *counter) echo() funcRunner {
	return func(ctx context.Context, task, id string, in []byte) runtime.Result {
		c.mu.Lock()
		c.runs[id]++
		c.mu.Unlock()
		return runtime.Result{Output: in, Digest: "sha256:test"}
	}
}

func (c *counter) get(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[id]
}

// startDispatcher runs a dispatcher (with its result consumer) on its own connection.
func startDispatcher(t testing.TB, url string, o natsq.Options) (*natsq.Dispatcher, *nats.Conn, context.CancelFunc) {
	t.Helper()
	nc := dial(t, url)
	d, err := natsq.NewDispatcher(context.Background(), nc, o)
	// On an embedded cluster under load a route can miss a heartbeat, so a peer reads as
	// offline for a moment and placing a replicated stream fails with 10005 ("no suitable
	// peers"); the stream is placed once the route is back.
	for deadline := time.Now().Add(30 * time.Second); noPeers(err) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond) // the peer's return cannot be observed from here
		d, err = natsq.NewDispatcher(context.Background(), nc, o)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = d.Run(ctx, 0); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return d, nc, cancel
}

type running struct {
	w          *worker.Worker
	q          *natsq.WorkerQueue
	stopLease  context.CancelFunc
	cancelJobs context.CancelFunc
	done       chan error
}

// startWorker runs the real worker loop on the JetStream transport, on its own connection.
func startWorker(t testing.TB, url string, s signer, r worker.Runner, o natsq.Options, concurrency int) *running {
	t.Helper()
	o.Pool = pool
	q, err := natsq.DialWorker(context.Background(), url, o)
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{
		Client: q, Runner: r, Catalog: catalog, Verifier: approval.NewVerifier(s.trusted, approval.NewMemoryReplayStore()),
		Concurrency: concurrency, LeaseWait: time.Second, Heartbeat: 200 * time.Millisecond,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	lease, stopLease := context.WithCancel(context.Background())
	jobs, cancelJobs := context.WithCancel(context.Background())
	rw := &running{w: w, q: q, stopLease: stopLease, cancelJobs: cancelJobs, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(lease, jobs) }()
	t.Cleanup(func() {
		stopLease()
		cancelJobs()
		<-rw.done
		_ = q.Close()
	})
	return rw
}

func waitState(t testing.TB, d *natsq.Dispatcher, id string, within time.Duration, want api.State) api.Job {
	t.Helper()
	var j api.Job
	poll(t, within, fmt.Sprintf("job %s to be %s", id, want), func() bool {
		var err error
		j, err = d.Get(context.Background(), id)
		return err == nil && j.State == want
	})
	return j
}

// noPeers reports JetStream's 10005: no peer can take a replica of the stream now.
func noPeers(err error) bool {
	var jsErr jetstream.JetStreamError
	return errors.As(err, &jsErr) && jsErr.APIError() != nil && jsErr.APIError().ErrorCode == jetstream.ErrorCode(10005)
}

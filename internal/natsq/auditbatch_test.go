package natsq

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestAuditBatchesInterleaved: two writers (two control-plane replicas, each on its own
// connection) append hundreds of entries at once, so that each writes batches while the
// other moves the head under it. Every append returns only once stored, every entry is
// stored once, and the stream is one chain: each entry's prev_hash is the hash of the entry
// before it, whichever writer wrote either.
func TestAuditBatchesInterleaved(t *testing.T) {
	t.Parallel()
	ns := embeddedServer(t)
	var logs []*auditLog
	for range 2 {
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		a, err := newAuditLog(t.Context(), js, 1)
		if err != nil {
			t.Fatal(err)
		}
		logs = append(logs, a)
	}
	const each = 300
	var wg sync.WaitGroup
	errs := make(chan error, 2*each)
	for w, a := range logs {
		for i := range each {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := fmt.Sprintf("job_w%d_%d", w, i)
				errs <- a.append(t.Context(), api.AuditEntry{At: time.Now(), Actor: "test", Role: "client", Action: "job.submit", JobID: id})
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("append = %v", err)
		}
	}
	var chain api.AuditChain
	seen := map[string]int{}
	n := 0
	if err := walkAudit(context.Background(), logs[0].js, "", func(e api.AuditEntry) error {
		n++
		seen[e.JobID]++
		if err := chain.Add(e); err != nil {
			return fmt.Errorf("entry %d: %w", n, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != 2*each || len(seen) != 2*each {
		t.Fatalf("the stream holds %d entries for %d jobs, want %d each once", n, len(seen), 2*each)
	}
}

func embeddedServer(t *testing.T) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("the embedded NATS server did not start")
	}
	t.Cleanup(ns.Shutdown)
	return ns
}

// TestAuditHeadsOfOneWorkerAtOnce: results of one worker handled at once, their heads in
// any order, leave the furthest head recorded, each written one at a time (no write of the
// key is refused for another in flight).
func TestAuditHeadsOfOneWorkerAtOnce(t *testing.T) {
	t.Parallel()
	ns := embeddedServer(t)
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	d, err := NewDispatcher(t.Context(), nc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seq := uint64(n - i) // the furthest first, among others
			hash := fmt.Sprintf("%064x", seq)
			d.recordAuditHead(t.Context(), "default", Result{JobID: fmt.Sprintf("j%d", i), WorkerID: "w1"},
				nats.Header{AuditHeadHeader: []string{fmt.Sprintf("%d:%s", seq, hash)}})
		}()
	}
	wg.Wait()
	e, err := d.heads.Get(t.Context(), "default.w1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(e.Value()), fmt.Sprintf(`"seq":%d`, n)) {
		t.Fatalf("head recorded = %s, want seq %d", e.Value(), n)
	}
	if len(d.headsSeen.writing) != 0 {
		t.Fatalf("%d keys still marked as being written", len(d.headsSeen.writing))
	}
}

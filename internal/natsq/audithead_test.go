package natsq_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
)

// TestAuditHeadOverNATS: in NATS mode too the worker's audit head reaches the control plane
// with its results, is served to admins, and a copy of the log cut before it fails.
func TestAuditHeadOverNATS(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	s := newSigner(t)
	rep := startAPI(t, natsURL)
	_, key, _ := ed25519.GenerateKey(nil)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	alog, err := audit.Open(audit.Options{Path: path, Key: key, CheckpointEvery: 4, MaxBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer alog.Close()
	q, err := natsq.DialWorker(context.Background(), natsURL, natsq.Options{Pool: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	reg, err := q.Register(context.Background(), api.RegisterRequest{Name: "w", AgentVersion: "test"})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Client: q, Runner: newCounter().echo(), Catalog: catalog, Audit: alog,
		Verifier: approval.NewVerifier(s.trusted, approval.NewMemoryReplayStore()), Concurrency: 1, LeaseWait: time.Second,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lease, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(lease, context.Background()) }()
	defer func() { stop(); <-done }()

	submitter := apiClient(t, natsURL, rep.url, api.RoleClient, pool)
	approver := apiClient(t, natsURL, rep.url, api.RoleApprover, pool)
	_, admin := apiToken(t, natsURL, rep.url, api.RoleAdmin, "*")
	_, client := apiToken(t, natsURL, rep.url, api.RoleClient, pool)
	waitCatalog(t, submitter)
	// Reads of the heads bucket while results come in: the dispatcher writes from the head
	// it last wrote, so only the first result of the worker reads.
	obs := dial(t, natsURL)
	var headReads atomic.Int64
	if _, err := obs.Subscribe("$JS.API.DIRECT.GET.KV_"+natsq.AuditHeadsBucket+".>", func(*nats.Msg) { headReads.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := obs.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		in := fmt.Sprintf(`{"n":%d}`, i)
		j, err := submitter.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(in), MaxAttempts: 2})
		if err != nil {
			t.Fatal(err)
		}
		tok, _, err := approval.Sign(s.key, approval.Request{JobID: j.ID, Task: "echo", TaskVersion: j.TaskVersion, Pool: pool,
			Input: []byte(in), MaxAttempts: 2, Approver: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := approver.Approve(t.Context(), j.ID, tok); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		got, err := submitter.Wait(ctx, j.ID)
		cancel()
		if err != nil || got.State != api.StateSucceeded {
			t.Fatalf("job %d = %s, %v", i, got.State, err)
		}
	}
	if err := obs.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := headReads.Load(); n > 1 {
		t.Errorf("%d reads of the heads bucket for 5 results of one worker, want at most 1", n)
	}
	get := func(secret string) (int, api.WorkerAuditHead) {
		req, _ := http.NewRequest("GET", rep.url+"/v1/workers/"+reg.WorkerID+"/audit-head", nil)
		req.Header.Set("Authorization", "Bearer "+secret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var h api.WorkerAuditHead
		_ = json.NewDecoder(resp.Body).Decode(&h)
		return resp.StatusCode, h
	}
	want := alog.Head() // every result was reported after its job's records
	var h api.WorkerAuditHead
	poll(t, 20*time.Second, "the control plane to hold the worker's head", func() bool {
		var st int
		st, h = get(admin.Secret)
		return st == 200 && h.Seq >= 16
	})
	if h.WorkerID != reg.WorkerID || h.Seq > want.Seq || len(h.Hash) != 64 || strings.Trim(h.Hash, "0123456789abcdef") != "" {
		t.Fatalf("head = %+v, want one of worker %s's checkpoints up to %v", h, reg.WorkerID, want)
	}
	if st, _ := get(client.Secret); st != http.StatusForbidden {
		t.Errorf("GET audit-head as a client = %d, want 403", st)
	}
	head := audit.Head{Seq: h.Seq, Hash: h.Hash}
	opts := audit.VerifyOptions{Trusted: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, Head: head}
	if _, err := audit.Verify([]string{path}, opts); err != nil {
		t.Fatalf("Verify(the live log, the head over NATS) = %v", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ls := strings.SplitAfter(string(b), "\n")
	cut := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(cut, []byte(strings.Join(ls[:h.Seq-5], "")), 0o600); err != nil {
		t.Fatal(err)
	}
	var p *audit.Problem
	if _, err := audit.Verify([]string{cut}, opts); !errors.As(err, &p) {
		t.Fatalf("Verify(cut at the checkpoint before the head) = %v, want a *Problem", err)
	}
}

package worker_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/runtime"
)

// TestAuditHeadReported: the worker reports its latest audit checkpoint with its results,
// the control plane keeps it, and a copy of the log cut before it fails against it.
func TestAuditHeadReported(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	_, key, _ := ed25519.GenerateKey(nil)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	alog, err := audit.Open(audit.Options{Path: path, Key: key, CheckpointEvery: 4, MaxBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer alog.Close()
	ctx := context.Background()
	wtok, err := s.srv.Store().CreateToken(ctx, api.RoleWorker, pool, "w", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	admin, err := s.srv.Store().CreateToken(ctx, api.RoleAdmin, api.AllPools, "admin", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(s.url, wtok.Secret)
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Client: cl, Catalog: catalog, Name: "w1", Audit: alog,
		Verifier: approval.NewVerifier(s.trusted, approval.NewMemoryReplayStore()),
		Runner: funcRunner(func(ctx context.Context, task, jobID string, input []byte) runtime.Result {
			return runtime.Result{Output: input}
		}),
		Concurrency: 1, LeaseWait: time.Second, BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lease, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(lease, ctx) }()
	defer func() { stop(); <-done }()
	s.waitCatalog()
	for i := range 5 {
		in := fmt.Sprintf(`{"n":%d}`, i)
		j := s.submitJob(in)
		s.approve(j, s.sign(j, in, s.approver, nil))
		if got := s.wait(j.ID); got.State != api.StateSucceeded {
			t.Fatalf("job %d = %s (%s)", i, got.State, got.ErrorMessage)
		}
	}
	req, _ := http.NewRequest("GET", s.url+"/v1/workers/w1/audit-head", nil)
	req.Header.Set("Authorization", "Bearer "+admin.Secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h api.WorkerAuditHead
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil || resp.StatusCode != 200 || h.Seq < 16 {
		t.Fatalf("GET audit-head = %d %+v, %v; want a head past the first jobs' checkpoints", resp.StatusCode, h, err)
	}
	head := audit.Head{Seq: h.Seq, Hash: h.Hash}
	opts := audit.VerifyOptions{Trusted: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, Head: head}
	if _, err := audit.Verify([]string{path}, opts); err != nil {
		t.Fatalf("Verify(the live log, the reported head) = %v", err)
	}
	// Cut at the checkpoint before the head: with the key alone that is a clean log.
	ls := lines(t, path)
	cut := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(cut, joinLines(ls[:h.Seq-5]), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.VerifyFiles([]string{cut}, opts.Trusted...); err != nil {
		t.Fatalf("Verify(cut at a checkpoint, key only) = %v; want intact (the key cannot tell)", err)
	}
	var p *audit.Problem
	if _, err := audit.Verify([]string{cut}, opts); !errors.As(err, &p) {
		t.Fatalf("Verify(cut, the reported head) = %v, want a *Problem", err)
	}
}

func lines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for len(b) > 0 {
		i := 0
		for b[i] != '\n' {
			i++
		}
		out = append(out, b[:i])
		b = b[i+1:]
	}
	return out
}

func joinLines(ls [][]byte) []byte {
	var out []byte
	for _, l := range ls {
		out = append(append(out, l...), '\n')
	}
	return out
}

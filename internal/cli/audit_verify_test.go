package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestAuditVerifyExitCodes: `castellan audit verify` with --key, --head and --server, on a
// whole log, one cut at a checkpoint, an older copy, and a stripped one.
func TestAuditVerifyExitCodes(t *testing.T) {
	t.Parallel()
	_, key, _ := ed25519.GenerateKey(nil)
	pub := hex.EncodeToString(key.Public().(ed25519.PublicKey))
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	var older []byte
	var head audit.Head
	for run := range 2 {
		l, err := audit.Open(audit.Options{Path: path, Key: key, CheckpointEvery: 4, MaxBytes: -1})
		must(t, err)
		for i := range 9 {
			must(t, l.Append(audit.JobStarted{Job: fmt.Sprint("j", run, i), Task: "t", Attempt: 1}))
		}
		must(t, l.Close())
		head = l.Head()
		if run == 0 {
			older, err = os.ReadFile(path)
			must(t, err)
		}
	}
	whole, err := os.ReadFile(path)
	must(t, err)
	write := func(name string, b []byte) string {
		p := filepath.Join(t.TempDir(), name)
		must(t, os.WriteFile(p, b, 0o600))
		return p
	}
	ls := bytes.SplitAfter(whole, []byte("\n"))
	prev := int(head.Seq) - 2 // index of the checkpoint before the last
	for !bytes.Contains(ls[prev], []byte(`"type":"checkpoint"`)) {
		prev--
	}
	atCheckpoint := write("audit.log", bytes.Join(ls[:prev+1], nil))
	rolledBack := write("audit.log", older)
	var noCkpt []byte
	for _, l := range ls {
		if !bytes.Contains(l, []byte(`"type":"checkpoint"`)) {
			noCkpt = append(noCkpt, l...)
		}
	}
	stripped := write("audit.log", noCkpt) // unchained too: refused either way

	adminToken := write("admin.token", []byte("admin-secret\n"))
	cp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer admin-secret" {
			w.WriteHeader(401)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{Code: api.CodeUnauthenticated, Message: "no"}})
			return
		}
		if r.URL.Path != "/v1/workers/worker-1/audit-head" {
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(api.ErrorBody{Error: api.ErrorDetail{Code: api.CodeNotFound, Message: "no audit head"}})
			return
		}
		json.NewEncoder(w).Encode(api.WorkerAuditHead{WorkerID: "tok_1", Name: "worker-1", Seq: head.Seq, Hash: head.Hash})
	}))
	t.Cleanup(cp.Close)

	tests := []struct {
		name string
		args []string
		exit int
		out  string
	}{
		{"whole, key", []string{"--key", pub, path}, ExitOK, "no --head"},
		{"whole, key and head", []string{"--key", pub, "--head", head.String(), path}, ExitOK, "is in the chain"},
		{"whole, head from the server", []string{"--key", pub, "--server", cp.URL, "--token-file", adminToken, "--worker", "worker-1", path}, ExitOK, "is in the chain"},
		{"cut at a checkpoint, key only", []string{"--key", pub, atCheckpoint}, ExitOK, "intact"},
		{"cut at a checkpoint, head", []string{"--key", pub, "--head", head.String(), atCheckpoint}, ExitTaskFailed, "TAMPERED"},
		{"cut at a checkpoint, head from the server", []string{"--key", pub, "--server", cp.URL, "--token-file", adminToken, "--worker", "worker-1", atCheckpoint}, ExitTaskFailed, "rolled back"},
		{"older copy, head", []string{"--key", pub, "--head", head.String(), rolledBack}, ExitTaskFailed, "rolled back"},
		{"older copy, head, no key", []string{"--head", head.String(), rolledBack}, ExitTaskFailed, "TAMPERED"},
		{"stripped, key", []string{"--key", pub, stripped}, ExitTaskFailed, "TAMPERED"},
		{"bad head", []string{"--key", pub, "--head", "12:zz", path}, ExitUsage, ""},
		{"head and server", []string{"--head", head.String(), "--server", cp.URL, "--worker", "worker-1", path}, ExitUsage, ""},
		{"server without worker", []string{"--server", cp.URL, "--token-file", adminToken, path}, ExitUsage, ""},
		{"unknown worker", []string{"--server", cp.URL, "--token-file", adminToken, "--worker", "nobody", path}, ExitUsage, ""},
		{"wrong token", []string{"--server", cp.URL, "--token-file", write("t", []byte("x")), "--worker", "worker-1", path}, ExitUsage, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := runAppWith(context.Background(), App(&out, &errOut), append([]string{"castellan", "audit", "verify"}, tt.args...))
			if got := ExitCode(err); got != tt.exit || !strings.Contains(out.String(), tt.out) {
				t.Errorf("audit verify %v: exit %d (%v), stdout %q; want exit %d, stdout naming %q", tt.args, got, err, out.String(), tt.exit, tt.out)
			}
		})
	}
}

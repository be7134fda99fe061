package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestApproveCommandsSigner: `castellan job approve` and `castellan plan approve`, through
// the command line, load the key and name the approver the same way: a key that cannot be
// loaded is a usage error naming --key before any request, and without --as the approval
// names $USER.
func TestApproveCommandsSigner(t *testing.T) {
	dir := t.TempDir()
	privPath, _, err := Keygen(KeygenConfig{Out: dir, Name: "t-approver"}, io.Discard)
	must(t, err)
	tokFile := filepath.Join(dir, "approver.token")
	must(t, os.WriteFile(tokFile, []byte("approver-secret\n"), 0o600))
	job := api.Job{ID: "job_0123456789abcdef01234567", Task: "echo", TaskVersion: "1", Pool: "default",
		State: api.StatePendingApproval, Input: json.RawMessage(`{"n":1}`), MaxAttempts: 1}
	plan := api.Plan{ID: "plan_0123456789abcdef01234567", State: api.PlanPendingApproval, Steps: []api.Job{job}}
	var mu sync.Mutex
	var requests int
	var tokens []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		requests++
		if r.Method == http.MethodPost {
			var req api.ApproveRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
				t.Errorf("%s %s: %v", r.Method, r.URL.Path, err)
			}
			tokens = append(tokens, req.Token)
		}
		switch r.URL.Path {
		case "/v1/jobs/" + job.ID, "/v1/jobs/" + job.ID + "/approval":
			api.WriteJSON(w, http.StatusOK, job)
		case "/v1/plans/" + plan.ID, "/v1/plans/" + plan.ID + "/approval":
			api.WriteJSON(w, http.StatusOK, plan)
		default:
			t.Errorf("unexpected request %s %s", r.Method, r.URL.Path)
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	t.Setenv("USER", "tester-from-env")

	for _, cmd := range [][]string{{"job", "approve", job.ID}, {"plan", "approve", plan.ID}} {
		conn := []string{"--server", srv.URL, "--token-file", tokFile}
		args := append(append(append([]string{}, cmd[:2]...), conn...), "--key", filepath.Join(dir, "missing.private.jwk.json"), cmd[2])
		code, _, stderr := runApp(t.Context(), args...)
		mu.Lock()
		sent := requests
		mu.Unlock()
		if code != ExitUsage || !strings.Contains(stderr, "--key") || sent != 0 {
			t.Fatalf("%v with a missing key: exit %d, stderr %q, %d requests; want a usage error naming --key and no request", cmd[:2], code, stderr, sent)
		}
		args = append(append(append([]string{}, cmd[:2]...), conn...), "--key", privPath, cmd[2])
		if code, stdout, stderr := runApp(t.Context(), args...); code != ExitOK {
			t.Fatalf("%v: exit %d, stdout %q, stderr %q", cmd[:2], code, stdout, stderr)
		}
		mu.Lock()
		tok := tokens[len(tokens)-1]
		requests = 0
		mu.Unlock()
		c, _, err := approval.Inspect(tok)
		if err != nil || c.Approver != "tester-from-env" {
			t.Fatalf("%v without --as signed sub %q (%v), want $USER tester-from-env", cmd[:2], c.Approver, err)
		}
	}
}

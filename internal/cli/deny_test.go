package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestDenyCommands: `job deny` and `plan deny` against a real `castellan server`. A reason
// the control plane would refuse (generated from api.CheckDenyReason's rules) is a usage
// error naming --reason, and leaves the job or plan pending; a good reason denies it, and
// the printed record says so and carries the reason.
func TestDenyCommands(t *testing.T) {
	t.Parallel()
	base, files := echoServer(t, t.TempDir())
	standInWorker(t, base, files[api.RoleWorker])

	submitter := JobConfig{Server: base, TokenFile: files[api.RoleClient], JSON: true}
	approver := JobConfig{Server: base, TokenFile: files[api.RoleApprover], JSON: true}
	j, err := JobSubmit(t.Context(), SubmitConfig{JobConfig: submitter, Task: "echo", Pool: "default", Input: `{"n":1}`}, io.Discard)
	must(t, err)
	p, err := PlanSubmit(t.Context(), submitter, `{"steps":[{"task":"echo","pool":"default","input":{"step":1}}]}`, nil, io.Discard)
	must(t, err)

	kinds := []struct {
		name  string
		deny  func(reason string, out io.Writer) error
		state func() string
	}{
		{"job", func(r string, out io.Writer) error { return JobDeny(t.Context(), approver, j.ID, r, out) }, func() string {
			var b bytes.Buffer
			must(t, JobGet(t.Context(), submitter, j.ID, &b))
			var got api.Job
			must(t, json.Unmarshal(b.Bytes(), &got))
			return string(got.State)
		}},
		{"plan", func(r string, out io.Writer) error { return PlanDeny(t.Context(), approver, p.ID, r, out) }, func() string {
			var b bytes.Buffer
			must(t, PlanGet(t.Context(), submitter, p.ID, &b))
			var got api.Plan
			must(t, json.Unmarshal(b.Bytes(), &got))
			return string(got.State)
		}},
	}
	bad := []string{"", strings.Repeat("x", api.MaxDenyReason+1), "bad\xff", "line\nbreak", "bidi\u202e", "sep\u2028"}
	for _, k := range kinds {
		for _, reason := range bad {
			var out bytes.Buffer
			err := k.deny(reason, &out)
			if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), "--reason") || out.Len() != 0 {
				t.Errorf("%s deny %q = %v (exit %d), printed %q; want a usage error naming --reason and nothing printed", k.name, reason, err, ExitCode(err), out.String())
			}
			if s := k.state(); s != "pending_approval" {
				t.Fatalf("%s after a refused reason %q: state %s, want pending_approval", k.name, reason, s)
			}
		}
		var out bytes.Buffer
		must(t, k.deny("not this quarter", &out))
		if !strings.Contains(out.String(), `"denied"`) || !strings.Contains(out.String(), "not this quarter") {
			t.Errorf("%s deny printed %q, want the denied record with its reason", k.name, out.String())
		}
		if s := k.state(); s != "denied" {
			t.Errorf("%s after deny: state %s, want denied", k.name, s)
		}
	}
}

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/examples"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/democrm"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// BenchmarkApproverLatency measures submit → result for one crm-lookup job at a time,
// through real processes on loopback (`castellan server` on SQLite, `castellan worker`
// running the Wasm task against the demo CRM, and for "rule" `castellan approver`), and
// reports the median and 99th percentile. "attached" is the same job with its approval made
// at submit (the server's auto-approve key); "rule" waits in pending_approval until the
// approver, long-polling the pending list, decides it with a rule, signs and attaches the
// approval. The difference of the medians is what the approver adds.
func BenchmarkApproverLatency(b *testing.B) {
	for _, mode := range []string{"attached", "rule"} {
		b.Run(mode, func(b *testing.B) {
			c := benchStack(b, mode == "rule")
			ctx := context.Background()
			var lat []time.Duration
			for b.Loop() {
				t0 := time.Now()
				j, err := c.Submit(ctx, api.SubmitRequest{Task: "crm-lookup", Pool: pool, Input: json.RawMessage(`{"customer_id":"42"}`)})
				if err != nil {
					b.Fatal(err)
				}
				if j, err = c.Wait(ctx, j.ID); err != nil || j.State != api.StateSucceeded {
					b.Fatalf("job %s ended %s (%v): %s", j.ID, j.State, err, j.ErrorMessage)
				}
				lat = append(lat, time.Since(t0))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50_ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99_ms")
		})
	}
}

// benchStack starts a control plane, a worker and, with withApprover, an approver serving
// pool with a rule approving crm-lookup; it returns a client-role client.
func benchStack(b *testing.B, withApprover bool) *client.Client {
	dir := b.TempDir()
	db := filepath.Join(dir, "cp.db")
	tokens := map[api.Role]string{}
	for _, role := range []api.Role{api.RoleWorker, api.RoleClient, api.RoleAdmin} {
		p := pool
		if role == api.RoleAdmin {
			p = "*"
		}
		tokens[role] = filepath.Join(dir, string(role)+".token")
		secret := benchRun(b, "token", "create", "--db", db, "--role", string(role), "--pool", p, "--name", string(role))
		if err := os.WriteFile(tokens[role], []byte(secret), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	priv, pub, err := approval.WriteKeyFiles(dir, "approver")
	if err != nil {
		b.Fatal(err)
	}
	autoPriv, autoPub, err := approval.WriteKeyFiles(dir, "auto")
	if err != nil {
		b.Fatal(err)
	}
	args := []string{"server", "--db", db, "--listen", "127.0.0.1:0", "--log-level", "error"}
	if !withApprover {
		args = append(args, "--auto-approve-key", autoPriv, "--auto-approve-tasks", "crm-lookup")
	}
	srv := benchStart(b, args...)
	url := srv.wait(b, "castellan server listening on ")

	crmToken := fmt.Sprintf("bench-crm-token-%d-%s", time.Now().UnixNano(), randomName())
	crmURL, stop, err := democrm.Start(context.Background(), crmToken)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(stop)
	files := map[string][]byte{"crm-token": []byte(crmToken), "crm-lookup.wasm": examples.CRMLookupWasm}
	for _, s := range []string{"input.schema.json", "output.schema.json"} {
		if files[s], err = os.ReadFile(filepath.Join("..", "..", "examples", "crm-lookup", s)); err != nil {
			b.Fatal(err)
		}
	}
	var pol bytes.Buffer
	if err := template.Must(template.New("p").Parse(examples.DemoPolicy)).Execute(&pol, map[string]string{
		"CRMURL": crmURL, "TokenFile": filepath.Join(dir, "crm-token"), "Module": filepath.Join(dir, "crm-lookup.wasm")}); err != nil {
		b.Fatal(err)
	}
	files["policy.yaml"] = pol.Bytes()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	wrk := benchStart(b, "worker", "--server", url, "--token-file", tokens[api.RoleWorker], "--policy", filepath.Join(dir, "policy.yaml"),
		"--trusted-keys", pub+","+autoPub, "--state-dir", filepath.Join(dir, "state"), "--cache-dir", cacheDir, "--name", "bench",
		"--log-level", "info")
	wrk.waitStderr(b, "worker ready")
	if withApprover {
		rules := filepath.Join(dir, "rules.yaml")
		if err := os.WriteFile(rules, []byte("rules:\n  - name: lookups\n    when: 'task == \"crm-lookup\"'\n    approve: {ttl: 10m}\n"), 0o600); err != nil {
			b.Fatal(err)
		}
		apr := benchStart(b, "approver", "--server", url, "--token-file", tokens[api.RoleAdmin], "--key", priv, "--rules", rules,
			"--pool", pool, "--log-level", "warn")
		apr.wait(b, "approver running: ")
	}
	secret, err := os.ReadFile(tokens[api.RoleClient])
	if err != nil {
		b.Fatal(err)
	}
	c, err := client.New(url, strings.TrimSpace(string(secret)))
	if err != nil {
		b.Fatal(err)
	}
	// One job first, so that the worker's compilation cache and every connection are warm.
	j, err := c.Submit(context.Background(), api.SubmitRequest{Task: "crm-lookup", Pool: pool, Input: json.RawMessage(`{"customer_id":"7"}`)})
	if err != nil {
		b.Fatal(err)
	}
	if j, err = c.Wait(context.Background(), j.ID); err != nil || j.State != api.StateSucceeded {
		b.Fatalf("warm-up job ended %s (%v): %s", j.State, err, j.ErrorMessage)
	}
	return c
}

type benchProc struct {
	cmd    *exec.Cmd
	stderr syncBuffer
	lines  chan string
}

func benchStart(b *testing.B, args ...string) *benchProc {
	p := &benchProc{lines: make(chan string, 64)}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stderr = &p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		_ = p.cmd.Wait()
		close(done)
	}()
	b.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-done
		if b.Failed() {
			b.Logf("castellan %s stderr:\n%s", args[0], p.stderr.String())
		}
	})
	return p
}

func (p *benchProc) wait(b *testing.B, prefix string) string {
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l := <-p.lines:
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return strings.TrimSpace(rest)
			}
		case <-deadline:
			b.Fatalf("castellan %s printed no %q line; stderr:\n%s", p.cmd.Args[1], prefix, p.stderr.String())
		}
	}
}

func (p *benchProc) waitStderr(b *testing.B, want string) {
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.stderr.String(), want) {
		if time.Now().After(deadline) {
			b.Fatalf("castellan %s logged no %q; stderr:\n%s", p.cmd.Args[1], want, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond) // polling the child's log
	}
}

func benchRun(b *testing.B, args ...string) string {
	out, err := exec.Command(bin, args...).Output()
	if err != nil {
		b.Fatalf("castellan %s: %v", strings.Join(args, " "), err)
	}
	return string(out)
}

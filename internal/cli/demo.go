package cli

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/examples"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/democrm"
	"github.com/castellan-dev/castellan/internal/server/api"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run the whole private-worker story on this machine and prove what each side sees",
		Description: "On loopback, with temporary files: starts the demo internal CRM (it requires a bearer token),\n" +
			"a control plane (`castellan server`, a child process on a temporary SQLite file) and a worker\n" +
			"(`castellan worker`, a child process holding the CRM token in a 0600 file the control plane\n" +
			"never sees); generates an approver key; submits a crm-lookup job, approves it by signing\n" +
			"here, waits and prints the output. Then it searches the control plane's database files and\n" +
			"log for the CRM token and the CRM's address, and shows the worker rejecting tampered jobs.\n" +
			"Then `castellan approver` (a child process) approves a lookup by rule, and another in its console.\n" +
			"Last, an AI agent (an MCP client) lists the tools at /mcp and calls crm-lookup, approved here.\n" +
			"Needs nothing but this binary.\n\n" +
			"Example:\n  castellan demo",
		Action: func(c *cli.Context) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			return Demo(c.Context, self, c.App.Writer)
		},
	}
}

// Demo runs the demo, executing self (the castellan binary) for the server and the worker.
func Demo(ctx context.Context, self string, out io.Writer) error {
	start := time.Now()
	step := func(format string, args ...any) { fmt.Fprintf(out, "==> "+format+"\n", args...) }
	info := func(format string, args ...any) { fmt.Fprintf(out, "    "+format+"\n", args...) }
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "castellan-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	for _, d := range []string{"private", "cloud", "approver"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	private := func(name string) string { return filepath.Join(dir, "private", name) }
	cloud := func(name string) string { return filepath.Join(dir, "cloud", name) }

	// The private network: the CRM, its token, the policy and the task module.
	crmToken := "demo-" + randomID() + randomID()
	crmURL, stopCRM, err := democrm.Start(ctx, crmToken)
	if err != nil {
		return fmt.Errorf("start demo CRM: %w", err)
	}
	defer stopCRM()
	crmAddr := strings.TrimPrefix(crmURL, "http://")
	step("private network: demo internal CRM listening on %s (requires a bearer token)", crmURL)
	files := map[string][]byte{
		private("crm-token"):          []byte(crmToken + "\n"),
		private("crm-lookup.wasm"):    examples.CRMLookupWasm,
		private("input.schema.json"):  []byte(crmLookupInputSchema),
		private("output.schema.json"): []byte(crmLookupOutputSchema),
	}
	var pol bytes.Buffer
	if err := template.Must(template.New("policy").Parse(examples.DemoPolicy)).Execute(&pol, map[string]string{
		"CRMURL": crmURL, "TokenFile": private("crm-token"), "Module": private("crm-lookup.wasm")}); err != nil {
		return err
	}
	files[private("policy.yaml")] = pol.Bytes()
	for name, b := range files {
		if err := os.WriteFile(name, b, 0o600); err != nil {
			return err
		}
	}
	info("policy %s; the CRM token is in %s (mode 0600), read only by the worker", private("policy.yaml"), private("crm-token"))

	// The cloud side: tokens in a fresh database, then the control plane.
	db := cloud("castellan.db")
	tokens := map[api.Role]string{}
	for _, role := range []api.Role{api.RoleWorker, api.RoleClient, api.RoleApprover} {
		var b bytes.Buffer
		if _, err := TokenCreate(ctx, TokenConfig{DB: db, Role: string(role), Pool: demoPool, Name: "demo-" + string(role)}, &b); err != nil {
			return fmt.Errorf("create %s token: %w", role, err)
		}
		tokens[role] = filepath.Join(dir, string(role)+".token")
		if err := os.WriteFile(tokens[role], b.Bytes(), 0o600); err != nil {
			return err
		}
	}
	step("castellan token create --db %s: worker, client and approver tokens for pool %q", db, demoPool)

	var serverLog syncBuffer
	srv, err := startChild(ctx, self, &serverLog, "server", "--db", db, "--listen", "127.0.0.1:0", "--log-level", "debug")
	if err != nil {
		return err
	}
	defer srv.stop()
	serverURL, err := srv.line("castellan server listening on ", 15*time.Second)
	if err != nil {
		return fmt.Errorf("the control plane did not start: %v\n%s", err, serverLog.String())
	}
	step("cloud: castellan server listening on %s (database %s)", serverURL, db)

	var privPath, pubPath string
	var keyOut bytes.Buffer
	if privPath, pubPath, err = Keygen(KeygenConfig{Out: filepath.Join(dir, "approver"), Name: "demo-approver"}, &keyOut); err != nil {
		return err
	}
	step("castellan keygen: approver key %s; the worker trusts %s", filepath.Base(privPath), filepath.Base(pubPath))

	var workerLog syncBuffer
	wrk, err := startChild(ctx, self, &workerLog, "worker", "--server", serverURL, "--token-file", tokens[api.RoleWorker],
		"--policy", private("policy.yaml"), "--trusted-keys", pubPath, "--state-dir", private("state"),
		"--name", "demo-worker", "--log-level", "info")
	if err != nil {
		return err
	}
	defer wrk.stop()
	step("private network: castellan worker started (pid %d); it opens no port, it only calls out to %s", wrk.cmd.Process.Pid, serverURL)
	clientCfg := JobConfig{Server: serverURL, TokenFile: tokens[api.RoleClient]}
	approverCfg := JobConfig{Server: serverURL, TokenFile: tokens[api.RoleApprover]}
	if err := waitCatalog(ctx, clientCfg, "crm-lookup", wrk); err != nil {
		return fmt.Errorf("%v\nworker log:\n%s", err, indentString(workerLog.String()))
	}
	info("the worker published its catalog: crm-lookup 1.0.0 with its input schema (no URL, no credential)")

	input := `{"customer_id":"42"}`
	step("castellan job submit --task crm-lookup --pool %s --input '%s'", demoPool, input)
	job, err := JobSubmit(ctx, SubmitConfig{JobConfig: clientCfg, Task: "crm-lookup", Pool: demoPool, Input: input}, indent(out))
	if err != nil {
		return err
	}
	step("castellan job approve --key %s %s   (signed here; only the token is sent)", filepath.Base(privPath), job.ID)
	appr := ApproveConfig{JobConfig: approverCfg, JobID: job.ID, Key: privPath, As: "demo-approver", TTL: 10 * time.Minute}
	if err := JobApprove(ctx, &appr, indent(out)); err != nil {
		return err
	}
	step("castellan job wait %s", job.ID)
	done, err := waitJob(ctx, mustClient(clientCfg), job.ID, false, indent(out))
	if err != nil {
		return fmt.Errorf("%v\nworker log:\n%s", err, indentString(workerLog.String()))
	}
	step("task output: %s", done.Output)

	step("checking the separation: what does the control plane hold?")
	needles := map[string]string{"the CRM token": crmToken, "the CRM's internal address " + crmAddr: crmAddr}
	var dbBytes []byte
	var searched []string
	for _, suffix := range []string{"", "-wal", "-shm"} {
		b, err := os.ReadFile(db + suffix)
		if err == nil {
			dbBytes = append(dbBytes, b...)
			searched = append(searched, fmt.Sprintf("%s (%d bytes)", filepath.Base(db+suffix), len(b)))
		}
	}
	info("searched %s and %d bytes of its log", strings.Join(searched, ", "), serverLog.Len())
	for _, what := range []string{"the CRM token", "the CRM's internal address " + crmAddr} {
		n := needles[what]
		if bytes.Contains(dbBytes, []byte(n)) || strings.Contains(serverLog.String(), n) {
			return fmt.Errorf("SEPARATION CHECK FAILED: %s appears in the control plane's database or log", what)
		}
		info("separation check passed: %s appears in neither the control plane's database nor its log", what)
	}
	if !strings.Contains(workerLog.String(), crmAddr) {
		info("(the worker's own log does not mention the CRM either)")
	} else {
		info("(the worker's local log does record the calls it made to %s: that log stays on the worker's host)", crmAddr)
	}

	step("a tampered job: the control plane swaps the input after the approver signed")
	tampered, err := JobSubmit(ctx, SubmitConfig{JobConfig: clientCfg, Task: "crm-lookup", Pool: demoPool, Input: `{"customer_id":"7"}`}, io.Discard)
	if err != nil {
		return err
	}
	key, err := approval.LoadPrivateKey(privPath)
	if err != nil {
		return err
	}
	forged, _, err := approval.Sign(key, approval.Request{JobID: tampered.ID, Task: tampered.Task, TaskVersion: tampered.TaskVersion,
		Pool: tampered.Pool, Input: []byte(`{"customer_id":"42"}`), MaxAttempts: tampered.MaxAttempts, Approver: "demo-approver"})
	if err != nil {
		return err
	}
	if err := rejectedByWorker(ctx, approverCfg, clientCfg, tampered.ID, forged, "input_mismatch", info); err != nil {
		return err
	}
	step("a replayed approval: the first job's signed approval attached to another job")
	replayed, err := JobSubmit(ctx, SubmitConfig{JobConfig: clientCfg, Task: "crm-lookup", Pool: demoPool, Input: input}, io.Discard)
	if err != nil {
		return err
	}
	if err := rejectedByWorker(ctx, approverCfg, clientCfg, replayed.ID, appr.Approval, "wrong_job", info); err != nil {
		return err
	}

	if err := demoApprover(ctx, self, dir, privPath, approverCfg, clientCfg, step, info); err != nil {
		return fmt.Errorf("%v\nworker log:\n%s", err, indentString(workerLog.String()))
	}

	approveMCP := func(id string) error {
		step("castellan job approve --key %s %s", filepath.Base(privPath), id)
		a := ApproveConfig{JobConfig: approverCfg, JobID: id, Key: privPath, As: "demo-approver", TTL: 10 * time.Minute}
		return JobApprove(ctx, &a, indent(out))
	}
	if err := demoMCP(ctx, serverURL, clientCfg, approveMCP, step, info); err != nil {
		return fmt.Errorf("%v\nworker log:\n%s", err, indentString(workerLog.String()))
	}

	step("stopping: SIGTERM to the worker (drains, exits 0), then to the control plane")
	if code := wrk.terminate(30 * time.Second); code != 0 {
		return fmt.Errorf("the worker exited %d after SIGTERM, want 0\nworker log:\n%s", code, indentString(workerLog.String()))
	}
	if code := srv.terminate(15 * time.Second); code != 0 {
		return fmt.Errorf("the control plane exited %d after SIGTERM, want 0", code)
	}
	info("the CRM served %d authenticated request(s), all from the worker", democrm.Requests(crmURL))
	step("done in %s", time.Since(start).Round(100*time.Millisecond))
	return nil
}

const demoPool = "demo"

// rejectedByWorker attaches tok to job id, waits, and checks the worker refused it for want.
func rejectedByWorker(ctx context.Context, approver, cl JobConfig, id, tok, want string, info func(string, ...any)) error {
	if _, err := mustClient(approver).Approve(ctx, id, tok); err != nil {
		return apiFailure(err)
	}
	j, err := mustClient(cl).Wait(ctx, id)
	if err != nil {
		return apiFailure(err)
	}
	if j.State != api.StateRejected || !strings.Contains(j.ErrorMessage, want) {
		return fmt.Errorf("job %s ended %s (%s), want rejected with %s", id, j.State, j.ErrorMessage, want)
	}
	info("job %s: %s by the worker, nothing ran: %s", id, j.State, j.ErrorMessage)
	return nil
}

func mustClient(cfg JobConfig) *client.Client {
	c, err := cfg.client()
	if err != nil {
		panic(err) // the demo wrote the token files itself
	}
	return c
}

func waitCatalog(ctx context.Context, cfg JobConfig, task string, wrk *child) error {
	c := mustClient(cfg)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		cat, err := c.Catalog(ctx, demoPool)
		if err == nil {
			for _, t := range cat.Tasks {
				if t.Name == task {
					return nil
				}
			}
		}
		if wrk.exited() {
			return fmt.Errorf("the worker exited before publishing its catalog")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the worker did not publish %s within 30s", task)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// child is a castellan subprocess whose stdout lines can be awaited.
type child struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
	code  int
}

func startChild(ctx context.Context, self string, stderr io.Writer, args ...string) (*child, error) {
	cmd := exec.CommandContext(ctx, self, args...)
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	cmd.Stderr = stderr
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start castellan %s: %w", args[0], err)
	}
	c := &child{cmd: cmd, lines: make(chan string, 16), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case c.lines <- sc.Text():
			default:
			}
		}
		_ = cmd.Wait()
		c.code = cmd.ProcessState.ExitCode()
		close(c.done)
	}()
	return c, nil
}

// line waits for a stdout line starting with prefix and returns the rest.
func (c *child) line(prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case l := <-c.lines:
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return strings.TrimSpace(rest), nil
			}
		case <-c.done:
			return "", fmt.Errorf("exited with status %d", c.code)
		case <-t.C:
			return "", fmt.Errorf("no %q line within %s", prefix, timeout)
		}
	}
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// terminate sends SIGTERM and returns the exit status, killing the process after timeout.
func (c *child) terminate(timeout time.Duration) int {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
		<-c.done
		return -1
	}
	return c.code
}

func (c *child) stop() {
	if !c.exited() {
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// syncBuffer collects a child's stderr while the demo reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Len()
}

// The crm-lookup schemas, as in examples/crm-lookup/*.schema.json (a test keeps them equal):
// the demo writes them beside its policy.
const crmLookupInputSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "crm-lookup input",
  "type": "object",
  "properties": {
    "customer_id": {
      "description": "The CRM customer number: 1 to 18 digits.",
      "type": "string",
      "pattern": "^[0-9]{1,18}$"
    }
  },
  "required": ["customer_id"],
  "additionalProperties": false
}
`

const crmLookupOutputSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "crm-lookup output",
  "type": "object",
  "properties": {
    "customer_id": {"type": "string"},
    "name": {"type": "string"},
    "tier": {"type": "string"},
    "open_tickets": {"type": "integer", "minimum": 0}
  },
  "required": ["customer_id", "name", "tier", "open_tickets"],
  "additionalProperties": false
}
`

func indent(w io.Writer) io.Writer { return &indenter{w: w, bol: true} }

type indenter struct {
	w   io.Writer
	bol bool
}

func (i *indenter) Write(p []byte) (int, error) {
	var b bytes.Buffer
	for _, c := range p {
		if i.bol {
			b.WriteString("    ")
		}
		b.WriteByte(c)
		i.bol = c == '\n'
	}
	_, err := i.w.Write(b.Bytes())
	return len(p), err
}

func indentString(s string) string {
	var b bytes.Buffer
	_, _ = indent(&b).Write([]byte(s))
	return b.String()
}

func demoCRMCommand() *cli.Command {
	var listen, tokenFile string
	return &cli.Command{
		Name:   "democrm",
		Usage:  "serve the demo internal CRM (for trying castellan run by hand)",
		Hidden: false,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8081", Destination: &listen, Usage: "`ADDR` to listen on"},
			&cli.StringFlag{Name: "token-file", Required: true, Destination: &tokenFile, Usage: "`FILE` holding the bearer token the CRM requires"},
		},
		Action: func(c *cli.Context) error {
			b, err := os.ReadFile(tokenFile)
			if err != nil {
				return usageError{err}
			}
			return democrm.ListenAndServe(c.Context, listen, strings.TrimSpace(string(b)), c.App.Writer)
		},
	}
}

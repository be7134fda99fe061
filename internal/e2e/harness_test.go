package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/examples"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/democrm"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// bin is the castellan binary built by TestMain; cacheDir is a compilation cache shared by
// every worker of the run, so only the first compiles crm-lookup.
var bin, cacheDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "castellan-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	bin, cacheDir = filepath.Join(dir, "castellan"), filepath.Join(dir, "cache")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/castellan")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "go build castellan: %v\n", err)
		os.RemoveAll(dir)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const pool = "default"

// proc is a running castellan process.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	stderr syncBuffer
	lines  chan string
	done   chan struct{}
	code   int
}

func start(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, lines: make(chan string, 64), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stderr = &p.stderr
	p.cmd.Env = append(os.Environ(), "NO_COLOR=1")
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start castellan %s: %v", args[0], err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s stderr:\n%s", p.name, p.stderr.String())
		}
	})
	return p
}

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// signal sends sig and waits (bounded) for the exit status.
func (p *proc) signal(sig syscall.Signal, within time.Duration) int {
	p.t.Helper()
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return p.code
	case <-time.After(within):
		p.t.Fatalf("%s did not exit within %s of %v", p.name, within, sig)
		return -1
	}
}

func (p *proc) line(prefix string, within time.Duration) string {
	p.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case l := <-p.lines:
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return strings.TrimSpace(rest)
			}
		case <-p.done:
			p.t.Fatalf("%s exited %d before printing %q:\n%s", p.name, p.code, prefix, p.stderr.String())
		case <-deadline:
			p.t.Fatalf("%s printed no %q line within %s", p.name, prefix, within)
		}
	}
}

// run runs a short castellan command and returns stdout, stderr and the exit status.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("castellan %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

// mustRun is run that requires exit status 0.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errs, code := run(t, args...)
	if code != 0 {
		t.Fatalf("castellan %s = exit %d, want 0\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

// env is one control plane's database, tokens and approver key, in a temp dir.
type env struct {
	t        *testing.T
	dir, db  string
	store    []string            // the server's and `token create`'s store flags: --db or --nats
	tokens   map[api.Role]string // role -> token file
	privKey  string
	pubKeys  string
	autoArgs []string // server flags for auto-approval (set by withAutoApprove)
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	e := &env{t: t, dir: dir, db: filepath.Join(dir, "cp.db"), tokens: map[api.Role]string{}}
	e.store = []string{"--db", e.db}
	for _, role := range []api.Role{api.RoleWorker, api.RoleClient, api.RoleApprover, api.RoleAdmin} {
		p := pool
		if role == api.RoleAdmin {
			p = "*"
		}
		e.tokens[role] = e.token(role, p, string(role))
	}
	e.keys()
	return e
}

// token creates a token in the env's store and returns the file holding its secret.
func (e *env) token(role api.Role, pool, name string) string {
	e.t.Helper()
	args := append([]string{"token", "create"}, e.store...)
	secret := mustRun(e.t, append(args, "--role", string(role), "--pool", pool, "--name", name)...)
	file := filepath.Join(e.dir, name+".token")
	if err := os.WriteFile(file, []byte(secret), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return file
}

// keys makes the approver's key pair.
func (e *env) keys() {
	t, dir := e.t, e.dir
	t.Helper()
	out := mustRun(t, "keygen", "--out", filepath.Join(dir, "keys"), "--name", "approver")
	e.privKey = filepath.Join(dir, "keys", "approver"+approval.PrivateKeySuffix)
	e.pubKeys = filepath.Join(dir, "keys", "approver"+approval.PublicKeySuffix)
	if !strings.Contains(out, e.pubKeys) || !strings.Contains(out, `"kid"`) {
		t.Fatalf("castellan keygen output = %q, want the public key path and the JWKS", out)
	}
}

// withAutoApprove makes servers started afterwards auto-approve task with a key the
// workers trust (its public half is added to the trusted keys).
func (e *env) withAutoApprove(task string) {
	priv, pub, err := approval.WriteKeyFiles(filepath.Join(e.dir, "keys"), "auto")
	if err != nil {
		e.t.Fatal(err)
	}
	e.pubKeys += "," + pub
	e.autoArgs = []string{"--auto-approve-key", priv, "--auto-approve-tasks", task}
}

// server starts `castellan server` on addr ("127.0.0.1:0" for any port) and returns its URL.
func (e *env) server(addr string, extra ...string) (*proc, string) {
	e.t.Helper()
	args := append(append([]string{"server"}, e.store...), "--listen", addr, "--log-level", "debug")
	args = append(args, e.autoArgs...)
	p := start(e.t, "server", append(args, extra...)...)
	return p, p.line("castellan server listening on ", 20*time.Second)
}

// worker starts `castellan worker` with its own state dir, and waits until it has
// published its catalog.
func (e *env) worker(serverURL, policyFile, name string, extra ...string) *proc {
	e.t.Helper()
	args := append([]string{"worker", "--server", serverURL, "--token-file", e.tokens[api.RoleWorker],
		"--policy", policyFile, "--trusted-keys", e.pubKeys, "--state-dir", filepath.Join(e.dir, "state-"+name),
		"--cache-dir", cacheDir, "--name", name, "--log-level", "debug"}, extra...)
	p := start(e.t, "worker "+name, args...)
	e.waitFor(name+" registered", 60*time.Second, func() bool {
		return strings.Contains(p.stderr.String(), "worker ready")
	}, p)
	return p
}

func (e *env) client(serverURL string, role api.Role) *client.Client {
	e.t.Helper()
	b, err := os.ReadFile(e.tokens[role])
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := client.New(serverURL, strings.TrimSpace(string(b)))
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// cli runs a `castellan job` command as role against serverURL.
func (e *env) cli(serverURL string, role api.Role, args ...string) (string, string, int) {
	e.t.Helper()
	full := append([]string{"job", args[0], "--server", serverURL, "--token-file", e.tokens[role]}, args[1:]...)
	return run(e.t, full...)
}

// waitFor polls cond until it holds or within elapses; a process that exits fails the wait.
func (e *env) waitFor(what string, within time.Duration, cond func() bool, watch ...*proc) {
	e.t.Helper()
	waitFor(e.t, what, within, cond, watch...)
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool, watch ...*proc) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		for _, p := range watch {
			select {
			case <-p.done:
				t.Fatalf("waiting for %s: %s exited %d:\n%s", what, p.name, p.code, p.stderr.String())
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not within %s", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// policy writes the demo policy for crmURL (the CRM token in a 0600 file) and returns its path.
func (e *env) policy(crmURL, crmToken string) string {
	e.t.Helper()
	dir := filepath.Join(e.dir, "policy-"+randomName())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	files := map[string][]byte{"crm-token": []byte(crmToken), "crm-lookup.wasm": examples.CRMLookupWasm}
	for _, s := range []string{"input.schema.json", "output.schema.json"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "examples", "crm-lookup", s))
		if err != nil {
			e.t.Fatal(err)
		}
		files[s] = b
	}
	var pol bytes.Buffer
	if err := template.Must(template.New("p").Parse(examples.DemoPolicy)).Execute(&pol, map[string]string{
		"CRMURL": crmURL, "TokenFile": filepath.Join(dir, "crm-token"), "Module": filepath.Join(dir, "crm-lookup.wasm")}); err != nil {
		e.t.Fatal(err)
	}
	files["policy.yaml"] = pol.Bytes()
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			e.t.Fatal(err)
		}
	}
	return filepath.Join(dir, "policy.yaml")
}

var nameSeq struct {
	sync.Mutex
	n int
}

func randomName() string {
	nameSeq.Lock()
	defer nameSeq.Unlock()
	nameSeq.n++
	return fmt.Sprint(nameSeq.n)
}

// crm starts the demo CRM; slow, when positive, delays every /api request by that much
// (honouring cancellation), through a proxy in front of it.
func crm(t *testing.T, token string, slow time.Duration) string {
	t.Helper()
	base, stop, err := democrm.Start(t.Context(), token)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	if slow <= 0 {
		return base
	}
	target, _ := url.Parse(base)
	proxy := httputil.NewSingleHostReverseProxy(target)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(slow):
			proxy.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	})}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	return "http://" + ln.Addr().String()
}

// jobJSON decodes `castellan job ... --json` output.
func jobJSON(t *testing.T, out string) api.Job {
	t.Helper()
	var j api.Job
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("decode job JSON %q: %v", out, err)
	}
	return j
}

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

// listeningInodes returns the socket inodes in LISTEN state from /proc/<pid>/net/tcp{,6}.
func listeningInodes(t *testing.T, pid int) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) > 9 && fields[3] == "0A" { // 0A is TCP_LISTEN
				out[fields[9]] = true
			}
		}
	}
	return out
}

// socketInodes returns the inodes of the sockets pid holds open.
func socketInodes(t *testing.T, pid int) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if ino, ok := strings.CutPrefix(l, "socket:["); ok {
			out = append(out, strings.TrimSuffix(ino, "]"))
		}
	}
	return out
}

// listeningSockets counts the LISTEN sockets pid owns.
func listeningSockets(t *testing.T, pid int) int {
	t.Helper()
	listen := listeningInodes(t, pid)
	n := 0
	for _, ino := range socketInodes(t, pid) {
		if listen[ino] {
			n++
		}
	}
	return n
}

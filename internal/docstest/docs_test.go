package docstest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/castellan-dev/castellan/internal/testenv"
)

// docs are the documents whose marked blocks must run; each must have at least one.
var docs = []string{"docs/operators.md", "docs/deploy.md"}

const marker = "<!-- test -->"

// A YAML block marked <!-- config server --> (or worker) is a --config file of that
// command: its keys must be the command's flag names.
var configMarker = regexp.MustCompile(`^<!-- config ([a-z]+) -->$`)

type block struct {
	line    int    // of the opening fence
	text    string // the block's content
	command string // for a config block: the castellan command it configures
}

// extract returns the shell blocks marked runnable and the YAML blocks marked as config
// files in the markdown text.
func extract(md string) (runnable, configs []block, err error) {
	sc := bufio.NewScanner(strings.NewReader(md))
	n := 0
	in := false
	var pending *block // set by a marker, until its fence opens
	var cur block
	var b strings.Builder
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case in && trimmed == "```":
			cur.text = b.String()
			if cur.command == "" {
				runnable = append(runnable, cur)
			} else {
				configs = append(configs, cur)
			}
			in = false
		case in:
			b.WriteString(line)
			b.WriteByte('\n')
		case trimmed == marker:
			pending = &block{}
		case configMarker.MatchString(trimmed):
			pending = &block{command: configMarker.FindStringSubmatch(trimmed)[1]}
		case pending != nil && trimmed == "":
		case pending != nil:
			want := []string{"```sh", "```bash"}
			if pending.command != "" {
				want = []string{"```yaml"}
			}
			if !slices.Contains(want, trimmed) {
				return nil, nil, fmt.Errorf("line %d: a marker must be followed by a %s fence, not %q", n, strings.Join(want, " or "), trimmed)
			}
			cur = block{line: n, command: pending.command}
			pending, in = nil, true
			b.Reset()
		}
	}
	if in || pending != nil {
		return nil, nil, fmt.Errorf("unterminated marked block at the end (opened at line %d)", cur.line)
	}
	return runnable, configs, sc.Err()
}

func TestExtract(t *testing.T) {
	t.Parallel()
	md := "# x\n```sh\nnot marked\n```\n" + marker + "\n\n```sh\necho one\necho two\n```\ntext\n" + marker + "\n```bash\necho three\n```\n" +
		"<!-- config server -->\n```yaml\ndb: cp.db\n```\n"
	got, cfgs, err := extract(md)
	if err != nil || len(got) != 2 || got[0].text != "echo one\necho two\n" || got[0].line != 7 || got[1].text != "echo three\n" {
		t.Fatalf("extract(...) = %+v, %v; want the two marked blocks", got, err)
	}
	if len(cfgs) != 1 || cfgs[0].command != "server" || cfgs[0].text != "db: cp.db\n" {
		t.Fatalf("extract(...) configs = %+v, want the server config block", cfgs)
	}
	for _, bad := range []string{marker + "\n```yaml\na: 1\n```\n", marker + "\n```sh\necho\n", "<!-- config worker -->\n```sh\necho\n```\n"} {
		if _, _, err := extract(bad); err == nil {
			t.Errorf("extract(%q) = nil error, want one", bad)
		}
	}
}

var loopbackPort = regexp.MustCompile(`127\.0\.0\.1:(\d{2,5})\b`)

// freePorts maps every loopback port the text names to a port free on this machine, so
// that the docs keep the ports an operator types and the test never collides with a
// running service or another test.
func freePorts(t *testing.T, text string) *strings.Replacer {
	t.Helper()
	seen := map[string]bool{}
	var pairs []string
	for _, m := range loopbackPort.FindAllStringSubmatch(text, -1) {
		if seen[m[1]] || m[1] == "0" {
			continue
		}
		seen[m[1]] = true
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		ln.Close()
		pairs = append(pairs, "127.0.0.1:"+m[1], "127.0.0.1:"+port)
	}
	return strings.NewReplacer(pairs...)
}

func TestDocs(t *testing.T) {
	t.Parallel()
	for _, tool := range []string{"bash", "curl", "openssl"} {
		testenv.LookPath(t, "the docs' shell blocks use it: apt-get install -y "+tool, tool)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	build := exec.CommandContext(t.Context(), "go", "build", "-o", filepath.Join(bin, "castellan"), "./cmd/castellan")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/castellan: %v\n%s", err, out)
	}
	policy, err := os.ReadFile(filepath.Join(root, "examples", "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range docs {
		t.Run(filepath.Base(doc), func(t *testing.T) {
			t.Parallel()
			md, err := os.ReadFile(filepath.Join(root, doc))
			if err != nil {
				t.Fatal(err)
			}
			blocks, configs, err := extract(string(md))
			if err != nil {
				t.Fatalf("%s: %v", doc, err)
			}
			if len(blocks) == 0 {
				t.Fatalf("%s has no block marked %s: nothing would be tested", doc, marker)
			}
			for _, c := range configs {
				checkConfig(t, bin, doc, c)
			}
			var all strings.Builder
			for _, b := range blocks {
				all.WriteString(b.text)
			}
			all.Write(policy)
			ports := freePorts(t, all.String())

			dir := t.TempDir()
			// The docs name examples/policy.yaml as an operator sees it in a checkout.
			must(t, os.MkdirAll(filepath.Join(dir, "examples"), 0o755))
			must(t, os.Symlink(filepath.Join(root, "examples", "crm-lookup"), filepath.Join(dir, "examples", "crm-lookup")))
			must(t, os.WriteFile(filepath.Join(dir, "examples", "policy.yaml"), []byte(ports.Replace(string(policy))), 0o644))
			must(t, os.Mkdir(filepath.Join(dir, "home"), 0o700))

			var script strings.Builder
			script.WriteString("set -euo pipefail\nexec 3>\"$DOCSTEST_STATUS\"\n")
			for i, b := range blocks {
				fmt.Fprintf(&script, "echo '>>> %s:%d' >&2\n%s\necho %d >&3\n", doc, b.line, ports.Replace(b.text), i)
			}
			runScript(t, doc, dir, bin, script.String(), blocks)
		})
	}
}

// optionLine is a flag in the OPTIONS part of a `castellan CMD --help` page.
var optionLine = regexp.MustCompile(`^\s+--([a-z0-9-]+)`)

// checkConfig checks that every key of a documented --config file is a flag of its command,
// as the config loader demands (an unknown key is exit status 2).
func checkConfig(t *testing.T, bin, doc string, c block) {
	t.Helper()
	out, err := exec.CommandContext(t.Context(), filepath.Join(bin, "castellan"), c.command, "--help").Output()
	if err != nil {
		t.Fatalf("castellan %s --help: %v", c.command, err)
	}
	flags := map[string]bool{}
	_, opts, _ := strings.Cut(string(out), "OPTIONS:")
	for _, line := range strings.Split(opts, "\n") {
		if m := optionLine.FindStringSubmatch(line); m != nil {
			flags[m[1]] = true
		}
	}
	if len(flags) < 3 {
		t.Fatalf("castellan %s --help lists %d flags; the help format changed?\n%s", c.command, len(flags), out)
	}
	var m map[string]any
	if err := yaml.Unmarshal([]byte(c.text), &m); err != nil || len(m) == 0 {
		t.Fatalf("%s:%d: the %s config block is not a YAML map: %v", doc, c.line, c.command, err)
	}
	for k := range m {
		if !flags[k] || k == "config" {
			t.Errorf("%s:%d: key %q is not a flag of `castellan %s`: the server would refuse this file", doc, c.line, k, c.command)
		}
	}
}

// runScript runs script with bash in dir, in its own process group, and reports the first
// block that failed. Whatever the blocks started in the background is stopped at the end.
func runScript(t *testing.T, doc, dir, bin, script string, blocks []block) {
	t.Helper()
	status := filepath.Join(dir, ".docstest-status")
	logf, err := os.Create(filepath.Join(t.TempDir(), "output"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = cleanEnv(bin, dir, status)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	runErr := cmd.Wait()
	stopGroup(t, pgid)

	st, _ := os.ReadFile(status)
	done := len(strings.Fields(string(st)))
	if runErr == nil && done == len(blocks) {
		return
	}
	out, _ := os.ReadFile(logf.Name())
	where := "after the last block"
	if done < len(blocks) {
		where = fmt.Sprintf("in the block at %s:%d", doc, blocks[done].line)
	}
	t.Fatalf("%s: %d of %d marked blocks ran; failed %s: %v\noutput:\n%s", doc, done, len(blocks), where, runErr, out)
}

// stopGroup sends SIGTERM to the process group (servers and workers drain and exit), waits
// for it to be gone, and kills what is left after a deadline.
func stopGroup(t *testing.T, pgid int) {
	t.Helper()
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(20 * time.Millisecond) // polling for the processes to exit
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	t.Errorf("processes started by the docs did not exit within 15s of SIGTERM")
}

// cleanEnv is the environment of an operator's fresh shell: castellan first on PATH, a
// scratch HOME, and none of the caller's CASTELLAN_, OTEL_ or TLS variables.
func cleanEnv(bin, dir, status string) []string {
	env := []string{
		"PATH=" + bin + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + filepath.Join(dir, "home"),
		"TMPDIR=" + dir,
		"LANG=C.UTF-8",
		"DOCSTEST_STATUS=" + status,
	}
	for _, k := range []string{"GOCACHE", "GOPATH", "GOMODCACHE", "GOFLAGS"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		} else if v := goEnv(k); v != "" && k != "GOFLAGS" {
			// The caller's default, which lies under its HOME: in the scratch HOME, `go tool
			// pprof` (built on demand, not shipped prebuilt) would be built again every run.
			env = append(env, k+"="+v)
		}
	}
	return env
}

// goEnv is `go env key`, or "" when it cannot be read.
func goEnv(key string) string {
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

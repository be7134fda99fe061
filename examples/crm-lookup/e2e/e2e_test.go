package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/democrm"
	"github.com/castellan-dev/castellan/internal/testenv"
	"github.com/castellan-dev/castellan/internal/wasmbuild"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/redact"
	cr "github.com/castellan-dev/castellan/runtime"
)

const token = "e2e-crm-token-0123456789abcdef"

type staticCreds map[string]string

func (c staticCreds) Credential(_ context.Context, name string) (string, error) {
	v, ok := c[name]
	if !ok {
		return "", outcome.New(outcome.CredentialUnavailable, "credential %q unknown", name)
	}
	return v, nil
}

// exampleDir is examples/crm-lookup, the parent of this package.
func exampleDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("runtime.Caller failed")
	}
	return filepath.Dir(filepath.Dir(file))
}

// language is one build of crm-lookup.
type language struct {
	name string
	// committed returns the committed module (Go: built from source, as wasmbuild does).
	committed func(t testing.TB) []byte
	// rebuild runs the language's build script into a copy of the sources and returns the
	// module, or skips when the toolchain is absent.
	rebuild func(t *testing.T) []byte
}

func languages() []language {
	committed := func(sub string) func(testing.TB) []byte {
		return func(t testing.TB) []byte {
			b, err := os.ReadFile(filepath.Join(exampleDir(t), sub, "crm-lookup.wasm"))
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
	return []language{
		{name: "go", committed: committed("."), rebuild: func(t *testing.T) []byte { return wasmbuild.Go(t, "examples/crm-lookup") }},
		{name: "rust", committed: committed("rust"), rebuild: scriptBuild("rust", "rustc", rustcPath())},
		{name: "c", committed: committed("c"), rebuild: scriptBuild("c", "clang", "clang")},
		{name: "assemblyscript", committed: committed("assemblyscript"), rebuild: scriptBuild("assemblyscript", "asc", "")},
	}
}

func rustcPath() string {
	if p := os.Getenv("RUSTC"); p != "" {
		return p
	}
	return "/usr/bin/rustc"
}

// scriptBuild copies the example's sources next to a copy of the SDK tree layout and runs
// build.sh there, so the committed .wasm is never overwritten by a test.
func scriptBuild(sub, tool, bin string) func(t *testing.T) []byte {
	return func(t *testing.T) []byte {
		t.Helper()
		root := filepath.Dir(filepath.Dir(exampleDir(t))) // repository root
		switch sub {
		case "rust":
			out, err := exec.Command(bin, "--print", "target-libdir", "--target", "wasm32-wasi").Output()
			if err != nil {
				testenv.Missing(t, fmt.Sprintf("Rust toolchain absent (%s --target wasm32-wasi: %v); install rustc libstd-rust-dev-wasm32", bin, err))
			}
			if _, err := os.Stat(string(trimNL(out))); err != nil {
				testenv.Missing(t, fmt.Sprintf("Rust std for wasm32-wasi absent (%s); install libstd-rust-dev-wasm32", trimNL(out)))
			}
		case "c":
			if _, err := exec.LookPath(bin); err != nil {
				testenv.Missing(t, "clang absent; install clang lld wasi-libc libclang-rt-dev-wasm32 (scripts/ci-toolchains.sh)")
			}
		case "assemblyscript":
			if _, err := os.Stat(filepath.Join(root, "sdk/assemblyscript/node_modules/.bin/asc")); err != nil {
				testenv.Missing(t, "AssemblyScript absent; run: npm install --prefix sdk/assemblyscript (scripts/ci-toolchains.sh)")
			}
		}
		// Mirror examples/crm-lookup/<sub> and sdk/ into a temporary tree with the same
		// relative layout, so build.sh's ../../../sdk paths resolve.
		tmp := t.TempDir()
		dst := filepath.Join(tmp, "examples", "crm-lookup", sub)
		copyTree(t, filepath.Join(exampleDir(t), sub), dst, func(name string) bool { return filepath.Ext(name) != ".wasm" })
		sdkDir := filepath.Join(root, "sdk", sdkOf(sub))
		if err := os.MkdirAll(filepath.Join(tmp, "sdk"), 0o755); err != nil {
			t.Fatal(err)
		}
		if sub == "assemblyscript" {
			// node_modules is large: link it rather than copy it.
			copyTree(t, sdkDir, filepath.Join(tmp, "sdk", sdkOf(sub)), func(name string) bool { return name != "node_modules" })
			if err := os.Symlink(filepath.Join(sdkDir, "node_modules"), filepath.Join(tmp, "sdk", sdkOf(sub), "node_modules")); err != nil {
				t.Fatal(err)
			}
		} else {
			copyTree(t, sdkDir, filepath.Join(tmp, "sdk", sdkOf(sub)), func(string) bool { return true })
		}
		cmd := exec.Command("sh", filepath.Join(dst, "build.sh"))
		cmd.Env = append(os.Environ(), "RUSTC="+rustcPath())
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s/build.sh (%s): %v\n%s", sub, tool, err, b)
		}
		b, err := os.ReadFile(filepath.Join(dst, "crm-lookup.wasm"))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

func sdkOf(sub string) string { return sub }

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func copyTree(t *testing.T, src, dst string, keep func(name string) bool) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != src && !keep(d.Name()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return os.WriteFile(target, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatalf("copying %s: %v", src, err)
	}
}

// crm is the demo CRM and a gateway granting GET /api/customers/* on endpoint "crm".
type crm struct {
	gw   *egress.Gateway
	red  *redact.Set
	base string
}

func startCRM(t testing.TB) *crm {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	base, stop, err := democrm.New(token).Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	red := redact.NewSet()
	if err := red.Add(token); err != nil {
		t.Fatal(err)
	}
	gw, err := egress.New(egress.Config{
		Endpoints: []*egress.Endpoint{{
			Name:    "crm",
			BaseURL: u,
			Rules:   []egress.Rule{egress.MustParseRule("GET /api/customers/*")},
			Auth:    egress.Auth{Kind: egress.AuthHeader, Credential: "crm_token", Header: "Authorization", Format: "Bearer {secret}"},
			Timeout: 5 * time.Second,
		}},
		Credentials: staticCreds{"crm_token": token},
		Redactor:    red,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &crm{gw: gw, red: red, base: base}
}

func (c *crm) load(t testing.TB, e *cr.Engine, name string, wasm []byte) *cr.Module {
	t.Helper()
	m, err := e.Load(context.Background(), cr.ModuleConfig{
		Name:   "crm-lookup-" + name,
		Wasm:   wasm,
		Limits: cr.Limits{MemoryPages: 256, Timeout: 20 * time.Second, HTTPCalls: 3},
		HTTP:   c.gw,
		Guard:  c.red,
	})
	if err != nil {
		t.Fatalf("Load(%s) = %v", name, err)
	}
	return m
}

func newEngine(t testing.TB) *cr.Engine {
	t.Helper()
	e, err := cr.NewEngine(cr.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close(context.Background()) })
	return e
}

// cases are the inputs every language must handle identically. The expected outcomes are
// the Go example's (examples/crm-lookup/main.go), which is the reference.
var cases = []struct {
	name, input string
	code        outcome.Code
	output, msg string
}{
	{"found 42", `{"customer_id":"42"}`, outcome.OK, `{"customer_id":"42","name":"Ada Lovelace","tier":"gold","open_tickets":2}`, ""},
	{"found 7", `{"customer_id":"7"}`, outcome.OK, `{"customer_id":"7","name":"Grace Hopper","tier":"silver","open_tickets":0}`, ""},
	{"unknown 999", `{"customer_id":"999"}`, outcome.TaskError, "", "customer 999 not found"},
	{"bad id", `{"customer_id":"4.2"}`, outcome.TaskError, "", `input field "customer_id" has '.' at position 1; want digits only, e.g. "42"`},
	{"path escape", `{"customer_id":"../admin"}`, outcome.TaskError, "", `input field "customer_id" has '.' at position 0; want digits only, e.g. "42"`},
	{"missing id", `{}`, outcome.TaskError, "", `input field "customer_id" is missing or empty; want digits, e.g. {"customer_id":"42"}`},
	{"too long", `{"customer_id":"1234567890123456789"}`, outcome.TaskError, "", `input field "customer_id" has 19 characters; want at most 18 digits`},
	{"empty input", ``, outcome.TaskError, "", `castellan: decoding job input: the input is empty, want a JSON value`},
}

// check runs every case on m and reports differences from the reference outcomes.
func check(t *testing.T, lang string, m *cr.Module) {
	t.Helper()
	for _, tc := range cases {
		res := m.Run(t.Context(), cr.Job{ID: "e2e", Input: []byte(tc.input)})
		msg := ""
		if oe, ok := res.Err.(*outcome.Error); ok {
			msg = oe.Msg
		} else if res.Err != nil {
			msg = res.Err.Error()
		}
		if res.Code() != tc.code || string(res.Output) != tc.output || msg != tc.msg {
			t.Errorf("%s: Run(%s) = code %s, output %q, message %q; want %s, %q, %q",
				lang, tc.input, res.Code(), res.Output, msg, tc.code, tc.output, tc.msg)
		}
	}
}

// TestCommittedModulesAgree runs each language's committed crm-lookup.wasm (Go: built from
// source) and asserts identical outputs and failure messages.
func TestCommittedModulesAgree(t *testing.T) {
	t.Parallel()
	c := startCRM(t)
	e := newEngine(t)
	for _, l := range languages() {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			wasm := l.committed(t)
			if l.name == "go" {
				wasm = wasmbuild.Go(t, "examples/crm-lookup")
			}
			check(t, l.name, c.load(t, e, l.name, wasm))
		})
	}
}

// TestRebuiltFromSource rebuilds every language from source when its toolchain is present
// and checks the rebuilt module against the same cases.
func TestRebuiltFromSource(t *testing.T) {
	if testing.Short() {
		t.Skip("rebuilding from source is slow; skipped with -short")
	}
	t.Parallel()
	c := startCRM(t)
	e := newEngine(t)
	for _, l := range languages() {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			check(t, l.name, c.load(t, e, l.name, l.rebuild(t)))
		})
	}
}

// TestCommittedModulesImportOnlyTheABI: every committed module loads (so its imports are
// within castellan_v1 and the WASI subset) and exports run.
func TestCommittedModulesImportOnlyTheABI(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	for _, l := range languages()[1:] {
		m, err := e.Load(t.Context(), cr.ModuleConfig{Name: l.name, Wasm: l.committed(t), NoPool: true})
		if err != nil {
			t.Errorf("Load(%s) = %v", l.name, err)
			continue
		}
		for _, imp := range m.Imports() {
			if imp.Module != "castellan_v1" && imp.Module != "wasi_snapshot_preview1" {
				t.Errorf("%s imports %s", l.name, imp)
			}
		}
	}
}

// Package testenv decides, in one place, what a test does when a tool it needs from outside
// Go (chromium, node, npm, wabt, curl, a guest toolchain) is not installed.
//
// On a developer's machine with only Go, `make test` must pass: such a test is skipped, and
// the skip message says what to install. In CI the tools are installed
// (scripts/ci-toolchains.sh) and CASTELLAN_REQUIRE_TOOLS=1 is set (.ci/run), so a missing
// tool fails the test instead: a test that CI skips would be counted as passing.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// RequireEnv is the environment variable that turns a missing tool into a failure.
const RequireEnv = "CASTELLAN_REQUIRE_TOOLS"

// Required reports whether missing tools fail tests (CI) rather than skip them.
func Required() bool { return os.Getenv(RequireEnv) == "1" }

// Missing ends the test because what it needs is absent: a failure when tools are required,
// else a skip. what says what is missing and how to install it.
func Missing(t testing.TB, what string) {
	t.Helper()
	if Required() {
		t.Fatalf("%s (%s=1: tools are required here)", what, RequireEnv)
	}
	t.Skipf("%s; skipped (CI sets %s=1 and runs it)", what, RequireEnv)
}

// LookPath returns the first of names found on PATH, or ends the test through Missing.
// install says how to get it, e.g. "apt-get install -y chromium".
func LookPath(t testing.TB, install string, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	Missing(t, names[0]+" is not installed ("+install+"; scripts/ci-toolchains.sh installs it)")
	return ""
}

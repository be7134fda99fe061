package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
)

// TestMissingFailsWhenRequired runs a child test with and without CASTELLAN_REQUIRE_TOOLS=1
// and a tool that cannot exist: required, it must fail; otherwise it must skip.
func TestMissingFailsWhenRequired(t *testing.T) {
	if os.Getenv("TESTENV_CHILD") == "1" {
		LookPath(t, "no way to install", "castellan-no-such-tool-7f3a")
		t.Fatal("LookPath returned for a tool that does not exist")
	}
	for _, tt := range []struct {
		require string
		wantErr bool
	}{{"1", true}, {"", false}, {"0", false}} {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestMissingFailsWhenRequired$", "-test.v")
		cmd.Env = append(os.Environ(), "TESTENV_CHILD=1", RequireEnv+"="+tt.require)
		out, err := cmd.CombinedOutput()
		if (err != nil) != tt.wantErr {
			t.Fatalf("%s=%q: err = %v, want error %v\n%s", RequireEnv, tt.require, err, tt.wantErr, out)
		}
		if !tt.wantErr && !bytes.Contains(out, []byte("SKIP")) {
			t.Fatalf("%s=%q: the child did not skip:\n%s", RequireEnv, tt.require, out)
		}
	}
}

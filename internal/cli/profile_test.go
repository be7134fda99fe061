package cli

import (
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCPUProfileFlag: --cpu-profile leaves a gzip-compressed pprof profile (the format
// runtime/pprof writes) after the command exits, and a file that cannot be created is a usage
// error naming the flag, with nothing run.
func TestCPUProfileFlag(t *testing.T) {
	name := filepath.Join(t.TempDir(), "cpu.prof")
	code, out, errb := runApp(context.Background(), "--cpu-profile", name, "version")
	if code != ExitOK || !strings.Contains(out, "castellan") {
		t.Fatalf("version with --cpu-profile: exit %d, stdout %q, stderr %q", code, out, errb)
	}
	f, err := os.Open(name)
	if err != nil {
		t.Fatalf("no profile written: %v", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("profile is not gzip (runtime/pprof's format): %v", err)
	}
	if b, err := io.ReadAll(zr); err != nil || len(b) == 0 {
		t.Fatalf("profile body: %d bytes, %v", len(b), err)
	}

	bad := filepath.Join(t.TempDir(), "missing", "cpu.prof")
	code, out, errb = runApp(context.Background(), "--cpu-profile", bad, "version")
	if code != ExitUsage || !strings.Contains(errb, "--cpu-profile") || strings.Contains(out, "castellan") {
		t.Fatalf("unwritable profile: exit %d, stdout %q, stderr %q; want usage error naming --cpu-profile before anything runs", code, out, errb)
	}
}

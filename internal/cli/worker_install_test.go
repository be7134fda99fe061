package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkerInstall: `castellan worker install` writes the shipped unit, byte for byte, for
// the default flags, and creates the state directory 0700; it never prints a systemctl
// command it ran, only the ones to run.
func TestWorkerInstall(t *testing.T) {
	t.Parallel()
	shipped, err := os.ReadFile(filepath.Join("..", "..", "deploy", "castellan-worker.service"))
	must(t, err)
	root, units := t.TempDir(), t.TempDir()
	state := filepath.Join(root, "castellan-worker")
	var out bytes.Buffer
	must(t, WorkerInstall(InstallConfig{User: "castellan-worker", StateDir: state, UnitDir: units, stateRoot: root}, &out))
	got, err := os.ReadFile(filepath.Join(units, "castellan-worker.service"))
	must(t, err)
	if !bytes.Equal(got, shipped) {
		t.Errorf("written unit differs from deploy/castellan-worker.service:\n%s", got)
	}
	fi, err := os.Stat(state)
	must(t, err)
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode = %v, want a 0700 directory", fi.Mode())
	}
	if !strings.Contains(out.String(), "systemctl daemon-reload && systemctl enable --now castellan-worker") {
		t.Errorf("output does not name the next commands:\n%s", &out)
	}
	entries, err := os.ReadDir(units)
	must(t, err)
	if len(entries) != 1 {
		t.Errorf("unit dir holds %d entries, want only the unit (no temporary file left)", len(entries))
	}

	// Again over an existing, too open state directory: tightened, and the unit replaced.
	must(t, os.Chmod(state, 0o755))
	must(t, WorkerInstall(InstallConfig{User: "castellan-worker", StateDir: state, UnitDir: units, stateRoot: root}, &out))
	if fi, err := os.Stat(state); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("existing state dir after install = %v, %v, want 0700", fi.Mode(), err)
	}
}

// TestWorkerInstallDryRun: --dry-run changes nothing and shows the unit it would write.
func TestWorkerInstallDryRun(t *testing.T) {
	t.Parallel()
	root, units := t.TempDir(), t.TempDir()
	state := filepath.Join(root, "castellan-worker")
	var out bytes.Buffer
	must(t, WorkerInstall(InstallConfig{User: "castellan-worker", StateDir: state, UnitDir: units, DryRun: true, stateRoot: root}, &out))
	if entries, _ := os.ReadDir(units); len(entries) != 0 {
		t.Errorf("--dry-run wrote %d files to the unit dir", len(entries))
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("--dry-run created the state dir (stat: %v)", err)
	}
	for _, want := range []string{"would write " + filepath.Join(units, "castellan-worker.service"), "would create " + state, "ExecStart=/usr/local/bin/castellan worker"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--dry-run output lacks %q:\n%s", want, &out)
		}
	}
}

// TestWorkerInstallFlags: --user and a --state-dir outside /var/lib end up in the unit, and
// values that would smuggle directives into it are refused, writing nothing.
func TestWorkerInstallFlags(t *testing.T) {
	t.Parallel()
	root, units := t.TempDir(), t.TempDir()
	elsewhere := filepath.Join(t.TempDir(), "srv", "castellan")
	var out bytes.Buffer
	must(t, WorkerInstall(InstallConfig{User: "ci-runner", StateDir: elsewhere, UnitDir: units, stateRoot: root}, &out))
	b, err := os.ReadFile(filepath.Join(units, "castellan-worker.service"))
	must(t, err)
	unit := string(b)
	for _, want := range []string{"\nUser=ci-runner\n", "\nGroup=ci-runner\n", "\nReadWritePaths=" + elsewhere + "\n", "\nEnvironment=CASTELLAN_STATE_DIR=" + elsewhere + "\n"} {
		if !strings.Contains(unit, want) {
			t.Errorf("unit lacks %q", strings.TrimSpace(want))
		}
	}
	if strings.Contains(unit, "StateDirectory=") || strings.Contains(unit, "castellan-worker\nGroup") {
		t.Errorf("unit still has the default state directory or user:\n%s", unit)
	}
	if fi, err := os.Stat(elsewhere); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir = %v, %v, want 0700", fi, err)
	}
	// Another directory under the StateDirectory= root stays systemd-managed.
	must(t, WorkerInstall(InstallConfig{User: "castellan-worker", StateDir: filepath.Join(root, "cw2"), UnitDir: units, stateRoot: root}, &out))
	b, err = os.ReadFile(filepath.Join(units, "castellan-worker.service"))
	must(t, err)
	if !strings.Contains(string(b), "\nStateDirectory=cw2\n") {
		t.Errorf("unit for a state dir under the root lacks StateDirectory=cw2")
	}

	for _, tc := range []struct{ name, user, dir string }{
		{"newline in user", "x\nExecStartPre=/bin/sh -c id", filepath.Join(root, "a")},
		{"upper-case user", "Root", filepath.Join(root, "a")},
		{"empty user", "", filepath.Join(root, "a")},
		{"relative dir", "castellan-worker", "var/lib/x"},
		{"newline in dir", "castellan-worker", filepath.Join(root, "a\nExecStartPre=/bin/sh")},
		{"specifier in dir", "castellan-worker", filepath.Join(root, "%h")},
		{"space in dir", "castellan-worker", filepath.Join(root, "a b")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			units := t.TempDir()
			var out bytes.Buffer
			err := WorkerInstall(InstallConfig{User: tc.user, StateDir: tc.dir, UnitDir: units, stateRoot: root}, &out)
			if ExitCode(err) != ExitUsage || strings.Contains(err.Error(), "\n") {
				t.Fatalf("WorkerInstall(%q, %q) = %v, want a one-line usage error", tc.user, tc.dir, err)
			}
			if entries, _ := os.ReadDir(units); len(entries) != 0 {
				t.Errorf("a unit was written for a refused value")
			}
		})
	}
}

// TestWorkerInstallCommand: the subcommand is wired under `castellan worker`.
func TestWorkerInstallCommand(t *testing.T) {
	t.Parallel()
	units, state := t.TempDir(), filepath.Join(t.TempDir(), "state")
	code, stdout, stderr := runApp(t.Context(), "worker", "install", "--user", "ci-runner", "--unit-dir", units, "--state-dir", state)
	if code != ExitOK {
		t.Fatalf("castellan worker install = exit %d; stderr: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(units, "castellan-worker.service")); err != nil || !strings.Contains(stdout, "wrote ") {
		t.Errorf("no unit written (%v); stdout:\n%s", err, stdout)
	}
	if code, _, stderr := runApp(t.Context(), "worker", "install", "--user", "A;B", "--unit-dir", units); code != ExitUsage || !strings.Contains(stderr, "--user") {
		t.Errorf("castellan worker install --user 'A;B' = exit %d, stderr %q; want exit 2 naming --user", code, stderr)
	}
}

package cli

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

// TestWorkerStateDir: under systemd (StateDirectory= sets $STATE_DIRECTORY) the worker keeps
// its state there, not in a home directory that ProtectHome= hides; --state-dir wins.
func TestWorkerStateDir(t *testing.T) {
	base := t.TempDir()
	home := filepath.Join(base, "home")
	unit, second := filepath.Join(base, "unit"), filepath.Join(base, "second")
	flag := filepath.Join(base, "flag")
	tests := []struct {
		name, flag, stateDirectory, xdg, want string
	}{
		{"systemd", "", unit, "", unit},
		{"systemd, several", "", unit + ":" + second, "", unit},
		{"systemd beats XDG", "", unit, filepath.Join(base, "xdg"), unit},
		{"flag beats systemd", flag, unit, "", flag},
		{"XDG", "", "", filepath.Join(base, "xdg"), filepath.Join(base, "xdg", "castellan")},
		{"home", "", "", "", filepath.Join(home, ".local", "state", "castellan")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("HOME", home)
			t.Setenv("STATE_DIRECTORY", tt.stateDirectory)
			t.Setenv("XDG_STATE_HOME", tt.xdg)
			got, err := workerStateDir(tt.flag)
			if err != nil || got != tt.want {
				t.Fatalf("workerStateDir(%q) with STATE_DIRECTORY=%q XDG_STATE_HOME=%q = %q, %v; want %q",
					tt.flag, tt.stateDirectory, tt.xdg, got, err, tt.want)
			}
		})
	}
}

// TestWorkerUnit: the shipped unit lets the worker's own second shutdown stage (cancel and
// report after --grace) run before systemd's SIGKILL, and does not restart a worker whose
// configuration is broken (exit status 2).
func TestWorkerUnit(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "castellan-worker.service"))
	must(t, err)
	var grace time.Duration
	for _, f := range workerCommand().Flags {
		if d, ok := f.(*cli.DurationFlag); ok && d.Name == "grace" {
			grace = d.Value
		}
	}
	if grace == 0 {
		t.Fatal("castellan worker has no --grace default")
	}
	keys := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && !strings.HasPrefix(k, "#") {
			keys[k] = v
		}
	}
	stop, err := systemdSpan(keys["TimeoutStopSec"])
	if err != nil || stop <= grace {
		t.Errorf("TimeoutStopSec=%s (%v, %v), want more than the default --grace %s", keys["TimeoutStopSec"], stop, err, grace)
	}
	if keys["RestartPreventExitStatus"] != strconv.Itoa(ExitUsage) {
		t.Errorf("RestartPreventExitStatus=%q, want %d (configuration errors)", keys["RestartPreventExitStatus"], ExitUsage)
	}
	if keys["StateDirectory"] == "" {
		t.Error("no StateDirectory=: the worker would have nowhere to keep its replay store")
	}
}

// systemdSpan parses the systemd time spans the units use: "90", "90s", "6min", "1h".
func systemdSpan(s string) (time.Duration, error) {
	for suffix, unit := range map[string]time.Duration{"min": time.Minute, "s": time.Second, "h": time.Hour} {
		if n, ok := strings.CutSuffix(s, suffix); ok {
			v, err := strconv.Atoi(n)
			return time.Duration(v) * unit, err
		}
	}
	v, err := strconv.Atoi(s)
	return time.Duration(v) * time.Second, err
}

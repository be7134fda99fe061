package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

// appMu serialises the tests' runs of the whole command line: urfave/cli v2 writes its
// package-level HelpFlag on every Run, so two Apps running at once race (the binary runs
// one). Every test that runs App holds it, through runApp or runAppWith.
var appMu sync.Mutex

// runAppWith runs app with args (args[0] is the program name) under appMu.
func runAppWith(ctx context.Context, app *cli.App, args []string) error {
	appMu.Lock()
	defer appMu.Unlock()
	return app.RunContext(ctx, args)
}

// runApp runs the castellan command with args and returns its exit code and output.
func runApp(ctx context.Context, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	err := runAppWith(ctx, App(&out, &errb), append([]string{"castellan"}, args...))
	if Unreported(err) {
		errb.WriteString(err.Error())
	}
	return ExitCode(err), out.String(), errb.String()
}

// TestTokenCreateTarget: a flag on the command line beats an environment variable, so an
// operator who exported CASTELLAN_SERVER for the job commands can still bootstrap with --db;
// without flags exactly one variable must be set.
func TestTokenCreateTarget(t *testing.T) {
	db := filepath.Join(t.TempDir(), "cp.db")
	tests := []struct {
		name string
		env  map[string]string
		args []string
		exit int
	}{
		{"db flag beats env server", map[string]string{"CASTELLAN_SERVER": "http://127.0.0.1:1"}, []string{"--db", db}, ExitOK},
		{"db flag beats env nats", map[string]string{"CASTELLAN_NATS": "nats://127.0.0.1:1"}, []string{"--db", db}, ExitOK},
		{"env db alone", map[string]string{"CASTELLAN_DB": db}, nil, ExitOK},
		{"env db and env server", map[string]string{"CASTELLAN_DB": db, "CASTELLAN_SERVER": "http://127.0.0.1:1"}, nil, ExitUsage},
		{"db and server flags", nil, []string{"--db", db, "--server", "http://127.0.0.1:1"}, ExitUsage},
		{"nothing", nil, nil, ExitUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"CASTELLAN_DB", "CASTELLAN_NATS", "CASTELLAN_SERVER"} {
				t.Setenv(k, tt.env[k])
			}
			args := append([]string{"token", "create", "--role", "admin", "--pool", "*"}, tt.args...)
			code, out, errs := runApp(t.Context(), args...)
			if code != tt.exit {
				t.Fatalf("castellan %s = exit %d (stderr %q), want %d", strings.Join(args, " "), code, errs, tt.exit)
			}
			if code == ExitOK && !strings.HasPrefix(out, "cst_") {
				t.Fatalf("castellan %s printed %q, want the token secret", strings.Join(args, " "), out)
			}
		})
	}
}

// TestDatabaseFileMode: the control plane's database and its WAL and shared-memory files
// are readable by their owner only, like the worker's state files.
func TestDatabaseFileMode(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "cp.db")
	var out strings.Builder
	_, err := TokenCreate(t.Context(), TokenConfig{DB: db, Role: "admin", Pool: "*"}, &out)
	must(t, err)
	startServer(t, ServerConfig{DB: db, Listen: "127.0.0.1:0", LeaseTTL: time.Minute, LogLevel: "error"})
	// A second writer while the server holds the database open: the WAL is in use.
	_, err = TokenCreate(t.Context(), TokenConfig{DB: db, Role: "client", Pool: "default"}, &out)
	must(t, err)
	for _, f := range []string{db, db + "-wal", db + "-shm"} {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Errorf("mode of %s = %o, want 600", filepath.Base(f), m)
		}
	}
}

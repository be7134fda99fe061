package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/deploy"
)

// InstallConfig is the configuration of `castellan worker install`.
type InstallConfig struct {
	User     string // the service user (default castellan-worker)
	StateDir string // the worker's state directory (default /var/lib/castellan-worker)
	UnitDir  string // where the unit goes (default /etc/systemd/system)
	DryRun   bool

	stateRoot string // systemd's StateDirectory= root, /var/lib; another one in tests
}

const (
	unitName    = "castellan-worker.service"
	defaultUser = "castellan-worker"
	varLib      = "/var/lib"
)

func workerInstallCommand() *cli.Command {
	var cfg InstallConfig
	return &cli.Command{
		Name:  "install",
		Usage: "write the worker's systemd unit and create its state directory (does not start it)",
		Description: "Writes UNIT-DIR/castellan-worker.service, the unit shipped as deploy/castellan-worker.service\n" +
			"(with --user and --state-dir applied), and creates the state directory 0700, owned by the\n" +
			"user when run as root. It never runs systemctl: it prints the commands to run next. The unit\n" +
			"reads /etc/castellan/worker.yaml and /etc/castellan/worker.env (docs/deploy.md).\n\n" +
			"Examples:\n" +
			"  sudo castellan worker install --dry-run\n" +
			"  sudo castellan worker install && sudo systemctl daemon-reload && sudo systemctl enable --now castellan-worker",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "user", Usage: "the service `USER` (and group)", Value: defaultUser, Destination: &cfg.User},
			&cli.StringFlag{Name: "state-dir", Usage: "the worker's state `DIR` (replay store, audit log and its key)", Value: filepath.Join(varLib, defaultUser), Destination: &cfg.StateDir},
			&cli.StringFlag{Name: "unit-dir", Usage: "`DIR` the unit is written to", Value: "/etc/systemd/system", Destination: &cfg.UnitDir},
			&cli.BoolFlag{Name: "dry-run", Usage: "print what would be done, and the unit, and change nothing", Destination: &cfg.DryRun},
		},
		Action: func(c *cli.Context) error { return WorkerInstall(cfg, c.App.Writer) },
	}
}

// userName is what useradd accepts as a system user name; nothing that could end a unit line.
var userName = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// WorkerInstall writes the worker's unit and creates its state directory, or with DryRun
// says what it would do.
func WorkerInstall(cfg InstallConfig, stdout io.Writer) error {
	if cfg.stateRoot == "" {
		cfg.stateRoot = varLib
	}
	unit, err := renderWorkerUnit(cfg)
	if err != nil {
		return err
	}
	if cfg.UnitDir == "" {
		return usagef("--unit-dir is empty")
	}
	path := filepath.Join(cfg.UnitDir, unitName)
	owner, ownerErr := user.Lookup(cfg.User)
	root := os.Geteuid() == 0
	if cfg.DryRun {
		fmt.Fprintf(stdout, "would write %s (%d bytes, mode 0644)\n", path, len(unit))
		fmt.Fprintf(stdout, "would create %s (mode 0700%s)\n", cfg.StateDir, ownedBy(cfg.User, owner != nil && root))
	} else {
		if err := writeFileAtomic(path, []byte(unit), 0o644); err != nil {
			return usagef("--unit-dir: %v", err)
		}
		fmt.Fprintf(stdout, "wrote %s\n", path)
		if err := makeStateDir(cfg.StateDir, owner, root); err != nil {
			return usagef("--state-dir: %v", err)
		}
		fmt.Fprintf(stdout, "created %s (mode 0700%s)\n", cfg.StateDir, ownedBy(cfg.User, owner != nil && root))
	}
	fmt.Fprintln(stdout, "next:")
	if ownerErr != nil {
		fmt.Fprintf(stdout, "  useradd --system --home-dir %s --shell /usr/sbin/nologin %s\n", cfg.StateDir, cfg.User)
	}
	if owner == nil || !root {
		fmt.Fprintf(stdout, "  chown %s:%s %s\n", cfg.User, cfg.User, cfg.StateDir)
	}
	fmt.Fprintln(stdout, "  put worker.yaml and worker.env (0600, owned by the user) in /etc/castellan (docs/deploy.md)")
	fmt.Fprintln(stdout, "  systemctl daemon-reload && systemctl enable --now castellan-worker")
	if cfg.DryRun {
		fmt.Fprintf(stdout, "--- %s\n%s", path, unit)
	}
	return nil
}

func ownedBy(name string, chowned bool) string {
	if chowned {
		return ", owned by " + name
	}
	return ""
}

// renderWorkerUnit is the shipped unit with cfg applied: exactly deploy.WorkerUnit() for the
// defaults. A state directory under /var/lib stays systemd's StateDirectory=; anywhere else
// it is made writable (ProtectSystem=strict makes the rest read-only) and passed to the
// worker. Values are checked first: a newline or a systemd specifier in one would add
// directives to the unit.
func renderWorkerUnit(cfg InstallConfig) (string, error) {
	if !userName.MatchString(cfg.User) {
		return "", usagef("--user %q: want a system user name (lower-case letters, digits, _ and -, at most 32)", cfg.User)
	}
	dir := cfg.StateDir
	if !filepath.IsAbs(dir) || strings.ContainsAny(dir, "%\\\"' \t\r\n") || strings.ContainsFunc(dir, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", usagef("--state-dir %s: want an absolute path without spaces, quotes, backslashes or %%", strconv.Quote(dir))
	}
	dir = filepath.Clean(dir)
	unit := deploy.WorkerUnit()
	replace := func(old, new string) error {
		if !strings.Contains(unit, old) {
			return fmt.Errorf("the shipped unit has no line %q", strings.TrimSpace(old))
		}
		unit = strings.Replace(unit, old, new, 1)
		return nil
	}
	var errs []error
	if cfg.User != defaultUser {
		errs = append(errs, replace("\nUser="+defaultUser+"\n", "\nUser="+cfg.User+"\n"),
			replace("\nGroup="+defaultUser+"\n", "\nGroup="+cfg.User+"\n"))
	}
	rel, err := filepath.Rel(cfg.stateRoot, dir)
	switch {
	case err == nil && rel != "." && !strings.HasPrefix(rel, ".."):
		if rel != defaultUser {
			errs = append(errs, replace("\nStateDirectory="+defaultUser+"\n", "\nStateDirectory="+rel+"\n"))
		}
	default:
		errs = append(errs, replace("\nStateDirectory="+defaultUser+"\nStateDirectoryMode=0700\n",
			"\nReadWritePaths="+dir+"\nEnvironment=CASTELLAN_STATE_DIR="+dir+"\n"))
	}
	if err := errors.Join(errs...); err != nil {
		return "", err // a bug in this file: the shipped unit changed under it
	}
	return unit, nil
}

// makeStateDir creates dir 0700 (tightening an existing one), owned by owner when run as root.
func makeStateDir(dir string, owner *user.User, root bool) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	if owner != nil && root {
		uid, err1 := strconv.Atoi(owner.Uid)
		gid, err2 := strconv.Atoi(owner.Gid)
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		return os.Chown(dir, uid, gid)
	}
	return nil
}

// writeFileAtomic replaces path with data: a reader (systemd) sees the old file or the new one.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename there is nothing left to remove
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

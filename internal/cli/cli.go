// Package cli holds the castellan command's subcommands, one file each. Every action parses
// its flags into a config struct and calls a plain function that takes a context, the config,
// its output streams and a logger, so each command can be tested without a process. Exit
// codes are decided in one place, ExitCode, from typed errors.
package cli

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/outcome"
)

// Exit codes of the castellan command.
const (
	ExitOK         = 0
	ExitTaskFailed = 1 // the job ran and did not succeed; stderr has "<outcome>: <message>"
	ExitUsage      = 2 // bad flags, bad policy, bad input: nothing ran
)

// usageError marks a configuration or usage mistake.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// loggedUsage is a configuration or authentication failure found while a long-running
// command ran (a worker's token revoked): exit 2 like a usageError, but logged already, so
// main does not print it a second time.
type loggedUsage struct{ err error }

func (e loggedUsage) Error() string { return e.err.Error() }
func (e loggedUsage) Unwrap() error { return e.err }

// taskFailed marks a job that ran and failed; it has been reported already.
type taskFailed struct{ err error }

func (e taskFailed) Error() string { return e.err.Error() }
func (e taskFailed) Unwrap() error { return e.err }

// ExitCode maps an error returned by the app to the process exit code.
func ExitCode(err error) int {
	var tf taskFailed
	var rp reported
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &tf), errors.As(err, &rp):
		return ExitTaskFailed
	default:
		return ExitUsage
	}
}

// Unreported reports whether main must still print err: every error except a failed job,
// which the command has described already.
func Unreported(err error) bool {
	var tf taskFailed
	var lu loggedUsage
	return err != nil && !errors.As(err, &tf) && !errors.As(err, &lu)
}

// Version is set by the linker (-X) in release builds.
var Version = "dev"

// App returns the castellan command. Run it with a context that signals do not cancel:
// long-running commands (server, worker) handle SIGINT/SIGTERM themselves, in two stages;
// every other command's context is cancelled by the first signal.
func App(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:  "castellan",
		Usage: "run approved WebAssembly tasks inside your network, with credentials they can never read",
		Description: "Castellan keeps the keys: a private worker that pulls approved tasks from an outbound queue,\n" +
			"runs each in a wazero sandbox, injects credentials host-side and sends back only the result.",
		Version:         Version,
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // main decides exit codes
		Flags:           []cli.Flag{profileFlag()},
		Commands: []*cli.Command{
			runCommand(),
			serverCommand(),
			workerCommand(),
			jobCommand(),
			planCommand(),
			keygenCommand(),
			tokenCommand(),
			pluginCommand(),
			auditCommand(),
			policyCommand(),
			approverCommand(),
			demoCommand(),
			demoCRMCommand(),
			versionCommand(),
		},
	}
	cancelOnSignal(app.Commands, "server", "worker")
	var stopProfile func() error
	app.Before = func(cc *cli.Context) (err error) {
		stopProfile, err = startProfile(cc)
		return err
	}
	app.After = func(*cli.Context) error {
		if stopProfile == nil {
			return nil
		}
		return stopProfile()
	}
	return app
}

// cancelOnSignal wraps the actions of cmds (and their subcommands), except the named ones,
// so that SIGINT or SIGTERM cancels their context.
func cancelOnSignal(cmds []*cli.Command, except ...string) {
	for _, c := range cmds {
		if slices.Contains(except, c.Name) {
			continue
		}
		cancelOnSignal(c.Subcommands)
		if act := c.Action; act != nil {
			c.Action = func(cc *cli.Context) error {
				ctx, stop := signal.NotifyContext(cc.Context, os.Interrupt, syscall.SIGTERM)
				defer stop()
				cc.Context = ctx
				return act(cc)
			}
		}
	}
}

// describe prints the outcome line for a failed job.
func describe(err error) string {
	return fmt.Sprintf("%s: %s", outcome.CodeOf(err), outcome.Message(err))
}

// caFileFlag is --ca-file, shared by every command that calls the control plane over HTTPS.
func caFileFlag(dst *string) cli.Flag {
	return &cli.StringFlag{Name: "ca-file",
		Usage:   "PEM `FILE` of the CA certificates trusted for the control plane's TLS, instead of the system roots (which $SSL_CERT_FILE also replaces)",
		EnvVars: []string{"CASTELLAN_CA_FILE"}, Destination: dst}
}

// controlPlaneCA returns the client option that makes the control plane's TLS certificate
// verify against the CA certificates in file (none when file is ""). Like curl --cacert
// and VAULT_CACERT, the file replaces the system roots rather than adding to them: a
// private control plane has no reason to accept a public CA's certificate.
func controlPlaneCA(file string) (client.Option, error) {
	if file == "" {
		return func(*client.Client) {}, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, usagef("--ca-file: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, usagef("--ca-file %s: no PEM certificate in it", file)
	}
	return client.WithRootCAs(pool), nil
}

// systemdStateDir is the first directory of $STATE_DIRECTORY, which systemd sets for a unit
// with StateDirectory= (several are separated by colons), or "" outside such a unit. Under
// ProtectHome= and ProtectSystem=strict it is the only place a service may keep state.
func systemdStateDir() string {
	d, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":")
	return d
}

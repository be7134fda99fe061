// Package cli holds the castellan command's subcommands, one file each. Every action parses
// its flags into a config struct and calls a plain function that takes a context, the config,
// its output streams and a logger, so each command can be tested without a process. Exit
// codes are decided in one place, ExitCode, from typed errors.
package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

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

// taskFailed marks a job that ran and failed; it has been reported already.
type taskFailed struct{ err error }

func (e taskFailed) Error() string { return e.err.Error() }
func (e taskFailed) Unwrap() error { return e.err }

// ExitCode maps an error returned by the app to the process exit code.
func ExitCode(err error) int {
	var tf taskFailed
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &tf):
		return ExitTaskFailed
	default:
		return ExitUsage
	}
}

// Version is set by the linker (-X) in release builds.
var Version = "dev"

// App returns the castellan command.
func App(stdout, stderr io.Writer) *cli.App {
	return &cli.App{
		Name:  "castellan",
		Usage: "run approved WebAssembly tasks inside your network, with credentials they can never read",
		Description: "Castellan keeps the keys: a private worker that pulls approved tasks from an outbound queue,\n" +
			"runs each in a wazero sandbox, injects credentials host-side and sends back only the result.",
		Version:         Version,
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // main decides exit codes
		Commands: []*cli.Command{
			runCommand(),
			serverCommand(),
			workerCommand(),
			jobCommand(),
			keygenCommand(),
			tokenCommand(),
			pluginCommand(),
			auditCommand(),
			policyCommand(),
			demoCommand(),
			demoCRMCommand(),
			versionCommand(),
		},
	}
}

// describe prints the outcome line for a failed job.
func describe(err error) string {
	return fmt.Sprintf("%s: %s", outcome.CodeOf(err), outcome.Message(err))
}

// Command castellan is the Castellan worker, control plane and tooling in one binary.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/castellan-dev/castellan/internal/cli"
)

func main() {
	// No signal handling here: each command decides (cli.App), because the server and the
	// worker need two-stage shutdown, which a context cancelled on the first signal cannot give.
	err := cli.App(os.Stdout, os.Stderr).RunContext(context.Background(), os.Args)
	if cli.Unreported(err) {
		fmt.Fprintf(os.Stderr, "castellan: %v\n", err)
	}
	os.Exit(cli.ExitCode(err))
}

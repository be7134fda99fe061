// Command castellan is the Castellan worker, control plane and tooling in one binary.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/castellan-dev/castellan/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cli.App(os.Stdout, os.Stderr).RunContext(ctx, os.Args)
	code := cli.ExitCode(err)
	if err != nil && code == cli.ExitUsage {
		fmt.Fprintf(os.Stderr, "castellan: %v\n", err)
	}
	os.Exit(code)
}

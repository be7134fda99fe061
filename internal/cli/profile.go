package cli

import (
	"fmt"
	"os"
	"runtime/pprof"

	"github.com/urfave/cli/v2"
)

// profileFlag writes a CPU profile of the whole process to a file, from start to a clean exit
// (for server and worker: SIGINT or SIGTERM). It is a file rather than a pprof HTTP endpoint
// so that profiling a worker opens no port. Read it with `go tool pprof castellan FILE`.
func profileFlag() cli.Flag {
	return &cli.StringFlag{
		Name:  "cpu-profile",
		Usage: "write a CPU profile of this process to `FILE` when it exits cleanly (go tool pprof reads it)",
	}
}

// startProfile starts the CPU profile named by --cpu-profile and returns the function that
// stops it and closes the file.
func startProfile(cc *cli.Context) (stop func() error, err error) {
	name := cc.String("cpu-profile")
	if name == "" {
		return func() error { return nil }, nil
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, usagef("--cpu-profile: %v", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, usagef("--cpu-profile %s: %v", name, err)
	}
	return func() error {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			return fmt.Errorf("--cpu-profile %s: %w", name, err)
		}
		return nil
	}, nil
}

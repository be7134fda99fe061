package cli

import (
	"fmt"
	goruntime "runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/hostfuncs"
)

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, the host ABI and the sandbox engine",
		Action: func(c *cli.Context) error {
			wazero := "unknown"
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, d := range bi.Deps {
					if d.Path == "github.com/tetratelabs/wazero" {
						wazero = d.Version
					}
				}
			}
			_, err := fmt.Fprintf(c.App.Writer, "castellan %s\nhost ABI %s\nwazero %s\n%s %s/%s\n",
				Version, hostfuncs.ModuleName, wazero, goruntime.Version(), goruntime.GOOS, goruntime.GOARCH)
			return err
		},
	}
}

// Command gofiles is a hostile Go task that reads files. Linking the os file API makes the
// module import WASI filesystem functions, so it must be refused at load, before any job.
package main

import (
	"os"

	castellan "github.com/castellan-dev/castellan/sdk/go"
)

func main() {}

func init() {
	castellan.Handle(func(ctx *castellan.Context) error {
		b, err := os.ReadFile("/etc/passwd")
		if err != nil {
			return err
		}
		return ctx.Output(b)
	})
}

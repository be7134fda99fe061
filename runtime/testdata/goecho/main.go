// Command goecho is the trivial Go task of the benchmarks: it copies its input to its output.
package main

import castellan "github.com/castellan-dev/castellan/sdk/go"

func main() {}

func init() {
	castellan.Handle(func(ctx *castellan.Context) error { return ctx.Output(ctx.Input()) })
}

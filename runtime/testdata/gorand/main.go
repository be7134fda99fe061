// Command gorand reports what a Go task's random sources give it: the first number of
// math/rand's global source (seeded by the Go runtime when it starts, in _initialize) and
// eight bytes from crypto/rand (read from WASI random_get when called). Jobs served from one
// snapshot share the first and not the second.
package main

import (
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"math/rand"

	castellan "github.com/castellan-dev/castellan/sdk/go"
)

func main() {}

func init() {
	castellan.Handle(func(ctx *castellan.Context) error {
		b := make([]byte, 8)
		if _, err := crand.Read(b); err != nil {
			return err
		}
		return ctx.Output(fmt.Appendf(nil, "%d %s", rand.Int63(), hex.EncodeToString(b)))
	})
}

//go:build !unix

package e2e

import "time"

// processCPU is not measured on this platform; the cpu-µs/op metric then reads 0.
func processCPU() time.Duration { return 0 }

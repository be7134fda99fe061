//go:build wasip1

package castellan

import "github.com/castellan-dev/castellan/sdk/go/internal/abi"

// run is the module's entry function, called by the worker once per job after
// _initialize. It lives here rather than in the task's main package so that every task
// gets the same error and panic handling.
//
//go:wasmexport run
func run() int32 { return invoke(abi.Imports{}, handler) }

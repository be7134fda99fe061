package castellan

import "github.com/castellan-dev/castellan/sdk/go/internal/abi"

// castellantest drives handlers through abi.Entry with its own fake host, one per call, so
// that parallel tests do not share state. It works in every build, wasip1 included, so task
// tests can also run inside a wasm runtime.
func init() {
	abi.Entry = func(host abi.Host, h any) int32 {
		fn, _ := h.(func(*Context) error)
		if hh, ok := h.(Handler); ok {
			fn = hh
		}
		return invoke(host, fn)
	}
}

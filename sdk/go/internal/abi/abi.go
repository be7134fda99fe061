// Package abi is the seam between the Castellan guest SDK and whatever plays the host.
//
// In a wasip1 build the host is the real worker, reached through the castellan_v1
// wasmimport functions declared in abi_wasip1.go. In every other build the host is an
// in-process fake (package castellantest), so task authors can test their handlers with
// plain `go test`. The SDK only ever talks to a Host value, which keeps both builds on the
// same code path and lets concurrent tests each use their own fake.
//
// The methods mirror docs/abi.md one for one, with Go slices in place of (ptr, len) pairs.
package abi

// Error codes returned by the host, as listed in docs/abi.md.
const (
	EInvalid      int32 = -1
	EUpstream     int32 = -2
	ETooLarge     int32 = -3
	EBadHandle    int32 = -4
	ETooManyOpen  int32 = -5
	ENotInJob     int32 = -6
	MaxOpen             = 8 // responses that may be open at once
	MaxFailLength       = 4 << 10
)

// Host is the castellan_v1 import module seen from Go.
type Host interface {
	InputSize() int32
	InputRead(buf []byte) int32
	OutputWrite(b []byte) int32
	Fail(msg string) int32
	Log(level int32, msg string) int32
	HTTPRequest(endpoint, method, target string, headers, body []byte) int32
	HTTPStatus(handle int32) int32
	HTTPHeaderSize(handle int32) int32
	HTTPHeaderRead(handle int32, buf []byte) int32
	HTTPBodyRead(handle int32, buf []byte) int32
	HTTPClose(handle int32) int32
}

// Entry runs handler (a func(*castellan.Context) error) against host exactly as the run
// export does, and returns what run would return. Package castellan sets it in its init;
// castellantest calls it with a fake host. It is typed loosely because this package cannot
// name castellan's types without an import cycle.
var Entry func(host Host, handler any) int32

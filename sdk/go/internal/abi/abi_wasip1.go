//go:build wasip1

package abi

import (
	"runtime"
	"unsafe"
)

// Imports is the real host: every method is one castellan_v1 call. The host copies straight
// into or out of the Go slice's backing array, so each transfer is a single copy.
type Imports struct{}

var _ Host = Imports{}

// ptr returns the address of b's first byte, or 0 for an empty slice: the host must not be
// handed a dangling pointer to a zero-size allocation.
func ptr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(unsafe.SliceData(b))
}

func sptr(s string) unsafe.Pointer {
	if len(s) == 0 {
		return nil
	}
	return unsafe.Pointer(unsafe.StringData(s))
}

func (Imports) InputSize() int32 { return inputSize() }

func (Imports) InputRead(buf []byte) int32 {
	n := inputRead(ptr(buf), uint32(len(buf)))
	runtime.KeepAlive(buf)
	return n
}

func (Imports) OutputWrite(b []byte) int32 {
	n := outputWrite(ptr(b), uint32(len(b)))
	runtime.KeepAlive(b)
	return n
}

func (Imports) Fail(msg string) int32 {
	n := fail(sptr(msg), uint32(len(msg)))
	runtime.KeepAlive(msg)
	return n
}

func (Imports) Log(level int32, msg string) int32 {
	n := log(level, sptr(msg), uint32(len(msg)))
	runtime.KeepAlive(msg)
	return n
}

func (Imports) HTTPRequest(endpoint, method, target string, headers, body []byte) int32 {
	h := httpRequest(
		sptr(endpoint), uint32(len(endpoint)),
		sptr(method), uint32(len(method)),
		sptr(target), uint32(len(target)),
		ptr(headers), uint32(len(headers)),
		ptr(body), uint32(len(body)),
	)
	runtime.KeepAlive(endpoint)
	runtime.KeepAlive(method)
	runtime.KeepAlive(target)
	runtime.KeepAlive(headers)
	runtime.KeepAlive(body)
	return h
}

func (Imports) HTTPStatus(handle int32) int32     { return httpStatus(handle) }
func (Imports) HTTPHeaderSize(handle int32) int32 { return httpHeaderSize(handle) }

func (Imports) HTTPHeaderRead(handle int32, buf []byte) int32 {
	n := httpHeaderRead(handle, ptr(buf), uint32(len(buf)))
	runtime.KeepAlive(buf)
	return n
}

func (Imports) HTTPBodyRead(handle int32, buf []byte) int32 {
	n := httpBodyRead(handle, ptr(buf), uint32(len(buf)))
	runtime.KeepAlive(buf)
	return n
}

func (Imports) HTTPClose(handle int32) int32 { return httpClose(handle) }

//go:wasmimport castellan_v1 input_size
func inputSize() int32

//go:wasmimport castellan_v1 input_read
func inputRead(ptr unsafe.Pointer, n uint32) int32

//go:wasmimport castellan_v1 output_write
func outputWrite(ptr unsafe.Pointer, n uint32) int32

//go:wasmimport castellan_v1 fail
func fail(ptr unsafe.Pointer, n uint32) int32

//go:wasmimport castellan_v1 log
func log(level int32, ptr unsafe.Pointer, n uint32) int32

//go:wasmimport castellan_v1 http_request
func httpRequest(endpoint unsafe.Pointer, endpointLen uint32, method unsafe.Pointer, methodLen uint32,
	target unsafe.Pointer, targetLen uint32, headers unsafe.Pointer, headersLen uint32,
	body unsafe.Pointer, bodyLen uint32) int32

//go:wasmimport castellan_v1 http_status
func httpStatus(handle int32) int32

//go:wasmimport castellan_v1 http_header_size
func httpHeaderSize(handle int32) int32

//go:wasmimport castellan_v1 http_header_read
func httpHeaderRead(handle int32, ptr unsafe.Pointer, n uint32) int32

//go:wasmimport castellan_v1 http_body_read
func httpBodyRead(handle int32, ptr unsafe.Pointer, n uint32) int32

//go:wasmimport castellan_v1 http_close
func httpClose(handle int32) int32

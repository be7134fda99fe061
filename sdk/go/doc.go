// Package castellan is the Go SDK for Castellan tasks: small WebAssembly modules that a
// Castellan worker runs, one fresh instance per job, and that may call internal HTTP APIs
// only through the worker, which holds the credentials and enforces the security team's
// policy.
//
// A task is a main package that registers one handler and is built as a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -ldflags=-s -o task.wasm .
//
// The SDK owns the module's run export, so a task has no ABI code of its own:
//
//	package main
//
//	import (
//		"fmt"
//
//		castellan "github.com/castellan-dev/castellan/sdk/go"
//	)
//
//	func main() {} // required by the Go toolchain; never called in a reactor
//
//	func init() { castellan.Handle(lookup) }
//
//	func lookup(ctx *castellan.Context) error {
//		var in struct {
//			CustomerID string `json:"customer_id"`
//		}
//		if err := ctx.DecodeInput(&in); err != nil {
//			return err
//		}
//		resp, err := ctx.HTTP("crm").Get("/api/customers/" + in.CustomerID)
//		if err != nil {
//			return err // wraps castellan.ErrUpstream if the CRM is unreachable
//		}
//		defer resp.Close()
//		if resp.Status != 200 {
//			return fmt.Errorf("crm returned HTTP %d", resp.Status)
//		}
//		var customer struct {
//			Name string `json:"name"`
//		}
//		if err := resp.JSON(&customer); err != nil {
//			return err
//		}
//		ctx.Infof("found customer %s", in.CustomerID)
//		return ctx.EncodeOutput(map[string]string{"name": customer.Name})
//	}
//
// # Why the handler looks like this
//
// The handler returns an error instead of calling a fail function: the run export turns a
// non-nil error into the job's failure message (and a panic into "panic: ..."), so a task
// cannot forget to report failure, or report it and then carry on.
//
// Endpoints are names, not URLs. ctx.HTTP("crm") refers to whatever base URL and credential
// the policy gives "crm"; the task only chooses the method, the path and a few harmless
// headers. A request the policy does not allow is not an error the task can inspect: the
// worker ends the job as denied, so a task cannot map the policy by trial and error.
// Transient failures (ErrUpstream, ErrTooLarge, ErrTooManyOpen, ...) are returned as errors
// that errors.Is recognises.
//
// Work done in init is done once per module version, not per job: the worker runs the
// module's initialisation once and starts every job from a snapshot of the state it leaves.
// Build what every job needs there; PrepareJSON builds encoding/json's caches for the task's
// types, which would otherwise cost every job more than the rest of a small handler.
//
// Response bodies stream: the worker never buffers a whole body, and the SDK asks it to
// write each chunk directly into the task's buffer, so large responses cost one copy.
//
// The SDK avoids net/http, which would add megabytes to every module; Header has the same
// shape as http.Header, so http.Header(resp.Header) converts it if needed.
//
// # Testing
//
// Outside wasm, the same API runs against an in-process fake worker: see package
// castellantest, which serves endpoints from ordinary http.Handlers so that a task's logic
// can be tested with `go test`.
//
// The host interface this package wraps is specified in docs/abi.md.
package castellan

package castellan

import (
	"encoding/json"
	"fmt"
	"reflect"
	"runtime/debug"

	"github.com/castellan-dev/castellan/sdk/go/internal/abi"
)

// Handler is a task's entry point. It runs once per job, on a fresh instance. Returning nil
// means success; returning an error fails the job with err.Error() as its message.
type Handler func(*Context) error

var handler Handler

// Handle registers the task's handler. Call it from an init function: Go's reactor build
// runs package initialisers in _initialize, before the host calls run. A later call replaces
// an earlier one. Handle panics if h is nil.
func Handle(h func(*Context) error) {
	if h == nil {
		panic("castellan.Handle: nil handler")
	}
	handler = h
}

// PrepareJSON builds encoding/json's caches for the types of values (struct field lists,
// encoders), which encoding/json otherwise builds on first use, in the job. Call it from an
// init function with a value of every type the task decodes or encodes as JSON:
//
//	func init() {
//		castellan.Handle(lookup)
//		castellan.PrepareJSON(Input{}, Output{})
//	}
//
// The worker runs init once per module and starts every job from the state it leaves (see
// docs/writing-tasks.md), so work done here is not paid again per job; in a Go task
// compiled to WebAssembly, building those caches costs more than the rest of a small job.
// Errors are ignored: a value that cannot be encoded fails the same way in the job.
func PrepareJSON(values ...any) {
	for _, v := range values {
		b, err := json.Marshal(v)
		if err != nil || v == nil {
			continue
		}
		// Decoding what was encoded takes every field's decoding path once.
		_ = json.Unmarshal(b, reflect.New(reflect.TypeOf(v)).Interface())
	}
}

// prepared are the values the SDK itself decodes and encodes in a typical job, so that
// encoding/json's and fmt's shared state (scanner and encoder pools, the encoders of the
// basic types) is built at init, not in the first job of every instance.
type prepared struct {
	S  string            `json:"s"`
	N  int               `json:"n"`
	F  float64           `json:"f"`
	B  bool              `json:"b"`
	L  []string          `json:"l"`
	M  map[string]string `json:"m"`
	A  any               `json:"a"`
	P  *int              `json:"p,omitempty"`
	I  int64             `json:"i,string"`
	By []byte            `json:"by"`
}

func init() {
	one := 1
	PrepareJSON(prepared{S: "s", N: 1, F: 1.5, B: true, L: []string{"x"}, M: map[string]string{"k": "v"}, A: map[string]any{"x": []any{1.0, "y", nil}}, P: &one, I: 2, By: []byte("b")})
	var m map[string]any
	_ = json.Unmarshal([]byte(`{"a":[1,"b",true,null,{"c":1.5}]}`), &m)
	_ = fmt.Errorf("%s %d %v %q %x %T: %w", "s", 1, m, "q", 255, m, ErrInvalid)
}

// invoke is the body of the run export: it calls h with a fresh Context and turns the result
// (an error, a panic, or a missing handler) into the entry's return value and a fail message.
func invoke(host abi.Host, h Handler) (code int32) {
	ctx := &Context{host: host}
	defer func() {
		// recover returns nil when the goroutine is ending through runtime.Goexit (how the
		// fake host ends a job), so a host-ended job is never reported as a task panic.
		if r := recover(); r != nil {
			ctx.Log(LevelError, fmt.Sprintf("panic: %v\n%s", r, debug.Stack()))
			host.Fail(fmt.Sprintf("panic: %v", r))
			code = 1
		}
	}()
	if h == nil {
		host.Fail("castellan: no handler registered: call castellan.Handle(yourFunc) from an init function in package main")
		return 1
	}
	if err := h(ctx); err != nil {
		msg := err.Error()
		if msg == "" {
			msg = fmt.Sprintf("task failed with an empty %T error", err)
		}
		host.Fail(msg)
		return 1
	}
	return 0
}

// Context is the job as the handler sees it: its input, its output, its log, and the
// endpoints it may call. It is valid only during the handler call and is not safe for
// concurrent use.
type Context struct {
	host      abi.Host
	input     []byte
	inputRead bool
}

// Input returns the job input: JSON that the control plane validated against the task's
// schema. It is read from the host once and cached; the caller must not modify it.
func (c *Context) Input() []byte {
	if !c.inputRead {
		c.inputRead = true
		if n := c.host.InputSize(); n > 0 {
			buf := make([]byte, n)
			c.input = buf[:c.host.InputRead(buf)]
		}
	}
	return c.input
}

// DecodeInput unmarshals the job input as JSON into v.
func (c *Context) DecodeInput(v any) error {
	in := c.Input()
	if len(in) == 0 {
		return fmt.Errorf("castellan: decoding job input: the input is empty, want a JSON value")
	}
	if err := json.Unmarshal(in, v); err != nil {
		return fmt.Errorf("castellan: decoding job input: %w", err)
	}
	return nil
}

// Output appends b to the job output. Output may be called several times; the pieces are
// concatenated. Going past the task's output limit ends the job at once (outcome
// output_too_large): the host does not return.
func (c *Context) Output(b []byte) error {
	if r := c.host.OutputWrite(b); r < 0 {
		return fmt.Errorf("castellan: writing output: %w", Errno(r))
	}
	return nil
}

// EncodeOutput writes v, marshalled as JSON, as the job output.
func (c *Context) EncodeOutput(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("castellan: encoding output: %w", err)
	}
	return c.Output(b)
}

// Level is a log level.
type Level int32

const (
	LevelDebug Level = 0
	LevelInfo  Level = 1
	LevelWarn  Level = 2
	LevelError Level = 3
)

func (l Level) String() string {
	switch l {
	case LevelDebug:
		return "debug"
	case LevelInfo:
		return "info"
	case LevelWarn:
		return "warn"
	case LevelError:
		return "error"
	}
	return fmt.Sprintf("Level(%d)", int32(l))
}

// Log writes one line to the worker's local log, tagged with the task and the job. Lines past
// the task's log budget are dropped silently, and the worker redacts credentials from them.
// An unknown level is logged as LevelError rather than lost.
func (c *Context) Log(level Level, msg string) {
	if level < LevelDebug || level > LevelError {
		level = LevelError
	}
	c.host.Log(int32(level), msg)
}

// Debugf logs at LevelDebug, formatting as fmt.Sprintf does.
func (c *Context) Debugf(format string, args ...any) { c.Log(LevelDebug, fmt.Sprintf(format, args...)) }

// Infof logs at LevelInfo, formatting as fmt.Sprintf does.
func (c *Context) Infof(format string, args ...any) { c.Log(LevelInfo, fmt.Sprintf(format, args...)) }

// Warnf logs at LevelWarn, formatting as fmt.Sprintf does.
func (c *Context) Warnf(format string, args ...any) { c.Log(LevelWarn, fmt.Sprintf(format, args...)) }

// Errorf logs at LevelError, formatting as fmt.Sprintf does. It does not fail the job:
// return an error from the handler for that.
func (c *Context) Errorf(format string, args ...any) { c.Log(LevelError, fmt.Sprintf(format, args...)) }

// HTTP returns the endpoint the policy calls name (for example "crm"). It does no I/O:
// an unknown name is only noticed by the host when a request is sent, and then ends the job
// as denied.
func (c *Context) HTTP(name string) *Endpoint {
	return &Endpoint{host: c.host, name: name}
}

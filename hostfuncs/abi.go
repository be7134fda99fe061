package hostfuncs

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
)

// ModuleName is the import module of ABI version 1.
const ModuleName = "castellan_v1"

// Error codes returned to the guest (docs/abi.md).
const (
	errInvalid     = -1
	errUpstream    = -2
	errTooLarge    = -3
	errBadHandle   = -4
	errTooManyOpen = -5
	errNotInJob    = -6
)

// MaxOpenResponses bounds the responses a job may hold open at once.
const MaxOpenResponses = 8

// MaxFailMessage bounds the message a task may report with fail; longer ones are truncated.
const MaxFailMessage = 4 << 10

// WASIFunctions returns the WASI preview 1 subset a module may import: what ordinary Go, Rust,
// C and AssemblyScript toolchains emit for a program that uses no files, sockets, environment
// or arguments. Everything else in WASI (path_*, sock_*, fd_readdir, ...) is refused at load.
// It returns a new slice each time, so that no importer can widen the allow-list the import
// check uses.
func WASIFunctions() []string { return slices.Clone(wasiFunctions) }

var wasiFunctions = []string{
	"args_get", "args_sizes_get", "environ_get", "environ_sizes_get",
	"clock_time_get", "clock_res_get", "random_get",
	"fd_write", "fd_read", "fd_close", "fd_fdstat_get", "fd_fdstat_set_flags", "fd_seek",
	"fd_prestat_get", "fd_prestat_dir_name",
	"proc_exit", "sched_yield", "poll_oneoff",
}

// Instantiate defines the castellan_v1 host module and the WASI subset in r. Call it once per
// runtime, before compiling guests into it.
func Instantiate(ctx context.Context, r wazero.Runtime) error {
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, r); err != nil {
		return fmt.Errorf("instantiate WASI: %w", err)
	}
	b := r.NewHostModuleBuilder(ModuleName)
	for _, f := range functions {
		b.NewFunctionBuilder().
			WithGoModuleFunction(f.fn, f.params, []api.ValueType{i32}).
			WithParameterNames(f.names...).
			Export(f.name)
	}
	if _, err := b.Instantiate(ctx); err != nil {
		return fmt.Errorf("instantiate %s: %w", ModuleName, err)
	}
	return nil
}

const i32 = api.ValueTypeI32

type hostFunc struct {
	name   string
	names  []string
	params []api.ValueType
	fn     api.GoModuleFunc
}

func params(n int) []api.ValueType {
	p := make([]api.ValueType, n)
	for i := range p {
		p[i] = i32
	}
	return p
}

var functions = []hostFunc{
	{"input_size", nil, nil, inputSize},
	{"input_read", []string{"ptr", "len"}, params(2), inputRead},
	{"output_write", []string{"ptr", "len"}, params(2), outputWrite},
	{"fail", []string{"ptr", "len"}, params(2), fail},
	{"log", []string{"level", "ptr", "len"}, params(3), logLine},
	{"http_request", []string{"endpoint_ptr", "endpoint_len", "method_ptr", "method_len",
		"target_ptr", "target_len", "headers_ptr", "headers_len", "body_ptr", "body_len"}, params(10), httpRequest},
	{"http_status", []string{"handle"}, params(1), httpStatus},
	{"http_header_size", []string{"handle"}, params(1), httpHeaderSize},
	{"http_header_read", []string{"handle", "ptr", "len"}, params(3), httpHeaderRead},
	{"http_body_read", []string{"handle", "ptr", "len"}, params(3), httpBodyRead},
	{"http_close", []string{"handle"}, params(1), httpClose},
}

// Import is one function a module imports, as the security audit shows it.
type Import struct {
	Module  string
	Name    string
	Params  []string
	Results []string
}

func (i Import) String() string {
	return fmt.Sprintf("%s.%s(%s) -> (%s)", i.Module, i.Name, strings.Join(i.Params, ", "), strings.Join(i.Results, ", "))
}

// ImportsOf lists the functions a compiled module imports, sorted.
func ImportsOf(m wazero.CompiledModule) []Import {
	var out []Import
	for _, d := range m.ImportedFunctions() {
		mod, name, _ := d.Import()
		out = append(out, Import{Module: mod, Name: name, Params: typeNames(d.ParamTypes()), Results: typeNames(d.ResultTypes())})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Module != out[j].Module {
			return out[i].Module < out[j].Module
		}
		return out[i].Name < out[j].Name
	})
	return out
}

func typeNames(ts []api.ValueType) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = api.ValueTypeName(t)
	}
	return out
}

// CheckImports returns the imports of m that the sandbox does not offer: functions of another
// module, WASI functions outside WASIFunctions, castellan_v1 functions that do not exist or
// have another signature, and any imported memory. The signatures of permitted imports are
// compared against what r actually provides. wazero's CompiledModule does not list imported
// tables and globals: the runtime refuses those from the module's import section before
// compiling it.
func CheckImports(r wazero.Runtime, m wazero.CompiledModule) []string {
	provided := map[string]api.FunctionDefinition{}
	for _, modName := range []string{ModuleName, wasi_snapshot_preview1.ModuleName} {
		if hm := r.Module(modName); hm != nil {
			for name, d := range hm.ExportedFunctionDefinitions() {
				provided[modName+"."+name] = d
			}
		}
	}
	allowedWASI := map[string]bool{}
	for _, n := range wasiFunctions {
		allowedWASI[n] = true
	}
	var bad []string
	seen := map[string]bool{}
	for _, imp := range ImportsOf(m) {
		key := imp.Module + "." + imp.Name
		if seen[imp.String()] {
			continue // toolchains may import the same function twice
		}
		seen[imp.String()] = true
		switch {
		case imp.Module == wasi_snapshot_preview1.ModuleName && !allowedWASI[imp.Name]:
			bad = append(bad, imp.String()+": WASI function not offered (no filesystem, sockets or process control)")
			continue
		case imp.Module != ModuleName && imp.Module != wasi_snapshot_preview1.ModuleName:
			bad = append(bad, imp.String()+": unknown import module")
			continue
		}
		d, ok := provided[key]
		if !ok {
			bad = append(bad, imp.String()+": no such function in "+imp.Module)
			continue
		}
		if !sameTypes(typeNames(d.ParamTypes()), imp.Params) || !sameTypes(typeNames(d.ResultTypes()), imp.Results) {
			want := Import{Module: imp.Module, Name: imp.Name, Params: typeNames(d.ParamTypes()), Results: typeNames(d.ResultTypes())}
			bad = append(bad, imp.String()+": wrong signature, want "+want.String())
		}
	}
	for _, d := range m.ImportedMemories() {
		mod, name, _ := d.Import()
		bad = append(bad, fmt.Sprintf("memory %s.%s: modules must define and export their own memory", mod, name))
	}
	return bad
}

func sameTypes(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

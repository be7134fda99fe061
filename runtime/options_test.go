package runtime_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/runtime"
)

// numericFields lists the paths ("Limits.HTTPCalls") of every exported number in struct type
// t and the structs in it, so that a field added later is covered by the tests below without
// anyone remembering to add it.
func numericFields(t reflect.Type, prefix string) []string {
	var paths []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		switch f.Type.Kind() {
		case reflect.Struct:
			paths = append(paths, numericFields(f.Type, prefix+f.Name+".")...)
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
			reflect.Float32, reflect.Float64:
			paths = append(paths, prefix+f.Name)
		}
	}
	return paths
}

// fieldOf returns the field at path inside the struct v points to.
func fieldOf(v reflect.Value, path string) reflect.Value {
	for _, name := range strings.Split(path, ".") {
		v = v.FieldByName(name)
	}
	return v
}

// setNegative sets a signed field to -1; it reports false for an unsigned one, which cannot
// be negative.
func setNegative(f reflect.Value) bool {
	switch f.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		f.SetInt(-1)
	case reflect.Float32, reflect.Float64:
		f.SetFloat(-1)
	default:
		return false
	}
	return true
}

// TestNegativeOptionsAreRefused: every number in Config and ModuleConfig (Limits and
// LoadLimits included) set to -1 is refused by NewEngine or Load, naming the field.
func TestNegativeOptionsAreRefused(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	wasm := fixture(t, "echo")
	signed := 0
	for _, path := range numericFields(reflect.TypeFor[runtime.ModuleConfig](), "") {
		cfg := runtime.ModuleConfig{Name: "echo", Wasm: wasm}
		if !setNegative(fieldOf(reflect.ValueOf(&cfg).Elem(), path)) {
			continue
		}
		signed++
		_, err := e.Load(t.Context(), cfg)
		if want := "runtime.ModuleConfig." + path + " is -1"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Load with %s = -1: error = %v, want one naming %q", path, err, want)
		}
	}
	for _, path := range numericFields(reflect.TypeFor[runtime.Config](), "") {
		var cfg runtime.Config
		if !setNegative(fieldOf(reflect.ValueOf(&cfg).Elem(), path)) {
			continue
		}
		signed++
		e, err := runtime.NewEngine(cfg)
		if err == nil {
			_ = e.Close(t.Context())
		}
		if want := "runtime.Config." + path + " is -1"; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewEngine with %s = -1: error = %v, want one naming %q", path, err, want)
		}
	}
	if signed < 10 {
		t.Fatalf("checked %d signed fields, want every one of Limits, LoadLimits and PoolSize", signed)
	}
}

// TestZeroLimitsTakeTheDocumentedDefaults: a zero number in Limits or LoadLimits means its
// documented default. Every number must be listed here with its default, so a new field
// cannot go without one.
func TestZeroLimitsTakeTheDocumentedDefaults(t *testing.T) {
	t.Parallel()
	limitDefaults := map[string]any{
		"MemoryPages": uint32(runtime.DefaultMemoryPages),
		"Timeout":     runtime.DefaultTimeout,
		"OutputBytes": int64(runtime.DefaultOutputBytes),
		"HTTPCalls":   runtime.DefaultHTTPCalls,
		"LogBytes":    int64(runtime.DefaultLogBytes),
	}
	m := load(t, newEngine(t), "echo", runtime.Limits{})
	got := reflect.ValueOf(m.Limits())
	for _, path := range numericFields(reflect.TypeFor[runtime.Limits](), "") {
		want, ok := limitDefaults[path]
		if !ok {
			t.Errorf("Limits.%s has no documented default in this test", path)
			continue
		}
		if v := fieldOf(got, path).Interface(); v != want {
			t.Errorf("Limits{}: effective %s = %v, want the default %v", path, v, want)
		}
	}

	loadDefaults := map[string]any{
		"ModuleBytes":       int64(runtime.DefaultModuleBytes),
		"Functions":         runtime.DefaultFunctions,
		"FunctionBodyBytes": runtime.DefaultFunctionBodyBytes,
		"FunctionLocals":    runtime.DefaultFunctionLocals,
		"TableElements":     int64(runtime.DefaultTableElements),
		"CompileTimeout":    runtime.DefaultCompileTimeout * runtime.DefaultCompileScale,
	}
	ll, err := runtime.EffectiveLoadLimits(runtime.LoadLimits{})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range numericFields(reflect.TypeFor[runtime.LoadLimits](), "") {
		want, ok := loadDefaults[path]
		if !ok {
			t.Errorf("LoadLimits.%s has no documented default in this test", path)
			continue
		}
		if v := fieldOf(reflect.ValueOf(ll), path).Interface(); v != want {
			t.Errorf("LoadLimits{}: effective %s = %v, want the default %v", path, v, want)
		}
	}
}

// TestNoneIsAFieldOfItsOwn: "allow nothing" is said by a No… field, never by a number; the
// effective limits keep it, so that they mean the same when given back to Load, and a limit
// set beside its No… field is refused.
func TestNoneIsAFieldOfItsOwn(t *testing.T) {
	t.Parallel()
	e := newEngine(t)
	none := runtime.Limits{NoOutput: true, NoHTTPCalls: true, NoLogs: true, Timeout: time.Second}
	m := load(t, e, "echo", none)
	if got := m.Limits(); got.OutputBytes != 0 || got.HTTPCalls != 0 || got.LogBytes != 0 || !got.NoOutput || !got.NoHTTPCalls || !got.NoLogs {
		t.Fatalf("Limits() = %+v, want no output, calls or logs", got)
	}
	again := load(t, e, "echo", m.Limits())
	if again.Limits() != m.Limits() {
		t.Fatalf("Load(Limits()) = %+v, want %+v", again.Limits(), m.Limits())
	}
	for _, tt := range []struct {
		cfg  runtime.ModuleConfig
		want string
	}{
		{runtime.ModuleConfig{Limits: runtime.Limits{OutputBytes: 1, NoOutput: true}}, "OutputBytes is 1 and NoOutput is set"},
		{runtime.ModuleConfig{Limits: runtime.Limits{HTTPCalls: 1, NoHTTPCalls: true}}, "HTTPCalls is 1 and NoHTTPCalls is set"},
		{runtime.ModuleConfig{Limits: runtime.Limits{LogBytes: 1, NoLogs: true}}, "LogBytes is 1 and NoLogs is set"},
		{runtime.ModuleConfig{PoolSize: 1, NoPool: true}, "PoolSize is 1 and NoPool is set"},
	} {
		tt.cfg.Name, tt.cfg.Wasm = "echo", fixture(t, "echo")
		if _, err := e.Load(t.Context(), tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Load(%+v) = %v, want an error %q", tt.cfg.Limits, err, tt.want)
		}
	}
}

package tasks

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/runtime"
)

// loadEcho loads runtime/testdata/echo.wasm (its output is its input) as task "echo" of a
// policy with the given extra task keys, and the schema files given by name.
func loadEcho(t *testing.T, taskKeys string, files map[string]string) (*Set, error) {
	t.Helper()
	dir := t.TempDir()
	wasm, err := os.ReadFile("../../runtime/testdata/echo.wasm")
	if err != nil {
		t.Fatal(err)
	}
	files["echo.wasm"] = string(wasm)
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	yaml := "version: 1\ntasks:\n  echo:\n    module: echo.wasm\n" + taskKeys
	pol, err := policy.Parse("policy.yaml", []byte(yaml), dir)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := runtime.NewEngine(runtime.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = engine.Close(context.Background()) })
	s, err := Load(context.Background(), Options{Policy: pol, Engine: engine, NoPool: true})
	if err == nil {
		t.Cleanup(func() { s.Close(context.Background()) })
	}
	return s, err
}

const customerSchema = `{"type":"object","required":["id","email"],"additionalProperties":false,
 "properties":{"id":{"type":"integer"},"email":{"type":"string","pattern":"^[^@]+@example\\.com$"},
 "tags":{"type":"array","items":{"enum":["vip","new"]}}}}`

// TestOutputSchemaEnforced: every ok output of a real Wasm task is held to the task's
// output_schema; a violation ends the job as invalid_output naming the place, never the
// value (which may be customer data).
func TestOutputSchemaEnforced(t *testing.T) {
	t.Parallel()
	s, err := loadEcho(t, "    title: Echo a customer\n    output_schema: out.json\n    annotations: {read_only: true, idempotent: true}\n",
		map[string]string{"out.json": customerSchema})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, output string
		want         outcome.Code
		msg          []string // substrings of the message
		secret       string   // a value that must not appear in the message
	}{
		{"conforming", `{"id":7,"email":"ann@example.com","tags":["vip"]}`, outcome.OK, nil, ""},
		{"wrong type", `{"id":"ann-secret-id","email":"ann@example.com"}`, outcome.InvalidOutput,
			[]string{"at /id: got string, want integer"}, "ann-secret-id"},
		{"pattern", `{"id":7,"email":"ann.private@corp.test"}`, outcome.InvalidOutput,
			[]string{`at /email: fails "pattern"`}, "ann.private"},
		{"missing and extra", `{"id":7,"ssn":"078-05-1120"}`, outcome.InvalidOutput,
			[]string{"missing required email"}, "078-05-1120"},
		{"enum in array", `{"id":7,"email":"a@example.com","tags":["vip","top-secret-tier"]}`, outcome.InvalidOutput,
			[]string{`at /tags/1: fails "enum"`}, "top-secret-tier"},
		{"not an object", `"just-a-string-value"`, outcome.InvalidOutput,
			[]string{"at (root): got string, want object"}, "just-a-string-value"},
		{"not JSON", `id=7 email=hidden-value`, outcome.InvalidOutput,
			[]string{"output is not JSON (23 bytes), but the task declares an output_schema"}, "hidden-value"},
		{"empty", ``, outcome.InvalidOutput, []string{"output is not JSON (0 bytes)"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := s.Run(context.Background(), "echo", "job-1", []byte(tt.output))
			if got := res.Code(); got != tt.want {
				t.Fatalf("Run(%s) = %v (%v), want %s", tt.output, got, res.Err, tt.want)
			}
			if tt.want == outcome.OK {
				if string(res.Output) != tt.output {
					t.Errorf("Output = %q, want %q", res.Output, tt.output)
				}
				return
			}
			msg := outcome.Message(res.Err)
			for _, m := range tt.msg {
				if !strings.Contains(msg, m) {
					t.Errorf("message %q does not contain %q", msg, m)
				}
			}
			if tt.secret != "" && strings.Contains(res.Err.Error(), tt.secret) {
				t.Errorf("error %q echoes the output value %q", res.Err, tt.secret)
			}
			if res.Output != nil {
				t.Errorf("Output = %q, want none for a failed job", res.Output)
			}
			if outcome.CodeOf(res.Err).Retryable() {
				t.Error("invalid_output is retryable; the same module would produce the same output")
			}
		})
	}

	def := s.Catalog()[0]
	if def.Title != "Echo a customer" || def.Annotations == nil || def.Annotations.ReadOnly == nil || !*def.Annotations.ReadOnly ||
		def.Annotations.Idempotent == nil || !*def.Annotations.Idempotent || def.Annotations.Destructive != nil {
		t.Errorf("Catalog()[0] = title %q, annotations %+v", def.Title, def.Annotations)
	}
	if !strings.Contains(string(def.OutputSchema), `"required":["id","email"]`) {
		t.Errorf("Catalog()[0].OutputSchema = %s", def.OutputSchema)
	}
}

// TestNoOutputSchemaAcceptsAnything: without an output_schema, output is not checked (a
// task may return any bytes, as before).
func TestNoOutputSchemaAcceptsAnything(t *testing.T) {
	t.Parallel()
	s, err := loadEcho(t, "", map[string]string{})
	if err != nil {
		t.Fatal(err)
	}
	if res := s.Run(context.Background(), "echo", "j", []byte("not json")); res.Err != nil || string(res.Output) != "not json" {
		t.Fatalf("Run = %q, %v; want the output unchecked", res.Output, res.Err)
	}
}

// TestBadOutputSchemaRefusedAtLoad: an output schema the control plane would refuse (or
// that cannot be compiled) stops the task at load, not at its first job.
func TestBadOutputSchemaRefusedAtLoad(t *testing.T) {
	t.Parallel()
	for name, body := range map[string]string{
		"not a schema":    `{"type":"no-such-type"}`,
		"external ref":    `{"$ref":"file:///etc/passwd"}`,
		"not JSON":        `{"type":`,
		"bad input, good": ``,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			keys, files := "    output_schema: out.json\n", map[string]string{"out.json": body}
			if body == "" { // the input schema is compiled the same way
				keys, files = "    input_schema: in.json\n", map[string]string{"in.json": `{"minLength":"x"}`}
			}
			_, err := loadEcho(t, keys, files)
			if err == nil {
				t.Fatalf("Load(%s) succeeded, want refused", body)
			}
			if outcome.CodeOf(err) != outcome.ModuleRejected && !strings.Contains(err.Error(), "not valid JSON") {
				t.Errorf("Load error = %v, want module_rejected or a JSON error", err)
			}
		})
	}
}

// TestPluginOutputSchemaEnforced: a plugin's manifest declares the title and output schema,
// and its outputs are held to the schema on the same path as a policy task's.
func TestPluginOutputSchemaEnforced(t *testing.T) {
	t.Parallel()
	e := start(t, func(root string) {
		dir := filepath.Join(root, "other")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		wasm, err := os.ReadFile("../../runtime/testdata/echo.wasm")
		if err != nil {
			t.Fatal(err)
		}
		put(t, dir, "other.wasm", wasm)
		put(t, dir, "plugin.yaml", []byte("name: other\nversion: \"1\"\ntitle: Echo, as a plugin\n"+
			"output_schema:\n  type: object\n  required: [ok]\n  properties: {ok: {const: true}}\n"))
	})
	tk, ok := e.set.Get("other")
	if !ok {
		t.Fatalf("plugin not loaded; logs: %v", e.logs.All())
	}
	if tk.Def.Title != "Echo, as a plugin" || tk.Def.Annotations != nil || len(tk.Def.OutputSchema) == 0 {
		t.Errorf("Def = title %q, annotations %+v, output schema %s; want the manifest's title and schema, no annotations (the policy sets none)",
			tk.Def.Title, tk.Def.Annotations, tk.Def.OutputSchema)
	}
	if res := e.set.Run(context.Background(), "other", "j", []byte(`{"ok":true}`)); res.Err != nil {
		t.Errorf("Run(conforming) = %v", res.Err)
	}
	res := e.set.Run(context.Background(), "other", "j", []byte(`{"ok":"private-value"}`))
	if res.Code() != outcome.InvalidOutput || !strings.Contains(res.Err.Error(), `at /ok: fails "const"`) || strings.Contains(res.Err.Error(), "private-value") {
		t.Errorf("Run(violating) = %v, want invalid_output naming /ok without the value", res.Err)
	}
}

package schema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// Limits of a published catalog, in both control-plane modes.
const (
	MaxCatalogTasks = 256
	MaxSchemaBytes  = 64 << 10
	MaxDescription  = 1024
)

// CheckTask validates one task definition as both control planes accept it (docs/api.md,
// PUT /v1/catalog) and returns its schemas compacted (out is nil when there is none). The
// error names the field; i is the task's index in the catalog.
func CheckTask(i int, t api.TaskDef) (in, out []byte, err error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("tasks[%d]: "+format, append([]any{i}, args...)...)
	}
	if !api.ValidTaskName(t.Name) {
		return nil, nil, bad("name %q is invalid: 1-64 of a-z 0-9 _ . - starting with a letter", t.Name)
	}
	if !api.ValidTaskVersion(t.Version) {
		return nil, nil, bad("version %q is invalid: 1-64 of A-Z a-z 0-9 _ . + - starting with a letter or digit", t.Version)
	}
	if len(t.Title) > api.MaxTitle || strings.IndexFunc(t.Title, unicode.IsControl) >= 0 {
		return nil, nil, bad("title must be one line of at most %d bytes, without control characters", api.MaxTitle)
	}
	if len(t.Description) > MaxDescription {
		return nil, nil, bad("description is %d bytes, at most %d", len(t.Description), MaxDescription)
	}
	for _, sc := range []struct {
		name     string
		raw      json.RawMessage
		required bool
		dst      *[]byte
	}{{"input_schema", t.InputSchema, true, &in}, {"output_schema", t.OutputSchema, false, &out}} {
		if len(bytes.TrimSpace(sc.raw)) == 0 || string(bytes.TrimSpace(sc.raw)) == "null" {
			if sc.required {
				return nil, nil, bad("%s is required (a JSON Schema; {} accepts anything)", sc.name)
			}
			continue
		}
		var c bytes.Buffer
		if err := json.Compact(&c, sc.raw); err != nil {
			return nil, nil, bad("%s is not JSON: %v", sc.name, err)
		}
		if c.Len() > MaxSchemaBytes {
			return nil, nil, bad("%s is %d bytes, at most %d", sc.name, c.Len(), MaxSchemaBytes)
		}
		if _, err := Compile(c.Bytes()); err != nil {
			return nil, nil, bad("%s is not a valid JSON Schema: %v", sc.name, err)
		}
		*sc.dst = c.Bytes()
	}
	return in, out, nil
}

// CheckCatalog validates a whole catalog: at most MaxCatalogTasks, each task valid
// (CheckTask), no name and version twice. It returns the tasks with compacted schemas.
func CheckCatalog(tasks []api.TaskDef) ([]api.TaskDef, error) {
	if len(tasks) > MaxCatalogTasks {
		return nil, fmt.Errorf("tasks has %d entries, at most %d", len(tasks), MaxCatalogTasks)
	}
	out := make([]api.TaskDef, len(tasks))
	seen := map[string]bool{}
	for i, t := range tasks {
		in, o, err := CheckTask(i, t)
		if err != nil {
			return nil, err
		}
		key := t.Name + "@" + t.Version
		if seen[key] {
			return nil, fmt.Errorf("tasks[%d]: %s is listed twice", i, key)
		}
		seen[key] = true
		t.InputSchema, t.OutputSchema = in, nil
		if o != nil {
			t.OutputSchema = o
		}
		out[i] = t
	}
	return out, nil
}

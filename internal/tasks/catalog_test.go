package tasks_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/tasks"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/runtime"
)

// controlPlane starts a real control plane (SQLite file, loopback HTTP) and returns a
// registered worker's client.
func controlPlane(t *testing.T) *client.Client {
	t.Helper()
	s, err := server.New(t.Context(), server.Config{DBPath: filepath.Join(t.TempDir(), "cp.db")})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(func() { s.Close(); hs.Close() })
	tok, err := s.Store().CreateToken(t.Context(), api.RoleWorker, "alpha", "w", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(hs.URL, tok.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Register(t.Context(), api.RegisterRequest{Name: "w", AgentVersion: "test"}); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCatalogHoldsOnlyWhatTheControlPlaneAccepts installs, beside a good plugin, a plugin
// whose catalog entry the control plane refuses. The control plane refuses a whole catalog
// for one bad entry, so the worker would not start (or no later update would publish): the
// bad plugin must be refused at load, and the rest published and served.
func TestCatalogHoldsOnlyWhatTheControlPlaneAccepts(t *testing.T) {
	t.Parallel()
	big := `{"type":"object","description":"` + strings.Repeat("x", 70<<10) + `"}`
	tests := []struct {
		name     string
		manifest string
		files    map[string]string
		def      api.TaskDef // the catalog entry as the plugin would publish it
	}{
		{"input schema not a JSON Schema", "input_schema: {type: 12}\n", nil,
			api.TaskDef{Version: "1", InputSchema: json.RawMessage(`{"type":12}`)}},
		{"output schema with an external $ref", "output_schema: {$ref: \"file:///etc/passwd\"}\n", nil,
			api.TaskDef{Version: "1", InputSchema: json.RawMessage(`{"type":"object"}`), OutputSchema: json.RawMessage(`{"$ref":"file:///etc/passwd"}`)}},
		{"version the control plane refuses", "", nil,
			api.TaskDef{Version: "1.0 beta", InputSchema: json.RawMessage(`{"type":"object"}`)}},
		{"description over the control plane's size limit", "description: " + strings.Repeat("d", 1025) + "\n", nil,
			api.TaskDef{Version: "1", Description: strings.Repeat("d", 1025), InputSchema: json.RawMessage(`{"type":"object"}`)}},
		{"schema file over the control plane's size limit", "input_schema: big.json\n", map[string]string{"big.json": big},
			api.TaskDef{Version: "1", InputSchema: json.RawMessage(big)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cp := controlPlane(t)
			// The case is real: the control plane refuses a catalog holding this entry.
			bad := tt.def
			bad.Name = "bad"
			good := api.TaskDef{Name: "hot", Version: "1", InputSchema: json.RawMessage(`{"type":"object"}`)}
			if _, err := cp.PublishCatalog(t.Context(), []api.TaskDef{good, bad}); err == nil {
				t.Fatalf("PublishCatalog(with %s) error = nil; the control plane accepts it, the case tests nothing", tt.name)
			}

			root := t.TempDir()
			tasks.Install(t, root, "hot", "1", tasks.Testdata+"/v1.wasm")
			dir := filepath.Join(root, "bad")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for name, body := range tt.files {
				tasks.Put(t, dir, name, []byte(body))
			}
			wasm, err := os.ReadFile(tasks.Testdata + "/v2.wasm")
			if err != nil {
				t.Fatal(err)
			}
			tasks.Put(t, dir, "bad.wasm", wasm)
			tasks.Put(t, dir, "plugin.yaml", []byte(fmt.Sprintf("name: bad\nversion: %q\n%s", tt.def.Version, tt.manifest)))
			pol, err := policy.Parse("policy.yaml", []byte("version: 1\nplugins: {require_signed: false}\ntasks:\n  hot: {}\n  bad: {}\n  other: {}\n"), "/")
			if err != nil {
				t.Fatal(err)
			}
			engine, err := runtime.NewEngine(runtime.Config{})
			if err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zap.InfoLevel)
			set, err := tasks.Load(t.Context(), tasks.Options{Policy: pol, Engine: engine, Log: zap.New(core), PluginsDir: root, Debounce: 20 * time.Millisecond, NoPool: true})
			if err != nil {
				t.Fatalf("Load() error = %v", err)
			}
			t.Cleanup(func() {
				set.Close(context.Background())
				_ = engine.Close(context.Background())
			})
			names := func(c []api.TaskDef) string {
				var s []string
				for _, d := range c {
					s = append(s, d.Name)
				}
				return strings.Join(s, ",")
			}
			if got := names(set.Catalog()); got != "hot" {
				t.Errorf("Catalog() = %s, want hot (bad refused at load)", got)
			}
			if _, err := cp.PublishCatalog(t.Context(), set.Catalog()); err != nil {
				t.Errorf("PublishCatalog(Catalog()) error = %v, want the control plane to accept the worker's catalog", err)
			}
			if len(logs.FilterMessageSnippet("plugin refused").FilterField(zap.String("plugin", "bad")).All()) == 0 {
				t.Errorf("no refusal logged for plugin bad")
			}
			// A later change still publishes.
			tasks.Install(t, root, "other", "1", tasks.Testdata+"/v2.wasm")
			tasks.WaitCatalog(t, set, "hot,other", names)
			if _, err := cp.PublishCatalog(t.Context(), set.Catalog()); err != nil {
				t.Errorf("PublishCatalog(after adding other) error = %v", err)
			}
			if got := tasks.Output(set, "hot"); got != "version-v1" {
				t.Errorf("Run(hot) = %q, want version-v1", got)
			}
		})
	}
}

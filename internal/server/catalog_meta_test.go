package server

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// Title and annotations reach the catalog, and changing them does not count as redefining
// the version: the policy's annotations may change without a new module version, and a
// worker that upgrades to a castellan publishing them must not hit a catalog conflict with
// the definition its previous version published.
func TestCatalogTitleAndAnnotations(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	yes, no := true, false
	bare := api.TaskDef{Name: "lookup", Version: "1", InputSchema: json.RawMessage(`{}`),
		OutputSchema: json.RawMessage(`{"type":"object"}`)}
	w := e.newWorker("meta-worker", "meta", bare) // as a worker before the new fields

	def := bare
	def.Title = "Look up a customer"
	def.Annotations = &api.ToolAnnotations{ReadOnly: &yes, Idempotent: &yes}
	if _, err := w.PublishCatalog(ctx, []api.TaskDef{def}); err != nil {
		t.Fatalf("PublishCatalog(with title and annotations) = %v, want accepted (not a new definition)", err)
	}
	cl := e.newClient("meta-client", api.RoleClient, "meta")
	cat, err := cl.Catalog(ctx, "")
	if err != nil || len(cat.Tasks) != 1 {
		t.Fatalf("Catalog() = %+v, %v", cat, err)
	}
	if got := cat.Tasks[0]; got.Title != def.Title || !reflect.DeepEqual(got.Annotations, def.Annotations) {
		t.Fatalf("Catalog().Tasks[0] = title %q, annotations %+v; want %q, %+v", got.Title, got.Annotations, def.Title, def.Annotations)
	}

	def.Annotations = &api.ToolAnnotations{Destructive: &no}
	def.Title = ""
	if _, err := w.PublishCatalog(ctx, []api.TaskDef{def}); err != nil {
		t.Fatalf("PublishCatalog(changed annotations) = %v", err)
	}
	cat, _ = cl.Catalog(ctx, "")
	if got := cat.Tasks[0]; got.Title != "" || !reflect.DeepEqual(got.Annotations, def.Annotations) {
		t.Fatalf("after republish: title %q, annotations %+v; want the newest", got.Title, got.Annotations)
	}

	// The schemas still are the version's contract.
	changed := def
	changed.OutputSchema = json.RawMessage(`{"type":"string"}`)
	if _, err := w.PublishCatalog(ctx, []api.TaskDef{changed}); !client.IsCode(err, api.CodeCatalogConflict) {
		t.Fatalf("PublishCatalog(other output schema) = %v, want catalog_conflict", err)
	}
	for _, title := range []string{strings.Repeat("x", api.MaxTitle+1), "two\nlines", "clear\x1b[2J"} {
		bad := def
		bad.Title = title
		if _, err := w.PublishCatalog(ctx, []api.TaskDef{bad}); !client.IsCode(err, api.CodeInvalidField) {
			t.Errorf("PublishCatalog(title %q) = %v, want invalid_field", title, err)
		}
	}
}

package controlplane

import (
	"bytes"
	"fmt"
	"net/http"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// A task version is immutable: once name@version is published in a pool, a worker that
// publishes it again must publish the same definition (description and schemas; title and
// annotations may change). Otherwise a client's input would be validated against one
// definition and run by a worker that published another.

// SameDefinition reports whether a and b, of one name and version, define the same task.
func SameDefinition(a, b api.TaskDef) bool {
	return a.Description == b.Description && bytes.Equal(CompactJSON(a.InputSchema), CompactJSON(b.InputSchema)) &&
		bytes.Equal(CompactJSON(a.OutputSchema), CompactJSON(b.OutputSchema))
}

// ConflictIssue names the i-th task of a publication whose version is published in pool
// with another definition.
func ConflictIssue(i int, t api.TaskDef, pool string) api.SchemaIssue {
	return api.SchemaIssue{Location: fmt.Sprintf("/tasks/%d", i),
		Message: fmt.Sprintf("task %s@%s is already published in pool %q with a different definition: bump the version", t.Name, t.Version, pool)}
}

// CatalogConflicts returns an issue for every task of tasks whose name and version are in
// published with another definition.
func CatalogConflicts(pool string, published, tasks []api.TaskDef) []api.SchemaIssue {
	var out []api.SchemaIssue
	for i, t := range tasks {
		for _, p := range published {
			if p.Name == t.Name && p.Version == t.Version && !SameDefinition(p, t) {
				out = append(out, ConflictIssue(i, t, pool))
				break
			}
		}
	}
	return out
}

// CatalogConflict is the refusal of a publication with conflicts (non-empty): 409
// catalog_conflict, every conflicting entry in the details, so that a worker can leave
// those out and publish the rest.
func CatalogConflict(conflicts []api.SchemaIssue) *client.APIError {
	e := Refuse(http.StatusConflict, api.CodeCatalogConflict, "%s", conflicts[0].Message)
	if len(conflicts) > 1 {
		e.Message = fmt.Sprintf("%s (and %d more: see details)", conflicts[0].Message, len(conflicts)-1)
	}
	e.Details = conflicts
	return e
}

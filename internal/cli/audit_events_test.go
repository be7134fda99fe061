package cli

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// auditDB is a control-plane database whose audit table holds six entries (token.create by
// direct access), and a raw connection to tamper with it as someone with the file would.
func auditDB(t *testing.T) (path string, raw *sql.DB) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "cp.db")
	var sink bytes.Buffer
	for i := range 6 {
		_, err := TokenCreate(t.Context(), TokenConfig{DB: path, Role: "client", Pool: "default", Name: fmt.Sprintf("c%d", i+1)}, &sink)
		must(t, err)
	}
	raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	must(t, err)
	t.Cleanup(func() { raw.Close() })
	return path, raw
}

func entry(t *testing.T, db *sql.DB, id int64) api.AuditEntry {
	t.Helper()
	var e api.AuditEntry
	var at int64
	var detail string
	must(t, db.QueryRow(`SELECT id, at, actor, role, action, job_id, detail, prev_hash, hash FROM audit WHERE id = ?`, id).
		Scan(&e.ID, &at, &e.Actor, &e.Role, &e.Action, &e.JobID, &detail, &e.PrevHash, &e.Hash))
	e.At = time.UnixMilli(at).UTC()
	if detail != "" {
		e.Detail = json.RawMessage(detail)
	}
	return e
}

func sqlExec(t *testing.T, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

var headRE = regexp.MustCompile(`head ([0-9a-f]{64})`)

// TestAuditEventsVerifyDetectsTampering attacks the control plane's hash-chained audit table
// in a real SQLite file: each case edits, deletes, reorders or inserts rows the way someone
// holding the file would (also recomputing the hash of what they edited), and `castellan
// audit events --verify` must exit 1 naming the first entry where the chain breaks. A detail
// re-serialised (key order, spacing) is the same entry under RFC 8785 and stays intact; a
// cut at the end still chains, and only the head hash shows it.
func TestAuditEventsVerifyDetectsTampering(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		tamper func(t *testing.T, db *sql.DB)
		broken int64 // 0: intact
	}{
		{"untouched", func(*testing.T, *sql.DB) {}, 0},
		{"actor edited", func(t *testing.T, db *sql.DB) { sqlExec(t, db, `UPDATE audit SET actor = 'someone-else' WHERE id = 3`) }, 3},
		{"detail edited", func(t *testing.T, db *sql.DB) {
			sqlExec(t, db, `UPDATE audit SET detail = replace(detail, '"client"', '"admin"') WHERE id = 3`)
		}, 3},
		{"time edited", func(t *testing.T, db *sql.DB) { sqlExec(t, db, `UPDATE audit SET at = at + 1 WHERE id = 6`) }, 6},
		{"action edited", func(t *testing.T, db *sql.DB) {
			sqlExec(t, db, `UPDATE audit SET action = 'token.revoke' WHERE id = 1`)
		}, 1},
		{"hash blanked", func(t *testing.T, db *sql.DB) { sqlExec(t, db, `UPDATE audit SET hash = '' WHERE id = 5`) }, 5},
		{"edited and rehashed", func(t *testing.T, db *sql.DB) {
			e := entry(t, db, 3)
			e.Actor = "someone-else"
			h, err := api.AuditHash(e)
			must(t, err)
			sqlExec(t, db, `UPDATE audit SET actor = ?, hash = ? WHERE id = 3`, e.Actor, h)
		}, 4},
		{"middle deleted", func(t *testing.T, db *sql.DB) { sqlExec(t, db, `DELETE FROM audit WHERE id = 3`) }, 4},
		{"first deleted", func(t *testing.T, db *sql.DB) { sqlExec(t, db, `DELETE FROM audit WHERE id = 1`) }, 2},
		{"two deleted", func(t *testing.T, db *sql.DB) { sqlExec(t, db, `DELETE FROM audit WHERE id IN (2, 3)`) }, 4},
		{"swapped", func(t *testing.T, db *sql.DB) {
			sqlExec(t, db, `UPDATE audit SET id = 100 WHERE id = 3`)
			sqlExec(t, db, `UPDATE audit SET id = 3 WHERE id = 4`)
			sqlExec(t, db, `UPDATE audit SET id = 4 WHERE id = 100`)
		}, 3},
		{"copy inserted", func(t *testing.T, db *sql.DB) {
			sqlExec(t, db, `UPDATE audit SET id = id * 10`)
			sqlExec(t, db, `INSERT INTO audit(id, at, actor, role, action, job_id, detail, prev_hash, hash)
				SELECT 35, at, actor, role, action, job_id, detail, prev_hash, hash FROM audit WHERE id = 20`)
		}, 35},
		{"forged entry inserted and chained", func(t *testing.T, db *sql.DB) {
			sqlExec(t, db, `UPDATE audit SET id = id * 10`)
			prev := entry(t, db, 30)
			f := api.AuditEntry{ID: 35, At: prev.At, Actor: prev.Actor, Role: prev.Role, Action: "token.revoke",
				Detail: json.RawMessage(`{"id":"tok_000000000000"}`), PrevHash: prev.Hash}
			h, err := api.AuditHash(f)
			must(t, err)
			sqlExec(t, db, `INSERT INTO audit(id, at, actor, role, action, job_id, detail, prev_hash, hash) VALUES (35,?,?,?,?,'',?,?,?)`,
				f.At.UnixMilli(), f.Actor, f.Role, f.Action, string(f.Detail), f.PrevHash, h)
		}, 40},
		{"detail re-serialised", func(t *testing.T, db *sql.DB) {
			e := entry(t, db, 3)
			var m map[string]any
			must(t, json.Unmarshal(e.Detail, &m))
			b, err := json.MarshalIndent(m, "", "   ") // sorted keys, spaces: another spelling, same JSON
			must(t, err)
			sqlExec(t, db, `UPDATE audit SET detail = ? WHERE id = 3`, " "+string(b))
		}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path, db := auditDB(t)
			tc.tamper(t, db)
			code, out, errs := runApp(context.Background(), "audit", "events", "--db", path, "--verify")
			if tc.broken == 0 {
				if code != ExitOK || !strings.Contains(out, "intact: 6 entries chained") {
					t.Fatalf("audit events --verify = exit %d, stdout %q, stderr %q; want intact", code, out, errs)
				}
				return
			}
			want := fmt.Sprintf("audit entry %d: ", tc.broken)
			if code != ExitTaskFailed || !strings.Contains(errs, want) || strings.Contains(out, "intact") {
				t.Fatalf("audit events --verify = exit %d, stdout %q, stderr %q; want exit 1 naming %q", code, out, errs, want)
			}
		})
	}

	t.Run("tail cut", func(t *testing.T) {
		t.Parallel()
		path, db := auditDB(t)
		_, before, _ := runApp(context.Background(), "audit", "events", "--db", path, "--verify")
		sqlExec(t, db, `DELETE FROM audit WHERE id = 6`)
		code, after, errs := runApp(context.Background(), "audit", "events", "--db", path, "--verify")
		h1, h2 := headRE.FindStringSubmatch(before), headRE.FindStringSubmatch(after)
		if code != ExitOK || h1 == nil || h2 == nil || h1[1] == h2[1] || !strings.Contains(after, "intact: 5 entries") {
			t.Fatalf("audit events --verify after cutting the last entry = exit %d %q %q (before %q): want it to chain with a different head", code, after, errs, before)
		}
	})
}

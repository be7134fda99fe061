package server

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestAuditChainMigration: a database of schema 5 (main's before token expiry and the chain)
// upgrades: its audit rows are chained once, oldest first, by migration 7, and entries
// appended afterwards continue the chain.
func TestAuditChainMigration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "cp.db")
	st, err := OpenStore(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 4 {
		if _, err := st.CreateTokenDirect(ctx, api.TokenCreateRequest{Role: api.RoleClient, Pool: "default"}, "test", now.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	// Back to schema 5: tokens without expires_at, the audit table without its chain columns,
	// no plans and jobs without submitted_by_name (each later migration runs again).
	raw, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`ALTER TABLE audit DROP COLUMN hash`, `ALTER TABLE audit DROP COLUMN prev_hash`, `ALTER TABLE tokens DROP COLUMN expires_at`,
		`DROP TABLE plans`, `DROP TABLE plan_steps`, `ALTER TABLE jobs DROP COLUMN submitted_by_name`, `DELETE FROM schema_migrations WHERE version >= 6`} {
		if _, err := raw.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	raw.Close()

	st, err = OpenStore(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.CreateTokenDirect(ctx, api.TokenCreateRequest{Role: api.RoleClient, Pool: "default"}, "test", now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	var chain api.AuditChain
	if err := st.WalkAudit(ctx, chain.Add); err != nil {
		t.Fatalf("the chain after migration 7: %v", err)
	}
	if chain.Len() != 5 {
		t.Fatalf("chained %d entries, want 5", chain.Len())
	}
}

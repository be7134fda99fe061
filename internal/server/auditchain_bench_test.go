package server

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkAuditAppend is the cost of one chained audit entry in its own transaction: the
// head read, the canonical hash and the insert (and the transaction's fsync).
func BenchmarkAuditAppend(b *testing.B) {
	st, err := OpenStore(context.Background(), filepath.Join(b.TempDir(), "cp.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	now := time.Now()
	b.ResetTimer()
	for b.Loop() {
		if err := st.tx(ctx, func(tx *txn) error {
			return audit(ctx, tx, now, "tok_000000000000", "client", "job.submit", "job_000000000000000000000000",
				`{"pool":"default","state":"queued","task":"echo","task_version":"1.0.0"}`)
		}); err != nil {
			b.Fatal(err)
		}
	}
}

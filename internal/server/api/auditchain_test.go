package api

import (
	"encoding/json"
	"testing"
	"time"
)

// BenchmarkAuditHash is the CPU cost of chaining one typical entry (canonical JSON, SHA-256).
func BenchmarkAuditHash(b *testing.B) {
	e := AuditEntry{At: time.Now(), Actor: "tok_000000000000", Role: "client", Action: "job.submit", JobID: "job_000000000000000000000000",
		Detail: json.RawMessage(`{"pool":"default","state":"queued","task":"echo","task_version":"1.0.0"}`), PrevHash: "ab"}
	for b.Loop() {
		if _, err := AuditHash(e); err != nil {
			b.Fatal(err)
		}
	}
}

// TestAuditHashCanonical: the hash is the entry's, not its spelling: a detail re-serialised
// (order, spacing, number form) hashes the same; any field changed hashes differently.
func TestAuditHashCanonical(t *testing.T) {
	at := time.UnixMilli(1700000000123)
	base := AuditEntry{At: at, Actor: "a", Role: "r", Action: "x", JobID: "j", Detail: json.RawMessage(`{"b":1,"a":[2.50,"s"]}`), PrevHash: "p"}
	h := func(e AuditEntry) string {
		s, err := AuditHash(e)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	want := h(base)
	same := base
	same.Detail = json.RawMessage(" {\"a\": [2.5, \"s\"], \"b\": 1.0 } ")
	same.ID = 99 // where it is stored is not what happened
	if h(same) != want {
		t.Errorf("a re-serialised detail hashes differently")
	}
	for name, mod := range map[string]func(*AuditEntry){
		"prev":      func(e *AuditEntry) { e.PrevHash = "q" },
		"at":        func(e *AuditEntry) { e.At = at.Add(time.Millisecond) },
		"actor":     func(e *AuditEntry) { e.Actor = "b" },
		"role":      func(e *AuditEntry) { e.Role = "s" },
		"action":    func(e *AuditEntry) { e.Action = "y" },
		"job":       func(e *AuditEntry) { e.JobID = "k" },
		"detail":    func(e *AuditEntry) { e.Detail = json.RawMessage(`{"b":2,"a":[2.5,"s"]}`) },
		"no detail": func(e *AuditEntry) { e.Detail = nil },
	} {
		e := base
		mod(&e)
		if h(e) == want {
			t.Errorf("changing %s does not change the hash", name)
		}
	}
}

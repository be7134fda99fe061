package api

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/castellan-dev/castellan/approval"
)

// The control plane's audit log is a hash chain, in both modes: each entry's hash covers
// the previous entry's hash and the entry itself, so an entry edited, deleted, inserted or
// moved breaks the chain at that entry or the one after it. The entry's id is not covered:
// it is where the store put it (a row id, a stream sequence), not what happened.

// chained is what an entry's hash covers.
type chained struct {
	PrevHash string          `json:"prev_hash"`
	AtMS     int64           `json:"at_ms"`
	Actor    string          `json:"actor"`
	Role     string          `json:"role"`
	Action   string          `json:"action"`
	JobID    string          `json:"job_id"`
	Detail   json.RawMessage `json:"detail"`
}

// AuditHash is the chain hash of e: the hex SHA-256 of the RFC 8785 canonical JSON of
// {"prev_hash", "at_ms", "actor", "role", "action", "job_id", "detail"} (detail as the JSON
// value it holds, null when empty), with e.PrevHash as prev_hash. The canonical form makes
// the hash independent of how a store or the wire re-serialised the detail.
func AuditHash(e AuditEntry) (string, error) {
	c := chained{PrevHash: e.PrevHash, AtMS: e.At.UnixMilli(), Actor: e.Actor, Role: e.Role, Action: e.Action, JobID: e.JobID, Detail: e.Detail}
	if len(c.Detail) == 0 {
		c.Detail = json.RawMessage("null")
	}
	raw, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("audit entry %d: %w", e.ID, err)
	}
	canon, err := approval.CanonicalJSON(raw)
	if err != nil {
		return "", fmt.Errorf("audit entry %d: %w", e.ID, err)
	}
	sum := sha256.Sum256(canon)
	return hex.EncodeToString(sum[:]), nil
}

// AuditChainError names the first entry where the chain breaks.
type AuditChainError struct {
	ID     int64 // the entry's id
	Reason string
}

func (e *AuditChainError) Error() string { return fmt.Sprintf("audit entry %d: %s", e.ID, e.Reason) }

// AuditChain verifies entries one at a time, oldest first. The zero value expects the
// first entry of the log.
type AuditChain struct {
	prev   string
	prevID int64
	n      int
}

// Add checks the next entry: its prev_hash must be the hash of the entry before it, and its
// hash its own AuditHash. The error is an *AuditChainError naming e.
func (c *AuditChain) Add(e AuditEntry) error {
	switch {
	case c.n == 0 && e.PrevHash != "":
		return &AuditChainError{e.ID, "the first entry has a prev_hash: the entries before it were deleted"}
	case c.n > 0 && e.PrevHash != c.prev:
		return &AuditChainError{e.ID, fmt.Sprintf("prev_hash does not match the hash of entry %d before it: an entry between them was deleted or inserted, or the entries were reordered, or entry %d was altered and rehashed", c.prevID, c.prevID)}
	}
	h, err := AuditHash(e)
	if err != nil {
		return &AuditChainError{e.ID, fmt.Sprintf("unreadable: %v", err)}
	}
	if h != e.Hash {
		return &AuditChainError{e.ID, "its content does not match its hash: the entry was altered"}
	}
	c.prev, c.prevID = e.Hash, e.ID
	c.n++
	return nil
}

// Len is how many entries were verified.
func (c *AuditChain) Len() int { return c.n }

// Head is the hash of the last entry verified ("" before any): record it off the host to
// detect a later truncation of the log's tail, which the chain alone cannot show.
func (c *AuditChain) Head() string { return c.prev }

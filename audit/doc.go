// Package audit writes and verifies Castellan's tamper-evident audit trail: an append-only
// JSON-lines file in which every record carries the SHA-256 of the line before it, and the
// head of that chain is signed with the writer's Ed25519 key every few records and whenever a
// file is closed or rotated.
//
// Why a hash chain and not just a file: the log is read after something went wrong, by
// someone who must trust that nobody (an attacker on the host, a careless operator) edited
// it since. With the chain, changing one byte, deleting, inserting or swapping a line, or
// dropping a rotated file breaks a link that Verify names. The signed checkpoints stop a
// forger from simply recomputing the chain: without the worker's private key they cannot
// produce a checkpoint signature over the new head. What the chain cannot prove is the
// absence of records cut from the very end of the newest file after its last checkpoint;
// Verify reports such an unsealed tail so the reader knows how much is covered.
//
// Why typed events only: Append accepts the event structs of this package and nothing else
// (the Event interface is sealed). None of them has a field for a body, a header value, a
// query string, an input, an output or a credential, so a caller cannot log one by mistake;
// the output of a job is recorded as its size and SHA-256. As defence in depth, Options.Scrub
// redacts every line before it is hashed and written.
//
// Durability: each record is one write(2) of one whole line, so a crash of the process loses
// nothing that Append returned for. The file is fsynced at every checkpoint, at rotation and
// at Close (Options.SyncEvery makes every record durable, at the cost of one fsync each), so
// a machine crash loses at most the records since the last checkpoint.
package audit

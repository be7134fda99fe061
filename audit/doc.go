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
// produce a checkpoint signature over the new head. A new log starts with a checkpoint and
// never more than Options.CheckpointEvery records follow one, so with the trusted key a log
// without a checkpoint, or with a longer unsealed tail, is refused. What neither the chain
// nor the key can show is a log cut at a checkpoint or an older copy restored: it looks like
// one closed there. For that the writer's Head (its latest checkpoint) is reported off the
// host, and Verify with VerifyOptions.Head requires the chain to still contain it.
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

// Package server is Castellan's reference control plane: a job queue that workers inside a
// private network long-poll over HTTPS.
//
// Why it looks the way it does:
//   - The control plane is untrusted by design. It stores task names, validated inputs,
//     opaque approvals (compact JWS the workers verify) and outputs; the wire types in
//     package api have no field that could carry an internal URL or a credential, so a
//     compromised server learns nothing about the network behind the workers.
//   - Delivery is at-least-once with fencing. A lease is a random token plus the attempt
//     number; every completion is a conditional UPDATE on both, so a worker whose lease
//     expired and was re-leased can never overwrite the newer attempt's result.
//   - SQLite (pure Go, WAL, synchronous=FULL) with one connection: every write is
//     serialised, state survives restarts, and there is no second server to run.
//   - Long-poll: lease requests park on an in-process broadcast channel that is closed on
//     submit, approval, requeue and catalog changes; a wait on a job parks on a channel of
//     that job alone, closed when it ends (and answers with the job as the completion left
//     it, without reading it again); both re-check periodically for retry back-offs, so an
//     idle worker costs one open request, not a poll loop.
//   - A token is read from the database once per TokenCacheTTL (1 s), not at every
//     request; a revocation through this process clears the cache at once.
//
// The HTTP API itself is internal/controlplane's, shared with the JetStream mode; this
// package is its SQLite backend (backend.go). docs/api.md documents every endpoint.
package server

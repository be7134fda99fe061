// Package controlplane is the /v1 HTTP API of the control plane, written once for both of
// its modes: routes, bearer-token auth, role and pool checks, body and parameter decoding
// with the documented error codes, submit validation, the job state machine (state.go) and
// the long-polls. Storage and queueing are a Backend's: internal/server implements one on
// SQLite and internal/natsq one on JetStream; route groups that only some modes have (the
// HTTP worker routes, the audit log, token creation) are optional interfaces. See
// docs/architecture.md for the layout and how to add a route.
package controlplane

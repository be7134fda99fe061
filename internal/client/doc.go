// Package client is the typed Go client of Castellan's control-plane API (/v1), used by
// the worker and by the CLI. Every method takes a context; failures the server reports
// come back as *APIError carrying the HTTP status and the stable API error code, so
// callers branch on codes (errors.As, IsCode), never on message text.
//
// Long-polls (Lease, WaitOnce) get a per-request deadline of the server-side wait plus a
// margin, so a long-poll is never cut short by a short client timeout and a dead server is
// still noticed.
package client

// Package mcp serves the control plane's task catalog to AI agents over the Model Context
// Protocol (Streamable HTTP, official Go SDK): one tool per task of the caller's pool, and
// each call a job that waits for an approver like any other.
//
// The layer is a client of the control plane, not a part of it: everything goes through
// the narrow Backend interface with the caller's own token, so authentication, pool
// scoping, input limits and approval stay the control plane's. V1Backend implements
// Backend over the /v1 HTTP API, which both control-plane modes serve. docs/mcp.md is the
// user-facing description.
package mcp

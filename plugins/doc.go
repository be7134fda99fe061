// Package plugins reads task plugins from a directory: a WebAssembly module plus a manifest
// written by its author (plugin.yaml), optionally signed by a publisher. It checks each one
// against the security team's policy before anything is compiled, and it reports, for review,
// exactly what every task may do.
//
// The split of authority is the point. A manifest only requests (endpoints, limits); the
// policy's task of the same name grants; the effective grant is the intersection, so a plugin
// author can never widen their own reach by editing a file they ship. A signature binds the
// module and the manifest (by digest) to a publisher key the policy trusts, so a plugins
// directory is not a place where whoever has write access can swap code. The import audit
// refuses modules that import more than their grant allows, so a module with no endpoint
// grant cannot even link against http_request.
//
// Package plugins holds no daemon state: Open checks one plugin, Watcher reports changes in a
// directory, and Audit builds the review report. The worker's hot-reload (compile, swap, drain
// the old version) lives in internal/tasks. The layout and formats are documented in
// docs/plugins.md, the report in docs/audit.md.
package plugins

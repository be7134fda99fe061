// Package docstest runs the shell blocks of the operator documentation, so that the docs
// cannot drift from the code: docs/operators.md and docs/deploy.md mark each block an
// operator can run on one machine with an HTML comment on the line before its fence,
//
//	<!-- test -->
//	```sh
//	castellan token create --db cp.db --role admin --pool '*' > admin.token
//	```
//
// (invisible on GitHub). The test builds the castellan binary, puts it first on PATH and
// runs a document's marked blocks in order in one bash (so exports and background servers
// carry over) inside a scratch directory, on loopback. Blocks that need root, systemd or
// podman stay unmarked. A YAML block marked <!-- config server --> (or worker) is a
// --config file of that command: the test checks that each of its keys is one of the
// command's flags, which is all the config loader accepts.
package docstest

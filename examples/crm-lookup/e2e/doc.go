// Package e2e runs the crm-lookup example, built in every guest language (Go, Rust, C and
// AssemblyScript), through the real sandbox: the wazero runtime, the castellan_v1 host
// functions and the egress gateway, against the demo CRM on loopback. It exists to prove
// that the SDKs are interchangeable: the same inputs give byte-identical outputs and the
// same failure messages in every language.
//
// The committed .wasm files are tested as they are, so `go test` needs only Go. When a
// language's toolchain is installed (scripts/ci-toolchains.sh), TestRebuiltFromSource also
// rebuilds that language's module from source and checks it behaves the same; CI installs
// them all, so a stale committed binary cannot pass there.
package e2e

// Package policy loads the security team's policy file: which credentials exist and where
// their values live, which internal endpoints a task may reach and with which rules, and which
// tasks may run with which limits.
//
// The policy is the only place where reach is granted. A task names logical endpoints ("crm"),
// never URLs, and holds no credential: the worker builds every request from the endpoint's
// base URL and rules and injects the credential host-side. So the loader is deliberately
// strict. Unknown keys, dangling references, malformed URLs, rules, sizes and durations are
// all errors, because a typo that silently falls back to a default would widen or narrow a
// grant without anyone noticing in review. Decoding goes through yaml.Node so that every
// problem can name the file, the line and the field path, and all problems are collected so
// that one run of `castellan policy check` shows everything to fix.
//
// The policy never holds secret values, only references to them (environment variable names,
// file paths, Vault paths). Error messages still avoid echoing values that could carry one by
// accident, such as a base URL with user:password in it.
//
// The format is documented field by field in docs/policy.md.
package policy

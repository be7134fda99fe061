// Package secrets resolves the credential names used in the policy ("crm_token") to their
// values, at the moment a host function needs them, so that rotated values are picked up
// without restarting the worker.
//
// Providers, chosen per credential by its [Spec]:
//
//   - env: an environment variable of the worker process, read on every call.
//   - file: a file on the worker's host (a mounted Kubernetes or systemd secret), read on
//     every call; one trailing newline is trimmed because editors and `echo` add one.
//   - vault: one field of a KV version 2 secret in HashiCorp Vault, read with vault/api's
//     KVv2. The store logs in with a token (file or environment variable) or AppRole
//     (vault/api/auth/approle), renews renewable tokens in the background with vault/api's
//     LifetimeWatcher, drops a token that is no longer renewed shortly before it expires (the
//     next read logs in again, or reads the token again), re-logs in with AppRole when the
//     token is rejected, and caches each secret for [VaultConfig].CacheTTL. Concurrent
//     callers of an uncached secret share one request.
//   - aws: a secret of AWS Secrets Manager, read with the AWS SDK's GetSecretValue, the
//     version with the staging label [AWSRef].VersionStage (default AWSCURRENT): the whole
//     SecretString, or one string field of it when it is a JSON object. Region and
//     credentials come from the standard AWS chain (config.LoadDefaultConfig); an ARN names
//     its own region. Secrets are cached and shared like Vault's, for the same CacheTTL, so a
//     rotation (new AWSCURRENT, old AWSPREVIOUS) is picked up when the cached value expires.
//     SecretBinary is refused. The SDK's request logging is off: a response holds the value.
//
// Threat model. The adversary is the sandboxed task and anyone who reads what the worker
// reports (the control plane, logs, audit events). So:
//
//   - Values are never logged and never put in an error. Error messages are built from our
//     own words, HTTP status codes and AWS error codes, never from Vault's or AWS's error
//     strings or response bodies (which can echo request details, the caller's identity or
//     the secret's name), and no token or AWS key is ever part of any message.
//     The local cause wrapped in an error is reduced to a context error, an errno or a
//     status code for the same reason.
//
//   - Every value loaded is added to the worker's redact.Set before it is returned, so every
//     stream the worker scrubs knows it, in all its encodings. Values are never removed: after
//     a rotation both the old and the new value are scrubbed, since a job that started before
//     it may still hold the old one. A value shorter than
//     redact.MinSecretLen is refused: it could not be scrubbed without destroying ordinary
//     text, and an unscrubbable credential must not be injected anywhere.
//
//   - Values live in process memory only: the Vault cache is a map in the Store, never
//     written to disk, and dropped with the Store. Go strings cannot be wiped, so memory
//     dumps of the worker are out of scope; protect the host instead.
//
//   - The Vault token lives in the Store too; it is sent only to the configured Vault
//     address, in the X-Vault-Token header.
//
//   - Where a credential lives is a host detail too: a file path, an environment variable
//     name, a Vault address, mount, path or field, an AWS secret id, region or field. None of it is in the message of an error
//     that can leave the worker: a job's outcome message reaches the control plane. [Error]
//     has two faces: its Error text names the credential by its logical name only
//     ("credential \"erp_password\" is unavailable (see the worker's log)"); its Detail, for
//     the worker's log, says where and why, and the Store logs it on every failure.
//
// Errors returned by [Store.Credential] and [Store.Preload] are *outcome.Error with code
// outcome.CredentialUnavailable (retryable: Vault or AWS may come back) wrapping an [*Error],
// and errors.Is works for context.Canceled and context.DeadlineExceeded, and for
// [ErrFieldNotFound], [ErrFieldNotString], [ErrNotJSONObject] and [ErrBinarySecret] when a
// secret was read but holds no usable value. Configuration errors from [NewStore] are
// plain errors: they stop the worker at start-up.
package secrets

package secrets

import "time"

// Spec says where one credential comes from. Exactly one of Env, File, Vault or AWS is set;
// the policy loader enforces that.
type Spec struct {
	Env   string    // name of an environment variable on the worker's host
	File  string    // path of a file on the worker's host; one trailing newline is trimmed
	Vault *VaultRef // a field of a KV v2 secret in HashiCorp Vault
	AWS   *AWSRef   // a secret in AWS Secrets Manager
}

// Source returns "env", "file", "vault" or "aws".
func (s Spec) Source() string {
	switch {
	case s.Env != "":
		return "env"
	case s.File != "":
		return "file"
	case s.Vault != nil:
		return "vault"
	case s.AWS != nil:
		return "aws"
	}
	return ""
}

// VaultRef names one field of a KV version 2 secret: GET /v1/{Mount}/data/{Path}, then
// .data.data[Field].
type VaultRef struct {
	Mount string // KV v2 mount, default "secret"
	Path  string
	Field string
}

// AWSRef names a secret in AWS Secrets Manager, read with GetSecretValue. Region and
// credentials come from the standard AWS chain (AWS_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE,
// the shared files, web identity, container and instance roles); an ARN names its own region.
type AWSRef struct {
	SecretID string // the secret's name or ARN
	// Field, when set, selects one string member of a SecretString that is a JSON object
	// (the shape the console's key/value editor writes); when empty the whole SecretString
	// is the value. A secret holding SecretBinary is refused either way.
	Field string
	// VersionStage is the staging label of the version to read, default AWSCURRENT.
	VersionStage string
}

// VaultConfig is how the worker reaches and logs in to Vault. Every field is optional: the
// address falls back to VAULT_ADDR and the token to VAULT_TOKEN, as Vault's own CLI does.
type VaultConfig struct {
	Address   string
	Namespace string
	// AuthMethod is "token" (default) or "approle".
	AuthMethod string
	TokenEnv   string // token auth: env var holding the token, default VAULT_TOKEN
	TokenFile  string // token auth: file holding the token (wins over TokenEnv)
	// AppRole: role id literal (not a secret) and the secret id from a file or env var.
	RoleID       string
	SecretIDFile string
	SecretIDEnv  string
	AppRoleMount string // default "approle"
	CACert       string // PEM file to trust for TLS to Vault
	// CacheTTL is how long a fetched value is reused, default 5m. It applies to AWS Secrets
	// Manager secrets too.
	CacheTTL       time.Duration
	RequestTimeout time.Duration // per request, default 10s
}

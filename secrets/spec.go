package secrets

import "time"

// Spec says where one credential comes from. Exactly one of Env, File or Vault is set; the
// policy loader enforces that.
type Spec struct {
	Env   string    // name of an environment variable on the worker's host
	File  string    // path of a file on the worker's host; one trailing newline is trimmed
	Vault *VaultRef // a field of a KV v2 secret in HashiCorp Vault
}

// Source returns "env", "file" or "vault".
func (s Spec) Source() string {
	switch {
	case s.Env != "":
		return "env"
	case s.File != "":
		return "file"
	case s.Vault != nil:
		return "vault"
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
	RoleID         string
	SecretIDFile   string
	SecretIDEnv    string
	AppRoleMount   string        // default "approle"
	CACert         string        // PEM file to trust for TLS to Vault
	CacheTTL       time.Duration // how long a fetched value is reused, default 5m
	RequestTimeout time.Duration // per request, default 10s
}

package policy

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/secrets"
)

const fullPolicy = `version: 1
vault:
  address: https://vault.internal:8200
  namespace: ops
  auth:
    token_file: /etc/castellan/vault-token
  ca_cert: certs/vault-ca.pem
  request_timeout: 3s
credentials:
  crm_token:
    env: CRM_TOKEN
  erp_password:
    file: /run/secrets/erp
  ticket_key:
    vault: { mount: kv, path: castellan/ticketing, field: api_key }
  wiki_key:
    vault: { path: castellan/wiki, field: key }
endpoints:
  crm:
    base_url: http://127.0.0.1:8081/
    allow:
      - GET /api/customers/*
      - GET,POST /api/tickets/**
    auth:
      bearer: crm_token
    timeout: 5s
    max_response_bytes: 2MiB
    max_request_bytes: 256KiB
  erp:
    base_url: https://erp.internal/odata/
    allow: ["* /Orders/*"]
    auth:
      basic: { username: svc-castellan, credential: erp_password }
  tickets:
    base_url: https://tickets.internal:8443
    allow: ["POST /v2/tickets"]
    auth:
      query: { param: api_key, credential: ticket_key }
  wiki:
    base_url: https://wiki.internal
    allow: ["GET /pages/*"]
    auth:
      header: { name: x-api-key, format: "Token {secret}", credential: wiki_key }
  status:
    base_url: https://status.internal
    allow: ["GET /"]
tasks:
  crm-lookup:
    module: examples/crm-lookup/crm-lookup.wasm
    sha256: 3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b
    entry: run
    version: "1.0.0"
    description: Look up a customer in the CRM
    endpoints: [crm, status]
    on_secret_in_output: fail
    limits:
      memory: 64MiB
      timeout: 10s
      output_bytes: 1MiB
      http_calls: 20
      log_bytes: 64KiB
  nightly_sync:
    module: /opt/tasks/sync.wasm
    version: 2.0
    endpoints: [erp, tickets, wiki]
    on_secret_in_output: redact
    limits:
      memory: 100000
      output_bytes: 0
      http_calls: 0
  noop:
    module: ./noop.wasm
`

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestParseFullPolicy(t *testing.T) {
	t.Parallel()
	got, err := Parse("policy.yaml", []byte(fullPolicy), "/srv/castellan")
	if err != nil {
		t.Fatalf("Parse(fullPolicy) error:\n%v", err)
	}
	if got.Path != "policy.yaml" {
		t.Errorf("Path = %q, want %q", got.Path, "policy.yaml")
	}

	wantVault := &secrets.VaultConfig{
		Address:        "https://vault.internal:8200",
		Namespace:      "ops",
		AuthMethod:     "token",
		TokenFile:      "/etc/castellan/vault-token",
		CACert:         "/srv/castellan/certs/vault-ca.pem",
		CacheTTL:       5 * time.Minute,
		RequestTimeout: 3 * time.Second,
	}
	if !reflect.DeepEqual(got.Vault, wantVault) {
		t.Errorf("Vault = %+v, want %+v", got.Vault, wantVault)
	}

	wantCreds := map[string]secrets.Spec{
		"crm_token":    {Env: "CRM_TOKEN"},
		"erp_password": {File: "/run/secrets/erp"},
		"ticket_key":   {Vault: &secrets.VaultRef{Mount: "kv", Path: "castellan/ticketing", Field: "api_key"}},
		"wiki_key":     {Vault: &secrets.VaultRef{Mount: "secret", Path: "castellan/wiki", Field: "key"}},
	}
	if !reflect.DeepEqual(got.Credentials, wantCreds) {
		t.Errorf("Credentials = %+v, want %+v", got.Credentials, wantCreds)
	}

	wantEndpoints := map[string]*egress.Endpoint{
		"crm": {
			Name:    "crm",
			BaseURL: mustURL(t, "http://127.0.0.1:8081/"),
			Rules:   []egress.Rule{egress.MustParseRule("GET /api/customers/*"), egress.MustParseRule("GET,POST /api/tickets/**")},
			Auth:    egress.Auth{Kind: egress.AuthHeader, Credential: "crm_token", Header: "Authorization", Format: "Bearer {secret}"},
			Timeout: 5 * time.Second, MaxResponseBytes: 2 << 20, MaxRequestBytes: 256 << 10, RedactAddress: true,
		},
		"erp": {
			Name:    "erp",
			BaseURL: mustURL(t, "https://erp.internal/odata/"),
			Rules:   []egress.Rule{egress.MustParseRule("* /Orders/*")},
			Auth:    egress.Auth{Kind: egress.AuthBasic, Credential: "erp_password", Username: "svc-castellan"},
			Timeout: egress.DefaultTimeout, MaxResponseBytes: egress.DefaultMaxResponseBytes, MaxRequestBytes: egress.DefaultMaxRequestBytes, RedactAddress: true,
		},
		"tickets": {
			Name:    "tickets",
			BaseURL: mustURL(t, "https://tickets.internal:8443"),
			Rules:   []egress.Rule{egress.MustParseRule("POST /v2/tickets")},
			Auth:    egress.Auth{Kind: egress.AuthQuery, Credential: "ticket_key", Param: "api_key"},
			Timeout: egress.DefaultTimeout, MaxResponseBytes: egress.DefaultMaxResponseBytes, MaxRequestBytes: egress.DefaultMaxRequestBytes, RedactAddress: true,
		},
		"wiki": {
			Name:    "wiki",
			BaseURL: mustURL(t, "https://wiki.internal"),
			Rules:   []egress.Rule{egress.MustParseRule("GET /pages/*")},
			Auth:    egress.Auth{Kind: egress.AuthHeader, Credential: "wiki_key", Header: "X-Api-Key", Format: "Token {secret}"},
			Timeout: egress.DefaultTimeout, MaxResponseBytes: egress.DefaultMaxResponseBytes, MaxRequestBytes: egress.DefaultMaxRequestBytes, RedactAddress: true,
		},
		"status": {
			Name:    "status",
			BaseURL: mustURL(t, "https://status.internal"),
			Rules:   []egress.Rule{egress.MustParseRule("GET /")},
			Timeout: egress.DefaultTimeout, MaxResponseBytes: egress.DefaultMaxResponseBytes, MaxRequestBytes: egress.DefaultMaxRequestBytes, RedactAddress: true,
		},
	}
	if len(got.Endpoints) != len(wantEndpoints) {
		t.Errorf("len(Endpoints) = %d, want %d", len(got.Endpoints), len(wantEndpoints))
	}
	for name, want := range wantEndpoints {
		if g := got.Endpoints[name]; !reflect.DeepEqual(g, want) {
			t.Errorf("Endpoints[%q] = %+v, want %+v", name, g, want)
		}
	}

	wantTasks := map[string]*Task{
		"crm-lookup": {
			Name: "crm-lookup", Module: "/srv/castellan/examples/crm-lookup/crm-lookup.wasm",
			SHA256: "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b",
			Entry:  "run", Version: "1.0.0", Description: "Look up a customer in the CRM",
			Endpoints: []string{"crm", "status"}, OnSecretInOutput: "fail",
			Limits: Limits{MemoryPages: 1024, Timeout: 10 * time.Second, OutputBytes: 1 << 20, HTTPCalls: 20, LogBytes: 64 << 10},
		},
		"nightly_sync": {
			Name: "nightly_sync", Module: "/opt/tasks/sync.wasm", Entry: "run", Version: "2.0",
			Endpoints: []string{"erp", "tickets", "wiki"}, OnSecretInOutput: "redact",
			// 100000 bytes round up to 2 pages; zero output and zero calls are kept as zero.
			Limits: Limits{MemoryPages: 2, Timeout: 30 * time.Second, OutputBytes: 0, HTTPCalls: 0, LogBytes: 64 << 10},
		},
		"noop": {
			Name: "noop", Module: "/srv/castellan/noop.wasm", Entry: "run", Version: "0",
			Endpoints: []string{}, OnSecretInOutput: "fail",
			Limits: Limits{MemoryPages: 1024, Timeout: 30 * time.Second, OutputBytes: 1 << 20, HTTPCalls: 100, LogBytes: 64 << 10},
		},
	}
	if len(got.Tasks) != len(wantTasks) {
		t.Errorf("len(Tasks) = %d, want %d", len(got.Tasks), len(wantTasks))
	}
	for name, want := range wantTasks {
		if g := got.Tasks[name]; !reflect.DeepEqual(g, want) {
			t.Errorf("Tasks[%q] = %+v, want %+v", name, g, want)
		}
	}
	if names, want := got.TaskNames(), []string{"crm-lookup", "nightly_sync", "noop"}; !reflect.DeepEqual(names, want) {
		t.Errorf("TaskNames() = %q, want %q", names, want)
	}
}

func TestParseVaultAppRoleDefaults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, yaml string
		want       *secrets.VaultConfig
	}{
		{"empty section", "version: 1\nvault: {}\n", &secrets.VaultConfig{
			AuthMethod: "token", TokenEnv: "VAULT_TOKEN", CacheTTL: 5 * time.Minute, RequestTimeout: 10 * time.Second}},
		{"null section", "version: 1\nvault:\n", &secrets.VaultConfig{
			AuthMethod: "token", TokenEnv: "VAULT_TOKEN", CacheTTL: 5 * time.Minute, RequestTimeout: 10 * time.Second}},
		{"approle", "version: 1\nvault:\n  auth:\n    method: approle\n    role_id: r-1\n    secret_id_env: VAULT_SECRET_ID\n",
			&secrets.VaultConfig{AuthMethod: "approle", RoleID: "r-1", SecretIDEnv: "VAULT_SECRET_ID", AppRoleMount: "approle",
				CacheTTL: 5 * time.Minute, RequestTimeout: 10 * time.Second}},
		{"approle mount", "version: 1\nvault:\n  auth:\n    method: approle\n    role_id: r-1\n    secret_id_file: sid\n    mount: ops/approle\n  cache_ttl: 30s\n",
			&secrets.VaultConfig{AuthMethod: "approle", RoleID: "r-1", SecretIDFile: "/etc/castellan/sid", AppRoleMount: "ops/approle",
				CacheTTL: 30 * time.Second, RequestTimeout: 10 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := Parse("policy.yaml", []byte(tt.yaml), "/etc/castellan")
			if err != nil {
				t.Fatalf("Parse(%q) error: %v", tt.yaml, err)
			}
			if !reflect.DeepEqual(p.Vault, tt.want) {
				t.Errorf("Parse(%q).Vault = %+v, want %+v", tt.yaml, p.Vault, tt.want)
			}
		})
	}
}

// markerLine returns the 1-based line holding "#!" in s, so table cases state the line of
// each expected problem where a reader can see it.
func markerLine(t *testing.T, s string) int {
	t.Helper()
	for i, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "#!") {
			return i + 1
		}
	}
	t.Fatalf("no #! marker in case:\n%s", s)
	return 0
}

// wantOneProblem parses src (relative paths against baseDir) and checks that it has exactly
// one problem, on the line marked "#!", at field, saying msg. It returns the error.
func wantOneProblem(t *testing.T, src, baseDir, field, msg string) error {
	t.Helper()
	_, err := Parse("policy.yaml", []byte(src), baseDir)
	var perr *Error
	if !errors.As(err, &perr) || len(perr.Problems) != 1 {
		t.Fatalf("Parse(%q) = %v; want one *policy.Error problem", src, err)
	}
	p := perr.Problems[0]
	if line := markerLine(t, src); p.File != "policy.yaml" || p.Line != line || p.Field != field || !strings.Contains(p.Msg, msg) {
		t.Errorf("Parse(%q) problem = %q\nwant policy.yaml:%d: %s: ...%s...", src, p, line, field, msg)
	}
	return err
}

// TestParseErrors has one case per kind of mistake. Each case must produce exactly one
// problem, on the line marked "#!", naming the field and saying what is wrong.
func TestParseErrors(t *testing.T) {
	t.Parallel()
	const ep = "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/\n    allow: [\"GET /a\"]\n"
	tests := []struct {
		name  string
		yaml  string
		field string // expected Problem.Field
		msg   string // substring of Problem.Msg
	}{
		{"unknown top-level key", "version: 1\nendpoint: {} #!\n",
			"endpoint", `unknown key (did you mean "endpoints"?); allowed here: version, vault, credentials, endpoints, tasks`},
		{"unknown endpoint key", ep + "    timout: 5s #!\n",
			"endpoints.crm.timout", `unknown key (did you mean "timeout"?)`},
		{"unknown limits key", "version: 1\ntasks:\n  t:\n    module: t.wasm\n    limits:\n      cpu: 1 #!\n",
			"tasks.t.limits.cpu", "unknown key; allowed here: memory, timeout, output_bytes, http_calls, log_bytes"},
		{"dangling endpoint reference", "version: 1\ntasks:\n  t:\n    module: t.wasm\n    endpoints: [crm] #!\n",
			"tasks.t.endpoints[0]", `unknown endpoint "crm"; declare it under endpoints (there are none yet)`},
		{"dangling endpoint among several", ep + "tasks:\n  t:\n    module: t.wasm\n    endpoints:\n      - crm\n      - erp #!\n",
			"tasks.t.endpoints[1]", `unknown endpoint "erp"; declare it under endpoints (declared: crm)`},
		{"endpoint granted twice", ep + "tasks:\n  t:\n    module: t.wasm\n    endpoints: [crm,\n      crm] #!\n",
			"tasks.t.endpoints[1]", `endpoint "crm" is already granted at endpoints[0]`},
		{"auth names unknown credential", ep + "    auth: {bearer: crm_tok} #!\n",
			"endpoints.crm.auth.bearer", `unknown credential "crm_tok"`},
		{"basic auth names unknown credential", "version: 1\ncredentials:\n  a: {env: A}\n" + ep[len("version: 1\n"):] +
			"    auth:\n      basic:\n        username: u\n        credential: b #!\n",
			"endpoints.crm.auth.basic.credential", `unknown credential "b"; declare it under credentials (declared: a)`},
		{"bad rule", "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/\n    allow:\n      - GET /a\n      - GET api #!\n",
			"endpoints.crm.allow[1]", `rule "GET api": path must start with "/"`},
		{"partial glob rule", "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/\n    allow: [\"GET /c*\"] #!\n",
			"endpoints.crm.allow[0]", `"*" must be a whole segment`},
		{"duplicate rule", "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/\n    allow:\n      - GET /a\n      - GET  /a #!\n",
			"endpoints.crm.allow[1]", "repeats allow[0]"},
		{"allow missing", "version: 1\nendpoints:\n  crm: #!\n    base_url: https://crm.internal/\n",
			"endpoints.crm.allow", "missing; an endpoint needs at least one rule"},
		{"allow empty", "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/\n    allow: [] #!\n",
			"endpoints.crm.allow", "empty; an endpoint needs at least one rule"},
		{"allow not a list", "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/\n    allow: GET /a #!\n",
			"endpoints.crm.allow", "must be a list"},
		{"base_url missing", "version: 1\nendpoints:\n  crm: #!\n    allow: [\"GET /a\"]\n",
			"endpoints.crm.base_url", "missing"},
		{"base_url with userinfo", "version: 1\nendpoints:\n  crm:\n    base_url: https://admin:hunter2@crm.internal/ #!\n    allow: [\"GET /a\"]\n",
			"endpoints.crm.base_url", "must not contain user info"},
		{"base_url with bad userinfo", "version: 1\nendpoints:\n  crm:\n    base_url: https://admin:hunter2/x@crm.internal/ #!\n    allow: [\"GET /a\"]\n",
			"endpoints.crm.base_url", "must not contain user info"},
		{"base_url unparsable", "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal:hunter2/ #!\n    allow: [\"GET /a\"]\n",
			"endpoints.crm.base_url", "not a valid URL; write it as https://host:port/path"},
		{"base_url with query", "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/?key=hunter2 #!\n    allow: [\"GET /a\"]\n",
			"endpoints.crm.base_url", "must not contain a query"},
		{"base_url with empty query", "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/? #!\n    allow: [\"GET /a\"]\n",
			"endpoints.crm.base_url", "must not contain a query"},
		{"base_url with fragment", "version: 1\nendpoints:\n  crm:\n    base_url: \"https://crm.internal/#x\" #!\n    allow: [\"GET /a\"]\n",
			"endpoints.crm.base_url", "must not contain a fragment"},
		{"base_url ftp", "version: 1\nendpoints:\n  crm:\n    base_url: ftp://crm.internal/ #!\n    allow: [\"GET /a\"]\n",
			"endpoints.crm.base_url", `scheme "ftp" is not allowed; use http or https`},
		{"base_url without scheme", "version: 1\nendpoints:\n  crm:\n    base_url: crm.internal/api #!\n    allow: [\"GET /a\"]\n",
			"endpoints.crm.base_url", "needs a scheme"},
		{"base_url without host", "version: 1\nendpoints:\n  crm:\n    base_url: https:///api #!\n    allow: [\"GET /a\"]\n",
			"endpoints.crm.base_url", "needs a host"},
		{"base_url with dot-dot", "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/a/../b #!\n    allow: [\"GET /a\"]\n",
			"endpoints.crm.base_url", `must not contain empty, "." or ".." segments`},
		{"size with unknown unit", ep + "    max_response_bytes: 12XB #!\n",
			"endpoints.crm.max_response_bytes", `size "12XB": want a whole number of bytes, optionally with a KiB, MiB or GiB suffix`},
		{"size with decimal unit", ep + "    max_request_bytes: 1MB #!\n",
			"endpoints.crm.max_request_bytes", "KB/MB/GB are ambiguous"},
		{"size zero", ep + "    max_request_bytes: 0 #!\n",
			"endpoints.crm.max_request_bytes", "out of range; use 1 byte to 1GiB"},
		{"duration without unit", ep + "    timeout: 10 #!\n",
			"endpoints.crm.timeout", "duration 10 needs a unit, e.g. 10s"},
		{"duration malformed", ep + "    timeout: ten seconds #!\n",
			"endpoints.crm.timeout", `duration "ten seconds": want a number with a unit`},
		{"duration negative", ep + "    timeout: -1s #!\n",
			"endpoints.crm.timeout", "out of range"},
		{"two credential sources", "version: 1\ncredentials:\n  tok: #!\n    env: TOK\n    file: /run/secrets/tok\n",
			"credentials.tok", "has env and file; set exactly one of env, file, vault or aws"},
		{"no credential source", "version: 1\ncredentials:\n  tok: {} #!\n",
			"credentials.tok", "no source; set exactly one of env, file, vault or aws"},
		{"bad env name", "version: 1\ncredentials:\n  tok: {env: CRM-TOKEN} #!\n",
			"credentials.tok.env", `environment variable name "CRM-TOKEN"`},
		{"vault credential without vault section", "version: 1\ncredentials:\n  tok:\n    vault: {path: a/b, field: k} #!\n",
			"credentials.tok.vault", "the policy has no vault section"},
		{"vault credential without field", "version: 1\nvault: {}\ncredentials:\n  tok:\n    vault: #!\n      path: a/b\n",
			"credentials.tok.vault.field", "missing"},
		{"vault path traversal", "version: 1\nvault: {}\ncredentials:\n  tok:\n    vault: {path: a/../b, field: k} #!\n",
			"credentials.tok.vault.path", `Vault path "a/../b"`},
		{"approle without role_id", "version: 1\nvault:\n  auth: #!\n    method: approle\n    secret_id_env: SID\n",
			"vault.auth.role_id", "missing"},
		{"token auth with approle option", "version: 1\nvault:\n  auth:\n    role_id: r #!\n",
			"vault.auth.role_id", "only applies to method approle, but method is token"},
		{"unknown vault auth method", "version: 1\nvault:\n  auth:\n    method: ldap #!\n",
			"vault.auth.method", `unknown method "ldap"; use token or approle`},
		{"vault address with path", "version: 1\nvault:\n  address: https://vault.internal/v1 #!\n",
			"vault.address", "must not have a path"},
		{"missing version", "credentials: {} #!\n",
			"version", `missing; add "version: 1"`},
		{"empty file", "#!\n",
			"version", "missing"},
		{"wrong version", "version: 2 #!\n",
			"version", "unsupported version 2; this worker reads version 1"},
		{"version as text", "version: one #!\n",
			"version", "must be a whole number such as 1, not a string"},
		{"sha256 too short", "version: 1\ntasks:\n  t:\n    module: t.wasm\n    sha256: 3a7bd3e2 #!\n",
			"tasks.t.sha256", "must be 64 hexadecimal characters (the output of sha256sum), got 8 characters"},
		{"sha256 not hex", "version: 1\ntasks:\n  t:\n    module: t.wasm\n    sha256: " + strings.Repeat("g", 64) + " #!\n",
			"tasks.t.sha256", "must be 64 hexadecimal characters"},
		{"memory over max", "version: 1\ntasks:\n  t:\n    module: t.wasm\n    limits:\n      memory: 2GiB #!\n",
			"tasks.t.limits.memory", "size 2GiB is out of range; use 64KiB to 1GiB"},
		{"memory under min", "version: 1\ntasks:\n  t:\n    module: t.wasm\n    limits: {memory: 1KiB} #!\n",
			"tasks.t.limits.memory", "out of range; use 64KiB to 1GiB"},
		{"task timeout over max", "version: 1\ntasks:\n  t:\n    module: t.wasm\n    limits: {timeout: 2h} #!\n",
			"tasks.t.limits.timeout", "duration 2h is out of range; use more than 0 and at most 1h"},
		{"output over max", "version: 1\ntasks:\n  t:\n    module: t.wasm\n    limits: {output_bytes: 65MiB} #!\n",
			"tasks.t.limits.output_bytes", "out of range; use 0 bytes to 64MiB"},
		{"negative http_calls", "version: 1\ntasks:\n  t:\n    module: t.wasm\n    limits: {http_calls: -1} #!\n",
			"tasks.t.limits.http_calls", "-1 is out of range; use 0 to 100000"},
		{"module missing", "version: 1\ntasks:\n  t: #!\n    entry: run\n",
			"tasks.t.module", "missing"},
		{"boolean for a string", "version: 1\ntasks:\n  t:\n    module: t.wasm\n    entry: true #!\n",
			"tasks.t.entry", "must be a string, not a boolean"},
		{"bad on_secret_in_output", "version: 1\ntasks:\n  t:\n    module: t.wasm\n    on_secret_in_output: ignore #!\n",
			"tasks.t.on_secret_in_output", `unknown value "ignore"; use fail or redact`},
		{"bad credential name", "version: 1\ncredentials:\n  my.token: {env: T} #!\n",
			`credentials."my.token"`, `credential name "my.token" must match ^[a-z][a-z0-9_-]{0,62}$`},
		{"bad endpoint name", "version: 1\nendpoints:\n  CRM: #!\n    base_url: https://crm.internal/\n    allow: [\"GET /a\"]\n",
			"endpoints.CRM", `endpoint name "CRM" must match`},
		{"bad task name", "version: 1\ntasks:\n  1task: {module: t.wasm} #!\n",
			"tasks.1task", `task name "1task" must match`},
		{"task name too long", "version: 1\ntasks:\n  " + strings.Repeat("a", 64) + ": {module: t.wasm} #!\n",
			"tasks." + strings.Repeat("a", 64), "must match"},
		{"header auth hop-by-hop", "version: 1\ncredentials:\n  k: {env: K}\n" + ep[len("version: 1\n"):] +
			"    auth:\n      header: {name: connection, credential: k} #!\n",
			"endpoints.crm.auth.header.name", `header "Connection" is hop-by-hop`},
		{"header auth proxy header", "version: 1\ncredentials:\n  k: {env: K}\n" + ep[len("version: 1\n"):] +
			"    auth:\n      header: {name: Proxy-Authorization, credential: k} #!\n",
			"endpoints.crm.auth.header.name", "hop-by-hop"},
		{"header format without secret", "version: 1\ncredentials:\n  k: {env: K}\n" + ep[len("version: 1\n"):] +
			"    auth:\n      header: {name: X-Key, format: \"Token\", credential: k} #!\n",
			"endpoints.crm.auth.header.format", "must contain {secret} exactly once (found 0)"},
		{"header format with two secrets", "version: 1\ncredentials:\n  k: {env: K}\n" + ep[len("version: 1\n"):] +
			"    auth:\n      header: {name: X-Key, format: \"{secret}{secret}\", credential: k} #!\n",
			"endpoints.crm.auth.header.format", "(found 2)"},
		{"basic username with colon", "version: 1\ncredentials:\n  k: {env: K}\n" + ep[len("version: 1\n"):] +
			"    auth:\n      basic: {username: \"a:b\", credential: k} #!\n",
			"endpoints.crm.auth.basic.username", `must not contain ":"`},
		{"two auth kinds", "version: 1\ncredentials:\n  k: {env: K}\n" + ep[len("version: 1\n"):] +
			"    auth: #!\n      bearer: k\n      query: {param: key, credential: k}\n",
			"endpoints.crm.auth", "has bearer and query; set exactly one of bearer, header, basic or query"},
		{"duplicate key", ep + "    timeout: 1s\n    timeout: 2s #!\n",
			"endpoints.crm.timeout", "duplicate key (first at line 6)"},
		{"alias", "version: 1\nendpoints:\n  crm:\n    base_url: &u https://crm.internal/\n    allow: [\"GET /a\"]\n" +
			"  erp:\n    base_url: *u #!\n    allow: [\"GET /a\"]\n",
			"endpoints.erp.base_url", "YAML aliases (*u) are not supported"},
		{"mapping where a duration belongs", ep + "    timeout: {s: 1} #!\n",
			"endpoints.crm.timeout", "must be a duration such as 10s, not a mapping"},
		{"mapping where a string belongs", "version: 1\ntasks:\n  t:\n    module: {s: 1} #!\n    sha256: " + strings.Repeat("a", 64) + "\n",
			"tasks.t.module", "must be a string, not a mapping"},
		{"endpoint not a mapping", "version: 1\nendpoints:\n  crm: https://crm.internal/ #!\ntasks:\n  t: {module: t.wasm, endpoints: [crm]}\n",
			"endpoints.crm", "must be a mapping"},
		{"credential not a mapping", "version: 1\ncredentials:\n  tok: CRM_TOKEN #!\n",
			"credentials.tok", "must be a mapping"},
		{"task not a mapping", "version: 1\ntasks:\n  t: t.wasm #!\n",
			"tasks.t", "must be a mapping"},
		{"header auth not a mapping", "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/\n    allow: [\"GET /a\"]\n    auth: {header: X-Key} #!\n",
			"endpoints.crm.auth.header", "must be a mapping"},
		{"list where a mapping belongs", "version: 1\ntasks: [a, b] #!\n",
			"tasks", "must be a mapping"},
		{"syntax error", "version: 1\nendpoints:\n\tcrm: {} #!\n",
			"", "invalid YAML"},
		{"second document", "version: 1\n--- #!\nversion: 1\n",
			"", "a second YAML document starts here"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := wantOneProblem(t, tt.yaml, "/srv", tt.field, tt.msg)
			line := markerLine(t, tt.yaml)
			// The error names the field where it happened, in the one-per-line form.
			prefix := fmt.Sprintf("policy.yaml:%d: ", line)
			if tt.field != "" {
				prefix += tt.field + ": "
			}
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("Parse(%q).Error() = %q, want prefix %q", tt.yaml, err, prefix)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("Parse(%q).Error() = %q, which echoes a password from the file", tt.yaml, err)
			}
		})
	}
}

func TestParseReportsAllProblems(t *testing.T) {
	t.Parallel()
	const doc = `version: 1
credentials:
  tok:
    env: TOK
    file: /x
endpoints:
  crm:
    base_url: ftp://crm.internal/
    allow:
      - GET api
    auth: {bearer: nope}
tasks:
  t:
    module: t.wasm
    endpoints: [crm, erp]
    limits:
      memory: 12XB
      color: blue
`
	_, err := Parse("p.yaml", []byte(doc), "/srv")
	var perr *Error
	if !errors.As(err, &perr) {
		t.Fatalf("Parse() error = %v, want *policy.Error", err)
	}
	want := []struct {
		line  int
		field string
	}{
		{3, "credentials.tok"},
		{8, "endpoints.crm.base_url"},
		{10, "endpoints.crm.allow[0]"},
		{11, "endpoints.crm.auth.bearer"},
		{15, "tasks.t.endpoints[1]"},
		{17, "tasks.t.limits.memory"},
		{18, "tasks.t.limits.color"},
	}
	var got []string
	for _, p := range perr.Problems {
		got = append(got, fmt.Sprintf("%d %s", p.Line, p.Field))
	}
	var wantS []string
	for _, w := range want {
		wantS = append(wantS, fmt.Sprintf("%d %s", w.line, w.field))
	}
	if !reflect.DeepEqual(got, wantS) {
		t.Errorf("Parse() problems (line field) = %q, want %q\nfull error:\n%v", got, wantS, err)
	}
	if lines := strings.Split(err.Error(), "\n"); len(lines) != len(want) {
		t.Errorf("Parse().Error() has %d lines, want one per problem (%d):\n%v", len(lines), len(want), err)
	}
}

func TestProblemString(t *testing.T) {
	t.Parallel()
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{File: "p.yaml", Line: 3, Field: "tasks.t", Msg: "bad"}, "p.yaml:3: tasks.t: bad"},
		{Problem{File: "p.yaml", Line: 3, Msg: "invalid YAML"}, "p.yaml:3: invalid YAML"},
		{Problem{File: "p.yaml", Msg: "cannot read"}, "p.yaml: cannot read"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.p, got, tt.want)
		}
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	p, err := Load("testdata/policy.yaml")
	if err != nil {
		t.Fatalf("Load(testdata/policy.yaml) error:\n%v", err)
	}
	dir, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	modules := map[string]string{
		"crm-lookup": filepath.Join(dir, "modules", "crm-lookup.wasm"),
		"order-sync": filepath.Join(dir, "modules", "order-sync.wasm"),
	}
	for task, want := range modules {
		if got := p.Tasks[task].Module; got != want {
			t.Errorf("Load().Tasks[%q].Module = %q, want %q", task, got, want)
		}
	}
	if got, want := p.Vault.SecretIDFile, filepath.Join(dir, "secrets", "vault-secret-id"); got != want {
		t.Errorf("Load().Vault.SecretIDFile = %q, want %q", got, want)
	}
	if got, want := p.Tasks["crm-lookup"].SHA256, "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b"; got != want {
		t.Errorf("Load().Tasks[crm-lookup].SHA256 = %q, want lower-case %q", got, want)
	}
	if got, want := p.Tasks["crm-lookup"].Limits.MemoryPages, uint32(2); got != want {
		t.Errorf("Load().Tasks[crm-lookup].Limits.MemoryPages = %d, want %d (100000 bytes rounded up)", got, want)
	}
	if got, want := p.Credentials["ticket_key"].Vault.Mount, "secret"; got != want {
		t.Errorf("Load().Credentials[ticket_key].Vault.Mount = %q, want default %q", got, want)
	}
	if p.Path != "testdata/policy.yaml" {
		t.Errorf("Load().Path = %q, want %q", p.Path, "testdata/policy.yaml")
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := Load(path)
	var perr *Error
	if !errors.As(err, &perr) || len(perr.Problems) != 1 {
		t.Fatalf("Load(%q) error = %v, want *policy.Error with one problem", path, err)
	}
	if want := path + ": cannot read the policy: file does not exist"; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Load(%q) error = %q, want prefix %q", path, err, want)
	}
}

// TestDocsExample keeps the commented example in docs/policy.md valid.
func TestDocsExample(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../docs/policy.md")
	if err != nil {
		t.Fatal(err)
	}
	const start, end = "<!-- example -->\n```yaml\n", "```"
	_, rest, ok := strings.Cut(string(data), start)
	if !ok {
		t.Fatalf("docs/policy.md has no %q block", start)
	}
	example, _, _ := strings.Cut(rest, end)
	p, err := Parse("docs/policy.md", []byte(example), "/etc/castellan")
	if err != nil {
		t.Fatalf("Parse(docs example) error:\n%v", err)
	}
	if len(p.Tasks) == 0 || len(p.Endpoints) == 0 || len(p.Credentials) == 0 || p.Vault == nil {
		t.Errorf("Parse(docs example) = %d tasks, %d endpoints, %d credentials, vault %v; want all sections filled",
			len(p.Tasks), len(p.Endpoints), len(p.Credentials), p.Vault != nil)
	}
}

func TestWriteSummary(t *testing.T) {
	t.Parallel()
	p, err := Parse("policy.yaml", []byte(fullPolicy), "/srv/castellan")
	if err != nil {
		t.Fatal(err)
	}
	var a, b strings.Builder
	if err := p.WriteSummary(&a); err != nil {
		t.Fatalf("WriteSummary() error: %v", err)
	}
	if err := p.WriteSummary(&b); err != nil {
		t.Fatal(err)
	}
	if a.String() != b.String() {
		t.Errorf("WriteSummary() differs between calls:\n%s\n---\n%s", a.String(), b.String())
	}
	out := a.String()
	for _, want := range []string{
		"policy policy.yaml: 3 tasks, 5 endpoints, 4 credentials\n",
		"vault: https://vault.internal:8200, auth token\n",
		"  module: /opt/tasks/sync.wasm (unpinned), entry run\n",
		"  limits: memory 128KiB (2 pages), timeout 30s, output 0 bytes, http calls 0, log 64KiB\n",
		"  secret in output: redact\n",
		"  endpoint erp: https://erp.internal/odata/\n    allow * /Orders/*\n    credential erp_password from file, as basic auth password for user svc-castellan\n",
		"    credential ticket_key from vault, as query parameter api_key\n",
		"    credential wiki_key from vault, as header X-Api-Key: Token {secret}\n",
		"  endpoint status: https://status.internal\n    allow GET /\n    credential: none\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("WriteSummary() does not contain %q; got:\n%s", want, out)
		}
	}
	// Only credential names and source kinds appear, never where the value lives.
	for _, ref := range []string{"CRM_TOKEN", "/run/secrets/erp", "castellan/ticketing", "vault-token"} {
		if strings.Contains(out, ref) {
			t.Errorf("WriteSummary() contains credential reference %q; got:\n%s", ref, out)
		}
	}
	if strings.Index(out, "task crm-lookup") > strings.Index(out, "task nightly_sync") {
		t.Errorf("WriteSummary() tasks not in sorted order:\n%s", out)
	}
}

package plugins

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/castellan-dev/castellan/policy"
)

// credPolicy is a policy task (the http probe fixture) granted one endpoint whose
// credential comes from source; vault is the policy's vault section, or "".
func credPolicy(t *testing.T, vault, source string) *policy.Policy {
	t.Helper()
	wasm, err := filepath.Abs("testdata/http_probe.wasm")
	if err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf(`version: 1
%s
credentials:
  api_key: %s
endpoints:
  api:
    base_url: https://api.internal/
    allow: ["GET /x"]
    auth: {bearer: api_key}
tasks:
  probe:
    module: %s
    endpoints: [api]
`, vault, source, wasm)
	p, err := policy.Parse("policy.yaml", []byte(doc), "/")
	if err != nil {
		t.Fatalf("policy.Parse() error = %v\n%s", err, doc)
	}
	return p
}

// TestAuditVaultWithoutTLS: a plain-http Vault address is reported like a plain-http
// endpoint that carries a credential, because the Vault token goes with every request.
func TestAuditVaultWithoutTLS(t *testing.T) {
	t.Parallel()
	const fromVault = "{vault: {path: castellan/api, field: key}}"
	tests := []struct {
		name, vault, source string
		want                bool
	}{
		{"plain http", "vault: {address: http://vault.internal:8200}", fromVault, true},
		{"plain http, upper-case scheme", "vault: {address: HTTP://vault.internal:8200}", fromVault, true},
		{"https", "vault: {address: https://vault.internal:8200}", fromVault, false},
		{"address from VAULT_ADDR at run time", "vault: {}", fromVault, false},
		{"plain http but no credential from vault", "vault: {address: http://vault.internal:8200}", "{env: API_KEY}", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rep, err := Audit(t.Context(), credPolicy(t, tt.vault, tt.source), "")
			if err != nil {
				t.Fatalf("Audit() error = %v", err)
			}
			var got *Finding
			for i, f := range rep.Findings {
				if f.Code == CodeVaultNoTLS {
					got = &rep.Findings[i]
				}
			}
			if (got != nil) != tt.want {
				t.Fatalf("Audit() %s finding = %+v, want present = %t; findings %+v", CodeVaultNoTLS, got, tt.want, rep.Findings)
			}
			if got == nil {
				return
			}
			if got.Severity != High || !strings.Contains(got.Message, `credential "api_key" is read from it`) ||
				!strings.Contains(got.Message, "Vault token") || strings.Contains(got.Message, "vault.internal") {
				t.Errorf("Audit() finding = %+v, want high, naming credential api_key and the Vault token, not the address", *got)
			}
			if rep.Max() != High {
				t.Errorf("Report.Max() = %q, want high", rep.Max())
			}
		})
	}
}

// TestAuditShowsAWSSource: a credential from AWS Secrets Manager appears by its source kind,
// like the others, never by its secret id, field or stage.
func TestAuditShowsAWSSource(t *testing.T) {
	t.Parallel()
	rep, err := Audit(t.Context(), credPolicy(t, "", "{aws: {secret_id: leakteam/api-secret, field: leakfield, version_stage: LEAKSTAGE}}"), "")
	if err != nil {
		t.Fatalf("Audit() error = %v", err)
	}
	tr := taskReport(t, rep, "probe")
	if len(tr.Endpoints) != 1 || tr.Endpoints[0].Credential == nil || tr.Endpoints[0].Credential.Source != "aws" {
		t.Fatalf("Audit() probe endpoints = %+v, want api with a credential from aws", tr.Endpoints)
	}
	sch, err := jsonschema.NewCompiler().Compile("../docs/audit.schema.json")
	if err != nil {
		t.Fatalf("compiling docs/audit.schema.json: %v", err)
	}
	var js bytes.Buffer
	if err := rep.Write(&js, "json"); err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(&js)
	if err != nil {
		t.Fatal(err)
	}
	if err := sch.Validate(doc); err != nil {
		t.Errorf("audit JSON with an aws credential does not match docs/audit.schema.json: %v", err)
	}
	for _, format := range Formats() {
		var buf bytes.Buffer
		if err := rep.Write(&buf, format); err != nil {
			t.Fatalf("Write(%s) error = %v", format, err)
		}
		if !strings.Contains(buf.String(), "aws") {
			t.Errorf("Write(%s) does not show the aws source:\n%s", format, buf.String())
		}
		for _, where := range []string{"leakteam", "leakfield", "LEAKSTAGE"} {
			if strings.Contains(buf.String(), where) {
				t.Errorf("Write(%s) shows where the credential lives (%s):\n%s", format, where, buf.String())
			}
		}
	}
}

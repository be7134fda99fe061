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

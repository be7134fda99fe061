package policy

import (
	"reflect"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/secrets"
)

const awsPolicy = `version: 1
credentials:
  ticket_key:
    aws: { secret_id: castellan/ticketing }
  erp_password:
    aws:
      secret_id: arn:aws:secretsmanager:eu-central-1:123456789012:secret:castellan/erp-AbCdEf
      field: password
      version_stage: AWSPREVIOUS
endpoints:
  erp:
    base_url: https://erp.internal/
    allow: ["GET /Orders/1"]
    auth:
      basic: { username: svc-castellan, credential: erp_password }
  tickets:
    base_url: https://tickets.internal/
    allow: ["POST /v2/tickets"]
    auth: { bearer: ticket_key }
tasks:
  t:
    module: t.wasm
    endpoints: [erp, tickets]
`

func TestParseAWSCredentials(t *testing.T) {
	t.Parallel()
	p, err := Parse("policy.yaml", []byte(awsPolicy), "/srv")
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	want := map[string]secrets.Spec{
		"ticket_key": {AWS: &secrets.AWSRef{SecretID: "castellan/ticketing", VersionStage: "AWSCURRENT"}},
		"erp_password": {AWS: &secrets.AWSRef{SecretID: "arn:aws:secretsmanager:eu-central-1:123456789012:secret:castellan/erp-AbCdEf",
			Field: "password", VersionStage: "AWSPREVIOUS"}},
	}
	if !reflect.DeepEqual(p.Credentials, want) {
		t.Errorf("Parse().Credentials = %+v, want %+v", p.Credentials, want)
	}
	if p.Vault != nil {
		t.Errorf("Parse().Vault = %+v, want nil: AWS credentials need no vault section", p.Vault)
	}
	var b strings.Builder
	if err := p.WriteSummary(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, w := range []string{"credential erp_password from aws, as basic auth password", "credential ticket_key from aws, as header Authorization"} {
		if !strings.Contains(out, w) {
			t.Errorf("WriteSummary() lacks %q; got:\n%s", w, out)
		}
	}
	for _, ref := range []string{"castellan/ticketing", "castellan/erp", "arn:aws", "AWSPREVIOUS", "password\n"} {
		if strings.Contains(out, ref) {
			t.Errorf("WriteSummary() contains the credential reference %q; got:\n%s", ref, out)
		}
	}
}

func TestParseAWSErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, yaml, field, msg string }{
		{"unknown key", "version: 1\ncredentials:\n  tok:\n    aws:\n      secret_id: a\n      secret_di: b #!\n",
			"credentials.tok.aws.secret_di", `unknown key (did you mean "secret_id"?)`},
		{"region is not a key", "version: 1\ncredentials:\n  tok:\n    aws:\n      secret_id: a\n      region: eu-west-1 #!\n",
			"credentials.tok.aws.region", "unknown key"},
		{"missing secret_id", "version: 1\ncredentials:\n  tok:\n    aws: #!\n      field: password\n",
			"credentials.tok.aws.secret_id", "missing"},
		{"empty secret_id", "version: 1\ncredentials:\n  tok:\n    aws: {secret_id: \"\"} #!\n",
			"credentials.tok.aws.secret_id", "must not be empty"},
		{"bad secret_id", "version: 1\ncredentials:\n  tok:\n    aws: {secret_id: \"a b\"} #!\n",
			"credentials.tok.aws.secret_id", "want a secret name"},
		{"bad stage", "version: 1\ncredentials:\n  tok:\n    aws: {secret_id: a, version_stage: \"AWS CURRENT\"} #!\n",
			"credentials.tok.aws.version_stage", "want a staging label"},
		{"empty field", "version: 1\ncredentials:\n  tok:\n    aws: {secret_id: a, field: \"\"} #!\n",
			"credentials.tok.aws.field", "must not be empty"},
		{"not a mapping", "version: 1\ncredentials:\n  tok:\n    aws: castellan/x #!\n",
			"credentials.tok.aws", "must be a mapping"},
		{"two sources", "version: 1\ncredentials:\n  tok: #!\n    env: TOK\n    aws: {secret_id: a}\n",
			"credentials.tok", "has env and aws; set exactly one of env, file, vault or aws"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			wantOneProblem(t, tt.yaml, "/srv", tt.field, tt.msg)
		})
	}
}

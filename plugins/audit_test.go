package plugins

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/policy"
)

var (
	update = flag.Bool("update", false, "rewrite the audit golden files")
	regen  = flag.Bool("regen-fixtures", false, "regenerate the audit fixture's publisher key and signatures")
)

const auditDir = "testdata/audit"

// regenerateFixtures writes a fresh publisher key and re-signs the fixture's signed plugins.
// Ed25519 is deterministic, so re-signing with the same key gives the same files.
func regenerateFixtures(t *testing.T) {
	keys := filepath.Join(auditDir, "keys")
	for _, f := range []string{"acme" + approval.PrivateKeySuffix, "acme" + approval.PublicKeySuffix} {
		_ = os.Remove(filepath.Join(keys, f))
	}
	if _, _, err := approval.WriteKeyFiles(keys, "acme"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"echo", "probe", "orphan", "hello"} {
		if _, err := Sign(filepath.Join(auditDir, "plugins", p), filepath.Join(keys, "acme"+approval.PrivateKeySuffix)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAuditGolden(t *testing.T) {
	if *regen {
		regenerateFixtures(t)
	}
	pol, err := policy.Load(filepath.Join(auditDir, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Audit(t.Context(), pol, filepath.Join(auditDir, "plugins"))
	if err != nil {
		t.Fatalf("Audit() error = %v", err)
	}
	for _, format := range Formats() {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			if err := rep.Write(&buf, format); err != nil {
				t.Fatalf("Write(%s) error = %v", format, err)
			}
			ext := map[string]string{"table": "txt", "json": "json", "markdown": "md"}[format]
			golden := filepath.Join(auditDir, "report."+ext)
			if *update {
				if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got := buf.String(); got != string(want) {
				t.Errorf("Write(%s) differs from %s (run with -update after checking):\n%s", format, golden, got)
			}
		})
	}
}

// TestAuditFindings checks the findings the fixture was built to trigger, independently of
// the golden text, so that a regenerated golden cannot silently lose one.
func TestAuditFindings(t *testing.T) {
	t.Parallel()
	pol, err := policy.Load(filepath.Join(auditDir, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Audit(t.Context(), pol, filepath.Join(auditDir, "plugins"))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		sev            Severity
		code, task, ep string
	}{
		{High, CodeUnsigned, "rogue", ""},
		{High, CodeRefused, "rogue", ""},
		{High, CodeNoTLS, "", "crm"},
		{High, CodeVaultNoTLS, "", ""},
		{Medium, CodeNoGrant, "orphan", ""},
		{Medium, CodeWildcard, "", "crm"},
		{Medium, CodeSharedCredential, "", "crm,wiki"},
		{Low, CodeUnusedGrant, "ghost", ""},
		{Low, CodeUnusedGrant, "probe", "wiki"},
		{Low, CodeUnusedGrant, "", "erp"},
		{Low, CodeRequestedMore, "probe", ""},
	}
	for _, w := range want {
		found := false
		for _, f := range rep.Findings {
			if f.Severity == w.sev && f.Code == w.code && f.Task == w.task && f.Endpoint == w.ep {
				found = true
			}
		}
		if !found {
			t.Errorf("Audit() findings lack %s %s task=%q endpoint=%q; got %+v", w.sev, w.code, w.task, w.ep, rep.Findings)
		}
	}
	for _, f := range rep.Findings {
		if f.Task == "echo" && f.Severity != Low {
			t.Errorf("Audit() finding %+v for echo, a signed plugin within its grant", f)
		}
	}
	// The Extism plugin and the same module as a policy task run on a worker, so they load here.
	for _, name := range []string{"hello", "hello_policy"} {
		if tr := taskReport(t, rep, name); tr.Status != "loads" {
			t.Errorf("Audit() %s status = %q (%s), want loads: the worker runs it", name, tr.Status, tr.Refused)
		}
		for _, f := range rep.Findings {
			if f.Task == name && f.Severity != Low {
				t.Errorf("Audit() finding %+v for %s, a signed or pinned Extism module within its grant", f, name)
			}
		}
	}
	probe := taskReport(t, rep, "probe")
	if probe.Signer != "acme" || probe.Status != "loads" || len(probe.Endpoints) != 1 || probe.Endpoints[0].Name != "crm" {
		t.Errorf("Audit() probe = %+v, want signed by acme, loads, endpoints [crm]", probe)
	}
	if probe.Limits.MemoryBytes != 512<<10 || probe.Limits.HTTPCalls != 5 {
		t.Errorf("Audit() probe limits = %+v, want memory 512KiB (granted, less than requested) and http calls 5 (requested, less than granted)", probe.Limits)
	}
	if got := rep.Max(); got != High {
		t.Errorf("Report.Max() = %q, want high", got)
	}
	if got := len(rep.AtLeast(Medium)); got != rep.Counts.High+rep.Counts.Medium {
		t.Errorf("len(Report.AtLeast(medium)) = %d, want %d", got, rep.Counts.High+rep.Counts.Medium)
	}
	// No credential value or location ever appears; the fixture's env var name is a location.
	var buf bytes.Buffer
	_ = rep.Write(&buf, "json")
	for _, where := range []string{"CRM_TOKEN", "vault.internal", "castellan/erp"} {
		if strings.Contains(buf.String(), where) {
			t.Errorf("Audit() JSON mentions where a credential lives (%s)", where)
		}
	}
}

func taskReport(t *testing.T, r *Report, name string) TaskReport {
	t.Helper()
	for _, tr := range r.Tasks {
		if tr.Name == name {
			return tr
		}
	}
	t.Fatalf("Audit() has no task %q", name)
	return TaskReport{}
}

// TestAuditJSONSchema validates the JSON report against docs/audit.schema.json, and checks
// that the schema can fail (an unknown field is refused).
func TestAuditJSONSchema(t *testing.T) {
	t.Parallel()
	c := jsonschema.NewCompiler()
	sch, err := c.Compile("../docs/audit.schema.json")
	if err != nil {
		t.Fatalf("compiling docs/audit.schema.json: %v", err)
	}
	pol, err := policy.Load(filepath.Join(auditDir, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Audit(t.Context(), pol, filepath.Join(auditDir, "plugins"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := rep.Write(&buf, "json"); err != nil {
		t.Fatal(err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if err := sch.Validate(doc); err != nil {
		t.Errorf("audit JSON does not match docs/audit.schema.json: %v", err)
	}
	var m map[string]any
	_ = json.Unmarshal(buf.Bytes(), &m)
	m["surprise"] = true
	if err := sch.Validate(m); err == nil {
		t.Errorf("docs/audit.schema.json accepts an unknown top-level field; it must be closed")
	}
}

// TestFormatsIsACopy: an embedding program cannot change what the package reports as its
// formats (no mutable package state).
func TestFormatsIsACopy(t *testing.T) {
	t.Parallel()
	f := Formats()
	f[0] = "changed"
	if got := Formats(); got[0] != "table" || len(got) != 3 {
		t.Errorf("Formats() after changing a returned slice = %q, want [table json markdown]", got)
	}
	for _, format := range Formats() {
		if err := (&Report{}).Write(io.Discard, format); err != nil {
			t.Errorf("Write(%q) error = %v; every listed format must be accepted", format, err)
		}
	}
	if err := (&Report{}).Write(io.Discard, "changed"); err == nil || !strings.Contains(err.Error(), "table, json, markdown") {
		t.Errorf("Write(unknown) error = %v, want it to list table, json, markdown", err)
	}
}

package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestParseTitleAndAnnotations(t *testing.T) {
	t.Parallel()
	const y = "version: 1\ntasks:\n  t:\n    module: t.wasm\n    title: Look up a customer\n    output_schema: out.json\n    annotations: {read_only: true, idempotent: true}\n"
	p, err := Parse("policy.yaml", []byte(y), "/srv")
	if err != nil {
		t.Fatal(err)
	}
	task := p.Tasks["t"]
	if task.Title != "Look up a customer" || task.OutputSchema != "/srv/out.json" {
		t.Errorf("Title, OutputSchema = %q, %q", task.Title, task.OutputSchema)
	}
	a := task.Annotations
	if a == nil || a.ReadOnly == nil || !*a.ReadOnly || a.Idempotent == nil || !*a.Idempotent || a.Destructive != nil {
		t.Fatalf("Annotations = %v, want read_only and idempotent true, destructive unset", a)
	}
	if got := a.String(); got != "read_only, idempotent" {
		t.Errorf("Annotations.String() = %q", got)
	}
	if p.Tasks["t"].Annotations.String() == "none set" || (*Annotations)(nil).String() != "none set" {
		t.Error("String() of nil annotations should be \"none set\"")
	}

	// A plugin grant may set annotations (the policy's statement) but not a title (the
	// manifest's).
	p, err = Parse("policy.yaml", []byte("version: 1\ntasks:\n  p:\n    annotations: {destructive: true}\n"), "/srv")
	if err != nil {
		t.Fatal(err)
	}
	if a := p.Tasks["p"].Annotations; a == nil || a.Destructive == nil || !*a.Destructive {
		t.Errorf("plugin grant Annotations = %v, want destructive", a)
	}
}

func TestParseTitleAndAnnotationsErrors(t *testing.T) {
	t.Parallel()
	const task = "version: 1\ntasks:\n  t:\n    module: t.wasm\n"
	tests := []struct {
		name, yaml, want string
	}{
		{"title too long", task + "    title: " + strings.Repeat("x", MaxTitle+1) + "\n", "policy.yaml:5: tasks.t.title: is 129 bytes, at most 128"},
		{"title empty", task + "    title: \"\"\n", "policy.yaml:5: tasks.t.title: must not be empty"},
		{"title two lines", task + "    title: \"a\\nb\"\n", "policy.yaml:5: tasks.t.title: must be a single line without control characters"},
		{"title with an escape sequence", task + "    title: \"a\\e[2Jb\"\n", "policy.yaml:5: tasks.t.title: must be a single line without control characters"},
		{"title not a string", task + "    title: [a]\n", "policy.yaml:5: tasks.t.title: must be a string"},
		{"annotations unknown key", task + "    annotations:\n      readonly: true\n", `policy.yaml:6: tasks.t.annotations.readonly: unknown key (did you mean "read_only"?)`},
		{"annotations not boolean", task + "    annotations:\n      idempotent: \"yes\"\n", "policy.yaml:6: tasks.t.annotations.idempotent: must be true or false"},
		{"annotations not a mapping", task + "    annotations: read_only\n", "policy.yaml:5: tasks.t.annotations: must be a mapping"},
		{"read only and destructive", task + "    annotations:\n      read_only: true\n      destructive: true\n", "policy.yaml:7: tasks.t.annotations.destructive: a read_only task cannot be destructive"},
		{"title in a plugin grant", "version: 1\ntasks:\n  p:\n    title: Mine\n", "tasks.p.module: missing; set the path of the task's .wasm file, or remove title"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("policy.yaml", []byte(tt.yaml), "/srv")
			var perr *Error
			if !errors.As(err, &perr) || len(perr.Problems) != 1 || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse(%q) error = %v, want one problem containing %q", tt.yaml, err, tt.want)
			}
		})
	}
}

func TestManifestTitleAndAnnotations(t *testing.T) {
	t.Parallel()
	mf, err := ParseManifest("plugin.yaml", []byte("name: p\nversion: \"1\"\ntitle: My plugin\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if mf.Title != "My plugin" {
		t.Errorf("Title = %q", mf.Title)
	}
	// The author cannot declare their own module harmless.
	_, err = ParseManifest("plugin.yaml", []byte("name: p\nversion: \"1\"\nannotations:\n  read_only: true\n"), nil)
	if err == nil || !strings.Contains(err.Error(), `plugin.yaml:3: annotations: a plugin cannot set its own annotations`) ||
		!strings.Contains(err.Error(), `the policy's task "p" sets them`) {
		t.Fatalf("ParseManifest(annotations) error = %v", err)
	}
	_, err = ParseManifest("plugin.yaml", []byte("name: p\nversion: \"1\"\ntitle: \""+strings.Repeat("x", MaxTitle+1)+"\"\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "plugin.yaml:3: title: is 129 bytes") {
		t.Fatalf("ParseManifest(long title) error = %v", err)
	}
}

// TestSummaryShowsTitleAnnotationsAndOutputSchema: `castellan policy check` shows what the
// control plane and AI agents will be told about each task.
func TestSummaryShowsTitleAnnotationsAndOutputSchema(t *testing.T) {
	t.Parallel()
	const y = "version: 1\ntasks:\n  t:\n    module: t.wasm\n    title: Look up a customer\n    output_schema: out.json\n    annotations: {read_only: true, destructive: false}\n  u:\n    module: u.wasm\n"
	p, err := Parse("policy.yaml", []byte(y), "/srv")
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := p.WriteSummary(&b); err != nil {
		t.Fatal(err)
	}
	got := b.String()
	for _, want := range []string{
		"task t (version 0)\n  title: Look up a customer\n",
		"  annotations: read_only, not destructive\n",
		"  output schema: /srv/out.json (every ok output is checked against it)\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	_, u, _ := strings.Cut(got, "task u ")
	if strings.Contains(u, "annotations") || strings.Contains(u, "title") || strings.Contains(u, "output schema") {
		t.Errorf("task u sets none of them, but its summary shows some:\n%s", u)
	}
}

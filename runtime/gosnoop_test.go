package runtime_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/democrm"
	"github.com/castellan-dev/castellan/internal/wasmbuild"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/runtime"
)

// TestGoTaskCannotReadCredential builds a hostile Go task from source and runs it against the
// demo CRM, whose /api/echo endpoints reflect the Authorization header. The CRM must receive
// the real token; the task must not be able to see it through its environment, files, the
// echoing endpoints, its output, its error message, its stdout/stderr or its log lines.
func TestGoTaskCannotReadCredential(t *testing.T) {
	wasm := wasmbuild.Go(t, "runtime/testdata/gosnoop")
	crm := democrm.New(token)
	base, stop, err := crm.Start(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	t.Setenv("CASTELLAN_TEST_CRM_TOKEN", token) // the worker's own environment holds it

	red := redact.NewSet()
	if err := red.Add(token); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(base)
	gw, err := egress.New(egress.Config{
		Endpoints: []*egress.Endpoint{{
			Name: "crm", BaseURL: u, Timeout: 5 * time.Second,
			Rules: []egress.Rule{egress.MustParseRule("GET /api/**")},
			Auth:  egress.Auth{Kind: egress.AuthHeader, Credential: "crm", Header: "Authorization", Format: "Bearer {secret}"},
		}},
		Credentials: staticCreds{"crm": token},
		Redactor:    red,
	})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	e, err := runtime.NewEngine(runtime.Config{Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(context.Background())
	m, err := e.Load(t.Context(), runtime.ModuleConfig{Name: "gosnoop", Wasm: wasm, HTTP: gw, Guard: red,
		Limits: runtime.Limits{LogBytes: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}

	ok := m.Run(t.Context(), runtime.Job{ID: "snoop-1", Input: []byte(`{}`)})
	failed := m.Run(t.Context(), runtime.Job{ID: "snoop-2", Input: []byte(`"fail"`)})
	if ok.Err != nil {
		t.Fatalf("snoop run = %v", ok.Err)
	}
	if failed.Code() != outcome.TaskError {
		t.Fatalf("failing snoop run = %v, want task_error", failed.Err)
	}
	out := string(ok.Output)
	for _, want := range []string{"/api/echo 200", "Ada Lovelace", redact.Placeholder} {
		if !strings.Contains(out, want) {
			t.Errorf("snoop output lacks %q (did the task reach the CRM?):\n%s", want, out)
		}
	}
	if crm.Requests() != 6 {
		t.Errorf("CRM authenticated requests = %d, want 6 (3 per run): the token must reach it", crm.Requests())
	}
	var everything strings.Builder
	everything.WriteString(out)
	everything.WriteString(outcome.Message(failed.Err))
	for _, l := range logs.All() {
		everything.WriteString(l.Message)
		for k, v := range l.ContextMap() {
			everything.WriteString(k + "=" + toString(v))
		}
	}
	if logs.FilterMessage("task stdout").Len() == 0 || logs.FilterMessage("task log").Len() == 0 {
		t.Errorf("expected the task's stdout and log lines in the worker log")
	}
	for _, f := range redact.Forms(token) {
		if strings.Contains(everything.String(), f) {
			t.Fatalf("credential form %q reached the task's output, error or logs", f)
		}
	}
	if strings.Contains(out, "CASTELLAN_TEST_CRM_TOKEN") {
		t.Errorf("the task saw the worker's environment: %s", out)
	}
}

// TestGoTaskReadingFilesRejected: a Go task that links the os file API imports WASI
// filesystem functions and is refused at load, naming them.
func TestGoTaskReadingFilesRejected(t *testing.T) {
	t.Parallel()
	wasm := wasmbuild.Go(t, "runtime/testdata/gofiles")
	_, err := newEngine(t).Load(t.Context(), runtime.ModuleConfig{Name: "gofiles", Wasm: wasm})
	if outcome.CodeOf(err) != outcome.ModuleRejected || !strings.Contains(err.Error(), "path_open") {
		t.Fatalf("Load(gofiles) = %v, want module_rejected naming path_open", err)
	}
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}

package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/examples"
	"github.com/castellan-dev/castellan/internal/democrm"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "run the example job end to end on this machine and show what each side sees",
		Description: "Starts the demo internal CRM on loopback (it requires a bearer token), writes the demo policy\n" +
			"and the example task to a temporary directory, runs the crm-lookup task through\n" +
			"`castellan run`, and then checks that the CRM token appears nowhere the task or its\n" +
			"output could reach. Needs nothing but this binary.",
		Action: func(c *cli.Context) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			return Demo(c.Context, self, c.App.Writer)
		},
	}
}

// Demo runs the demo, executing self (the castellan binary) for `castellan run`.
func Demo(ctx context.Context, self string, out io.Writer) error {
	step := func(format string, args ...any) { fmt.Fprintf(out, "==> "+format+"\n", args...) }
	dir, err := os.MkdirTemp("", "castellan-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	token := "demo-" + randomID() + randomID()
	crmURL, stop, err := democrm.Start(ctx, token)
	if err != nil {
		return fmt.Errorf("start demo CRM: %w", err)
	}
	defer stop()
	step("demo internal CRM listening on %s (requires a bearer token)", crmURL)

	tokenFile := filepath.Join(dir, "crm-token")
	module := filepath.Join(dir, "crm-lookup.wasm")
	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(module, examples.CRMLookupWasm, 0o644); err != nil {
		return err
	}
	var pol bytes.Buffer
	if err := template.Must(template.New("policy").Parse(examples.DemoPolicy)).Execute(&pol,
		map[string]string{"CRMURL": crmURL, "TokenFile": tokenFile, "Module": module}); err != nil {
		return err
	}
	if err := os.WriteFile(policyFile, pol.Bytes(), 0o644); err != nil {
		return err
	}
	step("policy written to %s; the CRM token is in %s (mode 0600), read only by the worker", policyFile, tokenFile)

	step("castellan policy check")
	if err := policyCheck(policyFile, indent(out)); err != nil {
		return err
	}

	input := `{"customer_id":"42"}`
	step("castellan run --task crm-lookup --input '%s'", input)
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, self, "run", "--policy", policyFile, "--task", "crm-lookup",
		"--input", input, "--log-level", "info")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "NO_COLOR=1")
	start := time.Now()
	runErr := cmd.Run()
	fmt.Fprintf(indent(out), "worker log:\n%s", indentString(stderr.String()))
	if runErr != nil {
		return fmt.Errorf("castellan run failed: %v", runErr)
	}
	step("task output (%s):", time.Since(start).Round(time.Millisecond))
	fmt.Fprintf(out, "    %s\n", strings.TrimSpace(stdout.String()))

	step("checking that the credential stayed on the host")
	if strings.Contains(stdout.String(), token) || strings.Contains(stderr.String(), token) {
		return fmt.Errorf("the CRM token appeared in the task output or the log")
	}
	fmt.Fprintf(out, "    the CRM received %d authenticated request(s); the token appears in neither the output nor the log\n",
		democrm.Requests(crmURL))
	step("done")
	return nil
}

func indent(w io.Writer) io.Writer { return &indenter{w: w, bol: true} }

type indenter struct {
	w   io.Writer
	bol bool
}

func (i *indenter) Write(p []byte) (int, error) {
	var b bytes.Buffer
	for _, c := range p {
		if i.bol {
			b.WriteString("    ")
		}
		b.WriteByte(c)
		i.bol = c == '\n'
	}
	_, err := i.w.Write(b.Bytes())
	return len(p), err
}

func indentString(s string) string {
	var b bytes.Buffer
	_, _ = indent(&b).Write([]byte(s))
	return b.String()
}

func demoCRMCommand() *cli.Command {
	var listen, tokenFile string
	return &cli.Command{
		Name:   "democrm",
		Usage:  "serve the demo internal CRM (for trying castellan run by hand)",
		Hidden: false,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:8081", Destination: &listen, Usage: "`ADDR` to listen on"},
			&cli.StringFlag{Name: "token-file", Required: true, Destination: &tokenFile, Usage: "`FILE` holding the bearer token the CRM requires"},
		},
		Action: func(c *cli.Context) error {
			b, err := os.ReadFile(tokenFile)
			if err != nil {
				return usageError{err}
			}
			return democrm.ListenAndServe(c.Context, listen, strings.TrimSpace(string(b)), c.App.Writer)
		},
	}
}

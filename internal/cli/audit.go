package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/plugins"
	"github.com/castellan-dev/castellan/policy"
)

// AuditConfig is the configuration of `castellan audit`.
type AuditConfig struct {
	Policy  string
	Plugins string // optional plugins directory
	Format  string // table, json or markdown
	FailOn  string // low, medium, high or none
}

func auditCommand() *cli.Command {
	var cfg AuditConfig
	return &cli.Command{
		Name:  "audit",
		Usage: "report what every task may do, for security review",
		Description: "Loads the policy and every plugin exactly as a worker would (manifest, digest, signature,\n" +
			"grant, import audit) without running anything or reading any credential, and prints per\n" +
			"task: module digest, signer, imported host functions, granted endpoints with their rules,\n" +
			"base URLs and credential names, limits, and what plugins request beyond their grant; then\n" +
			"findings with severities. Exit status 1 when a finding at or above --fail-on exists (to gate\n" +
			"a deploy), 2 on a usage or policy error. See docs/audit.md.\n\n" +
			"Example:\n  castellan audit --policy policy.yaml --plugins plugins/ --format markdown --fail-on medium",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "policy", Usage: "policy `FILE`", EnvVars: []string{"CASTELLAN_POLICY"}, Destination: &cfg.Policy},
			&cli.StringFlag{Name: "plugins", Usage: "plugins `DIR`", EnvVars: []string{"CASTELLAN_PLUGINS"}, Destination: &cfg.Plugins},
			&cli.StringFlag{Name: "format", Usage: "table, json or markdown", Value: "table", Destination: &cfg.Format},
			&cli.StringFlag{Name: "fail-on", Usage: "low, medium, high or none", Value: "high", Destination: &cfg.FailOn},
		},
		Action: func(c *cli.Context) error {
			return Audit(c.Context, cfg, c.App.Writer)
		},
		Subcommands: []*cli.Command{{
			Name:  "verify",
			Usage: "verify an audit log",
			Action: func(*cli.Context) error {
				return errors.New("audit verify: not built yet")
			},
		}},
	}
}

// errFindings is returned when findings reach the --fail-on severity; it maps to exit 1.
var errFindings = errors.New("audit findings at or above the --fail-on severity")

// Audit writes the audit report and fails (exit 1) when a finding reaches cfg.FailOn.
func Audit(ctx context.Context, cfg AuditConfig, out io.Writer) error {
	if cfg.Policy == "" {
		return usagef("audit: --policy FILE is required")
	}
	var failOn plugins.Severity
	if cfg.FailOn != "none" {
		var err error
		if failOn, err = plugins.ParseSeverity(cfg.FailOn); err != nil {
			return usagef("--fail-on: %v (or none)", err)
		}
	}
	if !contains(plugins.Formats, cfg.Format) {
		return usagef("--format %q: use %s", cfg.Format, strings.Join(plugins.Formats, ", "))
	}
	pol, err := policy.Load(cfg.Policy)
	if err != nil {
		return usageError{err}
	}
	rep, err := plugins.Audit(ctx, pol, cfg.Plugins)
	if err != nil {
		return usageError{err}
	}
	if err := rep.Write(out, cfg.Format); err != nil {
		return err
	}
	if failOn != "" {
		if n := len(rep.AtLeast(failOn)); n > 0 {
			return taskFailed{fmt.Errorf("%w: %d at %s or above", errFindings, n, failOn)}
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

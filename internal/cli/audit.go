package cli

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/audit"
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
		Subcommands: []*cli.Command{auditVerifyCommand()},
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
	if !contains(plugins.Formats(), cfg.Format) {
		return usagef("--format %q: use %s", cfg.Format, strings.Join(plugins.Formats(), ", "))
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

func auditVerifyCommand() *cli.Command {
	var keys cli.StringSlice
	return &cli.Command{
		Name:      "verify",
		Usage:     "check a worker's tamper-evident audit log: hash chain, checkpoint signatures, rotation",
		ArgsUsage: "FILE...",
		Description: "Reads the audit log files (the active file and its rotated predecessors, in any order) and\n" +
			"checks that every record chains to the one before it and that every checkpoint is signed.\n" +
			"The first bad record is named (file, line, sequence number, what is wrong) on any edit,\n" +
			"deletion, insertion, reordering, or a rotated file missing. With --key, checkpoints must be\n" +
			"signed by that key (the worker's STATE-DIR/audit.public.jwks.json); without it they are only\n" +
			"checked for consistency. Exit status: 0 intact, 1 tampered, 2 usage error.\n\n" +
			"Example:\n  castellan audit verify --key /var/lib/castellan/audit.public.jwks.json /var/lib/castellan/audit.log*",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "key", Usage: "trusted signer: a JWKS/JWK `FILE` or a hex Ed25519 public key", Destination: &keys},
		},
		Action: func(c *cli.Context) error {
			return AuditVerify(c.Args().Slice(), keys.Value(), c.App.Writer)
		},
	}
}

// AuditVerify verifies audit log files against the trusted keys (files or hex).
func AuditVerify(files, keys []string, out io.Writer) error {
	if len(files) == 0 {
		return usagef("audit verify: name the audit log FILEs")
	}
	var trusted []ed25519.PublicKey
	for _, k := range keys {
		if pk, err := audit.ParsePublicKey(k); err == nil {
			trusted = append(trusted, pk)
			continue
		}
		set, err := approval.LoadKeySet(k)
		if err != nil {
			return usagef("--key %s: %v", k, err)
		}
		for _, jwk := range set.Keys {
			pk, ok := jwk.Key.(ed25519.PublicKey)
			if !ok {
				return usagef("--key %s: key %q is not Ed25519", k, jwk.KeyID)
			}
			trusted = append(trusted, pk)
		}
	}
	rep, err := audit.VerifyFiles(files, trusted...)
	if err != nil {
		var p *audit.Problem
		if errors.As(err, &p) {
			fmt.Fprintf(out, "TAMPERED: %v\n", err)
			return reported{err}
		}
		return usageError{err}
	}
	trust := "checkpoints consistent (no --key given: authorship not checked)"
	if rep.Trusted {
		trust = "checkpoints signed by a trusted key"
	}
	fmt.Fprintf(out, "intact: %d records in %d file(s), %d checkpoints, %s; head %s\n",
		rep.Records, len(rep.Files), rep.Checkpoints, trust, rep.Head)
	if rep.Unsealed > 0 {
		fmt.Fprintf(out, "note: the last %d record(s) follow the last checkpoint (chained, not yet signed)\n", rep.Unsealed)
	}
	return nil
}

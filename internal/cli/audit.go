package cli

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/internal/server/api"
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
		Subcommands: []*cli.Command{auditVerifyCommand(), auditEventsCommand()},
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

// AuditVerifyConfig is the configuration of `castellan audit verify`.
type AuditVerifyConfig struct {
	Keys []string // trusted signers: JWKS/JWK files or hex Ed25519 public keys
	Head string   // SEQ:HASH the worker reported; "" for none
	// Server, Worker and TokenFile fetch the head from the control plane instead:
	// GET Server/v1/workers/Worker/audit-head with an admin token.
	Server, Worker, TokenFile string
}

func auditVerifyCommand() *cli.Command {
	var keys cli.StringSlice
	var cfg AuditVerifyConfig
	return &cli.Command{
		Name:      "verify",
		Usage:     "check a worker's tamper-evident audit log: hash chain, checkpoint signatures, rotation, reported head",
		ArgsUsage: "FILE...",
		Description: "Reads the audit log files (the active file and its rotated predecessors, in any order) and\n" +
			"checks that every record chains to the one before it and that every checkpoint is signed.\n" +
			"The first bad record is named (file, line, sequence number, what is wrong) on any edit,\n" +
			"deletion, insertion, reordering, or a rotated file missing. With --key, checkpoints must be\n" +
			"signed by that key (the worker's audit.public.jwks.json), the log must hold at least one\n" +
			"checkpoint, and no more records may follow the last one than the writer's checkpoint interval;\n" +
			"without it they are only checked for consistency.\n\n" +
			"A log cut at a checkpoint, or an older copy restored, still looks whole with --key alone. The\n" +
			"worker reports its latest checkpoint to the control plane with every result: --head SEQ:HASH,\n" +
			"or --server URL --worker NAME with an admin token, checks that the log still contains it.\n" +
			"Exit status: 0 intact, 1 tampered (or cut before the head), 2 usage error or head unavailable.\n\n" +
			"Examples:\n  castellan audit verify --key /var/lib/castellan/audit.public.jwks.json /var/lib/castellan/audit.log*\n" +
			"  castellan audit verify --key audit.public.jwks.json --server https://cp.example:8443 \\\n" +
			"      --token-file admin.token --worker worker-1 audit.log*",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "key", Usage: "trusted signer: a JWKS/JWK `FILE` or a hex Ed25519 public key", Destination: &keys},
			&cli.StringFlag{Name: "head", Usage: "the head the worker reported, `SEQ:HASH`: the log must contain it", Destination: &cfg.Head},
			&cli.StringFlag{Name: "server", Usage: "fetch the head from the control plane at `URL` (with --worker)", Destination: &cfg.Server},
			&cli.StringFlag{Name: "worker", Usage: "the worker's `NAME` or id at the control plane (with --server)", Destination: &cfg.Worker},
			tokenFileFlag(&cfg.TokenFile),
		},
		Action: func(c *cli.Context) error {
			cfg.Keys = keys.Value()
			return AuditVerify(c.Context, c.Args().Slice(), cfg, c.App.Writer)
		},
	}
}

// AuditVerify verifies audit log files against the trusted keys (files or hex) and, when
// given or fetched, the head the worker reported to the control plane.
func AuditVerify(ctx context.Context, files []string, cfg AuditVerifyConfig, out io.Writer) error {
	if len(files) == 0 {
		return usagef("audit verify: name the audit log FILEs")
	}
	var trusted []ed25519.PublicKey
	for _, k := range cfg.Keys {
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
	opts := audit.VerifyOptions{Trusted: trusted}
	switch {
	case cfg.Head != "" && (cfg.Server != "" || cfg.Worker != ""):
		return usagef("--head and --server/--worker both name the head: give one")
	case cfg.Head != "":
		h, err := audit.ParseHead(cfg.Head)
		if err != nil {
			return usagef("--head: %v", err)
		}
		opts.Head = h
	case cfg.Server != "" || cfg.Worker != "":
		if cfg.Server == "" || cfg.Worker == "" {
			return usagef("--server and --worker go together: the control plane and the worker whose head it holds")
		}
		h, err := fetchAuditHead(ctx, cfg)
		if err != nil {
			return usageError{err}
		}
		opts.Head = h
	}
	rep, err := audit.Verify(files, opts)
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
	fmt.Fprintf(out, "intact: %d records in %d file(s), %d checkpoints, %s; head %d:%s\n",
		rep.Records, len(rep.Files), rep.Checkpoints, trust, rep.LastSeq, rep.Head)
	if opts.Head.Seq != 0 {
		fmt.Fprintf(out, "the reported head %s is in the chain\n", opts.Head)
	} else {
		fmt.Fprintf(out, "note: no --head: a log cut at a checkpoint or rolled back to an older copy would look the same\n")
	}
	if rep.Unsealed > 0 {
		fmt.Fprintf(out, "note: the last %d record(s) follow the last checkpoint (chained, not yet signed)\n", rep.Unsealed)
	}
	return nil
}

// fetchAuditHead asks the control plane for the newest head the worker reported.
func fetchAuditHead(ctx context.Context, cfg AuditVerifyConfig) (audit.Head, error) {
	token, err := readToken(cfg.TokenFile)
	if err != nil {
		return audit.Head{}, err
	}
	u, err := url.Parse(strings.TrimRight(cfg.Server, "/"))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return audit.Head{}, fmt.Errorf("--server %q is not an http(s) URL", cfg.Server)
	}
	u = u.JoinPath("v1", "workers", cfg.Worker, "audit-head")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return audit.Head{}, fmt.Errorf("--server: %v", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("User-Agent", "castellan/"+Version)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return audit.Head{}, fmt.Errorf("fetch the audit head of worker %q: %w", cfg.Worker, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return audit.Head{}, fmt.Errorf("fetch the audit head of worker %q: %w", cfg.Worker, err)
	}
	if resp.StatusCode != http.StatusOK {
		var eb api.ErrorBody
		if json.Unmarshal(body, &eb) == nil && eb.Error.Code != "" {
			return audit.Head{}, fmt.Errorf("the control plane has no audit head for worker %q: %d %s: %s", cfg.Worker, resp.StatusCode, eb.Error.Code, eb.Error.Message)
		}
		return audit.Head{}, fmt.Errorf("the control plane has no audit head for worker %q: HTTP %d", cfg.Worker, resp.StatusCode)
	}
	var wh api.WorkerAuditHead
	if err := json.Unmarshal(body, &wh); err != nil {
		return audit.Head{}, fmt.Errorf("the control plane's audit head for worker %q is not JSON: %v", cfg.Worker, err)
	}
	h, err := audit.ParseHead(fmt.Sprintf("%d:%s", wh.Seq, wh.Hash))
	if err != nil {
		return audit.Head{}, fmt.Errorf("the control plane's audit head for worker %q: %v", cfg.Worker, err)
	}
	return h, nil
}

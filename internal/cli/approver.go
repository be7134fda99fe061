package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/approver/console"
	"github.com/castellan-dev/castellan/internal/approver/process"
	"github.com/castellan-dev/castellan/internal/approver/rules"
	"github.com/castellan-dev/castellan/internal/logging"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/secrets"
)

// ApproverCheckConfig is `castellan approver check`.
type ApproverCheckConfig struct {
	Rules string // the rules file
	Input string // optional sample requests file; "-" for stdin
}

// ApproverConfig is `castellan approver`.
type ApproverConfig struct {
	JobConfig
	Key       string   // private JWK file
	KeyVault  string   // or a field of a Vault KV v2 secret: MOUNT/PATH#FIELD
	Rules     string   // rules file
	Pools     []string // pools served
	PollMax   time.Duration
	PersonTTL time.Duration
	LogLevel  string
	LogFormat string
	// UI is the console's listen address ("" for none); UIAllowRemote permits a
	// non-loopback one.
	UI            string
	UIAllowRemote bool
	As            string // the person approving in the console (approved_by.person); default $USER
	// ready, when set, receives the console's URL (with the session secret) once it
	// listens, or "" when there is no console; for tests and the demo.
	ready func(consoleURL string)
}

func approverCommand() *cli.Command {
	var chk ApproverCheckConfig
	var cfg ApproverConfig
	pools := cli.NewStringSlice()
	return &cli.Command{
		Name:      "approver",
		Usage:     "decide approvals on the approvers' side: rules first, a person in the console for the rest",
		UsageText: "castellan approver --server URL --token-file FILE --key KEY.private.jwk.json --rules RULES [--pool P ...] [--ui 127.0.0.1:PORT]",
		Description: "Watches the control plane for jobs pending approval in its pools and decides each with the\n" +
			"rules file (see `castellan approver check`): a rule approves (an approval is signed HERE with\n" +
			"--key, with the rule's TTL and attempts, approved_by {rule: NAME}), denies with the rule's reason,\n" +
			"or leaves the job for a person. With --ui, serves the console for those jobs on the approver's\n" +
			"machine. The key never leaves this process. See docs/approvals.md.\n\n" +
			"Example:\n  castellan approver --server https://cp:8443 --token-file approver.token \\\n" +
			"    --key alice.private.jwk.json --rules rules.yaml --pool default --ui 127.0.0.1:8470",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "server", Usage: "control plane `URL`", EnvVars: []string{"CASTELLAN_SERVER"}, Destination: &cfg.Server},
			tokenFileFlag(&cfg.TokenFile),
			caFileFlag(&cfg.CAFile),
			&cli.StringFlag{Name: "key", Usage: "private JWK `FILE` approvals are signed with (castellan keygen)", EnvVars: []string{"CASTELLAN_APPROVER_KEY"}, Destination: &cfg.Key},
			&cli.StringFlag{Name: "key-vault", Usage: "read the private JWK from HashiCorp Vault instead: `MOUNT/PATH#FIELD` of a KV v2 secret (VAULT_ADDR, VAULT_TOKEN)", EnvVars: []string{"CASTELLAN_APPROVER_KEY_VAULT"}, Destination: &cfg.KeyVault},
			&cli.StringFlag{Name: "rules", Usage: "approval rules `FILE`", EnvVars: []string{"CASTELLAN_APPROVER_RULES"}, Destination: &cfg.Rules},
			&cli.StringSliceFlag{Name: "pool", Usage: "`POOL` served (repeat for several; default \"default\"); jobs of other pools are never touched", Destination: pools},
			&cli.DurationFlag{Name: "poll-max", Usage: "longest wait between polls while nothing is pending", Value: 2 * time.Second, Destination: &cfg.PollMax},
			&cli.DurationFlag{Name: "person-ttl", Usage: "lifetime of approvals given in the console", Value: approval.DefaultTTL, Destination: &cfg.PersonTTL},
			&cli.StringFlag{Name: "ui", Usage: "serve the console on `ADDR` (127.0.0.1:PORT)", Destination: &cfg.UI},
			&cli.StringFlag{Name: "as", Usage: "`NAME` of the person approving in the console, recorded as approved_by.person (default $USER)", Destination: &cfg.As},
			&cli.BoolFlag{Name: "ui-allow-remote", Usage: "allow --ui on a non-loopback address (anyone who can reach it and holds the session URL can approve)", Destination: &cfg.UIAllowRemote},
			logLevelFlag(&cfg.LogLevel, "info"),
			logFormatFlag(&cfg.LogFormat),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("approver: unexpected argument %q (subcommand: check)", c.Args().First())
			}
			cfg.Pools = pools.Value()
			if len(cfg.Pools) == 0 {
				cfg.Pools = []string{"default"}
			}
			return Approver(c.Context, cfg, c.App.Writer, c.App.ErrWriter)
		},
		Subcommands: []*cli.Command{{
			Name:      "check",
			Usage:     "validate an approval rules file and show which rule decides sample requests",
			ArgsUsage: "RULES",
			Description: "Parses RULES strictly (one YAML document, unknown keys refused, every CEL expression\n" +
				"type-checked as bool) and reports each problem as FILE:LINE. With --input, reads a JSON or\n" +
				"YAML list of sample requests, each {task, version, pool, input, requester, time}, and\n" +
				"prints the rule that decides each and its action. Nothing is signed or sent.\n" +
				"See docs/approvals.md, \"Approval rules\".\n\n" +
				"Example:\n  castellan approver check rules.yaml --input samples.yaml",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "input", Usage: "sample requests `FILE` (JSON or YAML list), or - for stdin", Destination: &chk.Input},
			},
			Action: func(c *cli.Context) error {
				args := c.Args().Slice()
				if len(args) == 0 {
					return usagef("approver check: want a RULES argument")
				}
				chk.Rules = args[0]
				// The documented form puts --input after RULES, where urfave/cli stops
				// parsing flags; accept it there too.
				switch rest := args[1:]; {
				case len(rest) == 0:
				case len(rest) == 2 && (rest[0] == "--input" || rest[0] == "-input"):
					chk.Input = rest[1]
				case len(rest) == 1 && strings.HasPrefix(rest[0], "--input="):
					chk.Input = strings.TrimPrefix(rest[0], "--input=")
				default:
					return usagef("approver check: want RULES [--input FILE|-], got %d extra arguments", len(rest))
				}
				return ApproverCheck(c.Context, chk, c.App.Reader, c.App.Writer)
			},
		}},
	}
}

// Approver runs the approver until ctx ends.
func Approver(ctx context.Context, cfg ApproverConfig, stdout, stderr io.Writer) error {
	switch {
	case cfg.Key != "" && cfg.KeyVault != "":
		return usagef("--key and --key-vault both name the approval key: give one")
	case (cfg.Key == "" && cfg.KeyVault == "") || cfg.Rules == "":
		return usagef("--key (or --key-vault) and --rules are required")
	}
	// Every log line is scrubbed of the key, whichever component writes it.
	red := redact.NewSet()
	log, err := logging.New(stderr, logging.Options{Level: cfg.LogLevel, Format: cfg.LogFormat, Scrub: red})
	if err != nil {
		return usageError{err}
	}
	defer func() { _ = log.Sync() }()
	key, err := approverKey(ctx, cfg, red, log)
	if err != nil {
		return err
	}
	rs, err := rules.Load(cfg.Rules)
	if err != nil {
		return usageError{err}
	}
	c, err := cfg.client()
	if err != nil {
		return err
	}
	a, err := process.New(process.Config{Control: c, Key: key, Rules: rs, Pools: cfg.Pools, Logger: log.Named("approver"),
		PollMax: cfg.PollMax, PersonTTL: cfg.PersonTTL})
	if err != nil {
		return usageError{err}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	uiDone := make(chan error, 1)
	consoleURL := ""
	if cfg.UI != "" {
		if consoleURL, err = startConsole(ctx, cfg, a, c, log, uiDone); err != nil {
			return err
		}
	} else {
		uiDone <- nil
	}
	fmt.Fprintf(stdout, "approver running: pools %s, key %s, %d rules from %s\n", strings.Join(cfg.Pools, ","), key.KeyID, rs.Len(), cfg.Rules)
	if consoleURL != "" {
		fmt.Fprintf(stdout, "console: open %s (this URL holds the session secret; it is printed once)\n", consoleURL)
	}
	if cfg.ready != nil {
		cfg.ready(consoleURL)
	}
	runErr := a.Run(ctx)
	cancel()
	if err := <-uiDone; err != nil && runErr == nil {
		runErr = err
	}
	if errors.Is(runErr, process.ErrUnauthenticated) || errors.Is(runErr, process.ErrForbidden) {
		log.Error(runErr.Error())
		return loggedUsage{runErr}
	}
	return runErr
}

// ApproverSample is one sample request of `approver check --input`.
type ApproverSample struct {
	Task      string `yaml:"task"`
	Version   string `yaml:"version"`
	Pool      string `yaml:"pool"`
	Input     any    `yaml:"input"`
	Requester string `yaml:"requester"`
	Time      string `yaml:"time"` // RFC 3339; default now
}

// maxSampleBytes bounds the sample file; samples are written by hand.
const maxSampleBytes = 4 << 20

// ApproverCheck checks cfg.Rules and, with cfg.Input, decides each sample. Problems with
// either file are usage errors (exit 2) naming the file and line.
func ApproverCheck(ctx context.Context, cfg ApproverCheckConfig, stdin io.Reader, out io.Writer) error {
	rs, err := rules.Load(cfg.Rules)
	if err != nil {
		return usageError{err}
	}
	if _, err := fmt.Fprintf(out, "rules %s are valid (%d rules)\n", cfg.Rules, rs.Len()); err != nil {
		return err
	}
	if cfg.Input == "" {
		return nil
	}
	name, data, err := readSamples(cfg.Input, stdin)
	if err != nil {
		return usageError{err}
	}
	samples, err := parseSamples(name, data)
	if err != nil {
		return usageError{err}
	}
	for i, s := range samples {
		req, err := s.request()
		if err != nil {
			return usagef("%s: sample %d: %v", name, i+1, err)
		}
		d := rs.Decide(ctx, req)
		if _, err := fmt.Fprintf(out, "%d. task %q version %q pool %q requester %q: %s\n", i+1, s.Task, s.Version, s.Pool, s.Requester, describeDecision(d)); err != nil {
			return err
		}
	}
	return nil
}

func describeDecision(d rules.Decision) string {
	var b strings.Builder
	b.WriteString(string(d.Action))
	if d.Rule != "" {
		fmt.Fprintf(&b, " by rule %s", d.Rule)
	} else {
		b.WriteString(" (default)")
	}
	switch {
	case d.Action == rules.Approve:
		fmt.Fprintf(&b, " (ttl %s, max_attempts %d)", d.TTL, d.MaxAttempts)
	case d.Reason != "":
		fmt.Fprintf(&b, ": %s", d.Reason)
	}
	return b.String()
}

func readSamples(path string, stdin io.Reader) (string, []byte, error) {
	var r io.Reader
	name := path
	if path == "-" {
		r, name = stdin, "stdin"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return "", nil, fmt.Errorf("%s: cannot read the samples: %v", path, errors.Unwrap(err))
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, maxSampleBytes+1))
	if err != nil {
		return "", nil, fmt.Errorf("%s: cannot read the samples: %v", name, err)
	}
	if len(data) > maxSampleBytes {
		return "", nil, fmt.Errorf("%s: the samples are larger than %d bytes", name, maxSampleBytes)
	}
	return name, data, nil
}

// parseSamples reads exactly one YAML (or JSON) document holding a list of samples, refusing
// unknown fields.
func parseSamples(name string, data []byte) ([]ApproverSample, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var samples []ApproverSample
	if err := dec.Decode(&samples); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: no samples; write a list of {task, version, pool, input, requester, time}", name)
		}
		var te *yaml.TypeError
		if errors.As(err, &te) {
			lines := make([]string, len(te.Errors))
			for i, e := range te.Errors {
				lines[i] = name + ":" + strings.TrimPrefix(e, "line ")
			}
			return nil, errors.New(strings.Join(lines, "\n"))
		}
		return nil, errors.New(policy.SyntaxProblem(name, err).String())
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s:%d: a second YAML document starts here; the samples are one list", name, max(extra.Line, 1))
	}
	return samples, nil
}

func (s ApproverSample) request() (rules.Request, error) {
	req := rules.Request{Task: s.Task, Version: s.Version, Pool: s.Pool, Requester: s.Requester, Now: time.Now()}
	if s.Input != nil {
		in, err := json.Marshal(s.Input)
		if err != nil {
			return req, fmt.Errorf("input cannot be written as JSON: %v", err)
		}
		req.Input = in
	}
	if s.Time != "" {
		t, err := time.Parse(time.RFC3339, s.Time)
		if err != nil {
			return req, fmt.Errorf("time %q: want RFC 3339, e.g. 2026-11-28T12:00:00Z", s.Time)
		}
		req.Now = t
	}
	return req, nil
}

// approverKey loads the signing key from --key or, with --key-vault, from Vault through the
// worker's secrets store (VAULT_ADDR and VAULT_TOKEN, as Vault's own CLI reads them).
func approverKey(ctx context.Context, cfg ApproverConfig, red *redact.Set, log *zap.Logger) (jose.JSONWebKey, error) {
	if cfg.KeyVault == "" {
		k, err := approval.LoadPrivateKey(cfg.Key)
		if err != nil {
			return k, usagef("--key: %v", err)
		}
		return k, nil
	}
	mountPath, field, ok := strings.Cut(cfg.KeyVault, "#")
	mount, path, ok2 := strings.Cut(mountPath, "/")
	if !ok || !ok2 || mount == "" || path == "" || field == "" {
		return jose.JSONWebKey{}, usagef("--key-vault %q: want MOUNT/PATH#FIELD of a KV v2 secret, e.g. secret/approvers/alice#jwk", cfg.KeyVault)
	}
	const name = "approval_key"
	store, err := secrets.NewStore(map[string]secrets.Spec{name: {Vault: &secrets.VaultRef{Mount: mount, Path: path, Field: field}}},
		nil, red, log.Named("secrets"))
	if err != nil {
		return jose.JSONWebKey{}, usagef("--key-vault: %v", err)
	}
	defer func() { _ = store.Close() }()
	v, err := store.Credential(ctx, name)
	if err != nil {
		return jose.JSONWebKey{}, usagef("--key-vault %s: the key cannot be read (see the log)", cfg.KeyVault)
	}
	// The value is a secret: the decoder's message is not repeated.
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON([]byte(v)); err != nil || k.IsPublic() || k.KeyID == "" {
		return k, usagef("--key-vault %s: the value is not a private Ed25519 JWK with a kid (as `castellan keygen` writes)", cfg.KeyVault)
	}
	if _, ok := k.Key.(ed25519.PrivateKey); !ok {
		return jose.JSONWebKey{}, usagef("--key-vault %s: the key is not Ed25519; approvals are signed with Ed25519 keys only", cfg.KeyVault)
	}
	return k, nil
}

// startConsole listens on cfg.UI and serves the console until ctx ends (then done gets the
// server's error, or nil). It returns the session URL.
func startConsole(ctx context.Context, cfg ApproverConfig, a *process.Approver, cat console.Catalog, log *zap.Logger, done chan<- error) (string, error) {
	remote, err := console.CheckAddr(cfg.UI, cfg.UIAllowRemote)
	if err != nil {
		return "", usageError{err}
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.UI)
	if err != nil {
		return "", usagef("--ui %s: %v", cfg.UI, err)
	}
	addr := ln.Addr().String()
	if host, _, _ := net.SplitHostPort(cfg.UI); host == "localhost" {
		_, port, _ := net.SplitHostPort(addr)
		addr = net.JoinHostPort("localhost", port)
	}
	person := cfg.As
	if person == "" {
		person = os.Getenv("USER")
	}
	if person == "" {
		person = "console"
	}
	con, err := console.New(console.Config{Approver: a, Catalog: cat, Addr: addr, Person: person, Logger: log.Named("console")})
	if err != nil {
		_ = ln.Close()
		return "", usageError{err}
	}
	if remote {
		log.Warn("!!! the console listens on a non-loopback address (--ui-allow-remote): anyone who can reach it and obtains the session URL can approve with this key; the traffic is plain HTTP !!!",
			zap.String("addr", addr))
	}
	hs := &http.Server{Handler: con.Handler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }, // ends the event streams at shutdown
		ErrorLog:    zap.NewStdLog(log.Named("console"))}
	go func() {
		errc := make(chan error, 1)
		go func() { errc <- hs.Serve(ln) }()
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = hs.Shutdown(sctx) // the event streams end with their requests
			_ = hs.Close()
			<-errc
			done <- nil
		case err := <-errc:
			done <- err
		}
	}()
	return con.SessionURL(), nil
}

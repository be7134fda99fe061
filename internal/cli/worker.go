package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.yaml.in/yaml/v3"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/logging"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/tasks"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/policy"
	"github.com/castellan-dev/castellan/redact"
	"github.com/castellan-dev/castellan/runtime"
	"github.com/castellan-dev/castellan/secrets"
)

// WorkerConfig is the configuration of `castellan worker`.
type WorkerConfig struct {
	Server      string   // control plane base URL
	TokenFile   string   // worker bearer token file; "" to read $CASTELLAN_TOKEN
	Policy      string   // policy file
	TrustedKeys []string // JWKS files of approver public keys
	StateDir    string   // replay store lives here; "" for the XDG state dir
	CacheDir    string   // compilation cache; "" for the user cache dir, "off" for none
	Concurrency int
	Grace       time.Duration // drain period after the first signal before jobs are cancelled
	StopTimeout time.Duration // after cancellation, how long before jobs that did not stop are abandoned
	Name        string
	LogLevel    string
	LogFormat   string
	PluginsDir  string // serve and watch plugins in this directory (docs/plugins.md)
	AuditLog    string // tamper-evident audit log; "" for STATE-DIR/audit.log
	MetricsAddr string // opt-in Prometheus listener; "" for none (the default)
	OTLP        string // OTLP trace endpoint; "" for $OTEL_EXPORTER_OTLP_ENDPOINT or none
	Pool        string // the worker's pool; approvals are checked against it (required in NATS mode)
	NATSCreds   string // NATS mode: JWT/NKey credentials file
	NATSCA      string // NATS mode: CA bundle for TLS
	NATSInbox   string // NATS mode: inbox prefix (default _INBOX_<pool>)
	CAFile      string // HTTP mode: CA certificates for the control plane's TLS
	OneJob      bool   // ephemeral: lease at most one job, run and report it, exit (concurrency 1)
	// RegistrationTokenFile holds a registration token: at the first start it is exchanged
	// for a worker token kept in STATE-DIR/worker.token, which later starts use (HTTP mode).
	RegistrationTokenFile string

	// AuditKeyFile is the audit signing key (a private Ed25519 JWK) kept outside STATE-DIR;
	// "" for STATE-DIR/audit.private.jwk.json, created on first start.
	AuditKeyFile string
	// AuditKeyCredential names a policy credential (env, file or Vault) holding that key.
	AuditKeyCredential string

	// Shorter waits for tests; zero in production (the worker's defaults).
	leaseWait, backoffMin, backoffMax, authWindow time.Duration
}

func workerCommand() *cli.Command {
	var cfg WorkerConfig
	var keys cli.StringSlice
	return &cli.Command{
		Name:  "worker",
		Usage: "run the private worker: lease approved jobs, verify, run sandboxed, report results only",
		Description: "Loads the policy and its credentials on this host, compiles the tasks, publishes their names,\n" +
			"versions and JSON Schemas to the control plane, then long-polls it for approved jobs. It opens\n" +
			"no listening port. Each job's approval is verified against --trusted-keys before anything runs;\n" +
			"used approvals are remembered in STATE-DIR/replay.db. Only the outcome, output, the task's\n" +
			"error message, duration and module digest go back; URLs, credentials and request details stay\n" +
			"in the local log.\n\n" +
			"Shutdown: the first SIGTERM/SIGINT stops leasing and lets running jobs finish (\"draining\");\n" +
			"a second signal, or --grace elapsing, cancels them (reported cancelled and retryable, so\n" +
			"another worker runs them); a task still running --stop-timeout after that is abandoned, reported\n" +
			"the same way, and the process exits. Exit status: 0 clean drain (also a stop before the first\n" +
			"connection, and the end of a --one-job run), 1 runtime failure or jobs cancelled at shutdown,\n" +
			"2 configuration or authentication error: a bad flag or policy, or a token the control plane\n" +
			"refuses (at start, or 5 calls in a row over 30s while running).\n\n" +
			"The bearer token comes from --token-file or $CASTELLAN_TOKEN. When the control plane refuses it,\n" +
			"--token-file is read again and a new token in it is used at once: rotate by writing the new\n" +
			"token to the file (atomically: write a temporary file, then rename it), no restart needed.\n" +
			"--one-job makes an ephemeral worker: it leases one job, runs and reports it, and exits 0.\n" +
			"--registration-token-file instead enrols the host: its registration token is exchanged once\n" +
			"for a worker token kept in STATE-DIR/worker.token (0600), which every later start uses.\n\n" +
			"Every flag can also come from CASTELLAN_<FLAG> or --config FILE (YAML map of flag names to\n" +
			"values; flags and env win).\n\n" +
			"Examples:\n" +
			"  castellan worker --server https://cp.example:8443 --token-file /etc/castellan/worker.token \\\n" +
			"      --policy /etc/castellan/policy.yaml --trusted-keys /etc/castellan/approvers.jwks.json\n" +
			"  castellan worker --config /etc/castellan/worker.yaml --concurrency 4",
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "server", Usage: "control plane `URL`", EnvVars: []string{"CASTELLAN_SERVER"}, Destination: &cfg.Server},
			tokenFileFlag(&cfg.TokenFile),
			&cli.StringFlag{Name: "registration-token-file", Usage: "instead of --token-file: a registration token `FILE` (castellan token create --role registration), exchanged at the first start for a worker token kept in STATE-DIR/worker.token (HTTP mode)", EnvVars: []string{"CASTELLAN_REGISTRATION_TOKEN_FILE"}, Destination: &cfg.RegistrationTokenFile},
			caFileFlag(&cfg.CAFile),
			&cli.StringFlag{Name: "policy", Usage: "policy `FILE`", EnvVars: []string{"CASTELLAN_POLICY"}, Destination: &cfg.Policy},
			&cli.StringSliceFlag{Name: "trusted-keys", Usage: "JWKS `FILES` of approver public keys (comma-separated)", EnvVars: []string{"CASTELLAN_TRUSTED_KEYS"}, Destination: &keys},
			&cli.StringFlag{Name: "state-dir", Usage: "`DIR` for durable worker state (default $STATE_DIRECTORY under systemd, else $XDG_STATE_HOME/castellan)", EnvVars: []string{"CASTELLAN_STATE_DIR"}, Destination: &cfg.StateDir},
			&cli.StringFlag{Name: "cache-dir", Usage: "compilation cache `DIR` (\"off\" to disable)", EnvVars: []string{"CASTELLAN_CACHE_DIR"}, Destination: &cfg.CacheDir},
			&cli.IntFlag{Name: "concurrency", Usage: "jobs run at once", EnvVars: []string{"CASTELLAN_CONCURRENCY"}, Value: 2, Destination: &cfg.Concurrency},
			&cli.DurationFlag{Name: "grace", Usage: "how long running jobs may finish after the first signal", EnvVars: []string{"CASTELLAN_GRACE"}, Value: 5 * time.Minute, Destination: &cfg.Grace},
			&cli.DurationFlag{Name: "stop-timeout", Usage: "after the jobs are cancelled, how long a task may take to stop before it is abandoned (reported for retry) and the process exits", EnvVars: []string{"CASTELLAN_STOP_TIMEOUT"}, Value: 10 * time.Second, Destination: &cfg.StopTimeout},
			&cli.StringFlag{Name: "name", Usage: "worker `NAME` shown in the control plane (default the host name)", EnvVars: []string{"CASTELLAN_NAME"}, Destination: &cfg.Name},
			&cli.StringFlag{Name: "plugins", Usage: "serve and hot-load the plugins in `DIR`", EnvVars: []string{"CASTELLAN_PLUGINS"}, Destination: &cfg.PluginsDir},
			&cli.StringFlag{Name: "audit-log", Usage: "tamper-evident audit log `FILE` (default STATE-DIR/audit.log)", EnvVars: []string{"CASTELLAN_AUDIT_LOG"}, Destination: &cfg.AuditLog},
			&cli.StringFlag{Name: "audit-key-file", Usage: "audit signing key `FILE` (a private Ed25519 JWK, e.g. from `castellan keygen --name audit`), kept where the log's editors cannot read it (default STATE-DIR/audit.private.jwk.json, created on first start; see docs/audit-log.md)", EnvVars: []string{"CASTELLAN_AUDIT_KEY_FILE"}, Destination: &cfg.AuditKeyFile},
			&cli.StringFlag{Name: "audit-key-credential", Usage: "read the audit signing key (a private Ed25519 JWK) from the policy credential `NAME` (env, file or Vault)", EnvVars: []string{"CASTELLAN_AUDIT_KEY_CREDENTIAL"}, Destination: &cfg.AuditKeyCredential},
			&cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics on `ADDR` (off by default; \":9464\" binds 127.0.0.1)", EnvVars: []string{"CASTELLAN_METRICS_ADDR"}, Destination: &cfg.MetricsAddr},
			&cli.StringFlag{Name: "otlp-endpoint", Usage: "export traces over OTLP/HTTP to `URL` (default $OTEL_EXPORTER_OTLP_ENDPOINT, else off)", EnvVars: []string{"CASTELLAN_OTLP_ENDPOINT"}, Destination: &cfg.OTLP},
			&cli.StringFlag{Name: "pool", Usage: "the worker's `POOL`: approvals must name it, and the control plane must register the worker in it (required with a NATS --server; default the pool the control plane announces)", EnvVars: []string{"CASTELLAN_POOL"}, Destination: &cfg.Pool},
			&cli.StringFlag{Name: "nats-creds", Usage: "NATS mode: JWT/NKey credentials `FILE`", EnvVars: []string{"CASTELLAN_NATS_CREDS"}, Destination: &cfg.NATSCreds},
			&cli.StringFlag{Name: "nats-ca", Usage: "NATS mode: CA bundle `FILE` for TLS", EnvVars: []string{"CASTELLAN_NATS_CA"}, Destination: &cfg.NATSCA},
			&cli.StringFlag{Name: "nats-inbox-prefix", Usage: "NATS mode: subject `PREFIX` of the worker's replies; its NATS user needs subscribe permission on PREFIX.> only (default _INBOX_<pool>)", EnvVars: []string{"CASTELLAN_NATS_INBOX_PREFIX"}, Destination: &cfg.NATSInbox},
			&cli.BoolFlag{Name: "one-job", Usage: "ephemeral worker: lease at most one job, run it, report it and exit 0 (forces --concurrency 1)", EnvVars: []string{"CASTELLAN_ONE_JOB"}, Destination: &cfg.OneJob},
			logLevelFlag(&cfg.LogLevel, "info"),
			logFormatFlag(&cfg.LogFormat),
		},
		Before:      loadConfigFile,
		Subcommands: []*cli.Command{workerInstallCommand(), workerListCommand()},
		Action: func(c *cli.Context) error {
			cfg.TrustedKeys = splitList(keys.Value())
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			return Worker(c.Context, cfg, c.App.ErrWriter, sigs)
		},
	}
}

// Worker runs the worker until it has drained after the first value on sigs (or ctx ends).
// A second value, or cfg.Grace elapsing after the first, cancels the running jobs.
func Worker(ctx context.Context, cfg WorkerConfig, stderr io.Writer, sigs <-chan os.Signal) error {
	if cfg.Server == "" || cfg.Policy == "" || len(cfg.TrustedKeys) == 0 {
		return usagef("--server, --policy and --trusted-keys are required")
	}
	if err := checkServerURL(cfg.Server); err != nil {
		return err
	}
	if cfg.OneJob {
		cfg.Concurrency = 1
	}
	natsMode := isNATSURL(cfg.Server)
	if cfg.RegistrationTokenFile != "" {
		switch {
		case natsMode:
			return usagef("--registration-token-file is for an HTTP(S) control plane: in NATS mode a worker authenticates to NATS with NATS credentials (--nats-creds), which the control plane cannot mint (docs/deploy.md)")
		case cfg.TokenFile != "":
			return usagef("give --token-file or --registration-token-file, not both")
		}
		dir, err := workerStateDir(cfg.StateDir)
		if err != nil {
			return usageError{err}
		}
		if cfg.TokenFile, err = registeredTokenFile(ctx, cfg, dir, workerName(cfg.Name)); err != nil {
			return err
		}
	}
	token, err := readToken(cfg.TokenFile)
	if err != nil && !(natsMode && cfg.NATSCreds != "") {
		return usageError{err}
	}
	if natsMode && cfg.Pool == "" {
		return usagef("--pool is required with a NATS --server")
	}
	pol, err := policy.Load(cfg.Policy)
	if err != nil {
		return usageError{err}
	}
	keys, err := approval.LoadKeySet(cfg.TrustedKeys...)
	if err != nil {
		return usagef("--trusted-keys: %v", err)
	}
	stateDir, err := workerStateDir(cfg.StateDir)
	if err != nil {
		return usageError{err}
	}
	red := redact.NewSet()
	if token != "" {
		_ = red.Add(token) // never log our own bearer token either
	}
	log, err := logging.New(stderr, logging.Options{Level: cfg.LogLevel, Format: cfg.LogFormat, Scrub: red})
	if err != nil {
		return usageError{err}
	}
	// net/http prints an upstream's stray bytes on the standard logger: scrub them too.
	defer logging.CaptureStdlib(log)()
	defer func() { _ = log.Sync() }()

	replay, err := approval.OpenReplayStore(filepath.Join(stateDir, "replay.db"))
	if err != nil {
		return usagef("replay store in --state-dir %s: %v", stateDir, err)
	}
	defer replay.Close()

	store, err := secrets.NewStore(pol.Credentials, pol.Vault, red, log.Named("secrets"))
	if err != nil {
		return usageError{err}
	}
	defer store.Close()
	if err := store.Preload(ctx); err != nil {
		log.Warn("some credentials could not be loaded; tasks needing them fail with credential_unavailable", zap.Error(err))
	}
	cache, err := cacheDir(cfg.CacheDir)
	if err != nil {
		return usageError{err}
	}
	engine, err := runtime.NewEngine(runtime.Config{CacheDir: cache, Logger: log.Named("sandbox")})
	if err != nil {
		return usageError{err}
	}
	// After a job was abandoned its guest may still be inside a module: nothing waits on
	// closing then, the process is about to exit.
	abandoned := false
	defer func() {
		if !abandoned {
			closeWithin(log, "the sandbox engine", func() { _ = engine.Close(context.Background()) })
		}
	}()
	obs, err := newObservability(ctx, cfg, stateDir, store, red, log)
	if err != nil {
		return usageError{err}
	}
	defer obs.close()

	set, err := tasks.Load(ctx, tasks.Options{Policy: pol, Engine: engine, Secrets: store, Redactor: red, Log: log,
		PluginsDir: cfg.PluginsDir, Audit: obs.httpCall})
	if err != nil {
		return usageError{err}
	}
	defer func() {
		if !abandoned {
			closeWithin(log, "the tasks", func() { set.Close(context.Background()) })
		}
	}()

	lease, stopLease := context.WithCancel(ctx)
	defer stopLease()
	jobs, cancelJobs := context.WithCancel(ctx)
	defer cancelJobs()
	// A token the control plane keeps refusing stops the worker: leasing ends, and running
	// jobs are cancelled, since their results could not be reported anyway.
	authStop := make(chan error, 1)
	onAuthRefused := func(err error) {
		authStop <- err
		stopLease()
		cancelJobs()
	}

	var queue worker.Queue
	if natsMode {
		wq, err := natsq.DialWorker(ctx, cfg.Server, natsq.Options{Name: "castellan-worker", Token: token,
			CredsFile: cfg.NATSCreds, CAFile: cfg.NATSCA, Pool: cfg.Pool, InboxPrefix: cfg.NATSInbox, Log: log.Named("nats")})
		if err != nil {
			return usagef("--server: %v", err)
		}
		defer wq.Close()
		queue = wq
	} else {
		ca, err := controlPlaneCA(cfg.CAFile)
		if err != nil {
			return err
		}
		tq, err := newTokenQueue(cfg.Server, cfg.TokenFile, token, red, log.Named("auth"), onAuthRefused,
			client.WithUserAgent("castellan-worker/"+Version), ca)
		if err != nil {
			return usagef("--server: %v", err)
		}
		tq.window = cmp.Or(cfg.authWindow, tq.window)
		queue = tq
	}
	if cfg.OneJob {
		queue = oneJob{Queue: queue, stop: stopLease}
	}
	name := workerName(cfg.Name)
	w, err := worker.New(worker.Config{
		Client: queue, Runner: set, Catalog: set.Catalog(), CatalogUpdates: set.Updates(),
		Verifier: approval.NewVerifier(keys, replay),
		Pool:     cfg.Pool, Name: name, Version: Version, Concurrency: cfg.Concurrency, StopTimeout: cfg.StopTimeout,
		LeaseWait: cfg.leaseWait, BackoffMin: cfg.backoffMin, BackoffMax: cfg.backoffMax,
		Log:   log.Named("worker"),
		Audit: obs.audit, Observer: obs.observer,
	})
	if err != nil {
		return usageError{err}
	}

	done := make(chan struct{})
	forced := make(chan struct{})
	go func() {
		select {
		case <-done:
			return
		case s := <-sigs:
			log.Info("draining: no new jobs; running jobs may finish (a second signal cancels them)",
				zap.Stringer("signal", s), zap.Duration("grace", cfg.Grace))
			stopLease()
		}
		grace := time.NewTimer(cfg.Grace)
		defer grace.Stop()
		select {
		case <-done:
			return
		case s := <-sigs:
			log.Warn("second signal: cancelling running jobs", zap.Stringer("signal", s))
		case <-grace.C:
			log.Warn("grace period elapsed: cancelling running jobs", zap.Duration("grace", cfg.Grace))
		}
		close(forced)
		cancelJobs()
	}()
	err = w.Run(lease, jobs)
	abandoned = errors.Is(err, worker.ErrAbandoned)
	close(done)
	select {
	case aerr := <-authStop:
		msg := authHint(aerr, cfg.TokenFile)
		log.Error(msg, zap.Int("refusals_in_a_row", authRefusalLimit))
		return loggedUsage{errors.New(msg)}
	default:
	}
	switch {
	case authRefused(err):
		// Refused at registration: the token, not the network, is wrong.
		return usageError{errors.New(authHint(err, cfg.TokenFile))}
	case errors.Is(err, context.Canceled) && lease.Err() != nil && ctx.Err() == nil && !errors.Is(err, worker.ErrAbandoned):
		// Stopped (a signal) before the first connection: nothing ran, a clean stop, also
		// after a second signal (there were no jobs to cancel).
		return nil
	case err != nil:
		log.Error("worker stopped", zap.Error(err))
		return taskFailed{err}
	}
	select {
	case <-forced:
		return taskFailed{errors.New("shutdown forced: running jobs were cancelled")}
	default:
	}
	return nil
}

// workerName is --name, or the host name.
func workerName(flag string) string {
	if flag != "" {
		return flag
	}
	name, _ := os.Hostname()
	return name
}

// closeWait bounds each close at exit: a guest abandoned at shutdown may still be inside
// its module, and whatever closing does with it must not hold the process.
const closeWait = 5 * time.Second

// closeWithin runs closeIt and waits at most closeWait for it to return.
func closeWithin(log *zap.Logger, what string, closeIt func()) {
	done := make(chan struct{})
	go func() { defer close(done); closeIt() }()
	t := time.NewTimer(closeWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		log.Warn("closing did not finish in time; exiting anyway", zap.String("what", what), zap.Duration("waited", closeWait))
	}
}

func workerStateDir(flag string) (string, error) {
	dir := cmp.Or(flag, systemdStateDir())
	if dir == "" {
		base := os.Getenv("XDG_STATE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				return "", fmt.Errorf("--state-dir is needed: no $XDG_STATE_HOME and no home directory (%v)", err)
			}
			base = filepath.Join(home, ".local", "state")
		}
		dir = filepath.Join(base, "castellan")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("--state-dir: %w", err)
	}
	return dir, nil
}

// readToken reads a bearer token from file, or from $CASTELLAN_TOKEN when file is "".
func readToken(file string) (string, error) {
	if file == "" {
		if t := strings.TrimSpace(os.Getenv("CASTELLAN_TOKEN")); t != "" {
			return t, nil
		}
		return "", errors.New("no bearer token: pass --token-file FILE or set CASTELLAN_TOKEN")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", fmt.Errorf("--token-file %s is empty", file)
	}
	return t, nil
}

func tokenFileFlag(dst *string) cli.Flag {
	return &cli.StringFlag{Name: "token-file", Usage: "bearer token `FILE` (default $CASTELLAN_TOKEN)", EnvVars: []string{"CASTELLAN_TOKEN_FILE"}, Destination: dst}
}

func configFlag() cli.Flag {
	return &cli.StringFlag{Name: "config", Usage: "YAML `FILE` of flag values (flag names as keys)", EnvVars: []string{"CASTELLAN_CONFIG"}}
}

func logLevelFlag(dst *string, def string) cli.Flag {
	return &cli.StringFlag{Name: "log-level", Usage: "debug, info, warn or error", EnvVars: []string{"CASTELLAN_LOG_LEVEL"}, Value: def, Destination: dst}
}

func logFormatFlag(dst *string) cli.Flag {
	return &cli.StringFlag{Name: "log-format", Usage: "console or json", EnvVars: []string{"CASTELLAN_LOG_FORMAT"}, Value: "console", Destination: dst}
}

// loadConfigFile applies --config FILE: a YAML map whose keys are the command's flag names.
// A value applies only when the flag was not given on the command line or in the
// environment. Lists may be YAML sequences.
func loadConfigFile(c *cli.Context) error {
	path := c.String("config")
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return usagef("--config: %v", err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return usagef("--config %s: %v", path, err)
	}
	known := map[string]bool{}
	for _, f := range c.Command.Flags {
		for _, n := range f.Names() {
			known[n] = true
		}
	}
	for k, v := range m {
		if !known[k] || k == "config" {
			return usagef("--config %s: unknown key %q; keys are the flag names of `castellan %s`", path, k, c.Command.Name)
		}
		if c.IsSet(k) {
			continue
		}
		var vals []any
		if list, ok := v.([]any); ok {
			vals = list
		} else {
			vals = []any{v}
		}
		for _, item := range vals {
			if err := c.Set(k, fmt.Sprint(item)); err != nil {
				return usagef("--config %s: key %q: %v", path, k, err)
			}
		}
	}
	return nil
}

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/logging"
	"github.com/castellan-dev/castellan/internal/metrics"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/tracing"
)

// ServerConfig is the configuration of `castellan server`.
type ServerConfig struct {
	DB               string
	Listen           string
	TLSCert, TLSKey  string
	LeaseTTL         time.Duration
	AutoApproveKey   string   // private JWK file; "" for no auto-approval
	AutoApproveTasks []string // task names, or "*"
	LogLevel         string
	LogFormat        string
	MetricsAddr      string // opt-in Prometheus listener; "" for none (the default)
	OTLP             string // OTLP trace endpoint; "" for $OTEL_EXPORTER_OTLP_ENDPOINT or none

	// NATS selects the JetStream control plane (exclusive with DB): job state, tokens and
	// catalogs live in JetStream, so several replicas may serve the API at once.
	NATS      string
	NATSCreds string // JWT/NKey credentials file
	NATSCA    string // CA bundle for TLS to NATS
	Replicas  int    // replicas of the streams and buckets this server creates

	// NoMCP turns off /mcp (on by default: it needs a client token like /v1; docs/mcp.md).
	NoMCP bool
	// PublicURL is the URL clients reach this server at, named as the MCP resource in the
	// RFC 9728 metadata. Optional; default derived from each request's Host.
	PublicURL string
}

func serverCommand() *cli.Command {
	var cfg ServerConfig
	var tasks cli.StringSlice
	return &cli.Command{
		Name:  "server",
		Usage: "run the reference control plane (job queue, catalog, approvals, audit)",
		Description: "Serves the /v1 JSON API (docs/api.md) with its state in a SQLite file. Workers inside the\n" +
			"private network long-poll it over outbound HTTPS; it never learns endpoints, URLs or\n" +
			"credentials. Bootstrap tokens with `castellan token create --db FILE` before the first start.\n" +
			"Once listening it prints \"castellan server listening on URL\" on stdout; logs go to stderr.\n" +
			"GET /healthz answers while the process serves, GET /readyz when its state store answers too;\n" +
			"--metrics-addr serves Prometheus metrics (docs/observability.md) on a separate listener.\n" +
			"SIGINT/SIGTERM shut it down gracefully (requests in flight get up to 10s); a second signal\n" +
			"exits at once. Exit status: 0 clean shutdown, 1 runtime failure, 2 configuration error.\n\n" +
			"With --auto-approve-key the server signs approvals itself for the listed tasks: meant for\n" +
			"demos and low-risk tasks only; workers must trust that key, and the approvals say \"auto\".\n\n" +
			"Every flag can also come from CASTELLAN_<FLAG> (e.g. CASTELLAN_DB) or from --config FILE, a\n" +
			"YAML map of flag names to values (flags and env win over the file).\n\n" +
			"Examples:\n" +
			"  castellan token create --db /var/lib/castellan/cp.db --role admin --pool '*' --name ops\n" +
			"  castellan server --db /var/lib/castellan/cp.db --listen 0.0.0.0:8443 --tls-cert cp.crt --tls-key cp.key\n" +
			"  castellan server --db demo.db --listen 127.0.0.1:8443 --auto-approve-key auto.private.jwk.json --auto-approve-tasks echo\n\n" +
			"With --nats URL instead of --db the control plane keeps no local state: jobs, tokens and\n" +
			"catalogs live in NATS JetStream, workers connect to NATS (castellan worker --server nats://...),\n" +
			"and any number of replicas serve the same client API (submit, approve, get, wait, cancel,\n" +
			"catalog). Create tokens with `castellan token create --nats URL`. See docs/deploy.md.\n\n" +
			"In both modes /mcp serves the Model Context Protocol (Streamable HTTP) to AI agents: each task of\n" +
			"the client token's pool is a tool, and each call is a job that waits for an approver like any\n" +
			"other (docs/mcp.md). It calls this server's own /v1 over loopback with the agent's token;\n" +
			"--mcp=false turns it off, --public-url names the URL agents use in its metadata.\n" +
			"  castellan token create --nats nats://nats:4222 --nats-creds cp.creds --role admin --pool '*' --name ops\n" +
			"  castellan server --nats nats://n1:4222,nats://n2:4222,nats://n3:4222 --nats-creds cp.creds --replicas 3 --listen 0.0.0.0:8443",
		Flags: []cli.Flag{
			configFlag(),
			&cli.StringFlag{Name: "db", Usage: "SQLite database `FILE` (created if missing)", EnvVars: []string{"CASTELLAN_DB"}, Destination: &cfg.DB},
			&cli.StringFlag{Name: "listen", Usage: "`ADDR` to listen on", EnvVars: []string{"CASTELLAN_LISTEN"}, Value: "127.0.0.1:8443", Destination: &cfg.Listen},
			&cli.StringFlag{Name: "tls-cert", Usage: "TLS certificate `FILE` (PEM)", EnvVars: []string{"CASTELLAN_TLS_CERT"}, Destination: &cfg.TLSCert},
			&cli.StringFlag{Name: "tls-key", Usage: "TLS private key `FILE` (PEM)", EnvVars: []string{"CASTELLAN_TLS_KEY"}, Destination: &cfg.TLSKey},
			&cli.DurationFlag{Name: "lease-ttl", Usage: "how long a lease lives without a heartbeat", EnvVars: []string{"CASTELLAN_LEASE_TTL"}, Value: 60 * time.Second, Destination: &cfg.LeaseTTL},
			&cli.StringFlag{Name: "auto-approve-key", Usage: "private JWK `FILE` the server signs auto-approvals with", EnvVars: []string{"CASTELLAN_AUTO_APPROVE_KEY"}, Destination: &cfg.AutoApproveKey},
			&cli.StringSliceFlag{Name: "auto-approve-tasks", Usage: "task `NAMES` to auto-approve (comma-separated, or *)", EnvVars: []string{"CASTELLAN_AUTO_APPROVE_TASKS"}, Destination: &tasks},
			&cli.StringFlag{Name: "nats", Usage: "NATS `URL`s (comma-separated): keep state in JetStream instead of --db", EnvVars: []string{"CASTELLAN_NATS"}, Destination: &cfg.NATS},
			&cli.StringFlag{Name: "nats-creds", Usage: "NATS mode: JWT/NKey credentials `FILE`", EnvVars: []string{"CASTELLAN_NATS_CREDS"}, Destination: &cfg.NATSCreds},
			&cli.StringFlag{Name: "nats-ca", Usage: "NATS mode: CA bundle `FILE` for TLS", EnvVars: []string{"CASTELLAN_NATS_CA"}, Destination: &cfg.NATSCA},
			&cli.IntFlag{Name: "replicas", Usage: "NATS mode: replicas of the streams and buckets (3 on a 3-node cluster)", EnvVars: []string{"CASTELLAN_REPLICAS"}, Value: 1, Destination: &cfg.Replicas},
			&cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics on `ADDR` (off by default; \":9465\" binds 127.0.0.1)", EnvVars: []string{"CASTELLAN_METRICS_ADDR"}, Destination: &cfg.MetricsAddr},
			&cli.StringFlag{Name: "otlp-endpoint", Usage: "export traces over OTLP/HTTP to `URL` (base URL, /v1/traces is appended; default $OTEL_EXPORTER_OTLP_ENDPOINT, else off)", EnvVars: []string{"CASTELLAN_OTLP_ENDPOINT"}, Destination: &cfg.OTLP},
			&cli.BoolFlag{Name: "mcp", Usage: "serve MCP at /mcp for AI agents (client tokens, like /v1; docs/mcp.md); --mcp=false turns it off", EnvVars: []string{"CASTELLAN_MCP"}, Value: true},
			&cli.StringFlag{Name: "public-url", Usage: "`URL` clients reach this server at (https://cp.example:8443), named in /mcp's RFC 9728 metadata (default: from each request's Host)", EnvVars: []string{"CASTELLAN_PUBLIC_URL"}, Destination: &cfg.PublicURL},
			logLevelFlag(&cfg.LogLevel, "info"),
			logFormatFlag(&cfg.LogFormat),
		},
		Before: loadConfigFile,
		Action: func(c *cli.Context) error {
			cfg.AutoApproveTasks = splitList(tasks.Value())
			cfg.NoMCP = !c.Bool("mcp")
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
			defer signal.Stop(sigs)
			return Server(c.Context, cfg, c.App.Writer, c.App.ErrWriter, sigs)
		},
	}
}

// Server runs the control plane until the first value on sigs (graceful shutdown) or ctx ends.
// A second value makes it return at once.
func Server(ctx context.Context, cfg ServerConfig, stdout, stderr io.Writer, sigs <-chan os.Signal) error {
	if cfg.NATS != "" && cfg.DB != "" {
		return usagef("give one of --db FILE (SQLite) or --nats URL (JetStream), not both")
	}
	if cfg.DB == "" && cfg.NATS == "" {
		return usagef("--db is required: the SQLite file that holds the control plane's state (or --nats URL for JetStream)")
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return usagef("--tls-cert and --tls-key go together: give both or neither")
	}
	log, err := logging.New(stderr, logging.Options{Level: cfg.LogLevel, Format: cfg.LogFormat})
	if err != nil {
		return usageError{err}
	}
	defer func() { _ = log.Sync() }()

	if cfg.NATS != "" {
		return serverNATS(ctx, cfg, stdout, log, sigs)
	}

	reg := newServerRegistry()
	sm, err := metrics.NewServer(reg)
	if err != nil {
		return err
	}
	tp, stopTracing, err := tracing.NewProvider(ctx, tracing.Options{Endpoint: cfg.OTLP, Service: "castellan-server", Log: log.Named("tracing")})
	if err != nil {
		return usagef("--otlp-endpoint: %v", err)
	}
	defer func() { _ = stopTracing(context.Background()) }()
	scfg := server.Config{
		Addr: cfg.Listen, TLSCert: cfg.TLSCert, TLSKey: cfg.TLSKey, DBPath: cfg.DB,
		LeaseTTL: cfg.LeaseTTL, Logger: log.Named("server"), Metrics: sm, Tracer: tp,
	}
	if scfg.AutoApprover, err = autoApprover(cfg, log); err != nil {
		return err
	}
	if scfg.AutoApprover != nil {
		scfg.AutoApproveTasks = cfg.AutoApproveTasks
	}

	// Listening comes first: /mcp calls this listener, whose port may be chosen by the OS.
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return usagef("--listen %s: %v", cfg.Listen, err)
	}
	defer func() { _ = ln.Close() }()
	mcpCtx, endMCP := context.WithCancel(context.Background())
	defer endMCP()
	if !cfg.NoMCP {
		if scfg.MCP, err = mcpHandler(cfg, ln, mcpCtx); err != nil {
			return err
		}
	}
	srv, err := server.New(ctx, scfg)
	if err != nil {
		return usageError{err}
	}
	defer func() { _ = srv.Close() }()
	err = metrics.RegisterJobGauge(reg, func(ctx context.Context) (map[string]int, error) {
		c, err := srv.Store().Count(ctx)
		out := make(map[string]int, len(c.Jobs))
		for st, n := range c.Jobs {
			out[string(st)] = n
		}
		return out, err
	})
	if err != nil {
		return err
	}
	stopMetrics, err := serveMetrics(ctx, cfg.MetricsAddr, reg, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	scheme := "http"
	if cfg.TLSCert != "" {
		scheme = "https"
	}
	fmt.Fprintf(stdout, "castellan server listening on %s://%s\n", scheme, ln.Addr())

	return serveUntilSignalled(ctx, ln, endingWith(srv.Serve, endMCP), sigs, log)
}

// autoApprover is the --auto-approve-key signer of either mode, or nil when auto-approval
// is off.
func autoApprover(cfg ServerConfig, log *zap.Logger) (controlplane.AutoApprover, error) {
	if cfg.AutoApproveKey == "" && len(cfg.AutoApproveTasks) == 0 {
		return nil, nil
	}
	if cfg.AutoApproveKey == "" || len(cfg.AutoApproveTasks) == 0 {
		return nil, usagef("--auto-approve-key and --auto-approve-tasks go together: give both or neither")
	}
	key, err := approval.LoadPrivateKey(cfg.AutoApproveKey)
	if err != nil {
		return nil, usagef("--auto-approve-key: %v", err)
	}
	log.Warn("!!! AUTO-APPROVAL IS ON: this server signs approvals itself for the listed tasks; "+
		"any client token can run them on every worker that trusts this key !!!",
		zap.Strings("tasks", cfg.AutoApproveTasks), zap.String("kid", key.KeyID))
	return AutoApprover{Key: key}, nil
}

// AutoApprover signs server-side approvals with a private key, marked Auto in the claims.
// It lets demos and low-risk tasks skip a human; workers still verify every approval.
type AutoApprover struct {
	Key jose.JSONWebKey
	// TTL is the approvals' lifetime. Optional; default approval.DefaultTTL.
	TTL time.Duration
	// MaxAttempts is how many executions an approval allows. Optional; default 100, the
	// server's upper bound, so that the job's own max_attempts is what stops retries.
	MaxAttempts int
}

var _ controlplane.AutoApprover = AutoApprover{}

// Approve implements controlplane.AutoApprover.
func (a AutoApprover) Approve(_ context.Context, j controlplane.ApprovalSubject) (string, error) {
	n := a.MaxAttempts
	if n <= 0 {
		n = 100
	}
	tok, _, err := approval.Sign(a.Key, approval.Request{
		JobID: j.JobID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Input: j.Input,
		TTL: a.TTL, MaxAttempts: n, Approver: "auto:" + a.Key.KeyID, Auto: true,
	})
	return tok, err
}

// splitList flattens comma-separated values and drops empty items.
func splitList(vals []string) []string {
	var out []string
	for _, v := range vals {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// natsOptions is the NATS connection of the control plane and of `token create --nats`.
func natsOptions(name, creds, ca string, replicas int, log *zap.Logger) (natsq.Options, error) {
	if replicas < 1 || replicas > 5 {
		return natsq.Options{}, usagef("--replicas is %d, want 1..5 (3 on a 3-node cluster)", replicas)
	}
	return natsq.Options{Name: name, CredsFile: creds, CAFile: ca, Replicas: replicas, Log: log}, nil
}

// serverNATS runs the JetStream control plane: the client API and the shared result
// consumer, with no local state, until the first signal or ctx ends.
func serverNATS(ctx context.Context, cfg ServerConfig, stdout io.Writer, log *zap.Logger, sigs <-chan os.Signal) error {
	switch {
	case cfg.TLSCert != "":
		return usagef("--tls-cert is not supported with --nats yet: terminate TLS in front of the API (see docs/deploy.md)")
	case cfg.OTLP != "":
		return usagef("--otlp-endpoint is not supported with --nats yet: the JetStream control plane records no spans")
	}
	o, err := natsOptions("castellan-server", cfg.NATSCreds, cfg.NATSCA, cfg.Replicas, log.Named("nats"))
	if err != nil {
		return err
	}
	if o.API.AutoApprover, err = autoApprover(cfg, log); err != nil {
		return err
	}
	if o.API.AutoApprover != nil {
		o.API.AutoApproveTasks = cfg.AutoApproveTasks
	}
	srv, err := natsq.DialAPIServer(ctx, cfg.NATS, o)
	if err != nil {
		return usageError{err}
	}
	defer func() { _ = srv.Close() }()
	stopMetrics, err := serveMetrics(ctx, cfg.MetricsAddr, newServerRegistry(), log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		return usagef("--listen %s: %v", cfg.Listen, err)
	}
	defer func() { _ = ln.Close() }()
	mcpCtx, endMCP := context.WithCancel(context.Background())
	defer endMCP()
	if !cfg.NoMCP {
		h, err := mcpHandler(cfg, ln, mcpCtx)
		if err != nil {
			return err
		}
		srv.HandleMCP(h)
	}
	fmt.Fprintf(stdout, "castellan server listening on http://%s\n", ln.Addr())
	log.Info("control plane on NATS JetStream", zap.Int("replicas", cfg.Replicas))

	return serveUntilSignalled(ctx, ln, endingWith(srv.Serve, endMCP), sigs, log)
}

// newServerRegistry is the control plane's own registry (nothing is registered globally),
// with the Go runtime and process collectors beside the castellan_server_* metrics.
func newServerRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// serveMetrics opens the --metrics-addr listener (none when addr is "") and serves reg on
// it until the returned stop is called. A listener that cannot be opened is a
// configuration error, found before the API starts.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, log *zap.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	a, err := metrics.ListenAddr(addr)
	if err != nil {
		return nil, usagef("--metrics-addr: %v", err)
	}
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", a)
	if err != nil {
		return nil, usagef("--metrics-addr %s: %v", addr, err)
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := metrics.ServeListener(mctx, ln, reg); err != nil && mctx.Err() == nil {
			log.Error("metrics listener failed", zap.Error(err))
		}
	}()
	log.Info("metrics listener enabled", zap.String("addr", "http://"+ln.Addr().String()+"/metrics"))
	return func() { cancel(); <-done }, nil
}

// serveUntilSignalled serves on ln until ctx ends or a signal arrives: the first signal
// finishes the requests in flight, a second one returns at once.
func serveUntilSignalled(ctx context.Context, ln net.Listener, serve func(context.Context, net.Listener) error,
	sigs <-chan os.Signal, log *zap.Logger) error {
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- serve(sctx, ln) }()
	var err error
	select {
	case err = <-done:
	case s := <-sigs:
		log.Info("shutting down: finishing requests in flight; a second signal exits at once", zap.Stringer("signal", s))
		stop()
		select {
		case err = <-done:
		case s := <-sigs:
			log.Warn("second signal: exiting without waiting", zap.Stringer("signal", s))
			return nil
		}
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("control plane failed", zap.Error(err))
		return taskFailed{err}
	}
	log.Info("control plane stopped")
	return nil
}

package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TokenConfig is the configuration of `castellan token create`.
type TokenConfig struct {
	DB        string // direct database access (bootstrap); exclusive with Server and NATS
	NATS      string // the JetStream control plane's NATS URL (direct access)
	NATSCreds string
	NATSCA    string
	Replicas  int
	Server    string // via the API with an admin token
	TokenFile string
	CAFile    string // with Server: CA certificates for its TLS
	Role      string
	Pool      string
	Name      string
	JSON      bool
}

func tokenCommand() *cli.Command {
	var cfg TokenConfig
	return &cli.Command{
		Name:  "token",
		Usage: "manage control-plane bearer tokens",
		Subcommands: []*cli.Command{{
			Name:  "create",
			Usage: "create a bearer token and print its secret (once)",
			Description: "Roles: worker (lease and run jobs of one pool), client (submit, get, list, cancel, wait),\n" +
				"approver (attach approvals), admin (everything, including tokens and audit). Worker tokens\n" +
				"need a pool; other roles may use '*' for every pool. Only a hash is stored: the secret is\n" +
				"printed once. With --db the database is opened directly (to bootstrap the first admin\n" +
				"token, before or while the server runs); with --server an admin token creates it via the API.\n\n" +
				"Where to: the --db, --nats or --server flag given on the command line (exactly one). Without\n" +
				"any of them, $CASTELLAN_DB, $CASTELLAN_NATS or $CASTELLAN_SERVER (exactly one set): so a shell\n" +
				"that exports CASTELLAN_SERVER for `castellan job` can still bootstrap with --db.\n\n" +
				"Examples:\n" +
				"  castellan token create --db /var/lib/castellan/cp.db --role admin --pool '*' --name ops\n" +
				"  castellan token create --nats nats://nats:4222 --nats-creds cp.creds --role client --pool default --name ci\n" +
				"  castellan token create --server https://cp:8443 --token-file admin.token --role worker --pool default --name dc1-w1 > w1.token",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "db", Usage: "control plane SQLite `FILE` (direct access; default $CASTELLAN_DB, see above)", Destination: &cfg.DB},
				&cli.StringFlag{Name: "nats", Usage: "NATS `URL` of a JetStream control plane (direct access; server --nats; default $CASTELLAN_NATS)", Destination: &cfg.NATS},
				&cli.StringFlag{Name: "nats-creds", Usage: "NATS mode: JWT/NKey credentials `FILE`", EnvVars: []string{"CASTELLAN_NATS_CREDS"}, Destination: &cfg.NATSCreds},
				&cli.StringFlag{Name: "nats-ca", Usage: "NATS mode: CA bundle `FILE` for TLS", EnvVars: []string{"CASTELLAN_NATS_CA"}, Destination: &cfg.NATSCA},
				&cli.IntFlag{Name: "replicas", Usage: "NATS mode: replicas of the token bucket if it is created", EnvVars: []string{"CASTELLAN_REPLICAS"}, Value: 1, Destination: &cfg.Replicas},
				&cli.StringFlag{Name: "server", Usage: "control plane `URL` (needs an admin token; default $CASTELLAN_SERVER)", Destination: &cfg.Server},
				tokenFileFlag(&cfg.TokenFile),
				caFileFlag(&cfg.CAFile),
				&cli.StringFlag{Name: "role", Usage: "worker, client, approver or admin", Required: true, Destination: &cfg.Role},
				&cli.StringFlag{Name: "pool", Usage: "`POOL` the token is bound to ('*' for all; not for workers)", Value: "default", Destination: &cfg.Pool},
				&cli.StringFlag{Name: "name", Usage: "label shown in listings and the audit log", Destination: &cfg.Name},
				&cli.BoolFlag{Name: "json", Usage: "print the token as JSON", Destination: &cfg.JSON},
			},
			Action: func(c *cli.Context) error {
				_, err := TokenCreate(c.Context, tokenTarget(cfg, os.Getenv), c.App.Writer)
				return err
			},
		}},
	}
}

// tokenTarget fills in where the token is created from the environment, but only when no
// --db, --nats or --server flag was given: an explicit flag beats an environment variable
// (as with VAULT_ADDR and `vault -address`), so exporting CASTELLAN_SERVER for the job
// commands does not break `token create --db` bootstrapping.
func tokenTarget(cfg TokenConfig, getenv func(string) string) TokenConfig {
	if cfg.DB != "" || cfg.NATS != "" || cfg.Server != "" {
		return cfg
	}
	cfg.DB, cfg.NATS, cfg.Server = getenv("CASTELLAN_DB"), getenv("CASTELLAN_NATS"), getenv("CASTELLAN_SERVER")
	return cfg
}

// TokenCreate creates a token and prints its secret alone on stdout (or the JSON record).
func TokenCreate(ctx context.Context, cfg TokenConfig, out io.Writer) (api.Token, error) {
	var tok api.Token
	var err error
	given := 0
	for _, s := range []string{cfg.DB, cfg.Server, cfg.NATS} {
		if s != "" {
			given++
		}
	}
	switch {
	case given != 1:
		return tok, usagef("give exactly one of --db FILE (direct), --nats URL (direct, JetStream control plane) or --server URL (via the API); " +
			"with none of them, exactly one of $CASTELLAN_DB, $CASTELLAN_NATS, $CASTELLAN_SERVER is used")
	case cfg.NATS != "":
		if cfg.Replicas == 0 {
			cfg.Replicas = 1
		}
		o, oerr := natsOptions("castellan-token", cfg.NATSCreds, cfg.NATSCA, cfg.Replicas, nil)
		if oerr != nil {
			return tok, oerr
		}
		nc, cerr := natsq.Connect(cfg.NATS, o)
		if cerr != nil {
			return tok, usagef("--nats: %v", cerr)
		}
		defer nc.Close()
		tok, err = natsq.CreateToken(ctx, nc, api.Role(cfg.Role), cfg.Pool, cfg.Name, cfg.Replicas)
		if err != nil {
			return tok, usageError{err}
		}
	case cfg.DB != "":
		st, oerr := server.OpenStore(ctx, cfg.DB)
		if oerr != nil {
			return tok, usagef("--db: %v", oerr)
		}
		defer st.Close()
		tok, err = st.CreateToken(ctx, api.Role(cfg.Role), cfg.Pool, cfg.Name, time.Now())
		if err != nil {
			return tok, usageError{err}
		}
	default:
		c, cerr := JobConfig{Server: cfg.Server, TokenFile: cfg.TokenFile, CAFile: cfg.CAFile}.client()
		if cerr != nil {
			return tok, cerr
		}
		tok, err = c.CreateToken(ctx, api.TokenCreateRequest{Role: api.Role(cfg.Role), Pool: cfg.Pool, Name: cfg.Name})
		if err != nil {
			return tok, apiFailure(err)
		}
	}
	if cfg.JSON {
		return tok, writeJSON(out, tok)
	}
	_, err = fmt.Fprintln(out, tok.Secret)
	return tok, err
}

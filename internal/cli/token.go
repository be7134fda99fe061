package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/natsq"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TokenConfig is the configuration of `castellan token create|list|revoke`.
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
	TTL       time.Duration // 0: the token never expires
	JSON      bool
	// Now is the clock that direct creation and the listing's status use. Optional.
	Now func() time.Time
}

func (cfg TokenConfig) now() time.Time {
	if cfg.Now != nil {
		return cfg.Now()
	}
	return time.Now()
}

const tokenWhere = "Where to: the --db, --nats or --server flag given on the command line (exactly one). Without\n" +
	"any of them, $CASTELLAN_DB, $CASTELLAN_NATS or $CASTELLAN_SERVER (exactly one set): so a shell\n" +
	"that exports CASTELLAN_SERVER for `castellan job` can still bootstrap with --db. --server needs\n" +
	"an admin token (--token-file or $CASTELLAN_TOKEN)."

// tokenTargetFlags are the flags every token subcommand uses to reach the control plane.
func tokenTargetFlags(cfg *TokenConfig) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "db", Usage: "control plane SQLite `FILE` (direct access; default $CASTELLAN_DB, see above)", Destination: &cfg.DB},
		&cli.StringFlag{Name: "nats", Usage: "NATS `URL` of a JetStream control plane (direct access; server --nats; default $CASTELLAN_NATS)", Destination: &cfg.NATS},
		&cli.StringFlag{Name: "nats-creds", Usage: "NATS mode: JWT/NKey credentials `FILE`", EnvVars: []string{"CASTELLAN_NATS_CREDS"}, Destination: &cfg.NATSCreds},
		&cli.StringFlag{Name: "nats-ca", Usage: "NATS mode: CA bundle `FILE` for TLS", EnvVars: []string{"CASTELLAN_NATS_CA"}, Destination: &cfg.NATSCA},
		&cli.IntFlag{Name: "replicas", Usage: "NATS mode: replicas of the token bucket if it is created", EnvVars: []string{"CASTELLAN_REPLICAS"}, Value: 1, Destination: &cfg.Replicas},
		&cli.StringFlag{Name: "server", Usage: "control plane `URL` (needs an admin token; default $CASTELLAN_SERVER)", Destination: &cfg.Server},
		tokenFileFlag(&cfg.TokenFile),
		caFileFlag(&cfg.CAFile),
		&cli.BoolFlag{Name: "json", Usage: "print JSON", Destination: &cfg.JSON},
	}
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
				"approver (attach approvals), admin (everything, including tokens and audit), registration\n" +
				"(HTTP mode: exchanged once by `castellan worker --registration-token-file` for a worker token of\n" +
				"its pool; needs --ttl, at most 24h). Worker and registration tokens need a pool; other roles may\n" +
				"use '*' for every pool. Only a hash is stored: the secret is\n" +
				"printed once. With --ttl the token stops authenticating that long after its creation\n" +
				"(401 unauthenticated, \"expired\"); without it, it lasts until revoked. With --db the\n" +
				"database is opened directly (to bootstrap the first admin token, before or while the server\n" +
				"runs); with --server an admin token creates it via the API.\n\n" + tokenWhere + "\n\n" +
				"Examples:\n" +
				"  castellan token create --db /var/lib/castellan/cp.db --role admin --pool '*' --name ops\n" +
				"  castellan token create --nats nats://nats:4222 --nats-creds cp.creds --role client --pool default --name ci --ttl 720h\n" +
				"  castellan token create --server https://cp:8443 --token-file admin.token --role worker --pool default --name dc1-w1 > w1.token",
			Flags: append(tokenTargetFlags(&cfg),
				&cli.StringFlag{Name: "role", Usage: "worker, client, approver, admin or registration", Required: true, Destination: &cfg.Role},
				&cli.StringFlag{Name: "pool", Usage: "`POOL` the token is bound to ('*' for all; not for workers)", Value: "default", Destination: &cfg.Pool},
				&cli.StringFlag{Name: "name", Usage: "label shown in listings and the audit log", Destination: &cfg.Name},
				&cli.DurationFlag{Name: "ttl", Usage: "the token expires this `DURATION` after creation (e.g. 24h; default never)", Destination: &cfg.TTL},
			),
			Action: func(c *cli.Context) error {
				_, err := TokenCreate(c.Context, tokenTarget(cfg, os.Getenv), c.App.Writer)
				return err
			},
		}, {
			Name:  "list",
			Usage: "list tokens (never their secrets): id, role, pool, name, created, expires, status",
			Description: "Status is active, expired or revoked.\n\n" + tokenWhere + "\n\n" +
				"Examples:\n" +
				"  castellan token list --db /var/lib/castellan/cp.db\n" +
				"  castellan token list --server https://cp:8443 --token-file admin.token --json",
			Flags: tokenTargetFlags(&cfg),
			Action: func(c *cli.Context) error {
				_, err := TokenList(c.Context, tokenTarget(cfg, os.Getenv), c.App.Writer)
				return err
			},
		}, {
			Name:      "revoke",
			Usage:     "revoke a token by its id (tok_...): it authenticates nothing afterwards",
			ArgsUsage: "TOKEN_ID",
			Description: tokenWhere + "\n\nExample:\n" +
				"  castellan token revoke --server https://cp:8443 --token-file admin.token tok_0123456789ab",
			Flags: tokenTargetFlags(&cfg),
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usagef("token revoke: give exactly one TOKEN_ID (castellan token list shows them)")
				}
				return TokenRevoke(c.Context, tokenTarget(cfg, os.Getenv), c.Args().First(), c.App.Writer)
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

// tokenBackend is where token commands act: the database, NATS, or the API.
type tokenBackend struct {
	create func(context.Context, api.TokenCreateRequest) (api.Token, error)
	list   func(context.Context) ([]api.Token, error)
	revoke func(context.Context, string) (bool, error)
	close  func()
	// refused wraps a refusal of the request (exit 2 for direct access, 1 via the API).
	refused func(error) error
}

// directActor is the audit actor of token changes made with direct database access.
const directActor = "cli --db"

func (cfg TokenConfig) backend(ctx context.Context) (*tokenBackend, error) {
	given := 0
	for _, s := range []string{cfg.DB, cfg.Server, cfg.NATS} {
		if s != "" {
			given++
		}
	}
	switch {
	case given != 1:
		return nil, usagef("give exactly one of --db FILE (direct), --nats URL (direct, JetStream control plane) or --server URL (via the API); " +
			"with none of them, exactly one of $CASTELLAN_DB, $CASTELLAN_NATS, $CASTELLAN_SERVER is used")
	case cfg.NATS != "":
		if cfg.Replicas == 0 {
			cfg.Replicas = 1
		}
		o, err := natsOptions("castellan-token", cfg.NATSCreds, cfg.NATSCA, cfg.Replicas, nil)
		if err != nil {
			return nil, err
		}
		nc, err := natsq.Connect(cfg.NATS, o)
		if err != nil {
			return nil, usagef("--nats: %v", err)
		}
		return &tokenBackend{
			create: func(ctx context.Context, req api.TokenCreateRequest) (api.Token, error) {
				return natsq.NewToken(ctx, nc, req, cfg.Replicas, cfg.now())
			},
			list: func(ctx context.Context) ([]api.Token, error) { return natsq.ListTokens(ctx, nc, cfg.Replicas) },
			revoke: func(ctx context.Context, id string) (bool, error) {
				return natsq.RevokeToken(ctx, nc, id, cfg.Replicas, cfg.now())
			},
			close: nc.Close, refused: func(err error) error { return usageError{err} },
		}, nil
	case cfg.DB != "":
		st, err := server.OpenStore(ctx, cfg.DB)
		if err != nil {
			return nil, usagef("--db: %v", err)
		}
		return &tokenBackend{
			create: func(ctx context.Context, req api.TokenCreateRequest) (api.Token, error) {
				return st.CreateTokenDirect(ctx, req, directActor, cfg.now())
			},
			list: st.ListTokens,
			revoke: func(ctx context.Context, id string) (bool, error) {
				return st.RevokeTokenDirect(ctx, id, directActor, cfg.now())
			},
			close: func() { _ = st.Close() }, refused: func(err error) error { return usageError{err} },
		}, nil
	default:
		c, err := JobConfig{Server: cfg.Server, TokenFile: cfg.TokenFile, CAFile: cfg.CAFile}.client()
		if err != nil {
			return nil, err
		}
		return &tokenBackend{
			create: c.CreateToken,
			list:   c.ListTokens,
			revoke: func(ctx context.Context, id string) (bool, error) {
				err := c.RevokeToken(ctx, id)
				if client.IsCode(err, api.CodeNotFound) {
					return false, nil
				}
				return err == nil, err
			},
			close: func() {}, refused: apiFailure,
		}, nil
	}
}

// ttlSeconds turns --ttl into whole seconds: a TTL under a second, or not a whole number
// of seconds, is a mistake rather than something to round.
func ttlSeconds(ttl time.Duration) (int64, error) {
	if ttl < 0 || (ttl > 0 && ttl < time.Second) || ttl%time.Second != 0 {
		return 0, usagef("--ttl %v: give a whole number of seconds, at least 1s (e.g. 24h, 90m)", ttl)
	}
	if err := api.CheckTokenTTL(int64(ttl / time.Second)); err != nil {
		return 0, usagef("--ttl %v: %v", ttl, err)
	}
	return int64(ttl / time.Second), nil
}

// TokenCreate creates a token and prints its secret alone on stdout (or the JSON record).
func TokenCreate(ctx context.Context, cfg TokenConfig, out io.Writer) (api.Token, error) {
	ttl, err := ttlSeconds(cfg.TTL)
	if err != nil {
		return api.Token{}, err
	}
	b, err := cfg.backend(ctx)
	if err != nil {
		return api.Token{}, err
	}
	defer b.close()
	tok, err := b.create(ctx, api.TokenCreateRequest{Role: api.Role(cfg.Role), Pool: cfg.Pool, Name: cfg.Name, TTLSeconds: ttl})
	if err != nil {
		return tok, b.refused(err)
	}
	if cfg.JSON {
		return tok, writeJSON(out, tok)
	}
	_, err = fmt.Fprintln(out, tok.Secret)
	return tok, err
}

// TokenList prints every token as a table (or JSON {"tokens": [...]}), never a secret.
func TokenList(ctx context.Context, cfg TokenConfig, out io.Writer) ([]api.Token, error) {
	b, err := cfg.backend(ctx)
	if err != nil {
		return nil, err
	}
	defer b.close()
	list, err := b.list(ctx)
	if err != nil {
		return nil, b.refused(err)
	}
	if cfg.JSON {
		return list, writeJSON(out, api.TokenList{Tokens: list})
	}
	now := cfg.now()
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tROLE\tPOOL\tNAME\tCREATED\tEXPIRES\tSTATUS")
	for _, t := range list {
		expires, status := "never", "active"
		if t.ExpiresAt != nil {
			expires = t.ExpiresAt.UTC().Format(time.RFC3339)
		}
		switch {
		case t.RevokedAt != nil:
			status = "revoked " + t.RevokedAt.UTC().Format(time.RFC3339)
		case t.Expired(now):
			status = "expired"
		}
		name := t.Name
		if name == "" {
			name = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Role, t.Pool, name, t.CreatedAt.UTC().Format(time.RFC3339), expires, status)
	}
	return list, tw.Flush()
}

// TokenRevoke revokes token id; an id that is not an active token is an error.
func TokenRevoke(ctx context.Context, cfg TokenConfig, id string, out io.Writer) error {
	b, err := cfg.backend(ctx)
	if err != nil {
		return err
	}
	defer b.close()
	ok, err := b.revoke(ctx, id)
	if err != nil {
		return b.refused(err)
	}
	if !ok {
		return b.refused(fmt.Errorf("no active token %q (castellan token list shows the ids)", id))
	}
	if cfg.JSON {
		return writeJSON(out, map[string]string{"revoked": id})
	}
	_, err = fmt.Fprintf(out, "revoked %s\n", id)
	return err
}

package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// AuditEventsConfig is `castellan audit events`.
type AuditEventsConfig struct {
	DB        string // direct database access; exclusive with Server
	Server    string // via the API with an admin token (either mode)
	TokenFile string
	CAFile    string
	JobID     string // only this job's entries (the chain is verified whole)
	Verify    bool
	JSON      bool
}

func auditEventsCommand() *cli.Command {
	var cfg AuditEventsConfig
	return &cli.Command{
		Name:  "events",
		Usage: "list the control plane's hash-chained audit log, and --verify its chain",
		Description: "Every control-plane action (tokens, registrations, catalogs, submits, approvals, leases,\n" +
			"completions, cancellations, expired leases) is an entry whose hash covers the previous entry's\n" +
			"hash and the entry itself (SHA-256 over its RFC 8785 canonical JSON; docs/audit-log.md).\n" +
			"Lists the entries oldest first (--job: that job's only). With --verify, recomputes the whole\n" +
			"chain and exits 1 naming the first entry where it breaks (an entry edited, deleted, inserted\n" +
			"or moved), else prints the number of entries and the head hash: keep it off the host, since a\n" +
			"log cut at its end still chains. --db reads the SQLite file directly; --server asks GET\n" +
			"/v1/audit with an admin token (SQLite or NATS mode).\n\n" +
			"Examples:\n  castellan audit events --db /var/lib/castellan/cp.db --verify\n" +
			"  castellan audit events --server https://cp:8443 --token-file admin.token --job job_0123... --json",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "db", Usage: "control plane SQLite `FILE` (direct access; default $CASTELLAN_DB)", Destination: &cfg.DB},
			&cli.StringFlag{Name: "server", Usage: "control plane `URL` (admin token; default $CASTELLAN_SERVER)", Destination: &cfg.Server},
			tokenFileFlag(&cfg.TokenFile),
			caFileFlag(&cfg.CAFile),
			&cli.StringFlag{Name: "job", Usage: "only the entries of job `ID`", Destination: &cfg.JobID},
			&cli.BoolFlag{Name: "verify", Usage: "recompute the hash chain; exit 1 at the first broken entry", Destination: &cfg.Verify},
			&cli.BoolFlag{Name: "json", Usage: "print the entries as JSON lines", Destination: &cfg.JSON},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("audit events takes no arguments (use --job ID)")
			}
			// As for token commands: a flag beats the environment, which is read only when
			// neither flag is given.
			cfg := cfg
			if cfg.DB == "" && cfg.Server == "" {
				cfg.DB, cfg.Server = os.Getenv("CASTELLAN_DB"), os.Getenv("CASTELLAN_SERVER")
			}
			return AuditEvents(c.Context, cfg, c.App.Writer)
		},
	}
}

// auditSource walks every audit entry oldest first.
type auditSource func(ctx context.Context, fn func(api.AuditEntry) error) error

func (cfg AuditEventsConfig) source(ctx context.Context) (auditSource, func(), error) {
	switch {
	case (cfg.DB == "") == (cfg.Server == ""):
		return nil, nil, usagef("give one of --db FILE (direct) or --server URL (via the API, admin token)")
	case cfg.DB != "":
		st, err := server.OpenStore(ctx, cfg.DB)
		if err != nil {
			return nil, nil, usagef("--db: %v", err)
		}
		return st.WalkAudit, func() { _ = st.Close() }, nil
	}
	c, err := JobConfig{Server: cfg.Server, TokenFile: cfg.TokenFile, CAFile: cfg.CAFile}.client()
	if err != nil {
		return nil, nil, err
	}
	return func(ctx context.Context, fn func(api.AuditEntry) error) error {
		// The API pages newest first; the chain is checked oldest first.
		var all []api.AuditEntry
		cursor := ""
		for {
			page, err := c.Audit(ctx, client.AuditOptions{Limit: 1000, Cursor: cursor})
			if err != nil {
				return apiFailure(err)
			}
			all = append(all, page.Entries...)
			if page.NextCursor == "" {
				break
			}
			cursor = page.NextCursor
		}
		slices.Reverse(all)
		for _, e := range all {
			if err := fn(e); err != nil {
				return err
			}
		}
		return nil
	}, func() {}, nil
}

// AuditEvents lists the control-plane audit entries and, with Verify, checks their chain.
func AuditEvents(ctx context.Context, cfg AuditEventsConfig, out io.Writer) error {
	walk, done, err := cfg.source(ctx)
	if err != nil {
		return err
	}
	defer done()
	var chain api.AuditChain
	var broken *api.AuditChainError
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if !cfg.JSON {
		fmt.Fprintln(tw, "ID\tAT\tACTOR\tROLE\tACTION\tJOB\tDETAIL\tHASH")
	}
	err = walk(ctx, func(e api.AuditEntry) error {
		if cfg.Verify && broken == nil {
			if err := chain.Add(e); err != nil {
				errors.As(err, &broken)
			}
		}
		if cfg.JobID != "" && e.JobID != cfg.JobID {
			return nil
		}
		if cfg.JSON {
			return writeJSONLine(out, e)
		}
		job := e.JobID
		if job == "" {
			job = "-"
		}
		detail := string(e.Detail)
		if detail == "" {
			detail = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.ID, e.At.UTC().Format(time.RFC3339Nano), e.Actor, e.Role, e.Action,
			job, abbreviate(detail, 80), abbreviate(e.Hash, 12))
		return nil
	})
	if err != nil {
		var rep reported
		if errors.As(err, &rep) {
			return err
		}
		return usageError{err}
	}
	if !cfg.JSON {
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if !cfg.Verify {
		return nil
	}
	if broken != nil {
		return reported{fmt.Errorf("TAMPERED: %w", broken)}
	}
	if cfg.JSON {
		return nil // JSON lines only; the exit status says the chain is intact
	}
	_, err = fmt.Fprintf(out, "intact: %d entries chained; head %s (keep it off the host: a log cut at its end still chains)\n",
		chain.Len(), chain.Head())
	return err
}

func writeJSONLine(out io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = out.Write(append(b, '\n'))
	return err
}

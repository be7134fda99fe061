package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"
)

// WorkerListConfig is `castellan worker list`.
type WorkerListConfig struct {
	JobConfig
	Pool string
}

func workerListCommand() *cli.Command {
	var cfg WorkerListConfig
	return &cli.Command{
		Name:  "list",
		Usage: "list the workers the control plane knows: pool, version, tasks, last seen, online",
		Description: "A worker is online when it leased or heartbeated within the window the control plane\n" +
			"states (the lease, at least 90 s). Needs an admin token, or an approver token for its pool.\n\n" +
			"Example:\n  castellan worker list --server https://cp:8443 --token-file admin.token --pool default",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "server", Usage: "control plane `URL`", EnvVars: []string{"CASTELLAN_SERVER"}, Destination: &cfg.Server},
			tokenFileFlag(&cfg.TokenFile),
			caFileFlag(&cfg.CAFile),
			&cli.StringFlag{Name: "pool", Usage: "only workers of `POOL`", Destination: &cfg.Pool},
			&cli.BoolFlag{Name: "json", Usage: "print JSON", Destination: &cfg.JSON},
		},
		Action: func(c *cli.Context) error { return WorkerList(c.Context, cfg, c.App.Writer) },
	}
}

// WorkerList prints the control plane's workers, online ones first.
func WorkerList(ctx context.Context, cfg WorkerListConfig, out io.Writer) error {
	c, err := cfg.client()
	if err != nil {
		return err
	}
	l, err := c.Workers(ctx, cfg.Pool)
	if err != nil {
		return apiFailure(err)
	}
	if cfg.JSON {
		return writeJSON(out, l)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPOOL\tVERSION\tSTATUS\tLAST SEEN\tTASKS\tID")
	for _, w := range l.Workers {
		status := "offline"
		if w.Online {
			status = "online"
		}
		tasks := strings.Join(w.Tasks, ",")
		if tasks == "" {
			tasks = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", w.Name, w.Pool, w.Version, status,
			w.LastSeenAt.UTC().Format(time.RFC3339), tasks, w.ID)
	}
	return tw.Flush()
}

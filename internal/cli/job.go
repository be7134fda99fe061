package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// JobConfig is what every `castellan job` subcommand needs to reach the control plane.
type JobConfig struct {
	Server    string
	TokenFile string // "" to read $CASTELLAN_TOKEN
	CAFile    string // CA certificates for the control plane's TLS; "" for the system roots
	JSON      bool   // machine output
}

func (cfg JobConfig) client() (*client.Client, error) {
	if cfg.Server == "" {
		return nil, usagef("--server is required (or CASTELLAN_SERVER)")
	}
	tok, err := readToken(cfg.TokenFile)
	if err != nil {
		return nil, usageError{err}
	}
	ca, err := controlPlaneCA(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg.Server, tok, client.WithUserAgent("castellan-cli/"+Version), ca)
	if err != nil {
		return nil, usagef("--server: %v", err)
	}
	return c, nil
}

// SubmitConfig is `castellan job submit`.
type SubmitConfig struct {
	JobConfig
	Task, TaskVersion, Pool string
	Input                   string // JSON text or @FILE
	IdempotencyKey          string
	MaxAttempts             int
	Wait                    bool
	Quiet                   bool // print only the job id (for JOB_ID=$(castellan job submit ...))
}

// ApproveConfig is `castellan job approve`.
type ApproveConfig struct {
	JobConfig
	JobID    string
	Key      string // private JWK file
	As       string // approver name; default $USER
	TTL      time.Duration
	Wait     bool
	Approval string // set by JobApprove: the token it posted (for tests and the demo)
}

func jobCommand() *cli.Command {
	var jc JobConfig
	common := []cli.Flag{
		&cli.StringFlag{Name: "server", Usage: "control plane `URL`", EnvVars: []string{"CASTELLAN_SERVER"}, Destination: &jc.Server},
		tokenFileFlag(&jc.TokenFile),
		caFileFlag(&jc.CAFile),
		&cli.BoolFlag{Name: "json", Usage: "print JSON instead of text", Destination: &jc.JSON},
	}
	var sub SubmitConfig
	var appr ApproveConfig
	var list client.ListOptions
	var state, reason string
	oneJob := func(name, usage, desc string, fn func(context.Context, JobConfig, string, io.Writer) error) *cli.Command {
		return &cli.Command{
			Name: name, Usage: usage, ArgsUsage: "JOB_ID", Description: desc, Flags: common,
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return usagef("%s takes exactly one JOB_ID", name)
				}
				return fn(c.Context, jc, c.Args().First(), c.App.Writer)
			},
		}
	}
	return &cli.Command{
		Name:  "job",
		Usage: "submit, approve, inspect and cancel jobs on the control plane",
		Description: "Every subcommand talks to --server (CASTELLAN_SERVER) with the bearer token from --token-file\n" +
			"or $CASTELLAN_TOKEN. A control plane whose certificate comes from a private CA: --ca-file ca.pem\n" +
			"(or CASTELLAN_CA_FILE). Output is for people unless --json is given. Exit status: 0 ok, 1 the job\n" +
			"did not succeed (submit --wait, wait) or the control plane refused the request, 2 usage error.",
		Subcommands: []*cli.Command{
			{
				Name:  "submit",
				Usage: "submit a job; it waits for approval unless the server auto-approves the task",
				Description: "The input is validated against the task's JSON Schema by the control plane.\n\n" +
					"Examples:\n" +
					"  castellan job submit --task crm-lookup --pool default --input '{\"customer_id\":\"42\"}'\n" +
					"  castellan job submit --task crm-lookup --pool default --input @job.json --idempotency-key ticket-1234 --wait",
				Flags: append(append([]cli.Flag{}, common...),
					&cli.StringFlag{Name: "task", Usage: "task `NAME`", Required: true, Destination: &sub.Task},
					&cli.StringFlag{Name: "task-version", Usage: "task `VERSION` (default the newest published)", Destination: &sub.TaskVersion},
					&cli.StringFlag{Name: "pool", Usage: "worker `POOL`", EnvVars: []string{"CASTELLAN_POOL"}, Value: "default", Destination: &sub.Pool},
					&cli.StringFlag{Name: "input", Usage: "job input: JSON text, or @FILE", Value: "{}", Destination: &sub.Input},
					&cli.StringFlag{Name: "idempotency-key", Usage: "`KEY` making a repeated submit return the same job", Destination: &sub.IdempotencyKey},
					&cli.IntFlag{Name: "max-attempts", Usage: "executions allowed (default the server's, 3)", Destination: &sub.MaxAttempts},
					&cli.BoolFlag{Name: "wait", Usage: "wait until the job ends and print its output", Destination: &sub.Wait},
					&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only the job id (JOB_ID=$(castellan job submit -q ...))", Destination: &sub.Quiet},
				),
				Action: func(c *cli.Context) error {
					sub.JobConfig = jc
					_, err := JobSubmit(c.Context, sub, c.App.Writer)
					return err
				},
			},
			{
				Name:      "approve",
				Usage:     "sign an approval for a job on this machine and attach it",
				ArgsUsage: "JOB_ID",
				Description: "Fetches the job, shows what is being approved (task, version, pool, input and its SHA-256),\n" +
					"signs an approval with the private key HERE, and posts only the signed token: the control\n" +
					"plane never sees the key. Workers run the job only if they trust the key's public half.\n\n" +
					"Examples:\n" +
					"  castellan job approve --key ~/.castellan/alice.private.jwk.json 01J9Z3...\n" +
					"  castellan job approve --key alice.private.jwk.json --as alice --ttl 15m --wait 01J9Z3...",
				Flags: append(append(append([]cli.Flag{}, common...), signerFlags(&appr.Key, &appr.As)...),
					&cli.DurationFlag{Name: "ttl", Usage: "how long the approval stays valid", Value: approval.DefaultTTL, Destination: &appr.TTL},
					&cli.BoolFlag{Name: "wait", Usage: "wait until the job ends and print its output", Destination: &appr.Wait},
				),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return usagef("approve takes exactly one JOB_ID")
					}
					appr.JobConfig, appr.JobID = jc, c.Args().First()
					return JobApprove(c.Context, &appr, c.App.Writer)
				},
			},
			{
				Name:      "deny",
				Usage:     "refuse a job waiting for approval, with a reason its submitter sees",
				ArgsUsage: "JOB_ID",
				Description: "The job ends denied (outcome denied_by_approver) and never reaches a worker. The reason\n" +
					"(1-1000 bytes, no control characters) and the name of your token are shown to the submitter.\n\n" +
					"Example:\n  castellan job deny --reason 'refunds over 500 EUR need a ticket' 01J9Z3...",
				Flags: append(append([]cli.Flag{}, common...),
					&cli.StringFlag{Name: "reason", Usage: "why the job is denied (`TEXT`)", Required: true, Destination: &reason},
				),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return usagef("deny takes exactly one JOB_ID")
					}
					return JobDeny(c.Context, jc, c.Args().First(), reason, c.App.Writer)
				},
			},
			oneJob("get", "show one job", "Example:\n  castellan job get 01J9Z3...", JobGet),
			oneJob("wait", "wait until a job ends and print it (exit 1 unless it succeeded)",
				"Example:\n  castellan job wait --json 01J9Z3...", JobWait),
			oneJob("cancel", "cancel a job (a running job's worker is told to stop)",
				"Example:\n  castellan job cancel 01J9Z3...", JobCancel),
			{
				Name:        "list",
				Usage:       "list jobs, newest first",
				Description: "Examples:\n  castellan job list --state pending_approval\n  castellan job list --task crm-lookup --pool default --json",
				Flags: append(append([]cli.Flag{}, common...),
					&cli.StringFlag{Name: "state", Usage: "only jobs in `STATE`", Destination: &state},
					&cli.StringFlag{Name: "task", Usage: "only jobs of task `NAME`", Destination: &list.Task},
					&cli.StringFlag{Name: "pool", Usage: "only jobs in `POOL`", Destination: &list.Pool},
					&cli.IntFlag{Name: "limit", Usage: "at most `N` jobs", Destination: &list.Limit},
				),
				Action: func(c *cli.Context) error {
					list.State = api.State(state)
					return JobList(c.Context, jc, list, c.App.Writer)
				},
			},
		},
	}
}

// JobSubmit submits a job, prints it and, with Wait, waits for it to end.
func JobSubmit(ctx context.Context, cfg SubmitConfig, out io.Writer) (api.Job, error) {
	if cfg.Quiet && (cfg.Wait || cfg.JSON) {
		return api.Job{}, usagef("--quiet prints only the job id: it does not go with --wait or --json")
	}
	input, err := readInput(cfg.Input)
	if err != nil {
		return api.Job{}, usageError{err}
	}
	c, err := cfg.client()
	if err != nil {
		return api.Job{}, err
	}
	j, err := c.Submit(ctx, api.SubmitRequest{Task: cfg.Task, TaskVersion: cfg.TaskVersion, Pool: cfg.Pool,
		Input: input, IdempotencyKey: cfg.IdempotencyKey, MaxAttempts: cfg.MaxAttempts})
	if err != nil {
		return api.Job{}, apiFailure(err)
	}
	switch {
	case cfg.Quiet:
		_, err := fmt.Fprintln(out, j.ID)
		return j, err
	case cfg.Wait:
		if !cfg.JSON {
			fmt.Fprintf(out, "submitted job %s (%s); waiting\n", j.ID, j.State)
		}
		return waitJob(ctx, c, j.ID, cfg.JSON, out)
	}
	return j, printJob(out, j, cfg.JSON)
}

// approveStart is what `job approve` and `plan approve` do before they fetch what they
// approve: load the private key (a usage error naming --key), make the control-plane
// client, and settle the approver's name recorded in the approval (--as, default $USER).
func approveStart(cfg JobConfig, keyFile, as string) (jose.JSONWebKey, *client.Client, string, error) {
	key, err := approval.LoadPrivateKey(keyFile)
	if err != nil {
		return jose.JSONWebKey{}, nil, "", usagef("--key: %v", err)
	}
	c, err := cfg.client()
	if err != nil {
		return jose.JSONWebKey{}, nil, "", err
	}
	if as == "" {
		as = os.Getenv("USER")
	}
	return key, c, as, nil
}

// signerFlags are the --key and --as flags of `job approve` and `plan approve`.
func signerFlags(key, as *string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "key", Usage: "private JWK `FILE` (from castellan keygen)", EnvVars: []string{"CASTELLAN_APPROVER_KEY"}, Required: true, Destination: key},
		&cli.StringFlag{Name: "as", Usage: "approver `NAME` recorded in the approval (default $USER)", Destination: as},
	}
}

// JobApprove signs an approval for cfg.JobID with the private key in cfg.Key and attaches it.
func JobApprove(ctx context.Context, cfg *ApproveConfig, out io.Writer) error {
	key, c, who, err := approveStart(cfg.JobConfig, cfg.Key, cfg.As)
	if err != nil {
		return err
	}
	j, err := c.Get(ctx, cfg.JobID)
	if err != nil {
		return apiFailure(err)
	}
	if j.State != api.StatePendingApproval {
		return reported{fmt.Errorf("job %s is %s, not pending_approval: nothing to approve", j.ID, j.State)}
	}
	hash, err := approval.InputHash(j.Input)
	if err != nil {
		return reported{fmt.Errorf("job %s: its input cannot be hashed: %v", j.ID, err)}
	}
	tok, _, err := approval.Sign(key, approval.Request{
		JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Input: j.Input,
		TTL: cfg.TTL, MaxAttempts: j.MaxAttempts, Approver: who,
	})
	if err != nil {
		return usagef("sign the approval: %v", err)
	}
	if !cfg.JSON {
		fmt.Fprintf(out, "approving job %s\n  task:    %s %s\n  pool:    %s\n  input:   %s\n  sha256:  %s\n  signer:  %s (key %s), valid %s, up to %d attempt(s)\n",
			j.ID, j.Task, j.TaskVersion, j.Pool, abbreviate(string(j.Input), 200), hash, who, key.KeyID, cfg.TTL, j.MaxAttempts)
	}
	j, err = c.Approve(ctx, j.ID, tok)
	if err != nil {
		return apiFailure(err)
	}
	cfg.Approval = tok
	if cfg.Wait {
		_, err := waitJob(ctx, c, j.ID, cfg.JSON, out)
		return err
	}
	return printJob(out, j, cfg.JSON)
}

// JobDeny denies a pending_approval job with reason and prints it.
func JobDeny(ctx context.Context, cfg JobConfig, id, reason string, out io.Writer) error {
	return deny(ctx, cfg, id, reason, (*client.Client).Deny, func(j api.Job) error { return printJob(out, j, cfg.JSON) })
}

// deny is `job deny` and `plan deny`: the reason checked before anything is sent, the
// denial made by call, and what the control plane returned printed.
func deny[T any](ctx context.Context, cfg JobConfig, id, reason string, call func(*client.Client, context.Context, string, string) (T, error), print func(T) error) error {
	if err := api.CheckDenyReason(reason); err != nil {
		return usagef("--reason: %v", err)
	}
	c, err := cfg.client()
	if err != nil {
		return err
	}
	v, err := call(c, ctx, id, reason)
	if err != nil {
		return apiFailure(err)
	}
	return print(v)
}

// JobGet prints one job.
func JobGet(ctx context.Context, cfg JobConfig, id string, out io.Writer) error {
	c, err := cfg.client()
	if err != nil {
		return err
	}
	j, err := c.Get(ctx, id)
	if err != nil {
		return apiFailure(err)
	}
	return printJob(out, j, cfg.JSON)
}

// JobWait waits until the job is terminal and prints it; it fails unless the job succeeded.
func JobWait(ctx context.Context, cfg JobConfig, id string, out io.Writer) error {
	c, err := cfg.client()
	if err != nil {
		return err
	}
	_, err = waitJob(ctx, c, id, cfg.JSON, out)
	return err
}

// JobCancel cancels a job and prints its new state.
func JobCancel(ctx context.Context, cfg JobConfig, id string, out io.Writer) error {
	c, err := cfg.client()
	if err != nil {
		return err
	}
	j, err := c.Cancel(ctx, id)
	if err != nil {
		return apiFailure(err)
	}
	return printJob(out, j, cfg.JSON)
}

// JobList prints one page of jobs.
func JobList(ctx context.Context, cfg JobConfig, o client.ListOptions, out io.Writer) error {
	c, err := cfg.client()
	if err != nil {
		return err
	}
	l, err := c.List(ctx, o)
	if err != nil {
		return apiFailure(err)
	}
	if cfg.JSON {
		return writeJSON(out, l)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTASK\tPOOL\tSTATE\tATTEMPT\tOUTCOME\tCREATED")
	for _, j := range l.Jobs {
		fmt.Fprintf(tw, "%s\t%s@%s\t%s\t%s\t%d/%d\t%s\t%s\n", j.ID, j.Task, j.TaskVersion, j.Pool, j.State,
			j.Attempt, j.MaxAttempts, j.Outcome, j.CreatedAt.Local().Format(time.DateTime))
	}
	if l.NextCursor != "" {
		fmt.Fprintf(tw, "(more: --cursor is not supported by this command yet; narrow the filters)\n")
	}
	return tw.Flush()
}

func waitJob(ctx context.Context, c *client.Client, id string, asJSON bool, out io.Writer) (api.Job, error) {
	j, err := c.Wait(ctx, id)
	if err != nil {
		return j, apiFailure(err)
	}
	if err := printJob(out, j, asJSON); err != nil {
		return j, err
	}
	if j.State != api.StateSucceeded {
		return j, taskFailed{fmt.Errorf("job %s ended %s: %s", j.ID, j.State, j.ErrorMessage)}
	}
	return j, nil
}

func printJob(out io.Writer, j api.Job, asJSON bool) error {
	if asJSON {
		return writeJSON(out, j)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 1, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("job", j.ID)
	row("task", j.Task+" "+j.TaskVersion)
	row("pool", j.Pool)
	row("state", string(j.State))
	row("attempt", fmt.Sprintf("%d of %d", j.Attempt, j.MaxAttempts))
	row("approved", fmt.Sprint(j.HasApproval))
	row("outcome", j.Outcome)
	row("denied by", j.DeniedBy)
	row("error", j.ErrorMessage)
	if j.DurationMS > 0 {
		row("duration", (time.Duration(j.DurationMS) * time.Millisecond).String())
	}
	row("input", abbreviate(string(j.Input), 200))
	row("output", string(j.Output))
	return tw.Flush()
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func abbreviate(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// apiFailure turns a control-plane refusal into exit status 1 with the server's message
// (and schema details); main prints it.
func apiFailure(err error) error {
	var ae *client.APIError
	if errors.As(err, &ae) && len(ae.Details) > 0 {
		var b strings.Builder
		b.WriteString(ae.Error())
		for _, d := range ae.Details {
			fmt.Fprintf(&b, "\n  at %q: %s", d.Location, d.Message)
		}
		return reported{errors.New(b.String())}
	}
	return reported{err}
}

// reported is a failure (exit status 1) whose message main still has to print.
type reported struct{ err error }

func (e reported) Error() string { return e.err.Error() }
func (e reported) Unwrap() error { return e.err }

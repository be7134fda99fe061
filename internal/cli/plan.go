package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/go-json-experiment/json"
	"github.com/urfave/cli/v2"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// PlanApproveConfig is `castellan plan approve`.
type PlanApproveConfig struct {
	JobConfig
	PlanID   string
	Key      string // private JWK file
	As       string // approver name; default $USER
	TTL      time.Duration
	Attempts int
	Approval string // set by PlanApprove: the token it posted (for tests)
}

func planCommand() *cli.Command {
	var jc JobConfig
	common := []cli.Flag{
		&cli.StringFlag{Name: "server", Usage: "control plane `URL`", EnvVars: []string{"CASTELLAN_SERVER"}, Destination: &jc.Server},
		tokenFileFlag(&jc.TokenFile),
		caFileFlag(&jc.CAFile),
		&cli.BoolFlag{Name: "json", Usage: "print JSON instead of text", Destination: &jc.JSON},
	}
	var appr PlanApproveConfig
	var reason string
	one := func(c *cli.Context, what string) (string, error) {
		if c.NArg() != 1 {
			return "", usagef("%s takes exactly one %s", c.Command.Name, what)
		}
		return c.Args().First(), nil
	}
	return &cli.Command{
		Name:  "plan",
		Usage: "submit, approve and inspect plans: several jobs run in order under one approval",
		Description: "A plan's steps run one after another; when one does not succeed, the later ones are cancelled.\n" +
			"It is approved with one signature over every step (docs/approvals.md, \"Plan approvals\").\n" +
			"Connection flags as for `castellan job`.",
		Subcommands: []*cli.Command{
			{
				Name: "submit", Usage: "submit a plan from a JSON document (POST /v1/plans)", ArgsUsage: "FILE|JSON",
				Description: "The document is {\"steps\": [{\"task\", \"task_version\"?, \"pool\", \"input\", \"max_attempts\"?}, ...],\n" +
					"\"idempotency_key\"?}; FILE may be - for stdin.\n\nExample:\n" +
					"  castellan plan submit '{\"steps\":[{\"task\":\"crm-lookup\",\"pool\":\"default\",\"input\":{\"customer_id\":\"42\"}}]}'",
				Flags: common,
				Action: func(c *cli.Context) error {
					arg, err := one(c, "FILE or JSON document")
					if err != nil {
						return err
					}
					_, err = PlanSubmit(c.Context, jc, arg, c.App.Reader, c.App.Writer)
					return err
				},
			},
			{
				Name: "get", Usage: "show a plan and its steps", ArgsUsage: "PLAN_ID", Flags: common,
				Action: func(c *cli.Context) error {
					id, err := one(c, "PLAN_ID")
					if err != nil {
						return err
					}
					return PlanGet(c.Context, jc, id, c.App.Writer)
				},
			},
			{
				Name: "approve", Usage: "sign one approval for every step of a plan on this machine and attach it", ArgsUsage: "PLAN_ID",
				Description: "Shows each step (task, version, pool, input SHA-256), signs a plan approval with the private key\n" +
					"HERE and posts only the token.\n\nExample:\n  castellan plan approve --key alice.private.jwk.json plan_...",
				Flags: append(append(append([]cli.Flag{}, common...), signerFlags(&appr.Key, &appr.As)...),
					&cli.DurationFlag{Name: "ttl", Usage: "how long the approval stays valid: it must cover the whole plan", Value: approval.DefaultTTL, Destination: &appr.TTL},
					&cli.IntFlag{Name: "max-attempts", Usage: "executions allowed per step (default the largest max_attempts of the steps)", Destination: &appr.Attempts},
				),
				Action: func(c *cli.Context) error {
					id, err := one(c, "PLAN_ID")
					if err != nil {
						return err
					}
					appr.JobConfig, appr.PlanID = jc, id
					return PlanApprove(c.Context, &appr, c.App.Writer)
				},
			},
			{
				Name: "deny", Usage: "refuse a plan waiting for approval: every step ends denied", ArgsUsage: "PLAN_ID",
				Flags: append(append([]cli.Flag{}, common...),
					&cli.StringFlag{Name: "reason", Usage: "why the plan is denied (`TEXT`)", Required: true, Destination: &reason},
				),
				Action: func(c *cli.Context) error {
					id, err := one(c, "PLAN_ID")
					if err != nil {
						return err
					}
					return PlanDeny(c.Context, jc, id, reason, c.App.Writer)
				},
			},
		},
	}
}

// readPlan reads a plan document: arg itself when it starts with '{', else the file it
// names ("-" for stdin). Unknown members are refused here as the control plane would.
func readPlan(arg string, stdin io.Reader) (api.PlanRequest, error) {
	var raw []byte
	var err error
	src := "the plan"
	switch {
	case strings.HasPrefix(strings.TrimSpace(arg), "{"):
		raw = []byte(arg)
	case arg == "-":
		raw, err = io.ReadAll(stdin)
		src = "stdin"
	default:
		raw, err = os.ReadFile(strings.TrimPrefix(arg, "@"))
		src = strings.TrimPrefix(arg, "@")
	}
	if err != nil {
		return api.PlanRequest{}, err
	}
	var req api.PlanRequest
	if err := json.Unmarshal(bytes.TrimSpace(raw), &req, json.RejectUnknownMembers(true)); err != nil {
		return api.PlanRequest{}, fmt.Errorf("%s: not a plan document ({\"steps\": [...]}): %v", src, err)
	}
	return req, nil
}

// PlanSubmit submits the plan document arg and prints the plan.
func PlanSubmit(ctx context.Context, cfg JobConfig, arg string, stdin io.Reader, out io.Writer) (api.Plan, error) {
	req, err := readPlan(arg, stdin)
	if err != nil {
		return api.Plan{}, usageError{err}
	}
	c, err := cfg.client()
	if err != nil {
		return api.Plan{}, err
	}
	p, err := c.SubmitPlan(ctx, req)
	if err != nil {
		return api.Plan{}, apiFailure(err)
	}
	return p, printPlan(out, p, cfg.JSON)
}

// PlanGet prints one plan.
func PlanGet(ctx context.Context, cfg JobConfig, id string, out io.Writer) error {
	c, err := cfg.client()
	if err != nil {
		return err
	}
	p, err := c.GetPlan(ctx, id)
	if err != nil {
		return apiFailure(err)
	}
	return printPlan(out, p, cfg.JSON)
}

// PlanApprove signs a plan approval over the plan's steps as the control plane shows them
// and attaches it.
func PlanApprove(ctx context.Context, cfg *PlanApproveConfig, out io.Writer) error {
	key, c, who, err := approveStart(cfg.JobConfig, cfg.Key, cfg.As)
	if err != nil {
		return err
	}
	p, err := c.GetPlan(ctx, cfg.PlanID)
	if err != nil {
		return apiFailure(err)
	}
	if p.State != api.PlanPendingApproval {
		return reported{fmt.Errorf("plan %s is %s, not pending_approval: nothing to approve", p.ID, p.State)}
	}
	attempts := cfg.Attempts
	steps := make([]approval.PlanStep, len(p.Steps))
	if !cfg.JSON {
		fmt.Fprintf(out, "approving plan %s (%d steps), signer %s (key %s), valid %s\n", p.ID, len(p.Steps), who, key.KeyID, cfg.TTL)
	}
	for i, j := range p.Steps {
		steps[i] = approval.PlanStep{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Input: j.Input}
		if cfg.Attempts == 0 {
			attempts = max(attempts, j.MaxAttempts)
		}
		// As for a job: an input that cannot be hashed is refused before anything is signed
		// or shown, rather than printed with an empty digest.
		hash, err := approval.InputHash(j.Input)
		if err != nil {
			return reported{fmt.Errorf("plan %s step %d (job %s): its input cannot be hashed: %v", p.ID, i+1, j.ID, err)}
		}
		if !cfg.JSON {
			fmt.Fprintf(out, "  %d. %s  %s %s  pool %s  input %s  sha256 %s\n", i+1, j.ID, j.Task, j.TaskVersion, j.Pool, abbreviate(string(j.Input), 80), hash)
		}
	}
	tok, _, err := approval.SignPlan(key, approval.PlanRequest{PlanID: p.ID, Steps: steps, TTL: cfg.TTL, MaxAttempts: attempts, Approver: who})
	if err != nil {
		return usagef("sign the plan approval: %v", err)
	}
	p, err = c.ApprovePlan(ctx, p.ID, tok)
	if err != nil {
		return apiFailure(err)
	}
	cfg.Approval = tok
	return printPlan(out, p, cfg.JSON)
}

// PlanDeny denies a pending_approval plan with reason and prints it.
func PlanDeny(ctx context.Context, cfg JobConfig, id, reason string, out io.Writer) error {
	return deny(ctx, cfg, id, reason, (*client.Client).DenyPlan, func(p api.Plan) error { return printPlan(out, p, cfg.JSON) })
}

func printPlan(out io.Writer, p api.Plan, asJSON bool) error {
	if asJSON {
		return writeJSON(out, p)
	}
	fmt.Fprintf(out, "plan:     %s\nstate:    %s\napproved: %v\n", p.ID, p.State, p.Approved)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tJOB\tTASK\tPOOL\tSTATE\tOUTCOME")
	for i, j := range p.Steps {
		mark := ""
		if i+1 == p.Current {
			mark = " *"
		}
		fmt.Fprintf(tw, "%d%s\t%s\t%s@%s\t%s\t%s\t%s\n", i+1, mark, j.ID, j.Task, j.TaskVersion, j.Pool, j.State, j.Outcome)
	}
	return tw.Flush()
}

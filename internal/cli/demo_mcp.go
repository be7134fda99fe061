package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// demoMCP is the demo's agent: an MCP client (the official Go SDK's) with the client token
// lists the tools of the demo pool and calls crm-lookup; the job it creates waits for an
// approver, which the demo then is, signing with its key as `castellan job approve` does.
func demoMCP(ctx context.Context, serverURL string, clientCfg JobConfig, approve func(jobID string) error,
	step, info func(string, ...any)) error {
	tok, err := readToken(clientCfg.TokenFile)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	agent := sdk.NewClient(&sdk.Implementation{Name: "castellan-demo-agent", Version: Version}, nil)
	cs, err := agent.Connect(ctx, &sdk.StreamableClientTransport{Endpoint: serverURL + mcp.Path,
		HTTPClient: &http.Client{Transport: bearerHeader{tok, http.DefaultTransport}}}, nil)
	if err != nil {
		return fmt.Errorf("MCP connect to %s%s: %w", serverURL, mcp.Path, err)
	}
	defer cs.Close()
	step("an AI agent connects to %s%s (MCP %s) with the client token", serverURL, mcp.Path, cs.InitializeResult().ProtocolVersion)
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		return fmt.Errorf("MCP tools/list: %w", err)
	}
	var names []string
	for _, t := range tools.Tools {
		names = append(names, t.Name)
	}
	info("tools/list: %s (the model sees names and schemas; no URL, no credential)", strings.Join(names, ", "))

	input := `{"customer_id":"42"}`
	step("tools/call crm-lookup %s: the call becomes a job that waits for an approver", input)
	called := make(chan callResult, 1)
	go func() {
		res, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "crm-lookup", Arguments: json.RawMessage(input)})
		called <- callResult{res, err}
	}()
	job, err := pendingJob(ctx, mustClient(clientCfg), "crm-lookup", called)
	if err != nil {
		return err
	}
	info("job %s is %s: the agent cannot approve it, an approver must", job.ID, job.State)
	if err := approve(job.ID); err != nil {
		return err
	}
	var r callResult
	select {
	case r = <-called:
	case <-ctx.Done():
		return errors.New("the MCP call did not return within 60s of its approval")
	}
	if r.err != nil {
		return fmt.Errorf("MCP tools/call crm-lookup: %w", r.err)
	}
	if r.res.IsError {
		return fmt.Errorf("MCP tools/call crm-lookup answered an error: %s", toolText(r.res))
	}
	sc, err := json.Marshal(r.res.StructuredContent)
	if err != nil {
		return err
	}
	step("the agent's tool result, structuredContent: %s", sc)
	return nil
}

type callResult struct {
	res *sdk.CallToolResult
	err error
}

// pendingJob polls for the job the MCP call submitted, until it is pending approval. The
// demo's other crm-lookup jobs have all ended by then.
func pendingJob(ctx context.Context, c *client.Client, task string, called <-chan callResult) (api.Job, error) {
	for {
		l, err := c.List(ctx, client.ListOptions{State: api.StatePendingApproval, Task: task, Pool: demoPool})
		if err != nil {
			return api.Job{}, apiFailure(err)
		}
		if len(l.Jobs) > 0 {
			return l.Jobs[0], nil
		}
		select {
		case r := <-called:
			if r.err != nil {
				return api.Job{}, fmt.Errorf("MCP tools/call crm-lookup: %w", r.err)
			}
			return api.Job{}, fmt.Errorf("MCP tools/call crm-lookup returned before any approval: %s", toolText(r.res))
		case <-ctx.Done():
			return api.Job{}, errors.New("the MCP call created no pending job within 60s")
		case <-time.After(50 * time.Millisecond): // polling the control plane
		}
	}
}

func toolText(r *sdk.CallToolResult) string {
	var b strings.Builder
	for _, c := range r.Content {
		if t, ok := c.(*sdk.TextContent); ok {
			b.WriteString(t.Text)
		}
	}
	return b.String()
}

// bearerHeader adds the agent's token to every MCP request.
type bearerHeader struct {
	token string
	base  http.RoundTripper
}

func (b bearerHeader) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

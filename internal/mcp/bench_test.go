package mcp_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// BenchmarkToolCall compares one echo job end to end through /mcp (tools/call) with the
// same job through /v1 (submit + wait), on the same control plane and worker, with the
// approval given at submit by the server's auto-approver. The difference is what the MCP
// layer adds.
func BenchmarkToolCall(b *testing.B) {
	e := newEnv(b, true, mcp.Options{})
	ctx := context.Background()
	b.Run("mcp", func(b *testing.B) {
		cs := e.connect(ctx, e.secrets["client"], nil)
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			t0 := time.Now()
			r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": i}})
			if err != nil || r.IsError {
				b.Fatalf("CallTool(echo) = %v, %v", err, r)
			}
			lat = append(lat, time.Since(t0))
		}
		reportMedian(b, lat)
	})
	b.Run("v1", func(b *testing.B) {
		c := e.newClient(fmt.Sprintf("bench-%d", b.N), api.RoleClient, "alpha")
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			t0 := time.Now()
			j, err := c.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))})
			if err != nil {
				b.Fatal(err)
			}
			if j, err = c.Wait(ctx, j.ID); err != nil || j.State != api.StateSucceeded {
				b.Fatalf("Wait = %s, %v", j.State, err)
			}
			lat = append(lat, time.Since(t0))
		}
		reportMedian(b, lat)
	})
}

// reportMedian adds the median latency per call: the mean (ns/op) is skewed by the rare
// call that waits for a long-poll to come back round.
func reportMedian(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "median-ms")
}

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

// BenchmarkToolCallPaired alternates one call through /mcp with one through /v1, so that
// both see the same load (a shared machine drifts between sub-benchmarks), and reports
// each median and added-ms, the median of the per-pair differences: what MCP adds.
func BenchmarkToolCallPaired(b *testing.B) {
	e := newEnv(b, true, mcp.Options{})
	ctx := context.Background()
	cs := e.connect(ctx, e.secrets["client"], nil)
	c := e.newClient("bench-paired", api.RoleClient, "alpha")
	viaMCP := make([]time.Duration, 0, b.N)
	viaV1 := make([]time.Duration, 0, b.N)
	added := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		r, err := cs.CallTool(ctx, &sdk.CallToolParams{Name: "echo", Arguments: map[string]any{"n": i}})
		if err != nil || r.IsError {
			b.Fatalf("CallTool(echo) = %v, %v", err, r)
		}
		m := time.Since(t0)
		t0 = time.Now()
		j, err := c.Submit(ctx, api.SubmitRequest{Task: "echo", Pool: "alpha", Input: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))})
		if err != nil {
			b.Fatal(err)
		}
		if j, err = c.Wait(ctx, j.ID); err != nil || j.State != api.StateSucceeded {
			b.Fatalf("Wait = %s, %v", j.State, err)
		}
		v := time.Since(t0)
		viaMCP, viaV1, added = append(viaMCP, m), append(viaV1, v), append(added, m-v)
	}
	b.StopTimer()
	for _, x := range []struct {
		unit string
		lat  []time.Duration
	}{{"mcp-median-ms", viaMCP}, {"v1-median-ms", viaV1}, {"added-median-ms", added}} {
		slices.Sort(x.lat)
		b.ReportMetric(float64(x.lat[len(x.lat)/2].Microseconds())/1000, x.unit)
	}
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

package metrics_test

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/metrics"
	"github.com/castellan-dev/castellan/internal/worker"
)

func TestListenAddr(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{":9464", "127.0.0.1:9464"},
		{"9464", "127.0.0.1:9464"},
		{"0.0.0.0:9464", "0.0.0.0:9464"},
		{"[::1]:9464", "[::1]:9464"},
	}
	for _, tt := range tests {
		if got, err := metrics.ListenAddr(tt.in); err != nil || got != tt.want {
			t.Errorf("ListenAddr(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	if _, err := metrics.ListenAddr(""); err == nil {
		t.Errorf("ListenAddr(\"\") = nil error, want one")
	}
}

// TestDenialLabelsBounded: guest-chosen text in a denial (a method, a path) never becomes a
// label value.
func TestDenialLabelsBounded(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m, err := metrics.NewWorker(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, reason := range []string{
		"FROBNICATE /secret-path-1 not allowed by any rule",
		"GET /other-path-2 not allowed by any rule",
		`header "X-Evil-3" may not be set by a task`,
		"something new and unexpected 4",
	} {
		m.HTTPCall(egress.Event{Endpoint: "crm", Decision: "deny", Reason: reason})
	}
	m.Observe(context.Background(), worker.Event{Kind: worker.ApprovalRejected, Reason: "approval rejected (expired): token expired at ..."})
	m.Observe(context.Background(), worker.Event{Kind: worker.ApprovalRejected, Reason: `task "x" is not served by this worker`})
	want := map[string]float64{"http_no_rule": 2, "http_header": 1, "http_other": 1, "approval_expired": 1, "task_not_served": 1}
	if n := testutil.CollectAndCount(reg, "castellan_denials_total"); n != len(want) {
		t.Errorf("castellan_denials_total series = %d, want %d", n, len(want))
	}
	for label, v := range want {
		if got := testutil.ToFloat64(denials(t, reg, label)); got != v {
			t.Errorf("castellan_denials_total{reason=%q} = %v, want %v", label, got, v)
		}
	}
	var nilM *metrics.Worker
	nilM.HTTPCall(egress.Event{}) // a nil *Worker records nothing and does not panic
}

func denials(t *testing.T, reg *prometheus.Registry, reason string) prometheus.Collector {
	t.Helper()
	return prometheus.CollectorFunc(func(ch chan<- prometheus.Metric) {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() != "castellan_denials_total" {
				continue
			}
			for _, mm := range mf.GetMetric() {
				if mm.GetLabel()[0].GetValue() == reason {
					ch <- prometheus.MustNewConstMetric(prometheus.NewDesc("x", "x", nil, nil), prometheus.CounterValue, mm.GetCounter().GetValue())
				}
			}
		}
	})
}

package egress

import (
	"net/http"
	"testing"

	"github.com/castellan-dev/castellan/outcome"
)

// TestIdempotencyKey: on an endpoint with IdempotencyKey every request with a non-safe method
// carries the job's id as Idempotency-Key, the same on every attempt of the job, and the task
// can neither set nor replace it. Safe methods carry none; other endpoints add none.
func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	srv := newUpstream(t, nil)
	keyed := &Endpoint{Name: "crm", BaseURL: mustURL(t, srv.URL+"/k"), IdempotencyKey: true, Rules: []Rule{MustParseRule("* /**")}}
	plain := &Endpoint{Name: "plain", BaseURL: mustURL(t, srv.URL+"/p"), Rules: []Rule{MustParseRule("* /**")}}
	f := newFixtureEP(t, keyed, plain)
	do := func(job, ep, method string, h http.Header) error {
		resp, err := f.gw.Do(t.Context(), JobRef{Task: "t", Job: job}, Request{Endpoint: ep, Method: method, Target: "/x", Header: h, Body: []byte("{}")})
		if err == nil {
			_, err = readAll(t, resp)
		}
		return err
	}
	for _, c := range []struct {
		job, ep, method string
		header          http.Header
		want            string // the key the upstream must see; "" for none
	}{
		{"job-42", "crm", "POST", nil, "job-42"},
		{"job-42", "crm", "POST", nil, "job-42"}, // the job's second attempt: the same key
		{"job-42", "crm", "PUT", nil, "job-42"},
		{"job-42", "crm", "PATCH", nil, "job-42"},
		{"job-42", "crm", "DELETE", nil, "job-42"},
		{"job-43", "crm", "POST", nil, "job-43"},
		{"job-42", "crm", "GET", nil, ""},
		{"job-42", "crm", "HEAD", nil, ""},
		{"job-42", "crm", "OPTIONS", nil, ""},
		{"job-42", "plain", "POST", nil, ""},
		{"job-42", "plain", "POST", http.Header{"Idempotency-Key": {"task-chosen"}}, "task-chosen"},
	} {
		before := len(srv.requests())
		if err := do(c.job, c.ep, c.method, c.header); err != nil {
			t.Fatalf("Do(%s %s %s) = %v", c.job, c.ep, c.method, err)
		}
		reqs := srv.requests()
		if len(reqs) != before+1 {
			t.Fatalf("Do(%s %s %s): the upstream saw %d requests, want 1", c.job, c.ep, c.method, len(reqs)-before)
		}
		if got := reqs[len(reqs)-1].Header.Values("Idempotency-Key"); len(got) > 1 || (len(got) == 1) != (c.want != "") || len(got) == 1 && got[0] != c.want {
			t.Errorf("Do(%s %s %s) sent Idempotency-Key %q, want %q", c.job, c.ep, c.method, got, c.want)
		}
	}
	for _, name := range []string{"Idempotency-Key", "idempotency-key", "IDEMPOTENCY-KEY"} {
		before := len(srv.requests())
		err := do("job-42", "crm", "POST", http.Header{name: {"forged"}})
		if codeOf(err) != outcome.Denied || len(srv.requests()) != before {
			t.Errorf("a task setting %s on a keyed endpoint = %v; want denied, nothing sent", name, err)
		}
	}
}

package main

import (
	"net/http"
	"testing"

	"github.com/castellan-dev/castellan/internal/democrm"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/sdk/go/castellantest"
)

const token = "test-token"

// crm serves the demo CRM the way the worker would reach it: with the credential injected
// on the way, so the task under test never holds it.
func crm() http.Handler {
	h := democrm.New(token).Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Set("Authorization", "Bearer "+token)
		h.ServeHTTP(w, r)
	})
}

func TestLookup(t *testing.T) {
	t.Parallel()
	broken := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) })
	failing := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "oops", 500) })
	notJSON := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>")) })
	tests := []struct {
		name     string
		input    string
		crm      http.Handler
		wantOut  string
		wantFail string
	}{
		{name: "found", input: `{"customer_id":"42"}`,
			wantOut: `{"customer_id":"42","name":"Ada Lovelace","tier":"gold","open_tickets":2}`},
		{name: "found, zero tickets", input: `{"customer_id":"7"}`,
			wantOut: `{"customer_id":"7","name":"Grace Hopper","tier":"silver","open_tickets":0}`},
		{name: "not found", input: `{"customer_id":"43"}`, wantFail: "customer 43 not found"},
		{name: "missing id", input: `{}`,
			wantFail: `input field "customer_id" is missing or empty; want digits, e.g. {"customer_id":"42"}`},
		{name: "wrong field name", input: `{"customerId":"42"}`,
			wantFail: `input field "customer_id" is missing or empty; want digits, e.g. {"customer_id":"42"}`},
		{name: "path traversal attempt", input: `{"customer_id":"../admin"}`,
			wantFail: `input field "customer_id" has '.' at position 0; want digits only, e.g. "42"`},
		{name: "query smuggling", input: `{"customer_id":"42?x=1"}`,
			wantFail: `input field "customer_id" has '?' at position 2; want digits only, e.g. "42"`},
		{name: "too long", input: `{"customer_id":"1234567890123456789"}`,
			wantFail: `input field "customer_id" has 19 characters; want at most 18 digits`},
		{name: "number instead of string", input: `{"customer_id":42}`,
			wantFail: "castellan: decoding job input: json: cannot unmarshal number into Go struct field Input.customer_id of type string"},
		{name: "crm unreachable", input: `{"customer_id":"42"}`, crm: broken,
			wantFail: "looking up customer 42 in the crm: castellan: GET crm /api/customers/42: endpoint unreachable or timed out (E_UPSTREAM)"},
		{name: "crm error", input: `{"customer_id":"42"}`, crm: failing,
			wantFail: "looking up customer 42: the crm answered HTTP 500"},
		{name: "crm garbage", input: `{"customer_id":"42"}`, crm: notJSON,
			wantFail: "looking up customer 42: castellan: decoding response body (HTTP 200, 6 bytes) as JSON: invalid character '<' looking for beginning of value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := tt.crm
			if h == nil {
				h = crm()
			}
			out, failMsg, err := castellantest.RunOptions(lookup, []byte(tt.input), castellantest.Options{
				Endpoints: map[string]http.Handler{"crm": h},
				HTTPCalls: 1,
				Context:   t.Context(),
			})
			if err != nil || string(out) != tt.wantOut || failMsg != tt.wantFail {
				t.Fatalf("lookup(%s) = %s, %q, %v; want %s, %q, nil", tt.input, out, failMsg, err, tt.wantOut, tt.wantFail)
			}
		})
	}
}

func TestLookupNeedsOnlyTheCRM(t *testing.T) {
	t.Parallel()
	_, _, err := castellantest.Run(lookup, []byte(`{"customer_id":"42"}`), nil)
	if outcome.CodeOf(err) != outcome.Denied {
		t.Fatalf("lookup without a crm endpoint = %v, want the job denied", err)
	}
}

// Command crm-lookup is an example Castellan task: given {"customer_id":"42"}, it looks the
// customer up in the internal CRM through the worker's "crm" endpoint and returns a summary.
// It never sees the CRM's URL or token: the worker adds them.
//
// Build it as a WASI reactor with ./build.sh; see README.md.
package main

import (
	"fmt"

	castellan "github.com/castellan-dev/castellan/sdk/go"
)

func main() {} // required by the toolchain; the worker calls the SDK's run export instead

func init() {
	castellan.Handle(lookup)
	// Built once at init, which the worker runs once per module: not in every job.
	castellan.PrepareJSON(Input{}, Output{})
}

// Input is the job input.
type Input struct {
	CustomerID string `json:"customer_id"`
}

// Output is the job output: only the fields the caller needs, not the whole CRM record
// (which also carries e-mail addresses).
type Output struct {
	CustomerID  string `json:"customer_id"`
	Name        string `json:"name"`
	Tier        string `json:"tier"`
	OpenTickets int    `json:"open_tickets"`
}

// maxIDDigits keeps absurd inputs out of the CRM's logs.
const maxIDDigits = 18

func lookup(ctx *castellan.Context) error {
	var in Input
	if err := ctx.DecodeInput(&in); err != nil {
		return err
	}
	if err := validateID(in.CustomerID); err != nil {
		return err
	}
	id := in.CustomerID

	resp, err := ctx.HTTP("crm").Get("/api/customers/" + id)
	if err != nil {
		return fmt.Errorf("looking up customer %s in the crm: %w", id, err)
	}
	defer resp.Close()
	switch resp.Status {
	case 200:
	case 404:
		return fmt.Errorf("customer %s not found", id)
	default:
		return fmt.Errorf("looking up customer %s: the crm answered HTTP %d", id, resp.Status)
	}

	var out Output
	if err := resp.JSON(&out); err != nil {
		return fmt.Errorf("looking up customer %s: %w", id, err)
	}
	if out.CustomerID != id {
		return fmt.Errorf("looking up customer %s: the crm returned customer %q", id, out.CustomerID)
	}
	ctx.Infof("customer %s: tier %s, %d open tickets", id, out.Tier, out.OpenTickets)
	return ctx.EncodeOutput(out)
}

func validateID(id string) error {
	if id == "" {
		return fmt.Errorf(`input field "customer_id" is missing or empty; want digits, e.g. {"customer_id":"42"}`)
	}
	if len(id) > maxIDDigits {
		return fmt.Errorf(`input field "customer_id" has %d characters; want at most %d digits`, len(id), maxIDDigits)
	}
	for i, c := range id {
		if c < '0' || c > '9' {
			return fmt.Errorf(`input field "customer_id" has %q at position %d; want digits only, e.g. "42"`, c, i)
		}
	}
	return nil
}

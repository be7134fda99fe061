package approval_test

import (
	"context"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/castellan-dev/castellan/approval"
)

// An approver signs on their machine; the worker verifies with the public key only.
func Example() {
	priv, pub, err := approval.GenerateKey("alice-2026")
	if err != nil {
		panic(err)
	}
	input := []byte(`{"account": "acct-9", "amount": 12.5}`)
	token, _, err := approval.Sign(priv, approval.Request{
		JobID: "job-1", Task: "refund", TaskVersion: "3", Pool: "payments",
		Input: input, TTL: 15 * time.Minute, Approver: "alice@example.com",
	})
	if err != nil {
		panic(err)
	}

	v := approval.NewVerifier(&jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}}, approval.NewMemoryReplayStore())
	want := approval.Expect{JobID: "job-1", Task: "refund", TaskVersion: "3", Pool: "payments",
		Input: []byte(`{"amount":12.5,"account":"acct-9"}`), Attempt: 1} // same input, re-serialised
	claims, err := v.Verify(context.Background(), token, want)
	fmt.Println(claims.JobID, claims.Approver, err)

	_, err = v.Verify(context.Background(), token, want)
	fmt.Println(approval.ReasonOf(err))

	want.Attempt, want.Pool = 1, "admin"
	_, err = v.Verify(context.Background(), token, want)
	fmt.Println(err)
	// Output:
	// job-1 alice@example.com <nil>
	// replayed
	// rejected: approval rejected (wrong_pool): the approval is for pool "payments", not "admin"
}

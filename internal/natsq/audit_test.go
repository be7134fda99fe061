package natsq_test

import (
	"encoding/json"
	"slices"
	"sync"
	"testing"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestAuditChainTwoReplicas: two API replicas on one JetStream append to the audit stream at
// once; expected-last-sequence makes the second of any two racing appends chain onto the
// first, so the log stays one chain (no fork: every entry's prev_hash is the hash of the
// entry before it) and holds every submit, whichever replica took it.
func TestAuditChainTwoReplicas(t *testing.T) {
	t.Parallel()
	natsURL := startNATS(t).ClientURL()
	reps := []*apiReplica{startAPI(t, natsURL), startAPI(t, natsURL)}
	publishStrict(t, natsURL)
	var clients []*client.Client
	for _, r := range reps {
		c := apiClient(t, natsURL, r.url, api.RoleClient, pool)
		waitCatalog(t, c)
		clients = append(clients, c)
	}
	const each = 15
	var wg sync.WaitGroup
	errs := make(chan error, 2*each)
	for _, c := range clients {
		for range each {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := c.Submit(t.Context(), api.SubmitRequest{Task: "echo", Pool: pool, Input: json.RawMessage(`{"n":1}`)})
				errs <- err
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Submit() = %v", err)
		}
	}
	admin := apiClient(t, natsURL, reps[1].url, api.RoleAdmin, api.AllPools)
	var all []api.AuditEntry
	o := client.AuditOptions{Limit: 7}
	for {
		page, err := admin.Audit(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, page.Entries...)
		if o.Cursor = page.NextCursor; o.Cursor == "" {
			break
		}
	}
	slices.Reverse(all)
	var chain api.AuditChain
	submits := 0
	for i, e := range all {
		if err := chain.Add(e); err != nil {
			t.Fatalf("entry %d of %d: %v", i+1, len(all), err)
		}
		if i > 0 && e.ID <= all[i-1].ID {
			t.Fatalf("entry ids out of order: %d after %d", e.ID, all[i-1].ID)
		}
		if e.Action == "job.submit" {
			submits++
		}
	}
	if submits != 2*each {
		t.Fatalf("the audit log holds %d job.submit entries, want %d", submits, 2*each)
	}
}

package server

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/internal/server/api"
)

func (e *env) getAuditHead(id, secret string) (int, api.WorkerAuditHead, api.ErrorBody) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.url+"/v1/workers/"+id+"/audit-head", nil)
	req.Header.Set("Authorization", "Bearer "+secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var h api.WorkerAuditHead
	var eb api.ErrorBody
	if resp.StatusCode == http.StatusOK {
		err = json.NewDecoder(resp.Body).Decode(&h)
	} else {
		err = json.NewDecoder(resp.Body).Decode(&eb)
	}
	if err != nil {
		e.t.Fatalf("GET audit-head: status %d, body not JSON: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, h, eb
}

// TestAuditHeadKept: the control plane keeps the furthest head a worker reported with its
// results, never a lower one, refuses a malformed one, and shows it to admins only.
func TestAuditHeadKept(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	hash := func(c string) string { return strings.Repeat(c, 64) }
	complete := func(h *api.AuditHead) error {
		j := e.submit(ctx, 1, true)
		lj := e.leaseOne(ctx, e.worker)
		_, err := e.worker.Complete(ctx, j.ID, api.CompleteRequest{LeaseToken: lj.LeaseToken, Attempt: 1, Outcome: "ok", AuditHead: h})
		return err
	}
	if st, _, eb := e.getAuditHead("worker", e.secrets["admin"]); st != 404 || eb.Error.Code != api.CodeNotFound {
		t.Fatalf("GET before any report = %d %+v, want 404 not_found", st, eb)
	}
	for _, tc := range []struct {
		head *api.AuditHead
		want api.AuditHead
	}{
		{&api.AuditHead{Seq: 101, Hash: hash("a")}, api.AuditHead{Seq: 101, Hash: hash("a")}},
		{nil, api.AuditHead{Seq: 101, Hash: hash("a")}},
		{&api.AuditHead{Seq: 202, Hash: hash("b")}, api.AuditHead{Seq: 202, Hash: hash("b")}},
		{&api.AuditHead{Seq: 150, Hash: hash("c")}, api.AuditHead{Seq: 202, Hash: hash("b")}}, // rolled back: kept
		{&api.AuditHead{Seq: 202, Hash: hash("d")}, api.AuditHead{Seq: 202, Hash: hash("b")}}, // forked: the first stays
	} {
		if err := complete(tc.head); err != nil {
			t.Fatalf("Complete(head %+v) = %v", tc.head, err)
		}
		for _, id := range []string{"worker", e.workerID()} {
			st, got, eb := e.getAuditHead(id, e.secrets["admin"])
			if st != 200 || got.Seq != tc.want.Seq || got.Hash != tc.want.Hash || got.Name != "worker" || got.WorkerID != e.workerID() {
				t.Fatalf("after head %+v: GET %s = %d %+v %+v, want %+v", tc.head, id, st, got, eb, tc.want)
			}
		}
	}
	for _, bad := range []*api.AuditHead{{Seq: 0, Hash: hash("a")}, {Seq: 300, Hash: hash("A")}, {Seq: 300, Hash: "ab"}, {Seq: 300, Hash: hash("g")}} {
		wantCode(t, "Complete(bad head)", complete(bad), 400, api.CodeInvalidField)
	}
	for _, who := range []string{"client", "approver", "worker"} {
		if st, _, _ := e.getAuditHead("worker", e.secrets[who]); st != 403 {
			t.Errorf("GET audit-head as %s = %d, want 403", who, st)
		}
	}
}

func (e *env) workerID() string {
	e.t.Helper()
	var id string
	if err := e.s.store.rdb.QueryRow(`SELECT token_id FROM workers WHERE name = 'worker'`).Scan(&id); err != nil {
		e.t.Fatal(err)
	}
	return id
}

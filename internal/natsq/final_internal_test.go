package natsq

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// TestFinalJobsKeeps: the newest revision of an ended job wins, a job too large to keep is
// not kept (its waits read it) but still wakes them, copies are not shared with the caller,
// and the oldest copies go first past the bound.
func TestFinalJobsKeeps(t *testing.T) {
	var woken []string
	var f finalJobs
	f.setNotify(func(id string) { woken = append(woken, id) })
	f.put("a", api.Job{ID: "a", Outcome: "ok", Output: []byte(`{"v":2}`)}, 5)
	f.put("a", api.Job{ID: "a", Outcome: "stale"}, 4)
	if j, ok := f.get("a"); !ok || j.Outcome != "ok" {
		t.Fatalf("get(a) = %+v, %v; want the revision 5 copy", j, ok)
	}
	j, _ := f.get("a")
	j.Output[0] = 'X'
	if again, _ := f.get("a"); again.Output[0] != '{' {
		t.Fatal("a caller's change reached the kept copy")
	}
	f.put("big", api.Job{ID: "big", Output: bytes.Repeat([]byte("x"), maxFinalBytes+1)}, 1)
	if _, ok := f.get("big"); ok {
		t.Fatal("a job over maxFinalBytes was kept")
	}
	if len(woken) != 2 || woken[1] != "big" {
		t.Fatalf("woken = %v, want a then big", woken)
	}
	for i := range maxFinal {
		f.put(fmt.Sprint("j", i), api.Job{}, 1)
	}
	if _, ok := f.get("a"); ok {
		t.Fatal("the oldest copy outlived maxFinal newer ones")
	}
	if _, ok := f.get(fmt.Sprint("j", maxFinal-1)); !ok {
		t.Fatal("the newest copy is gone")
	}
}

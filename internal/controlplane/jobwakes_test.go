package controlplane

import (
	"strconv"
	"testing"
)

// TestJobWakesWakesOnlyItsJob: firing one job closes only its waits' channel, and a wait
// after the fire gets a fresh one.
func TestJobWakesWakesOnlyItsJob(t *testing.T) {
	var w JobWakes
	a, b := w.Wait("a"), w.Wait("b")
	if w.Wait("a") != a {
		t.Fatal("two waits on one job got different channels")
	}
	w.Fire("a", "unknown")
	select {
	case <-a:
	default:
		t.Fatal("Fire(a) did not wake a")
	}
	select {
	case <-b:
		t.Fatal("Fire(a) woke b")
	default:
	}
	if w.Wait("a") == a {
		t.Fatal("a wait after Fire(a) got the closed channel")
	}
}

// TestJobWakesBounded: past maxJobWakes parked jobs every waiter is woken (it reads again),
// so waits that never saw their job end cannot grow the map without bound.
func TestJobWakesBounded(t *testing.T) {
	var w JobWakes
	first := w.Wait("0")
	for i := 1; i < maxJobWakes; i++ {
		w.Wait(strconv.Itoa(i))
	}
	select {
	case <-first:
		t.Fatal("woken before the bound was reached")
	default:
	}
	w.Wait("one more")
	select {
	case <-first:
	default:
		t.Fatal("past the bound the oldest waits were not woken")
	}
	if n := len(w.jobs); n != 1 {
		t.Fatalf("after starting over the map holds %d channels, want 1", n)
	}
}

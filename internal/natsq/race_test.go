//go:build race

package natsq_test

// raceEnabled: the race detector slows the embedded servers about tenfold; the load tests
// scale down so that the package stays within its time budget.
const raceEnabled = true

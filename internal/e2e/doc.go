// Package e2e tests Castellan as operators run it: the castellan binary, built once per test
// run, as separate server and worker processes on loopback, driven through the CLI. These
// tests are the ones that can see what unit tests cannot: signals and exit codes, processes
// killed mid-job, a control plane restarted on the same database, sockets a process holds.
//
// Waits poll with a deadline; nothing sleeps for a fixed time. BenchmarkEndToEnd runs in
// process (control plane + one worker on loopback) to measure jobs/s and the "sandbox tax".
package e2e

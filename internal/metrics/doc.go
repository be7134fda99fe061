// Package metrics defines Castellan's Prometheus metrics for the worker and the control
// plane, and the opt-in HTTP listener that serves them.
//
// Every collector is registered on a registry the caller passes in, never on the global
// default one: two workers in one test process, or a worker and a server in one daemon,
// must not collide, and nothing registers itself behind the caller's back.
//
// Labels are chosen so that nothing secret or unbounded can become one: task and endpoint
// names come from the policy, decisions and outcomes are fixed vocabularies, and denial
// reasons are cut to their first word (the gateway's reasons start with a fixed category).
// No job id, path, URL or value ever becomes a label.
//
// The listener is off unless configured, and Serve binds loopback when the address names
// no host, because metrics reveal task names and traffic to anyone who can reach them.
package metrics

// Package democrm is a small stand-in for an internal CRM API, used by the demo and by
// tests across Castellan. It requires a bearer token on every /api request, which is the
// credential the worker injects and the task must never see.
//
// Some routes exist only to attack the worker from the upstream side: /api/echo and
// /api/echo-b64 send the injected credential straight back (plainly and base64-encoded) so
// tests can prove the worker redacts it before the task or the output sees it;
// /api/redirect sends the worker wherever the caller asks; /api/big and /api/slow exercise
// response size limits and deadlines. Do not run this server anywhere real.
package democrm

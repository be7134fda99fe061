// Package approval makes "only approved work runs" hold on the worker, even when the queue
// or the control plane is compromised.
//
// An approver signs, on their own machine, an approval for one job: a compact JWS (EdDSA,
// Ed25519) whose claims name the job, task, task version, worker pool, the SHA-256 of the
// canonical JSON of the input, a validity window, a random nonce and how many executions it
// authorises. The worker trusts a set of public keys (a JWKS, as Buildkite's signed
// pipelines do) and runs a job only if Verifier.Verify accepts its approval. The control
// plane never holds an approver's private key, so it can queue work but cannot approve it;
// an optional server-side auto-approve key signs low-risk work, and its approvals say so
// (claim "auto").
//
// Why each piece is there:
//
//   - The signature is bound to the whole context (job, task, version, pool, input), so an
//     approval for one job cannot be moved to another, to another version of the task, to
//     a pool with more privileges, or to other input.
//   - The input is hashed in RFC 8785 canonical form (CanonicalJSON), so that re-serialising
//     the input (key order, whitespace, "1.0" vs "1") does not break approvals, while any
//     change of value does.
//   - Unknown claims and header parameters are refused rather than ignored, so a signer
//     cannot add a restriction that a worker silently drops, and "crit", "jwk", "jku" and
//     friends cannot change how a token is checked.
//   - The nonce and the ReplayStore stop a captured token from running the same attempt
//     twice on a worker; expiry and the worker's maximum TTL bound how long a captured token
//     is worth anything at all.
//
// A plan approval (SignPlan) is one signature over the ordered steps of a plan, each with
// the binding above; Verify accepts it for exactly the jobs it lists, checking that job's
// step, and records its uses per (nonce, job) so that each step runs once.
//
// Verification order matters: the replay store is consulted last, so tokens that fail any
// other check never consume an attempt. See docs/approvals.md for operators.
package approval

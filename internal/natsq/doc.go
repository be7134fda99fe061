// Package natsq is Castellan's NATS JetStream transport: the worker side (WorkerQueue, an
// implementation of worker.Queue) and the control-plane side (Dispatcher, APIServer), for
// deployments where one control plane on SQLite is no longer enough: many workers, many
// sites, high job rates, or a control plane that must survive losing a machine.
//
// Why JetStream rather than more of our own code: durable pull consumers already give
// at-least-once delivery with leases (AckWait), lease extension (InProgress), retry with a
// delay (NakWithDelay), a final refusal (Term), a bounded number of deliveries (MaxDeliver),
// publish deduplication (Nats-Msg-Id) and a replicated key-value store with compare-and-set.
// Those are exactly the pieces the HTTP control plane builds on SQLite; here they are
// replicated (R3) by a system that was designed and tested for it.
//
// The layout, and why:
//
//   - One work-queue stream per pool, CASTELLAN_JOBS_<pool>, subjects castellan.jobs.<pool>.<task>.
//     A stream per pool lets a NATS account's permissions name the pool's stream, so a worker
//     of pool A cannot fetch, ack or even see pool B's jobs (subject permissions match whole
//     tokens only, so a shared stream could not be split this way).
//   - One durable pull consumer per (pool, task), named after the task. Work-queue streams
//     forbid overlapping consumers; a consumer per task lets every worker pull exactly the
//     tasks it serves, and workers serving the same task share its consumer.
//   - A results stream, CASTELLAN_RESULTS (castellan.results.<pool>). The worker publishes
//     the result with Nats-Msg-Id = jobID/attempt and waits for the PubAck before it acks the
//     job, so a crash between the two republishes a duplicate the stream drops.
//   - A dead-letter stream, CASTELLAN_DEAD (castellan.dead.<pool>.<task>): poison messages
//     (unreadable, oversized, on the wrong subject) and jobs whose deliveries exceeded their
//     max_attempts are republished there with a reason header, then terminated.
//   - KV buckets: castellan_jobs (job state, written by dispatchers with compare-and-set so
//     that any number of control-plane replicas can record completions and serve reads),
//     castellan_cancel (cancellation requests, read by workers at each heartbeat) and
//     castellan_catalog (each worker's published catalog); for the API server also
//     castellan_tokens (bearer token hashes) and castellan_idempotency.
//
// APIServer is `castellan server --nats`: the client-facing /v1 API (the wire types and error
// codes of internal/server) with no local state, so any number of replicas serve it. Each
// replica also runs the Dispatcher's result consumer, which all replicas share.
//
// The attempt number is the message's delivery count (NumDelivered). Workers still verify
// every approval themselves, including the attempt bound and replay, exactly as over HTTP:
// nothing in this package decides whether a job may run.
package natsq

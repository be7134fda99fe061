// Package natsq is Castellan's NATS JetStream transport: the worker side (WorkerQueue, an
// implementation of worker.Queue) and the control-plane side (Dispatcher, APIServer), for
// deployments where one control plane on SQLite is no longer enough: many workers, many
// sites, high job rates, or a control plane that must survive losing a machine.
//
// Why JetStream rather than more of our own code: durable pull consumers already give
// at-least-once delivery with leases (AckWait), lease extension (InProgress), retry with a
// delay (NakWithDelay), a final refusal (Term), publish deduplication (Nats-Msg-Id) and a
// replicated key-value store with compare-and-set. Those are exactly the pieces the HTTP
// control plane builds on SQLite; here they are replicated (R3) by a system that was
// designed and tested for it.
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
// APIServer is `castellan server --nats`: the /v1 API of internal/controlplane (the layer
// both modes share) over these buckets, with no local state, so any number of replicas serve
// it. Each replica also runs the Dispatcher's result consumer, which all replicas share. A
// replica that stops hands back the results it had pulled and not recorded, so that another
// records them at once rather than an AckWait later.
//
// A result is recorded only for the attempt it was granted to. Dispatch writes a random
// claim key into the job's record (which workers cannot read) and its envelope (which only
// the pool's workers can pull). A worker that pulls a job claims it on
// castellan.claims.<pool> with that key, before running it; the dispatcher grants the next
// attempt with a random fence (compare-and-set on the record, so one grant per attempt) and
// sends the fence only in the reply to that worker's inbox. A result must name the granted
// attempt, worker and fence, within max_attempts; anything else (a job never approved or
// delivered, a guessed fence, a superseded attempt) is refused and logged. The attempt
// number is the dispatcher's count of grants, so a job whose earlier attempts ended without
// a result is ended dead once max_attempts grants are used. Workers of one pool that share
// a NATS user and inbox prefix can read each other's replies: give each worker its own user
// and inbox prefix for the binding to hold between workers of one pool.
//
// An attempt whose worker went away is normally ended by the next claim of its redelivered
// message. JetStream settles a message by its stream sequence, though, so a stale delivery's
// ack (or any settle without a recorded result) can leave a running job with no message to
// redeliver. Each dispatcher sweeps for those (sweep.go): it knows the running jobs and when
// their lease is over (from one read of the job bucket at start, its own writes, and a
// headers-only watch of the others'), looks up the message of the current delivery by the
// stream sequence its claim named, and expires an attempt whose message is still gone
// SweepGrace later as SQLite's reaper would (queued again with its envelope republished,
// dead as a timeout after the last attempt, cancelled if asked), with a compare-and-set
// that drops the lease. What it costs: a job whose last write another replica made is read
// once by each replica, an AckWait after that write; a job running past its lease is read
// with its message once per AckWait.
//
// Workers still verify every approval themselves, including the attempt bound and replay,
// exactly as over HTTP: nothing in this package decides whether a job may run.
package natsq

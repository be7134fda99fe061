// Package worker is Castellan's private worker loop: it leases approved jobs from the control
// plane over outbound HTTPS, verifies each approval itself, runs the task in the sandbox with
// local credentials, and reports back only the outcome code, the output, the task's (guarded)
// error message, the duration and the module digest.
//
// It opens no port. It reserves a run slot before it asks for work, so it never holds a lease
// on a job it cannot start (Temporal's poller does the same), and whatever a lease answers, at
// most the jobs it asked for run: the rest are handed back unrun. It takes no new work while
// a result cannot be delivered. It heartbeats while a job runs and cancels the job when the
// control plane says so.
//
// The control plane is not trusted with what runs: each approval is checked against the
// worker's own pool, and a job runs on exactly the task version its approval names, or is
// handed back (cancelled, retryable) when that version is not loaded at that moment.
//
// Shutdown has two stages, as in the Buildkite agent: the first stops leasing and lets
// running jobs finish; the second cancels them, and they are reported as cancelled and
// retryable, so another worker picks them up. The second stage is bounded (StopTimeout): a
// task that does not stop is abandoned, reported the same way, and Run returns.
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/tasks"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/runtime"
)

// Runner runs one job of a task; *tasks.Set implements it.
type Runner interface {
	Run(ctx context.Context, task, jobID string, input []byte) runtime.Result
}

// VersionRunner is a Runner whose task versions change while it runs (*tasks.Set with a
// plugins directory). The worker runs every job with RunVersion, on exactly the version
// the job's approval names; when that version is not loaded at that moment, RunVersion
// runs nothing and returns an error wrapping tasks.ErrVersionNotLoaded, and the worker
// hands the job back for another attempt instead of refusing it. With a plain Runner the
// worker checks the version against its catalog instead.
type VersionRunner interface {
	Runner
	RunVersion(ctx context.Context, task, version, jobID string, input []byte) runtime.Result
}

var _ VersionRunner = (*tasks.Set)(nil)

// Queue is the worker's side of the transport to the control plane. *client.Client (HTTPS
// long-poll) implements it, and so does the NATS JetStream transport. Everything above it
// (verification, the sandbox, reporting, drain) is shared by both.
//
// A final refusal (a bad token, a fenced completion, a lost lease) is an error that
// errors.Is matches to api.ErrFinal, and to api.ErrLeaseLost, api.ErrJobCancelled, api.ErrFenced
// or api.ErrNotRegistered where it says which; both transports return them. Any other error
// is treated as an outage and retried with backoff.
type Queue interface {
	Register(ctx context.Context, req api.RegisterRequest) (api.RegisterResponse, error)
	PublishCatalog(ctx context.Context, tasks []api.TaskDef) (api.CatalogResponse, error)
	Lease(ctx context.Context, max int, wait time.Duration) ([]api.LeasedJob, error)
	Heartbeat(ctx context.Context, leaseToken string) (api.HeartbeatResponse, error)
	Complete(ctx context.Context, jobID string, req api.CompleteRequest) (api.CompleteResponse, error)
}

var _ Queue = (*client.Client)(nil)

// Config configures a Worker.
type Config struct {
	// Client is the transport to the control plane, authenticated as a worker.
	Client Queue
	// Runner runs tasks; Catalog is what the worker tells the control plane it can run.
	Runner  Runner
	Catalog []api.TaskDef
	// CatalogUpdates, when set, delivers the whole new catalog each time the served tasks
	// change (a plugin added, replaced or removed): the worker republishes it and admits jobs
	// against it from then on. Optional.
	CatalogUpdates <-chan []api.TaskDef
	// Verifier checks every approval before anything runs.
	Verifier *approval.Verifier
	// Pool is the pool this worker serves, from its own configuration. Every approval is
	// checked against it, never against the pool a leased job claims. When the control plane
	// registers the worker in another pool, Run refuses to serve. Optional: when empty, the
	// pool announced at the first registration, fixed for the rest of Run (a control plane
	// that lies at registration then goes unnoticed, so set it).
	Pool string
	// Name labels the worker in the control plane (default: "castellan-worker").
	Name    string
	Version string
	// Concurrency is the number of jobs run at once. Optional; default 2.
	Concurrency int
	// StopTimeout bounds shutdown once the jobs context is cancelled: Run waits that long for
	// running jobs to return and be reported, then abandons the ones still running (a guest
	// stuck in a call that ignores cancellation), reports them cancelled and retryable, waits
	// at most that long again for those reports, and returns. Optional; default 10s.
	StopTimeout time.Duration
	// LeaseWait is the long-poll wait. Optional; default 30s.
	LeaseWait time.Duration
	// Heartbeat is the interval between heartbeats. Optional; default a third of the lease TTL
	// the control plane announces at registration.
	Heartbeat time.Duration
	// Backoff shapes the waits between failed control-plane calls: exponential from
	// BackoffMin, doubling up to BackoffMax, each wait randomised by ±50%
	// (github.com/cenkalti/backoff/v5). Optional; defaults 500ms and 30s.
	BackoffMin, BackoffMax time.Duration
	// Log is the worker's logger.
	Log *zap.Logger
	// Audit receives a tamper-evident record of each job step. Optional. A job whose
	// records cannot be written is not run: it is reported as a retryable internal failure.
	Audit *audit.Log
	// Observer is told about each job step and each lease or heartbeat failure, for metrics
	// and traces. Optional.
	Observer Observer
}

// EventKind says which step an Event reports.
type EventKind int

const (
	WorkerReady      EventKind = iota + 1 // registered; Capacity is set
	JobReceived                           // leased; the job's steps follow with the returned ctx
	ApprovalVerified                      // admitted
	ApprovalRejected                      // refused; Reason says why; JobFinished follows
	JobStarted                            // the task is running
	JobFinished                           // always the last step of a received job
	LeaseFailed                           // a lease call failed (Reason)
	HeartbeatFailed                       // a heartbeat failed (Reason)
)

// Event is one step, for an Observer. It carries no input, output, approval or lease token.
type Event struct {
	Kind                           EventKind
	JobID, Task, TaskVersion, Pool string
	Attempt                        int
	TraceParent                    string // from the control plane, W3C format
	Reason                         string // outcome message of a refusal, or the failure
	Outcome                        outcome.Code
	Duration                       time.Duration // JobFinished: from receipt to the end of the run
	Instantiate                    time.Duration // JobFinished: sandbox instance creation on the job's path
	HTTPCalls, OutputBytes         int
	Capacity                       int // WorkerReady: Config.Concurrency
}

// Observer watches the worker. Observe returns the context for the job's next steps (a
// tracer puts the job's span in it); for events outside a job the result is ignored.
// Observe must not block.
type Observer interface {
	Observe(ctx context.Context, ev Event) context.Context
}

func (w *Worker) observe(ctx context.Context, ev Event) context.Context {
	if w.cfg.Observer == nil {
		return ctx
	}
	if c := w.cfg.Observer.Observe(ctx, ev); c != nil {
		return c
	}
	return ctx
}

// Worker leases and runs jobs. Run it with Run.
type Worker struct {
	cfg Config
	log *zap.Logger

	mu       sync.Mutex
	pool     string // the pool approvals are checked against; set by register, never changed
	catalog  map[string]api.TaskDef
	running  map[string]string // job id -> lease token of the jobs in flight
	inflight int               // jobs in flight: leased to run, until reported
	done     int
	released int                // times idle memory was given back (releaseMemoryWhenIdle)
	failing  int                // reports failing now: no lease until they are settled
	probing  bool               // a report was given up: lease one job at a time
	cutPoll  context.CancelFunc // cancels the lease poll in flight; nil when none
	changed  chan struct{}      // closed and replaced at every change of the fields above

	// Shutdown's last resort: abandon is closed when running jobs are given up on, and
	// reports (every report's context) is cancelled when their results are.
	abandon    chan struct{}
	runners    runners
	reports    context.Context
	cutReports context.CancelFunc
}

// New returns a Worker.
func New(cfg Config) (*Worker, error) {
	if cfg.Client == nil || cfg.Runner == nil || cfg.Verifier == nil {
		return nil, errors.New("worker: Client, Runner and Verifier are required")
	}
	if cfg.Name == "" {
		cfg.Name = "castellan-worker"
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 2
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	if cfg.LeaseWait <= 0 {
		cfg.LeaseWait = 30 * time.Second
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 500 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	w := &Worker{cfg: cfg, log: cfg.Log, running: map[string]string{}, changed: make(chan struct{}), abandon: make(chan struct{}),
		runners: runners{idle: make(chan func()), stop: make(chan struct{})}}
	w.reports, w.cutReports = context.WithCancel(context.Background())
	w.setCatalog(cfg.Catalog)
	return w, nil
}

func (w *Worker) setCatalog(tasks []api.TaskDef) {
	m := make(map[string]api.TaskDef, len(tasks))
	for _, t := range tasks {
		m[t.Name] = t
	}
	w.mu.Lock()
	w.catalog = m
	w.cfg.Catalog = tasks
	w.mu.Unlock()
}

func (w *Worker) task(name string) (api.TaskDef, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.catalog[name]
	return t, ok
}

// followCatalog republishes the catalog after every change, retrying through outages; a
// newer change supersedes a publication still being retried.
func (w *Worker) followCatalog(ctx context.Context) {
	for {
		var tasks []api.TaskDef
		select {
		case <-ctx.Done():
			return
		case tasks = <-w.cfg.CatalogUpdates:
		}
		w.setCatalog(tasks)
		b := w.newBackoff()
		for {
			err := w.publish(ctx, tasks)
			if err == nil {
				w.log.Info("catalog republished", zap.Int("tasks", len(tasks)))
				break
			}
			if errors.Is(err, api.ErrFinal) {
				// The same catalog would be refused again: wait for the next change.
				w.log.Error("the control plane refused the catalog; waiting for the next change", zap.Error(err))
				break
			}
			d := b.NextBackOff()
			w.log.Warn("republishing the catalog failed; retrying", zap.Error(err), zap.Duration("in", d))
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case tasks = <-w.cfg.CatalogUpdates:
				w.setCatalog(tasks)
				b.Reset()
			case <-t.C:
			}
			t.Stop()
		}
	}
}

// Run registers, publishes the catalog and serves jobs until lease is cancelled (the first
// stage of shutdown). It then waits for running jobs to finish and be reported; cancelling
// jobs (the second stage) cancels the running jobs. Run returns nil after a clean drain.
// Control-plane outages are retried with backoff for as long as lease is not cancelled.
func (w *Worker) Run(lease, jobs context.Context) error {
	lease, stopLeasing := context.WithCancel(lease)
	defer stopLeasing()
	defer context.AfterFunc(jobs, stopLeasing)() // cancelling jobs stops leasing too
	defer w.runners.close()
	reg, err := w.register(lease)
	if err != nil {
		return err
	}
	hb := w.cfg.Heartbeat
	if hb <= 0 {
		hb = time.Duration(reg.LeaseTTLSeconds) * time.Second / 3
		if hb <= 0 {
			hb = 10 * time.Second
		}
	}
	wait := w.cfg.LeaseWait
	if max := time.Duration(reg.MaxWaitSeconds) * time.Second; max > 0 && wait > max {
		wait = max
	}
	w.observe(lease, Event{Kind: WorkerReady, Pool: w.ownPool(), Capacity: w.cfg.Concurrency})
	w.log.Info("worker ready", zap.String("worker_id", reg.WorkerID), zap.String("pool", w.ownPool()),
		zap.Int("concurrency", w.cfg.Concurrency), zap.Int("tasks", len(w.cfg.Catalog)))

	if w.cfg.CatalogUpdates != nil {
		go w.followCatalog(lease)
	}
	go w.releaseMemoryWhenIdle(lease, time.Second)
	slots := make(chan struct{}, w.cfg.Concurrency)
	var wg sync.WaitGroup
	retry := w.newBackoff()
	for {
		if lease.Err() != nil {
			return w.drain(jobs, &wg)
		}
		// No new work while results cannot be delivered: it would run only to be lost, and
		// run again elsewhere.
		probing, ok := w.awaitDeliverable(lease)
		if !ok {
			return w.drain(jobs, &wg)
		}
		// Reserve a slot before asking for work: never hold a lease on a job that cannot start.
		select {
		case slots <- struct{}{}:
		case <-lease.Done():
			return w.drain(jobs, &wg)
		}
		n := 1
	more:
		for n < w.cfg.Concurrency && !probing {
			select {
			case slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		// Draining cancels the poll in flight, so shutdown is prompt. The control plane checks
		// that the request is still wanted just before it commits a lease, so a cancelled poll
		// normally leases nothing; a response lost after that commit leaves the job to its
		// lease expiry, after which another worker runs it (delivery is at-least-once).
		// A report that starts failing cuts the poll too (see reportFailing).
		poll, cutPoll := context.WithCancel(lease)
		w.setPoll(cutPoll)
		var leased []api.LeasedJob
		var err error
		if poll.Err() == nil { // not cut already
			leased, err = w.cfg.Client.Lease(poll, n, wait)
		}
		cut := poll.Err() != nil // before cutPoll below, which cancels poll in every case
		w.setPoll(nil)
		cutPoll()
		if err != nil && lease.Err() == nil && cut {
			leased, err = nil, nil // cut because results cannot be delivered; not an outage
		}
		// The answer is the control plane's word: whatever it holds, at most n jobs run,
		// one slot each, and the rest go back unrun.
		leased, surplus := w.sortLease(leased, n)
		for range n - len(leased) {
			<-slots
		}
		for _, sj := range surplus {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w.handBack(sj.job, sj.why)
			}()
		}
		if err != nil {
			if lease.Err() != nil || jobs.Err() != nil {
				return w.drain(jobs, &wg)
			}
			w.observe(lease, Event{Kind: LeaseFailed, Reason: err.Error()})
			d := retry.NextBackOff()
			w.log.Warn("lease failed; retrying", zap.Error(err), zap.Duration("in", d))
			if errors.Is(err, api.ErrNotRegistered) {
				if _, err := w.register(lease); err != nil {
					_ = w.drain(jobs, &wg)
					if lease.Err() != nil {
						return nil
					}
					return err
				}
			}
			if !sleep(lease, d) {
				return w.drain(jobs, &wg)
			}
			continue
		}
		retry.Reset()
		for _, j := range leased {
			wg.Add(1)
			go func() {
				// The run slot is freed as soon as the sandbox is done with the job, before the
				// result is reported: reporting is I/O that waits on the control plane's commit,
				// and holding the slot through it would delay the next lease by that much. The
				// wait group still covers the report, so a drain waits for every result.
				var once sync.Once
				release := func() { once.Do(func() { <-slots }) }
				defer func() {
					w.untrack(j)
					release()
					wg.Done()
				}()
				w.handle(jobs, j, hb, release)
			}()
		}
	}
}

// releaseMemoryWhenIdle returns the heap a burst of jobs left to the operating system once
// the worker has been idle for quiet: no job in flight and none finished meanwhile. Go's
// background scavenger gives freed heap back over minutes; a worker that ran 32 Go guests at
// once would otherwise keep hundreds of MiB it no longer uses. It runs once per idle spell,
// after at least one job, so an idle worker does not collect over and over.
func (w *Worker) releaseMemoryWhenIdle(ctx context.Context, quiet time.Duration) {
	tick := time.NewTicker(quiet / 4)
	defer tick.Stop()
	released, last, since := 0, 0, time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		w.mu.Lock()
		inflight, done := w.inflight, w.done
		w.mu.Unlock()
		if inflight > 0 || done != last {
			last, since = done, time.Now()
			continue
		}
		if done != released && time.Since(since) >= quiet {
			debug.FreeOSMemory()
			released = done
			w.mu.Lock()
			w.released++
			w.mu.Unlock()
		}
	}
}

// drain waits for the jobs in flight to finish and be reported. Once jobs is cancelled the
// wait is bounded: after StopTimeout the jobs still running are abandoned (reported as
// cancelled and retryable by their handlers), and after StopTimeout more the reports still
// pending are cut, whatever the guests or the control plane do.
func (w *Worker) drain(jobs context.Context, wg *sync.WaitGroup) error {
	idle := make(chan struct{})
	go func() { wg.Wait(); close(idle) }()
	if n := w.inFlight(); n > 0 {
		w.log.Info("draining: no new jobs; waiting for running jobs to finish", zap.Int("running", n))
	}
	select {
	case <-idle:
		return w.stopped()
	case <-jobs.Done():
	}
	stop := time.NewTimer(w.cfg.StopTimeout)
	defer stop.Stop()
	select {
	case <-idle:
		return w.stopped()
	case <-stop.C:
	}
	n := w.inFlight()
	w.log.Error("jobs still running or unreported after cancellation; abandoning them, reported for another attempt",
		zap.Int("jobs", n), zap.Duration("stop_timeout", w.cfg.StopTimeout))
	close(w.abandon)
	stop.Reset(w.cfg.StopTimeout)
	select {
	case <-idle:
	case <-stop.C:
		w.log.Error("results still unreported at the stop timeout; those jobs run again once their lease expires")
		w.cutReports()
	}
	_ = w.stopped()
	return fmt.Errorf("%w: %d job(s) still running or unreported %s after cancellation", ErrAbandoned, n, w.cfg.StopTimeout)
}

// ErrAbandoned is returned by Run when shutdown gave up on jobs that did not stop or whose
// results could not be reported within StopTimeout. A guest may still be running inside its
// module: exit rather than wait on closing it.
var ErrAbandoned = errors.New("worker: jobs abandoned at shutdown")

func (w *Worker) stopped() error {
	w.log.Info("worker stopped", zap.Int("jobs_run", w.Done()))
	return nil
}

func (w *Worker) inFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.inflight
}

// surplusJob is a leased job the worker hands back unrun, and why.
type surplusJob struct {
	job api.LeasedJob
	why string
}

// sortLease splits a lease answer into the jobs to run, which it tracks as in flight, and
// the ones to hand back unrun: at most asked jobs run, each job once. The same lease twice
// is dropped (its one report settles it); the same job under another lease token, or one
// already running here, goes back.
func (w *Worker) sortLease(leased []api.LeasedJob, asked int) (run []api.LeasedJob, back []surplusJob) {
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := make(map[[2]string]bool, len(leased))
	for _, j := range leased {
		key := [2]string{j.JobID, j.LeaseToken}
		if seen[key] || w.running[j.JobID] == j.LeaseToken && j.LeaseToken != "" {
			continue
		}
		seen[key] = true
		switch _, busy := w.running[j.JobID]; {
		case busy:
			back = append(back, surplusJob{j, "the job is already running on this worker under another lease"})
		case len(run) >= asked:
			back = append(back, surplusJob{j, fmt.Sprintf("the control plane leased more jobs than the worker asked for (%d)", asked)})
		default:
			run = append(run, j)
			w.running[j.JobID] = j.LeaseToken
			w.inflight++
		}
	}
	if len(run) > 0 {
		w.notifyLocked()
	}
	return run, back
}

// untrack ends the tracking sortLease began for a job that ran.
func (w *Worker) untrack(j api.LeasedJob) {
	w.mu.Lock()
	if w.running[j.JobID] == j.LeaseToken {
		delete(w.running, j.JobID)
	}
	w.inflight--
	w.done++
	w.notifyLocked()
	w.mu.Unlock()
}

// awaitDeliverable waits until results can be delivered: no report is failing, and, after a
// report was given up (probing), no job is in flight either; then one job at a time is leased
// until a report goes through. It returns false when lease ends first.
func (w *Worker) awaitDeliverable(lease context.Context) (probing, ok bool) {
	for {
		w.mu.Lock()
		probing, ready, ch := w.probing, w.failing == 0 && (!w.probing || w.inflight == 0), w.changed
		w.mu.Unlock()
		if ready {
			return probing, true
		}
		select {
		case <-ch:
		case <-lease.Done():
			return probing, false
		}
	}
}

// setPoll records the cancel function of the lease poll in flight (nil when none). A poll
// begun while a report is failing is cut at once.
func (w *Worker) setPoll(cut context.CancelFunc) {
	w.mu.Lock()
	w.cutPoll = cut
	failing := w.failing > 0
	w.mu.Unlock()
	if cut != nil && failing {
		cut()
	}
}

// reportFailing counts a report that could not be delivered (d = 1) until it is settled
// (d = -1). The first failure cuts the lease poll in flight.
func (w *Worker) reportFailing(d int) {
	w.mu.Lock()
	w.failing += d
	cut := w.cutPoll
	if d < 0 {
		cut = nil
	}
	w.notifyLocked()
	w.mu.Unlock()
	if cut != nil {
		cut()
	}
}

// reportSettled records that the control plane answered a report (delivered bool true), or
// that the worker gave one up after it kept failing: then the worker probes with one job at a
// time until a report goes through.
func (w *Worker) reportSettled(delivered bool) {
	w.mu.Lock()
	if w.probing == delivered {
		w.probing = !delivered
		w.notifyLocked()
	}
	w.mu.Unlock()
}

// notifyLocked wakes whoever waits for a change of the worker's state; w.mu is held.
func (w *Worker) notifyLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// handBack reports a leased job the worker will not run as cancelled and retryable, so
// that it runs again, here or elsewhere; nothing of it ran.
func (w *Worker) handBack(j api.LeasedJob, why string) {
	log := w.log.With(zap.String("job", j.JobID), zap.String("task", j.Task), zap.Int("attempt", j.Attempt))
	log.Warn("job handed back unrun", zap.String("reason", why))
	w.complete(j, newExpiry(j.LeaseExpiresAt), api.CompleteRequest{LeaseToken: j.LeaseToken, Attempt: j.Attempt, Outcome: string(outcome.Cancelled),
		ErrorMessage: "handed back unrun: " + why, Retryable: boolPtr(true)}, log)
}

// MemoryReleases returns how many times the worker gave idle memory back to the operating
// system after a spell of jobs.
func (w *Worker) MemoryReleases() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.released
}

// Done returns how many jobs this worker finished (reported or not).
func (w *Worker) Done() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.done
}

// publish publishes tasks. When the control plane refuses some entries because their name and
// version are already published with another definition (a plugin changed without a version
// bump), those entries are left out of the catalog, logged, and the rest are published: one
// such plugin must not stop the worker or every later catalog update. A job for a task left
// out is not admitted (it is not in the catalog) and goes back to the queue.
func (w *Worker) publish(ctx context.Context, tasks []api.TaskDef) error {
	_, err := w.cfg.Client.PublishCatalog(ctx, tasks)
	var ae *client.APIError
	if err == nil || !errors.As(err, &ae) || ae.Code != api.CodeCatalogConflict || len(ae.Details) == 0 {
		return err
	}
	drop := map[int]bool{}
	for _, d := range ae.Details {
		var i int
		if _, serr := fmt.Sscanf(d.Location, "/tasks/%d", &i); serr != nil || i < 0 || i >= len(tasks) {
			return err // not a refusal this worker can act on
		}
		drop[i] = true
		w.log.Error("task left out of the catalog: its version is already published with another definition; bump the version",
			zap.String("task", tasks[i].Name), zap.String("version", tasks[i].Version))
	}
	kept := make([]api.TaskDef, 0, len(tasks)-len(drop))
	for i, t := range tasks {
		if !drop[i] {
			kept = append(kept, t)
		}
	}
	if _, err := w.cfg.Client.PublishCatalog(ctx, kept); err != nil {
		return err
	}
	w.setCatalog(kept)
	return nil
}

// register registers and publishes the catalog, retrying with backoff while ctx lives.
func (w *Worker) register(ctx context.Context) (api.RegisterResponse, error) {
	b := w.newBackoff()
	for {
		reg, err := w.cfg.Client.Register(ctx, api.RegisterRequest{Name: w.cfg.Name, AgentVersion: w.cfg.Version})
		if err == nil {
			if err := w.pinPool(reg.Pool); err != nil {
				return reg, err
			}
			w.mu.Lock()
			tasks := w.cfg.Catalog
			w.mu.Unlock()
			err = w.publish(ctx, tasks)
		}
		if err == nil {
			return reg, nil
		}
		if errors.Is(err, api.ErrFinal) {
			// A bad token or a bad catalog does not fix itself: stop and say so.
			return reg, fmt.Errorf("register with the control plane: %w", err)
		}
		d := b.NextBackOff()
		w.log.Warn("control plane unreachable; retrying", zap.Error(err), zap.Duration("in", d))
		if !sleep(ctx, d) {
			return reg, ctx.Err()
		}
	}
}

// pinPool fixes the pool approvals are checked against: the configured one, or else the one
// announced at the first registration. A registration in any other pool is refused: the
// worker's credentials and tasks are for its own pool only.
func (w *Worker) pinPool(announced string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pool == "" {
		w.pool = w.cfg.Pool
	}
	if w.pool == "" {
		if announced == "" {
			return errors.New("register with the control plane: it announced no pool, and none is configured")
		}
		w.log.Warn("no pool configured: checking approvals against the pool the control plane announced", zap.String("pool", announced))
		w.pool = announced
	}
	if announced != w.pool {
		return fmt.Errorf("register with the control plane: it registered this worker in pool %q, but the worker serves pool %q; not serving", announced, w.pool)
	}
	return nil
}

func (w *Worker) ownPool() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pool
}

// handle verifies, runs and reports one leased job.
func (w *Worker) handle(jobs context.Context, j api.LeasedJob, hb time.Duration, release func()) {
	// Lazy: at the default levels most jobs log nothing until they finish, and the fields
	// are encoded only if a line is written.
	log := w.log.WithLazy(zap.String("job", j.JobID), zap.String("task", j.Task), zap.Int("attempt", j.Attempt))
	ctx, cancel := context.WithCancelCause(jobs)
	defer cancel(nil)

	// Heartbeats run for the whole job, including verification and reporting.
	exp := newExpiry(j.LeaseExpiresAt)
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		w.heartbeat(ctx, cancel, j, exp, hb, log)
	}()
	defer func() {
		cancel(nil)
		<-hbDone
	}()

	start := time.Now()
	ev := Event{JobID: j.JobID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Attempt: j.Attempt, TraceParent: j.TraceParent}
	// jctx carries the observer's span; ctx (watched by the heartbeat) stays as it is.
	jctx := w.step(ctx, ev, JobReceived)
	req := api.CompleteRequest{LeaseToken: j.LeaseToken, Attempt: j.Attempt}
	auditErr := w.cfg.Audit.Append(audit.JobReceived{Job: j.JobID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: j.Pool, Attempt: j.Attempt})
	var output []byte
	var admitted time.Duration // receipt -> the approval checked and its use recorded
	if auditErr == nil {
		err := w.admit(jctx, j)
		admitted = time.Since(start)
		if errors.Is(err, tasks.ErrVersionNotLoaded) {
			// An approved job for a version this worker does not hold now (a hot swap, or
			// a catalog the control plane has not caught up with): hand it back unrun.
			log.Info("job handed back: its version is not loaded here now", zap.String("version", j.TaskVersion))
			req.Outcome = string(outcome.Cancelled)
			req.ErrorMessage = outcome.Message(err)
			req.Retryable = boolPtr(true)
		} else if err != nil && outcome.CodeOf(err) != outcome.Rejected {
			// The check itself did not finish (shutdown cancelled it, the replay store
			// failed): the approval was not refused, so the job goes back unrun, never ends
			// as rejected.
			log.Warn("job handed back: its approval could not be checked now", zap.Error(err))
			req.Outcome = string(outcome.CodeOf(err))
			req.ErrorMessage = outcome.Message(err)
			req.Retryable = boolPtr(true)
		} else if err != nil {
			log.Warn("job refused", zap.Error(err))
			req.Outcome = string(outcome.Rejected)
			req.ErrorMessage = outcome.Message(err)
			req.Retryable = boolPtr(false)
			ev.Reason = req.ErrorMessage
			jctx = w.step(jctx, ev, ApprovalRejected)
			auditErr = w.cfg.Audit.Append(audit.ApprovalRejected{Job: j.JobID, Task: j.Task, Attempt: j.Attempt, Reason: ev.Reason})
		} else {
			jctx = w.step(jctx, ev, ApprovalVerified)
			auditErr = w.cfg.Audit.Append(audit.ApprovalVerified{Job: j.JobID, Task: j.Task, Attempt: j.Attempt})
			if auditErr == nil {
				auditErr = w.cfg.Audit.Append(audit.JobStarted{Job: j.JobID, Task: j.Task, Attempt: j.Attempt})
			}
		}
	}
	if auditErr != nil && req.Outcome == "" {
		// Fail closed: no job runs unrecorded. Another worker (or this one, once the disk is
		// fixed) runs it.
		log.Error("audit log write failed; not running the job", zap.Error(auditErr))
		req = api.CompleteRequest{LeaseToken: j.LeaseToken, Attempt: j.Attempt, Outcome: string(outcome.Internal),
			ErrorMessage: "the worker's audit log cannot be written"}
	} else if auditErr == nil && req.Outcome == "" {
		log.Info("job started")
		jctx = w.step(jctx, ev, JobStarted)
		res := w.runUnlessAbandoned(jctx, j)
		req.DurationMS = res.Duration.Milliseconds()
		req.ModuleDigest = res.Digest
		ev.HTTPCalls, ev.Instantiate = res.HTTPCalls, res.Instantiate
		err := res.Err
		if err == nil && len(res.Output) > 0 && !json.Valid(res.Output) {
			err = outcome.New(outcome.TaskError, "the task's output is not a JSON document")
		}
		code := outcome.CodeOf(err)
		req.Outcome = string(code)
		if err != nil {
			req.ErrorMessage = outcome.Message(err)
			if errors.Is(err, tasks.ErrVersionNotLoaded) {
				// Swapped out between admission and run: nothing ran; it may run again.
				req.Retryable = boolPtr(true)
			} else if code == outcome.Cancelled {
				// Cancelled by the control plane: final. Cancelled by our shutdown: another
				// worker should run it.
				retry := !errors.Is(context.Cause(ctx), errCancelRequested)
				req.Retryable = &retry
			}
		} else if len(res.Output) > 0 {
			req.Output = json.RawMessage(res.Output)
			output = res.Output
		}
		// duration runs from receipt to the end of the run; admit (the approval check and
		// its durable record) and run (the task) are its main parts.
		log.Info("job finished", zap.String("outcome", req.Outcome), zap.Duration("duration", time.Since(start)),
			zap.Duration("admit", admitted), zap.Duration("run", res.Duration),
			zap.Int("http_calls", res.HTTPCalls), zap.NamedError("cause", err))
	}
	ev.Outcome, ev.Reason, ev.Duration, ev.OutputBytes = outcome.Code(req.Outcome), req.ErrorMessage, time.Since(start), len(output)
	w.step(jctx, ev, JobFinished)
	if auditErr == nil {
		if err := w.cfg.Audit.Append(audit.JobFinished{Job: j.JobID, Task: j.Task, Attempt: j.Attempt,
			Outcome: req.Outcome, Duration: ev.Duration, Output: output}); err != nil {
			log.Error("audit log write failed", zap.Error(err))
		}
	}
	if h := w.cfg.Audit.Head(); h.Seq > 0 {
		// The control plane keeps it: the log can then be checked against it off this host.
		req.AuditHead = &api.AuditHead{Seq: h.Seq, Hash: h.Hash}
	}
	release()
	sent := time.Now()
	w.complete(j, exp, req, log)
	if ce := log.Check(zap.DebugLevel, "result reported"); ce != nil {
		ce.Write(zap.Duration("since_receipt", sent.Sub(start)), zap.Duration("report", time.Since(sent)))
	}
}

// step reports one step of a job to the observer.
func (w *Worker) step(ctx context.Context, ev Event, kind EventKind) context.Context {
	ev.Kind = kind
	return w.observe(ctx, ev)
}

var errCancelRequested = errors.New("the control plane asked to cancel the job")

func boolPtr(b bool) *bool { return &b }

// admit decides whether the job may run: the approval must verify against the trusted keys
// (signature, expiry, job, task, version, input hash, replay, and this worker's own pool,
// not the pool the lease claims; for a plan approval, those of the plan's step for this
// job, which Verify finds itself), and the task must be
// served here at the signed version. An approval that does not verify is refused for good;
// a version not served here now is an error wrapping tasks.ErrVersionNotLoaded, for the
// job to be handed back. With a VersionRunner the version is checked, and held, by
// RunVersion itself, in the same step that picks the module.
func (w *Worker) admit(ctx context.Context, j api.LeasedJob) error {
	if _, err := w.cfg.Verifier.Verify(ctx, j.Approval, approval.Expect{
		JobID: j.JobID, Task: j.Task, TaskVersion: j.TaskVersion, Pool: w.ownPool(), Input: j.Input, Attempt: j.Attempt,
	}); err != nil {
		return err
	}
	if _, ok := w.cfg.Runner.(VersionRunner); ok {
		return nil
	}
	def, ok := w.task(j.Task)
	switch {
	case !ok:
		return outcome.Wrap(outcome.Cancelled, tasks.ErrVersionNotLoaded, "task %q is not served by this worker now; the job was not run", j.Task)
	case def.Version != j.TaskVersion:
		return outcome.Wrap(outcome.Cancelled, tasks.ErrVersionNotLoaded, "task %q version %q is not served by this worker now (it serves %q); the job was not run", j.Task, j.TaskVersion, def.Version)
	}
	return nil
}

// runUnlessAbandoned runs an admitted job, and stops waiting for it when shutdown abandons
// running jobs: a guest stuck in a call that ignores its context cannot hold the worker. The
// abandoned run's goroutine is left behind; the process is about to exit.
func (w *Worker) runUnlessAbandoned(ctx context.Context, j api.LeasedJob) runtime.Result {
	done := make(chan runtime.Result, 1)
	w.runners.run(func() { done <- w.run(ctx, j) })
	select {
	case res := <-done:
		return res
	case <-w.abandon:
		return runtime.Result{Err: outcome.New(outcome.Cancelled, "the worker shut down and the task did not stop when cancelled; abandoned")}
	}
}

// run runs an admitted job on exactly the version its approval names.
func (w *Worker) run(ctx context.Context, j api.LeasedJob) runtime.Result {
	if vr, ok := w.cfg.Runner.(VersionRunner); ok {
		return vr.RunVersion(ctx, j.Task, j.TaskVersion, j.JobID, j.Input)
	}
	return w.cfg.Runner.Run(ctx, j.Task, j.JobID, j.Input)
}

// runners run the jobs' sandbox calls on goroutines kept from one job to the next. A
// goroutine's stack starts small and grows by copying; a job grows it to tens of KiB (the
// guest's host calls, the egress gateway and net/http run on it, below wazero's frames), so a
// fresh goroutine per job paid that growth every time (runtime.newstack under
// egress.(*Gateway).check in a busy worker's profile). A kept goroutine keeps its stack until
// the garbage collector shrinks it, and waits at most runnerIdle for its next job: less than
// the quiet spell after which the worker gives idle memory back (Run's
// releaseMemoryWhenIdle), so that their stacks are gone by then.
type runners struct {
	idle chan func() // unbuffered: a send succeeds only when a runner waits
	stop chan struct{}
	once sync.Once
}

const runnerIdle = 500 * time.Millisecond

// run runs f on an idle runner, or on a new one when none is waiting.
func (r *runners) run(f func()) {
	select {
	case r.idle <- f:
	case <-r.stop:
		go f() // after Run returned: nothing is kept
	default:
		go r.loop(f)
	}
}

func (r *runners) loop(f func()) {
	t := time.NewTimer(runnerIdle)
	defer t.Stop()
	for {
		f()
		t.Reset(runnerIdle)
		select {
		case f = <-r.idle:
		case <-t.C:
			return
		case <-r.stop:
			return
		}
	}
}

// close ends the idle runners; a runner still in a job ends after it.
func (r *runners) close() { r.once.Do(func() { close(r.stop) }) }

func (w *Worker) heartbeat(ctx context.Context, cancel context.CancelCauseFunc, j api.LeasedJob, exp *expiry, every time.Duration, log *zap.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hctx, hcancel := context.WithTimeout(ctx, every)
		resp, err := w.cfg.Client.Heartbeat(hctx, j.LeaseToken)
		hcancel()
		if err == nil {
			exp.extend(resp.LeaseExpiresAt)
		}
		switch {
		case err == nil && resp.CancelRequested, errors.Is(err, api.ErrJobCancelled):
			log.Info("control plane asked to cancel the job")
			cancel(errCancelRequested)
			return
		case errors.Is(err, api.ErrLeaseLost):
			// Another worker may be running it now: stop, our result would be refused.
			log.Warn("lease lost; stopping the job")
			cancel(errCancelRequested)
			return
		case err != nil:
			w.observe(ctx, Event{Kind: HeartbeatFailed, JobID: j.JobID, Task: j.Task, Reason: err.Error()})
			log.Warn("heartbeat failed", zap.Error(err))
		}
	}
}

// expiry is the latest expiry of one lease: the leased one, then each heartbeat's.
type expiry struct{ unixNano atomic.Int64 }

func newExpiry(t time.Time) *expiry {
	e := &expiry{}
	e.unixNano.Store(t.UnixNano())
	return e
}

// extend moves the expiry to t if t is later.
func (e *expiry) extend(t time.Time) {
	n := t.UnixNano()
	for {
		old := e.unixNano.Load()
		if n <= old || e.unixNano.CompareAndSwap(old, n) {
			return
		}
	}
}

func (e *expiry) get() time.Time { return time.Unix(0, e.unixNano.Load()) }

// complete reports the result, retrying through control-plane outages until the lease is
// surely gone: a refused (fenced) completion is final.
func (w *Worker) complete(j api.LeasedJob, exp *expiry, req api.CompleteRequest, log *zap.Logger) {
	failing := false
	defer func() {
		if failing {
			w.reportFailing(-1)
		}
	}()
	b := w.newBackoff()
	for {
		ctx, cancel := context.WithTimeout(w.reports, 30*time.Second)
		_, err := w.cfg.Client.Complete(ctx, j.JobID, req)
		cancel()
		if err == nil {
			w.reportSettled(true)
			return
		}
		if errors.Is(err, api.ErrFinal) {
			w.reportSettled(true) // the control plane answered: results reach it
			log.Warn("completion refused by the control plane", zap.Error(err))
			return
		}
		if !failing {
			failing = true
			w.reportFailing(1)
		}
		// The lease lasts until the latest expiry a heartbeat announced, plus a margin for
		// the control plane's reaper.
		if time.Now().After(exp.get().Add(time.Minute)) {
			w.reportSettled(false)
			log.Error("could not report the result before the lease expired; the job will run again", zap.Error(err))
			return
		}
		d := b.NextBackOff()
		log.Warn("reporting the result failed; retrying", zap.Error(err), zap.Duration("in", d))
		if !sleep(w.reports, d) {
			log.Error("shutdown: the result was not reported; the job will run again", zap.Error(err))
			return
		}
	}
}

// newBackoff returns the retry schedule of one sequence of failed control-plane calls:
// exponential from BackoffMin, doubling up to BackoffMax, each wait randomised by ±50% so
// that workers cut off together do not come back together.
func (w *Worker) newBackoff() *backoff.ExponentialBackOff {
	return &backoff.ExponentialBackOff{InitialInterval: w.cfg.BackoffMin, RandomizationFactor: 0.5,
		Multiplier: 2, MaxInterval: w.cfg.BackoffMax}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

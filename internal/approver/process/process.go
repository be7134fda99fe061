// Package process is the approver process (`castellan approver`): it watches the control
// plane for jobs pending approval in its pools, decides each with an approval rules file
// (internal/approver/rules), and signs approvals with its own key, so that the key never
// reaches the control plane. Jobs no rule decides wait for a person, who decides them
// through the console (internal/approver/console) with the same key and the same checks.
//
// The control plane is not trusted: every job it hands over is checked (its id, state,
// pool, task, version and input) before a rule sees it, and the approval is signed over
// exactly the bytes the rule saw, so that a job whose input is changed afterwards cannot run
// under it (the worker checks the input hash).
package process

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/approver/rules"
	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// Control is the part of the control-plane client the approver uses; *client.Client
// implements it.
type Control interface {
	List(ctx context.Context, o client.ListOptions) (api.JobList, error)
	Get(ctx context.Context, id string) (api.Job, error)
	Approve(ctx context.Context, id, token string) (api.Job, error)
	ListTokens(ctx context.Context) ([]api.Token, error)
}

// Denier is a control plane that can refuse a pending job (POST /v1/jobs/{id}/deny). A
// Control without it cannot deny: a deny decision then leaves the job for a person.
type Denier interface {
	Deny(ctx context.Context, id, reason string) (api.Job, error)
}

// Config configures New.
type Config struct {
	Control Control
	// Key is the private Ed25519 JWK approvals are signed with.
	Key   jose.JSONWebKey
	Rules *rules.RuleSet
	// Pools are the pools this approver serves; jobs of any other pool are never touched,
	// whatever the control plane returns. At least one.
	Pools []string
	// Logger: optional, default nop. Lines name jobs, tasks, pools and rules, never inputs.
	Logger *zap.Logger
	// PollMin and PollMax bound the wait between list polls: PollMin after a poll that
	// found work, doubling to PollMax while nothing is pending. Defaults 200ms and 5s.
	PollMin, PollMax time.Duration
	// LongPoll is how long one list long-poll waits while nothing is pending. Optional,
	// default 25s, at most 60s (the API's limit); negative turns long-polling off.
	LongPoll time.Duration
	// PersonTTL is the lifetime of approvals a person gives in the console. Default 1h.
	PersonTTL time.Duration
	// Now is the clock rules see. Optional, default time.Now.
	Now func() time.Time
}

// Pending is a job waiting for a person: the job exactly as it was checked and shown (the
// approval a person gives is signed over this input, not a later fetch), and why no rule
// decided it.
type Pending struct {
	Job       api.Job
	Requester string // the submitting token's name, or its id when the name is unknown
	Rule      string // the rule that asked, "" for the default
	Reason    string
	Since     time.Time // when the job was submitted
}

// Approver decides pending jobs. Its methods are safe for concurrent use.
type Approver struct {
	cfg   Config
	log   *zap.Logger
	pools map[string]bool

	mu       sync.Mutex
	pending  map[string]Pending     // asked: waiting for a person
	skip     map[string]bool        // refused jobs, and jobs a person is acting on: not decided again
	names    map[string]string      // token id -> name
	namesAt  time.Time              // last ListTokens attempt
	namesOK  bool                   // ListTokens is allowed for our token
	changed  chan struct{}          // closed and replaced whenever pending changes
	plans    map[string]PendingPlan // asked plans (plans.go), by plan id
	stepPlan map[string]string      // a listed step's job id -> its asked plan's id
}

// New checks cfg and returns an Approver.
func New(cfg Config) (*Approver, error) {
	if cfg.Control == nil || cfg.Rules == nil {
		return nil, errors.New("approver: Config.Control and Config.Rules are required")
	}
	if len(cfg.Pools) == 0 {
		return nil, errors.New("approver: serve at least one pool (--pool)")
	}
	if _, err := signer(cfg.Key); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.PollMin <= 0 {
		cfg.PollMin = 200 * time.Millisecond
	}
	if cfg.PollMax < cfg.PollMin {
		cfg.PollMax = max(5*time.Second, cfg.PollMin)
	}
	switch {
	case cfg.LongPoll == 0:
		cfg.LongPoll = 25 * time.Second
	case cfg.LongPoll < 0:
		cfg.LongPoll = 0
	case cfg.LongPoll > time.Minute:
		cfg.LongPoll = time.Minute
	}
	if cfg.PersonTTL <= 0 {
		cfg.PersonTTL = approval.DefaultTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Approver{cfg: cfg, log: cfg.Logger, pools: map[string]bool{}, pending: map[string]Pending{}, skip: map[string]bool{},
		names: map[string]string{}, namesOK: true, changed: make(chan struct{}),
		plans: map[string]PendingPlan{}, stepPlan: map[string]string{}}
	for _, p := range cfg.Pools {
		if p == "" || p == api.AllPools {
			return nil, fmt.Errorf("approver: pool %q: name each pool served", p)
		}
		a.pools[p] = true
	}
	return a, nil
}

func signer(k jose.JSONWebKey) (string, error) {
	if k.Key == nil || k.IsPublic() || k.KeyID == "" {
		return "", errors.New("approver: Config.Key must be a private Ed25519 JWK with a kid")
	}
	return k.KeyID, nil
}

// ErrUnauthenticated ends Run: the control plane refuses the approver's token (revoked or
// wrong), which no retry can fix.
var ErrUnauthenticated = errors.New("the control plane refuses this approver's token (401): check --token-file")

// ErrForbidden ends Run: the token may not read the jobs of a pool served (403), which no
// retry can fix either.
var ErrForbidden = errors.New("the approver's token may not read a pool it is told to serve (403): check --pool and the token's pool")

// Run polls until ctx ends. While no job is pending in any pool it long-polls the list
// (GET /v1/jobs?wait_seconds=N), so a new job is decided within milliseconds of its submit;
// while some wait for a person (the control plane answers such a list at once) it polls
// with back-off from PollMin to PollMax. Failures to reach the control plane are logged
// and retried with back-off; only a refused token (ErrUnauthenticated) ends Run early.
func (a *Approver) Run(ctx context.Context) error {
	wait := a.cfg.PollMin
	longPoll := a.cfg.LongPoll >= time.Second
	for {
		found, listed, err := a.poll(ctx)
		var ae *client.APIError
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.As(err, &ae) && ae.Status == http.StatusUnauthorized:
			return ErrUnauthenticated
		case errors.As(err, &ae) && ae.Status == http.StatusForbidden:
			return fmt.Errorf("%w: %s", ErrForbidden, ae.Message)
		case err != nil:
			a.log.Warn("cannot list the pending jobs; retrying", zap.Error(err), zap.Duration("retry_in", wait))
		}
		if err == nil && listed == 0 && longPoll {
			switch werr := a.waitForWork(ctx); {
			case ctx.Err() != nil:
				return nil
			case errors.As(werr, &ae) && ae.Status == http.StatusBadRequest:
				// A control plane older than the list long-poll: poll instead.
				a.log.Info("the control plane cannot long-poll job lists; polling instead", zap.Error(werr))
				longPoll = false
			case werr == nil:
				wait = a.cfg.PollMin
				continue
			}
		}
		if found > 0 && err == nil {
			// Look again at once: what was decided has left the list, so the next poll
			// finds it empty and long-polls, or finds jobs that arrived meanwhile.
			wait = a.cfg.PollMin
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		wait = min(wait*2, a.cfg.PollMax)
	}
}

// waitForWork long-polls the pending list of every pool at once and returns when one
// answers (a job arrived, or the wait passed), or with the first error.
func (a *Approver) waitForWork(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, len(a.cfg.Pools))
	for _, pool := range a.cfg.Pools {
		go func() {
			_, err := a.cfg.Control.List(ctx, client.ListOptions{State: api.StatePendingApproval, Pool: pool, Limit: 1, Wait: a.cfg.LongPoll})
			done <- err
		}()
	}
	err := <-done
	cancel()
	for range len(a.cfg.Pools) - 1 {
		<-done
	}
	return err
}

// maxPages bounds the pages one poll reads per pool, so a control plane that keeps handing
// out cursors cannot hold the approver in one poll.
const maxPages = 20

// Poll lists the pending jobs of every pool once and decides the new ones. It returns how
// many jobs it decided (asked ones count once, when first asked).
func (a *Approver) Poll(ctx context.Context) (int, error) {
	n, _, err := a.poll(ctx)
	return n, err
}

// poll is Poll that also returns how many pending jobs were listed.
func (a *Approver) poll(ctx context.Context) (decided, listed int, _ error) {
	seen := map[string]bool{}
	var firstErr error
	for _, pool := range a.cfg.Pools {
		cursor := ""
		for range maxPages {
			l, err := a.cfg.Control.List(ctx, client.ListOptions{State: api.StatePendingApproval, Pool: pool, Cursor: cursor})
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				break
			}
			listed += len(l.Jobs)
			for _, j := range l.Jobs {
				if j.ID == "" {
					a.log.Warn("refused a listed job without an id")
					continue
				}
				if j.Pool != pool || !a.pools[j.Pool] {
					a.log.Warn("refused a listed job: not in the pool asked for", zap.String("job", j.ID), zap.String("pool", j.Pool), zap.String("asked_pool", pool))
					continue
				}
				seen[j.ID] = true
				if a.known(j.ID) {
					continue
				}
				if a.Decide(ctx, j.ID, pool) {
					decided++
				}
			}
			if l.NextCursor == "" || l.NextCursor == cursor {
				break
			}
			cursor = l.NextCursor
		}
	}
	if firstErr == nil {
		a.forgetUnlisted(seen)
	}
	return decided, listed, firstErr
}

// known reports whether id was asked about, refused, or is being decided by a person.
func (a *Approver) known(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.pending[id]
	_, step := a.stepPlan[id]
	return ok || step || a.skip[id]
}

// forgetUnlisted drops asked jobs the control plane no longer lists as pending: another
// approver, a person elsewhere or a cancel decided them.
func (a *Approver) forgetUnlisted(seen map[string]bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(a.pending)
	for id := range a.pending {
		if !seen[id] {
			delete(a.pending, id)
		}
	}
	for id := range a.skip {
		if !seen[id] {
			delete(a.skip, id)
		}
	}
	for id := range a.stepPlan {
		if !seen[id] {
			delete(a.stepPlan, id)
		}
	}
	// A plan waiting for approval has every step pending_approval, so every step listed:
	// one missing means the plan was decided elsewhere (its first step queued) or a step
	// ended. Its other steps are forgotten too, so that the next poll fetches the plan
	// again and learns which.
	plans := len(a.plans)
	for id, p := range a.plans {
		if !slices.ContainsFunc(p.Plan.Steps, func(j api.Job) bool { return !seen[j.ID] }) {
			continue
		}
		delete(a.plans, id)
		for _, st := range p.Plan.Steps {
			delete(a.stepPlan, st.ID)
		}
	}
	if len(a.pending) != n || len(a.plans) != plans {
		a.notifyLocked()
	}
}

func (a *Approver) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// Changed returns a channel closed at the next change of Pending.
func (a *Approver) Changed() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.changed
}

// Pending lists the jobs waiting for a person, oldest first.
func (a *Approver) Pending() []Pending {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Pending, 0, len(a.pending))
	for _, p := range a.pending {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Since.Equal(out[j].Since) {
			return out[i].Since.Before(out[j].Since)
		}
		return out[i].Job.ID < out[j].Job.ID
	})
	return out
}

// Decide fetches job id (listed in pool), checks it and applies the rules. It reports
// whether the job was decided or asked about; false when it was refused or could not be
// fetched.
func (a *Approver) Decide(ctx context.Context, id, pool string) bool {
	j, err := a.cfg.Control.Get(ctx, id)
	if err != nil {
		if isGone(err) {
			a.log.Debug("job already decided or gone", zap.String("job", id))
		} else {
			a.log.Warn("cannot fetch a pending job", zap.String("job", id), zap.Error(err))
		}
		return false
	}
	if j.ID == id && j.State != api.StatePendingApproval {
		// Listed as pending, decided since: another approver or a person was quicker.
		a.log.Debug("job already decided", zap.String("job", id), zap.String("state", string(j.State)))
		return false
	}
	if problem := a.check(j, id, pool); problem != "" {
		a.log.Error("refused a job from the control plane: "+problem, zap.String("job", id), zap.String("pool", pool))
		a.mu.Lock()
		a.skip[id] = true
		a.mu.Unlock()
		return false
	}
	if j.PlanID != "" {
		// A step is approved only with its plan: one row for the plan, for a person.
		return a.askPlan(ctx, id, j.PlanID)
	}
	requester, known := a.requester(ctx, j)
	d := a.cfg.Rules.Decide(ctx, rules.Request{Task: j.Task, Version: j.TaskVersion, Pool: j.Pool, Input: j.Input,
		Requester: requester, RequesterUnknown: !known, Now: a.cfg.Now()})
	fields := []zap.Field{zap.String("job", j.ID), zap.String("task", j.Task), zap.String("version", j.TaskVersion),
		zap.String("pool", j.Pool), zap.String("rule", d.Rule)}
	switch d.Action {
	case rules.Approve:
		tok, err := a.sign(j, d.TTL, d.MaxAttempts, approval.ApprovedBy{Rule: d.Rule})
		if err != nil {
			a.log.Error("cannot sign the approval; leaving the job for a person", append(fields, zap.Error(err))...)
			a.ask(j, requester, d.Rule, "signing failed")
			return true
		}
		if err := a.attach(ctx, j.ID, tok); err != nil {
			a.logAttach(err, "approve", fields)
			return false
		}
		a.log.Info("approved by rule", append(fields, zap.Duration("ttl", d.TTL), zap.Int("max_attempts", d.MaxAttempts))...)
		return true
	case rules.Deny:
		dn, ok := a.cfg.Control.(Denier)
		if !ok {
			a.log.Warn("a rule denies the job but this control plane cannot deny; leaving it for a person", fields...)
			a.ask(j, requester, d.Rule, "denied by rule, but the control plane cannot deny: "+d.Reason)
			return true
		}
		if _, err := dn.Deny(ctx, j.ID, d.Reason); err != nil {
			a.logAttach(err, "deny", fields)
			var ae *client.APIError
			if errors.As(err, &ae) && ae.Status == http.StatusBadRequest {
				// The control plane refuses the rule's reason (say, a character it does not
				// accept): asking a person beats retrying the same deny at every poll.
				a.ask(j, requester, d.Rule, "denied by rule, but the control plane refused the deny: "+ae.Message)
				return true
			}
			return false
		}
		a.log.Info("denied by rule", fields...)
		return true
	default:
		if d.Err != nil {
			// The error text may quote the input (a CEL message naming a value); log only
			// that evaluation failed, and show the reason to the person in the console.
			a.log.Warn("a rule could not be evaluated; asking a person", fields...)
		} else {
			a.log.Info("asking a person", fields...)
		}
		a.ask(j, requester, d.Rule, d.Reason)
		return true
	}
}

func (a *Approver) ask(j api.Job, requester, rule, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pending[j.ID] = Pending{Job: j, Requester: requester, Rule: rule, Reason: reason, Since: j.CreatedAt}
	a.notifyLocked()
}

// check says what is wrong with job j, fetched as id from pool, or "" if nothing is. A
// control plane that answers with another job, another pool, a decided job or an input
// that cannot be hashed is lying or broken; nothing of it is signed.
func (a *Approver) check(j api.Job, id, pool string) string {
	switch {
	case j.ID != id:
		return fmt.Sprintf("asked for job %q, got %q", id, j.ID)
	case j.Pool != pool || !a.pools[j.Pool]:
		return fmt.Sprintf("the job is in pool %q, which this approver does not serve", j.Pool)
	case j.State != api.StatePendingApproval:
		return fmt.Sprintf("the job is %q, not pending_approval", j.State)
	case j.Task == "" || j.TaskVersion == "":
		return "the job names no task or no task version"
	case j.MaxAttempts < 1 || j.MaxAttempts > 100:
		return fmt.Sprintf("the job allows %d attempts, outside 1..100", j.MaxAttempts)
	}
	if _, err := approval.InputHash(j.Input); err != nil {
		return "the job input cannot be hashed (not I-JSON)"
	}
	return ""
}

// sign signs an approval for j: its id, task, version, pool and the hash of exactly the
// input that was decided on.
func (a *Approver) sign(j api.Job, ttl time.Duration, maxAttempts int, by approval.ApprovedBy) (string, error) {
	tok, _, err := approval.Sign(a.cfg.Key, approval.Request{JobID: j.ID, Task: j.Task, TaskVersion: j.TaskVersion,
		Pool: j.Pool, Input: j.Input, TTL: ttl, MaxAttempts: maxAttempts, Approver: subject(by), ApprovedBy: &by})
	return tok, err
}

func subject(by approval.ApprovedBy) string {
	if by.Person != "" {
		return by.Person
	}
	return "rule:" + by.Rule
}

func (a *Approver) attach(ctx context.Context, id, tok string) error {
	_, err := a.cfg.Control.Approve(ctx, id, tok)
	return err
}

// logAttach logs a failed approve or deny; a 409 (someone else decided first) or 404 is
// the normal end of a race with another approver.
func (a *Approver) logAttach(err error, what string, fields []zap.Field) {
	if isGone(err) {
		a.log.Info("job already decided elsewhere; nothing to "+what, fields...)
		return
	}
	a.log.Warn("cannot "+what+" the job; it stays pending", append(fields, zap.Error(err))...)
}

func isGone(err error) bool {
	var ae *client.APIError
	return errors.As(err, &ae) && (ae.Status == http.StatusConflict || ae.Status == http.StatusNotFound)
}

// nameRefresh bounds how often an unknown token id makes the approver list tokens again.
const nameRefresh = 30 * time.Second

// requester returns the name of the token that submitted j, and whether it is known. The
// control plane records it with the job (submitted_by_name); a job without it (an unnamed
// token, or one submitted before the control plane recorded names) is looked up in GET
// /v1/tokens, which needs an admin token. Without either, requester is unknown to the rules
// (a rule reading it asks a person), never the token id.
func (a *Approver) requester(ctx context.Context, j api.Job) (string, bool) {
	if j.SubmittedByName != "" {
		return j.SubmittedByName, true
	}
	id := j.SubmittedBy
	a.mu.Lock()
	name, ok := a.names[id]
	refresh := !ok && a.namesOK && a.cfg.Now().Sub(a.namesAt) >= nameRefresh
	if refresh {
		a.namesAt = a.cfg.Now()
	}
	a.mu.Unlock()
	if ok {
		return name, true
	}
	if !refresh {
		return id, false
	}
	toks, err := a.cfg.Control.ListTokens(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		var ae *client.APIError
		if errors.As(err, &ae) && ae.Status == http.StatusForbidden {
			a.namesOK = false
			a.log.Warn("this token cannot list token names (needs the admin role); rules that read requester will ask a person")
		} else {
			a.log.Warn("cannot list token names", zap.Error(err))
		}
		return id, false
	}
	for _, t := range toks {
		if t.Name != "" {
			a.names[t.ID] = t.Name
		}
	}
	name, ok = a.names[id]
	if !ok {
		return id, false
	}
	return name, true
}

// Errors of ApproveAsPerson and DenyAsPerson.
var (
	ErrNotPending = errors.New("the job is not waiting for a person here (decided elsewhere, or never asked)")
	ErrCannotDeny = errors.New("this control plane cannot deny jobs")
)

// ApproveAsPerson signs an approval for the asked job id on behalf of person, over the job
// exactly as it was shown, and attaches it.
func (a *Approver) ApproveAsPerson(ctx context.Context, id, person string) error {
	p, err := a.take(id)
	if err != nil {
		return err
	}
	by := approval.ApprovedBy{Person: person}
	tok, err := a.sign(p.Job, a.cfg.PersonTTL, p.Job.MaxAttempts, by)
	if err != nil {
		a.putBack(p)
		return fmt.Errorf("sign the approval: %w", err)
	}
	fields := []zap.Field{zap.String("job", id), zap.String("task", p.Job.Task), zap.String("pool", p.Job.Pool), zap.String("person", person)}
	if err := a.attach(ctx, id, tok); err != nil {
		a.logAttach(err, "approve", fields)
		if isGone(err) {
			return ErrNotPending
		}
		a.putBack(p)
		return err
	}
	a.log.Info("approved by a person", fields...)
	return nil
}

// DenyAsPerson refuses the asked job id with reason.
func (a *Approver) DenyAsPerson(ctx context.Context, id, person, reason string) error {
	dn, ok := a.cfg.Control.(Denier)
	if !ok {
		return ErrCannotDeny
	}
	p, err := a.take(id)
	if err != nil {
		return err
	}
	fields := []zap.Field{zap.String("job", id), zap.String("task", p.Job.Task), zap.String("pool", p.Job.Pool), zap.String("person", person)}
	if _, err := dn.Deny(ctx, id, reason); err != nil {
		a.logAttach(err, "deny", fields)
		if isGone(err) {
			return ErrNotPending
		}
		a.putBack(p)
		return err
	}
	a.log.Info("denied by a person", fields...)
	return nil
}

// CanDeny reports whether the control plane can deny jobs.
func (a *Approver) CanDeny() bool {
	_, ok := a.cfg.Control.(Denier)
	return ok
}

// take removes id from the pending set, so that two clicks cannot both act on it.
func (a *Approver) take(id string) (Pending, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.pending[id]
	if !ok {
		return Pending{}, ErrNotPending
	}
	delete(a.pending, id)
	a.skip[id] = true
	a.notifyLocked()
	return p, nil
}

func (a *Approver) putBack(p Pending) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.skip, p.Job.ID)
	a.pending[p.Job.ID] = p
	a.notifyLocked()
}

// Pools returns the pools served.
func (a *Approver) Pools() []string { return slices.Clone(a.cfg.Pools) }

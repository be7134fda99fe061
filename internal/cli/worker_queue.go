package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/redact"
)

// The worker stops (exit 2) once the control plane has refused its token, with --token-file
// unchanged, authRefusalLimit calls in a row over at least authRefusalWindow. A refusal may
// come from an operator mid-rotation who revoked the old token before writing the new one:
// the window gives them time. A token that stays refused does not come back on its own, and
// retrying it forever only hides the fault (the Buildkite agent stops too when its token is
// refused).
const (
	authRefusalLimit  = 5
	authRefusalWindow = 30 * time.Second
)

// authRefused reports whether err is the control plane refusing the token itself: 401
// (unknown, revoked or expired) or 403 (a token of another role).
func authRefused(err error) bool {
	var ae *client.APIError
	return errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden)
}

// authHint is the one line that tells the operator what to fix when the token is refused.
func authHint(err error, file string) string {
	var ae *client.APIError
	status := 0
	if errors.As(err, &ae) {
		status = ae.Status
	}
	where := "$CASTELLAN_TOKEN"
	if file != "" {
		where = "--token-file " + file
	}
	what := "the worker's token is unknown, revoked or expired"
	if status == http.StatusForbidden {
		what = "the worker's token is not a worker token"
	}
	return fmt.Sprintf("the control plane refused the token (%d): %s; put a token from `castellan token create --role worker` in %s", status, what, where)
}

// tokenQueue is the HTTP control plane as the worker sees it, with a bearer token that can be
// rotated under it: when a call is refused (401/403), --token-file is read again, and a
// changed token is used from then on, the refused call repeated once with it. Re-reading on
// refusal alone covers both orders of a rotation (write the new token, then revoke the old;
// or revoke, then write) without a timer or a file watcher. After authRefusalLimit refusals
// in a row with the file unchanged, fatal is called once.
type tokenQueue struct {
	server string
	file   string // "" when the token came from $CASTELLAN_TOKEN: nothing to re-read
	opts   []client.Option
	red    *redact.Set
	log    *zap.Logger
	fatal  func(error)
	window time.Duration // authRefusalWindow, shorter in tests

	mu        sync.Mutex
	token     string
	cl        *client.Client
	refused   int       // refusals in a row of the current token
	refusedAt time.Time // the first of them
	stopped   bool
	served    bool // the control plane has accepted a token: refusals now come while running
}

var _ worker.Queue = (*tokenQueue)(nil)

func newTokenQueue(server, file, token string, red *redact.Set, log *zap.Logger, fatal func(error), opts ...client.Option) (*tokenQueue, error) {
	cl, err := client.New(server, token, opts...)
	if err != nil {
		return nil, err
	}
	return &tokenQueue{server: server, file: file, opts: opts, red: red, log: log, fatal: fatal, window: authRefusalWindow,
		token: token, cl: cl}, nil
}

func (q *tokenQueue) client() *client.Client {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.cl
}

// accepted records that the control plane took the token cl carries.
func (q *tokenQueue) accepted(cl *client.Client) {
	q.mu.Lock()
	if q.cl == cl {
		q.refused = 0
	}
	q.served = true
	q.mu.Unlock()
}

// refusedWith handles a refusal of the token cl carries, and returns the client to repeat the
// call with, or nil to give the refusal back.
func (q *tokenQueue) refusedWith(cl *client.Client, err error) *client.Client {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.cl != cl {
		return q.cl // another call picked up a new token meanwhile
	}
	if q.file != "" {
		tok, rerr := readToken(q.file)
		switch {
		case rerr != nil:
			q.log.Warn("the control plane refused the token and --token-file cannot be read again", zap.Error(rerr))
		case tok != q.token:
			ncl, nerr := client.New(q.server, tok, q.opts...)
			if nerr == nil {
				if q.red != nil {
					_ = q.red.Add(tok) // never log the new token either
				}
				q.token, q.cl, q.refused = tok, ncl, 0
				q.log.Info("the control plane refused the token; --token-file has changed: using the new token")
				return ncl
			}
		}
	}
	if q.refused == 0 {
		q.refusedAt = time.Now()
	}
	q.refused++
	if q.served { // at the start, the refusal is the error the worker exits with: said once
		q.log.Warn("the control plane refused the token", zap.Int("in_a_row", q.refused), zap.Error(err))
	}
	if q.refused >= authRefusalLimit && time.Since(q.refusedAt) >= q.window && !q.stopped && q.fatal != nil {
		q.stopped = true
		go q.fatal(err)
	}
	return nil
}

// call runs f with the current client, and once more with a rotated token if the first
// answer was a refusal and the token file has changed.
func call[T any](q *tokenQueue, f func(*client.Client) (T, error)) (T, error) {
	cl := q.client()
	v, err := f(cl)
	if authRefused(err) {
		if next := q.refusedWith(cl, err); next != nil {
			cl = next
			if v, err = f(cl); authRefused(err) {
				q.refusedWith(cl, err)
				return v, err
			}
		}
	}
	if err == nil {
		q.accepted(cl)
	}
	return v, err
}

func (q *tokenQueue) Register(ctx context.Context, req api.RegisterRequest) (api.RegisterResponse, error) {
	return call(q, func(c *client.Client) (api.RegisterResponse, error) { return c.Register(ctx, req) })
}

func (q *tokenQueue) PublishCatalog(ctx context.Context, tasks []api.TaskDef) (api.CatalogResponse, error) {
	return call(q, func(c *client.Client) (api.CatalogResponse, error) { return c.PublishCatalog(ctx, tasks) })
}

func (q *tokenQueue) Lease(ctx context.Context, max int, wait time.Duration) ([]api.LeasedJob, error) {
	return call(q, func(c *client.Client) ([]api.LeasedJob, error) { return c.Lease(ctx, max, wait) })
}

func (q *tokenQueue) Heartbeat(ctx context.Context, leaseToken string) (api.HeartbeatResponse, error) {
	return call(q, func(c *client.Client) (api.HeartbeatResponse, error) { return c.Heartbeat(ctx, leaseToken) })
}

func (q *tokenQueue) Complete(ctx context.Context, jobID string, req api.CompleteRequest) (api.CompleteResponse, error) {
	return call(q, func(c *client.Client) (api.CompleteResponse, error) { return c.Complete(ctx, jobID, req) })
}

// oneJob is the queue of an ephemeral worker (--one-job): it asks for one job at a time, and
// once a lease has handed out a job it stops leasing (stop), so the worker runs that job,
// reports it and exits.
type oneJob struct {
	worker.Queue
	stop func()
}

func (o oneJob) Lease(ctx context.Context, _ int, wait time.Duration) ([]api.LeasedJob, error) {
	jobs, err := o.Queue.Lease(ctx, 1, wait)
	if len(jobs) > 0 {
		o.stop()
	}
	return jobs, err
}

// checkServerURL refuses a --server the worker cannot use before anything is loaded, naming
// the scheme it wants. The URL itself is echoed only when it carries no user information.
func checkServerURL(s string) error {
	const want = "use https://HOST[:PORT] (http:// on loopback), or nats://, tls://, ws:// or wss:// for a NATS server"
	if !strings.Contains(s, "://") {
		if strings.Contains(s, "@") {
			return usagef("--server has no scheme; %s", want)
		}
		return usagef("--server %q has no scheme; %s", s, want)
	}
	u, err := url.Parse(s)
	if err != nil {
		return usagef("--server is not a valid URL; %s", want)
	}
	switch u.Scheme {
	case "http", "https", "nats", "tls", "ws", "wss":
	default:
		return usagef("--server: scheme %q is not supported; %s", u.Scheme, want)
	}
	if u.Host == "" {
		return usagef("--server: no host in it; %s", want)
	}
	return nil
}

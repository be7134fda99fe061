package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// APIError is a non-2xx answer from the control plane.
type APIError struct {
	Status  int               // HTTP status
	Code    string            // api.Code* constant, e.g. "lease_conflict"
	Message string            // human-readable, safe to show
	Details []api.SchemaIssue // schema violations, for input_invalid
}

func (e *APIError) Error() string {
	return fmt.Sprintf("control plane: %d %s: %s", e.Status, e.Code, e.Message)
}

// Is makes errors.Is(err, api.ErrLeaseLost) (and api.ErrJobCancelled, api.ErrFenced,
// api.ErrNotRegistered, api.ErrFinal) true for the refusals they name, so that a caller
// need not read the HTTP status or code.
func (e *APIError) Is(target error) bool { return api.IsRefusal(e.Status, e.Code, target) }

// IsCode reports whether err is an *APIError with the given code.
func IsCode(err error, code string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == code
}

// Client talks to one control plane with one bearer token. Safe for concurrent use.
type Client struct {
	base       *url.URL
	token      string
	hc         *http.Client
	reqTimeout time.Duration
	pollMargin time.Duration
	userAgent  string
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sets the HTTP client (for custom TLS roots). Its Timeout should be 0:
// the client sets per-request deadlines itself. Optional, default a plain http.Client.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithRootCAs trusts only pool's certificates for the control plane's TLS certificate (a
// private CA), keeping the client's connection pooling. Optional, default the system roots.
func WithRootCAs(pool *x509.CertPool) Option {
	return func(c *Client) {
		t := newTransport()
		t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
		c.hc = &http.Client{Transport: t}
	}
}

// WithRequestTimeout bounds ordinary (non-long-poll) requests. Optional, default 30s.
func WithRequestTimeout(d time.Duration) Option { return func(c *Client) { c.reqTimeout = d } }

// WithUserAgent sets the User-Agent header. Optional, default "castellan-client".
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// New returns a client for baseURL (e.g. "https://cp.example:8443") authenticating with token.
func New(baseURL, token string, opts ...Option) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("client: base URL %q must be http(s)://host[:port]", baseURL)
	}
	if token == "" {
		return nil, errors.New("client: token is empty: pass the bearer token from `castellan token create`")
	}
	c := &Client{base: u, token: token, hc: &http.Client{Transport: newTransport()}, reqTimeout: 30 * time.Second,
		pollMargin: 30 * time.Second, userAgent: "castellan-client"}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// maxIdlePerHost is how many idle connections the client keeps to the control plane. A
// worker reports results, heartbeats and leases from many goroutines at once; with
// net/http's default of 2, every request beyond the second dialled a new connection and
// closed it afterwards (measured: 6% of the CPU of a busy worker went to dialling).
const maxIdlePerHost = 128

func newTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = maxIdlePerHost
	t.MaxIdleConnsPerHost = maxIdlePerHost
	return t
}

// do sends one request; body (if not nil) is JSON-encoded, out (if not nil) decoded.
func (c *Client) do(ctx context.Context, timeout time.Duration, method, path string, query url.Values, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	u := *c.base
	u.Path += path
	if len(query) > 0 {
		u.RawQuery = query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("client: encode %s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// The URL may hold a lease token; name only the method and route.
		return fmt.Errorf("client: %s %s: %w", method, routeName(path), stripURL(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("client: %s %s: read response: %w", method, routeName(path), err)
	}
	if resp.StatusCode >= 300 {
		var eb api.ErrorBody
		if json.Unmarshal(data, &eb) != nil || eb.Error.Code == "" {
			msg := strings.TrimSpace(string(data))
			if len(msg) > 200 {
				msg = msg[:200]
			}
			return &APIError{Status: resp.StatusCode, Code: "http_" + strconv.Itoa(resp.StatusCode), Message: msg}
		}
		return &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message, Details: eb.Error.Details}
	}
	if out != nil && resp.StatusCode != http.StatusNoContent {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("client: %s %s: decode response: %w", method, routeName(path), err)
		}
	}
	return nil
}

func routeName(path string) string {
	if strings.HasPrefix(path, "/v1/leases/") {
		return "/v1/leases/{token}/heartbeat"
	}
	return path
}

// stripURL drops the URL from a *url.Error so a lease token in the path is not logged.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Register announces the worker (idempotent) and returns the server's lease parameters.
func (c *Client) Register(ctx context.Context, req api.RegisterRequest) (api.RegisterResponse, error) {
	var out api.RegisterResponse
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/workers/register", nil, req, &out)
}

// PublishCatalog replaces the worker's task catalog.
func (c *Client) PublishCatalog(ctx context.Context, tasks []api.TaskDef) (api.CatalogResponse, error) {
	if tasks == nil {
		tasks = []api.TaskDef{}
	}
	var out api.CatalogResponse
	return out, c.do(ctx, c.reqTimeout, http.MethodPut, "/v1/catalog", nil, api.CatalogRequest{Tasks: tasks}, &out)
}

// Catalog lists the tasks published in pool ("" for the token's own pool).
func (c *Client) Catalog(ctx context.Context, pool string) (api.CatalogResponse, error) {
	q := url.Values{}
	if pool != "" {
		q.Set("pool", pool)
	}
	var out api.CatalogResponse
	return out, c.do(ctx, c.reqTimeout, http.MethodGet, "/v1/catalog", q, nil, &out)
}

// Lease asks for up to max jobs, waiting up to wait (0..60s, rounded down to seconds) for
// one to become available. An empty slice means the wait elapsed.
func (c *Client) Lease(ctx context.Context, max int, wait time.Duration) ([]api.LeasedJob, error) {
	secs := int(wait / time.Second)
	var out api.LeaseResponse
	err := c.do(ctx, wait+c.pollMargin, http.MethodPost, "/v1/lease", nil, api.LeaseRequest{Max: max, WaitSeconds: &secs}, &out)
	return out.Jobs, err
}

// Heartbeat extends a lease. An *APIError with code lease_lost or job_cancelled means:
// stop the job and do not complete it.
func (c *Client) Heartbeat(ctx context.Context, leaseToken string) (api.HeartbeatResponse, error) {
	var out api.HeartbeatResponse
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/leases/"+url.PathEscape(leaseToken)+"/heartbeat", nil, struct{}{}, &out)
}

// Complete reports an attempt's result. Code lease_conflict means the lease was stale or
// the attempt was already completed; nothing was recorded.
func (c *Client) Complete(ctx context.Context, jobID string, req api.CompleteRequest) (api.CompleteResponse, error) {
	var out api.CompleteResponse
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/jobs/"+url.PathEscape(jobID)+"/complete", nil, req, &out)
}

// Submit creates a job (or returns the existing one for a repeated idempotency key).
func (c *Client) Submit(ctx context.Context, req api.SubmitRequest) (api.Job, error) {
	var out api.Job
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/jobs", nil, req, &out)
}

// Approve attaches an approval (a compact JWS) to a pending_approval job.
func (c *Client) Approve(ctx context.Context, jobID, token string) (api.Job, error) {
	var out api.Job
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/jobs/"+url.PathEscape(jobID)+"/approval", nil, api.ApproveRequest{Token: token}, &out)
}

// Deny refuses a pending_approval job with a reason (approver or admin): it ends denied,
// and the submitter sees who denied it and why.
func (c *Client) Deny(ctx context.Context, jobID, reason string) (api.Job, error) {
	var out api.Job
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/jobs/"+url.PathEscape(jobID)+"/deny", nil, api.DenyRequest{Reason: reason}, &out)
}

// Get returns one job.
func (c *Client) Get(ctx context.Context, jobID string) (api.Job, error) {
	var out api.Job
	return out, c.do(ctx, c.reqTimeout, http.MethodGet, "/v1/jobs/"+url.PathEscape(jobID), nil, nil, &out)
}

// ListOptions filters List. Zero values mean "any" / the server default.
type ListOptions struct {
	State  api.State
	Task   string
	Pool   string
	Limit  int
	Cursor string
	// Wait, when the page would be empty, long-polls up to Wait (whole seconds, 0..60s)
	// for a job that matches to be created or to change state, then answers. An approver
	// wakes on a new pending_approval job this way instead of polling.
	Wait time.Duration
}

// List returns one page of jobs, newest first.
func (c *Client) List(ctx context.Context, o ListOptions) (api.JobList, error) {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("state", string(o.State))
	set("task", o.Task)
	set("pool", o.Pool)
	set("cursor", o.Cursor)
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	timeout := c.reqTimeout
	if o.Wait > 0 {
		q.Set("wait_seconds", strconv.Itoa(int(o.Wait/time.Second)))
		timeout = o.Wait + c.pollMargin
	}
	var out api.JobList
	return out, c.do(ctx, timeout, http.MethodGet, "/v1/jobs", q, nil, &out)
}

// WaitOnce long-polls up to timeout (0..60s) and returns the job, terminal or not.
func (c *Client) WaitOnce(ctx context.Context, jobID string, timeout time.Duration) (api.Job, error) {
	q := url.Values{"timeout": {strconv.Itoa(int(timeout / time.Second))}}
	var out api.Job
	return out, c.do(ctx, timeout+c.pollMargin, http.MethodGet, "/v1/jobs/"+url.PathEscape(jobID)+"/wait", q, nil, &out)
}

// Wait long-polls until the job is terminal or ctx ends.
func (c *Client) Wait(ctx context.Context, jobID string) (api.Job, error) {
	for {
		j, err := c.WaitOnce(ctx, jobID, 60*time.Second)
		if err != nil || j.State.Terminal() {
			return j, err
		}
		if err := ctx.Err(); err != nil {
			return j, err
		}
	}
}

// Cancel cancels a job: at once if not yet running, else by asking its worker to stop.
func (c *Client) Cancel(ctx context.Context, jobID string) (api.Job, error) {
	var out api.Job
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/jobs/"+url.PathEscape(jobID)+"/cancel", nil, nil, &out)
}

// CreateToken creates a bearer token (admin). The secret is in the result's Secret, once.
func (c *Client) CreateToken(ctx context.Context, req api.TokenCreateRequest) (api.Token, error) {
	var out api.Token
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/tokens", nil, req, &out)
}

// Whoami describes the client's own token (any role): id, role, pool, name, creation and
// expiry. Secret is never set.
func (c *Client) Whoami(ctx context.Context) (api.Token, error) {
	var out api.Token
	err := c.do(ctx, c.reqTimeout, http.MethodGet, "/v1/whoami", nil, nil, &out)
	out.Secret = ""
	return out, err
}

// Workers lists the workers of pool ("" for every pool the token may see) with their
// tasks, last heartbeat and whether they are online (admin; approvers for their pool).
func (c *Client) Workers(ctx context.Context, pool string) (api.WorkerList, error) {
	q := url.Values{}
	if pool != "" {
		q.Set("pool", pool)
	}
	var out api.WorkerList
	return out, c.do(ctx, c.reqTimeout, http.MethodGet, "/v1/workers", q, nil, &out)
}

// ExchangeRegistration uses up the client's registration token and returns a new worker
// token for its pool, named name (Secret set: store it, it is shown once).
func (c *Client) ExchangeRegistration(ctx context.Context, name string) (api.Token, error) {
	var out api.Token
	return out, c.do(ctx, c.reqTimeout, http.MethodPost, "/v1/register/exchange", nil, api.RegisterExchangeRequest{Name: name}, &out)
}

// ListTokens lists tokens without secrets (admin).
func (c *Client) ListTokens(ctx context.Context) ([]api.Token, error) {
	var out api.TokenList
	return out.Tokens, c.do(ctx, c.reqTimeout, http.MethodGet, "/v1/tokens", nil, nil, &out)
}

// RevokeToken revokes a token by id (admin).
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.do(ctx, c.reqTimeout, http.MethodDelete, "/v1/tokens/"+url.PathEscape(id), nil, nil, nil)
}

// AuditOptions filters Audit.
type AuditOptions struct {
	JobID  string
	Action string
	Limit  int
	Cursor string
	// Wait, when the page would be empty, long-polls up to Wait (whole seconds, 0..60s)
	// for a job that matches to be created or to change state, then answers. An approver
	// wakes on a new pending_approval job this way instead of polling.
	Wait time.Duration
}

// Audit returns one page of control-plane actions, newest first (admin).
func (c *Client) Audit(ctx context.Context, o AuditOptions) (api.AuditList, error) {
	q := url.Values{}
	if o.JobID != "" {
		q.Set("job_id", o.JobID)
	}
	if o.Action != "" {
		q.Set("action", o.Action)
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Cursor != "" {
		q.Set("cursor", o.Cursor)
	}
	var out api.AuditList
	return out, c.do(ctx, c.reqTimeout, http.MethodGet, "/v1/audit", q, nil, &out)
}

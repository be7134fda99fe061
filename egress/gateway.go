package egress

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/castellan-dev/castellan/internal/options"
	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/redact"
)

// Redactor removes every form of every credential from text and streams. *redact.Set
// implements it; the gateway only needs these two methods.
type Redactor interface {
	RedactString(string) string
	NewReader(io.Reader) io.Reader
	// ContainsFold reports a credential form in any letter case (for header names).
	ContainsFold(string) bool
}

// ErrResponseTooLarge is returned by Response.Body.Read once the upstream has sent more than
// the endpoint's MaxResponseBytes.
const ErrResponseTooLarge = sentinel("egress: response body is larger than the endpoint's max_response_bytes")

// ErrEndpointTimeout is the Err of an *UpstreamError when the endpoint's own Timeout ran out
// (as opposed to the job's deadline, which is an *outcome.Error with code Timeout).
const ErrEndpointTimeout = sentinel("no complete response within the endpoint's timeout")

// sentinel makes the package's sentinel errors constants, so that no importer can replace
// one (a var would let any package reassign it for every other).
type sentinel string

func (e sentinel) Error() string { return string(e) }

// MaxRedirects is how many same-origin redirects one call may follow.
const MaxRedirects = 5

// UpstreamError is a failure the task may retry: the endpoint could not be reached, reset
// the connection or exceeded its own timeout. Err never holds the request URL (whose query
// may carry an injected credential).
//
// UpstreamError deliberately has no Unwrap: an endpoint timeout wraps no context error, so
// outcome.CodeOf can never mistake it for the job's own deadline.
type UpstreamError struct {
	Endpoint string
	Err      error
}

func (e *UpstreamError) Error() string {
	return fmt.Sprintf("endpoint %q: upstream: %v", e.Endpoint, e.Err)
}

// Timeout reports whether the endpoint's own Timeout ran out.
func (e *UpstreamError) Timeout() bool { return e.Err == ErrEndpointTimeout }

// Config is everything a Gateway needs. It is validated once, by New.
type Config struct {
	// Endpoints are the endpoints granted to one task. Required (an empty list denies all).
	Endpoints []*Endpoint
	// Credentials resolves credential names at call time. Required when an endpoint has Auth.
	Credentials Credentials
	// Redactor scrubs response headers and bodies. Required.
	Redactor Redactor
	// Audit receives exactly one Event per Do: at once for a denial, when the response body
	// is closed or the call fails otherwise. Optional.
	Audit func(Event)
	// Transport performs the requests of every endpoint. Optional; default one net/http
	// Transport per endpoint (transport.go): HTTP/1.1, no proxy, bounded dial, TLS and idle
	// timeouts, the endpoint's TLS settings, never shared with http.DefaultTransport.
	// Endpoint TLS settings do not apply to a Transport given here.
	Transport http.RoundTripper
}

// Gateway performs one task's HTTP requests. It is safe for concurrent use.
type Gateway struct {
	endpoints map[string]*endpoint
	creds     Credentials
	redactor  Redactor
	audit     func(Event)
	// transports are the endpoints' own, closed by CloseIdleConnections; empty when
	// Config.Transport is set.
	transports []*http.Transport
}

// endpoint is an Endpoint after validation, with everything Do needs precomputed. It is a
// copy: later changes to the caller's Endpoint do not widen a running gateway's policy.
type endpoint struct {
	name        string
	scheme      string
	host        string // host[:port] as configured
	hostname    string
	port        string // explicit or the scheme's default
	basePath    string // decoded, no trailing slash
	baseRawPath string // escaped, no trailing slash
	rules       []Rule
	auth        Auth
	authPrefix  string // AuthHeader: Format before "{secret}"
	authSuffix  string // AuthHeader: Format after "{secret}"
	timeout     time.Duration
	maxResp     int64
	maxReq      int64
	rootCAs     *x509.CertPool
	clientCerts []tls.Certificate
	// address redacts the endpoint's own address from its responses; nil when
	// Endpoint.RedactAddress is off.
	address        *redact.Set
	idempotencyKey bool
	// client is shared by every call to the endpoint: what differs per call (the credential
	// that redirect hops need) travels in the request context, see redirectPolicy.
	client *http.Client
}

// New validates cfg and returns a Gateway. Errors name the endpoint and field at fault and
// never print a base URL (it might carry userinfo).
func New(cfg Config) (*Gateway, error) {
	if cfg.Redactor == nil {
		return nil, errors.New("egress: Config.Redactor is required")
	}
	g := &Gateway{
		endpoints: make(map[string]*endpoint, len(cfg.Endpoints)),
		creds:     cfg.Credentials,
		redactor:  cfg.Redactor,
		audit:     cfg.Audit,
	}
	for i, e := range cfg.Endpoints {
		ep, err := prepare(e)
		if err != nil {
			return nil, fmt.Errorf("egress: endpoint %d: %w", i, err)
		}
		if _, dup := g.endpoints[ep.name]; dup {
			return nil, fmt.Errorf("egress: endpoint %q is configured twice", ep.name)
		}
		if ep.auth.Kind != AuthNone && cfg.Credentials == nil {
			return nil, fmt.Errorf("egress: endpoint %q injects credential %q but Config.Credentials is nil", ep.name, ep.auth.Credential)
		}
		rt := cfg.Transport
		if rt == nil {
			tr := newTransport(ep)
			g.transports = append(g.transports, tr)
			rt = tr
		}
		ep.client = &http.Client{Transport: rt, CheckRedirect: redirectPolicy}
		g.endpoints[ep.name] = ep
	}
	return g, nil
}

func prepare(e *Endpoint) (*endpoint, error) {
	if e == nil {
		return nil, errors.New("nil endpoint")
	}
	if e.Name == "" {
		return nil, errors.New("Name is empty")
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%q: "+format, append([]any{e.Name}, args...)...)
	}
	u := e.BaseURL
	switch {
	case u == nil:
		return nil, fail("BaseURL is nil")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fail("BaseURL scheme must be http or https")
	case u.Opaque != "" || u.Host == "":
		return nil, fail("BaseURL must have a host (scheme://host[:port][/path])")
	case u.User != nil:
		return nil, fail("BaseURL must not contain user info; use Auth to inject credentials")
	case u.RawQuery != "" || u.ForceQuery:
		return nil, fail("BaseURL must not contain a query; use Auth.Param for a query credential")
	case u.Fragment != "" || u.RawFragment != "":
		return nil, fail("BaseURL must not contain a fragment")
	}
	if err := options.CheckNotNegative(*e); err != nil {
		return nil, fail("%v", err)
	}
	ep := &endpoint{
		name:     e.Name,
		scheme:   u.Scheme,
		host:     u.Host,
		hostname: strings.ToLower(u.Hostname()),
		port:     portOf(u),
		rules:    append([]Rule(nil), e.Rules...),
		auth:     e.Auth,
		timeout:  orDefault(e.Timeout, DefaultTimeout),
		maxResp:  orDefault(e.MaxResponseBytes, DefaultMaxResponseBytes),
		maxReq:   orDefault(e.MaxRequestBytes, DefaultMaxRequestBytes),
		rootCAs:  e.RootCAs,

		idempotencyKey: e.IdempotencyKey,
	}
	if e.ClientCertificate != nil {
		ep.clientCerts = []tls.Certificate{*e.ClientCertificate}
	}
	if e.RedactAddress {
		ep.address = addressSet(u, ep.hostname, ep.port)
	}
	if ep.hostname == "" {
		return nil, fail("BaseURL has an empty host name")
	}
	if err := checkOrigin(u.Scheme, u.Host); err != nil {
		return nil, fail("BaseURL %v", err)
	}
	if raw := strings.TrimRight(u.EscapedPath(), "/"); raw != "" {
		if _, _, _, err := ValidateTarget(raw); err != nil {
			return nil, fail("BaseURL path: %v", err)
		}
		dec, err := url.PathUnescape(raw)
		if err != nil {
			return nil, fail("BaseURL path: %v", err)
		}
		ep.baseRawPath, ep.basePath = raw, dec
	}
	for i, r := range ep.rules {
		if r.text == "" {
			return nil, fail("rule %d is the zero Rule; build rules with ParseRule", i)
		}
	}
	a := &ep.auth
	if a.Kind != AuthNone && a.Credential == "" {
		return nil, fail("Auth.Credential (the credential's name) is empty")
	}
	switch a.Kind {
	case AuthNone:
	case AuthHeader:
		if !httpguts.ValidHeaderFieldName(a.Header) {
			return nil, fail("Auth.Header %q is not a valid header name", a.Header)
		}
		a.Header = http.CanonicalHeaderKey(a.Header)
		if _, bad := hopByHop[a.Header]; bad || a.Header == "Host" || a.Header == "Content-Length" {
			return nil, fail("Auth.Header %q cannot carry a credential", a.Header)
		}
		if strings.Count(a.Format, "{secret}") != 1 {
			return nil, fail("Auth.Format must contain \"{secret}\" exactly once")
		}
		if !httpguts.ValidHeaderFieldValue(a.Format) {
			return nil, fail("Auth.Format contains a control character")
		}
		ep.authPrefix, ep.authSuffix, _ = strings.Cut(a.Format, "{secret}")
	case AuthBasic:
		if strings.Contains(a.Username, ":") || !httpguts.ValidHeaderFieldValue(a.Username) {
			return nil, fail("Auth.Username must not contain \":\" or control characters")
		}
	case AuthQuery:
		if a.Param == "" || checkQuery(a.Param) != nil || strings.ContainsAny(a.Param, "&=;%+") {
			return nil, fail("Auth.Param %q is not a plain query parameter name", a.Param)
		}
	default:
		return nil, fail("Auth.Kind %d is unknown", a.Kind)
	}
	return ep, nil
}

// checkOrigin is the second opinion on a base URL's origin, taken once at configuration
// time: the origin must print and parse back to itself, and its host must be what the
// request's Host header will carry (net/http would drop an empty port, "host:", from one of
// them only). Per request, the URL is built from these checked parts and only its path and
// query are checked (buildURL).
func checkOrigin(scheme, host string) error {
	if strings.HasSuffix(host, ":") {
		return errors.New("has an empty port (\"host:\"); remove the colon")
	}
	back, err := url.Parse((&url.URL{Scheme: scheme, Host: host, Path: "/"}).String())
	if err != nil || back.Scheme != scheme || back.Host != host || back.User != nil || back.EscapedPath() != "/" {
		return errors.New("origin does not print and parse back to itself")
	}
	return nil
}

// addressSet is the redactor of an endpoint's own address: its host, host:port (as configured
// and with the port spelt out), origin and base URL, as written and in lower case. Forms
// shorter than redact.MinSecretLen are left out, as for credentials: a host name such as
// "crm" alone would match ordinary words.
func addressSet(u *url.URL, hostname, port string) *redact.Set {
	origin := u.Scheme + "://" + u.Host
	values := []string{
		u.Host, hostname, net.JoinHostPort(hostname, port),
		origin, u.Scheme + "://" + net.JoinHostPort(hostname, port),
		origin + strings.TrimRight(u.EscapedPath(), "/"),
	}
	s := redact.NewSet()
	for _, v := range values {
		for _, form := range []string{v, strings.ToLower(v)} {
			if len(form) >= redact.MinSecretLen {
				_ = s.Add(form) // only a value too short fails, and those are skipped above
			}
		}
	}
	return s
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if strings.EqualFold(u.Scheme, "https") {
		return "443"
	}
	return "80"
}

// CloseIdleConnections closes every pooled connection of the gateway's endpoints. A retired
// gateway must be told once its last job has ended: nothing else closes them.
func (g *Gateway) CloseIdleConnections() {
	for _, tr := range g.transports {
		tr.CloseIdleConnections()
	}
}

// call is one Do after its request passed the policy.
type call struct {
	ep       *endpoint
	segments []string
	rawPath  string
	rawQuery string
	header   http.Header
}

// Do performs req for job. See the package documentation for the checks and the error kinds.
func (g *Gateway) Do(ctx context.Context, job JobRef, req Request) (*Response, error) {
	start := time.Now()
	path, _, _ := strings.Cut(req.Target, "?")
	ev := Event{
		Time:         start,
		Task:         job.Task,
		Job:          job.Job,
		Endpoint:     clip(req.Endpoint),
		Method:       clip(req.Method),
		Path:         g.redactor.RedactString(clip(path)),
		RequestBytes: int64(len(req.Body)),
	}
	c, denied := g.check(req)
	if denied != nil {
		g.finish(&ev, start, "deny", denied.Msg)
		return nil, denied
	}
	ev.Decision = "allow"
	resp, err := g.send(ctx, job, c, req, &ev, start)
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func (g *Gateway) finish(ev *Event, start time.Time, decision, reason string) {
	ev.Decision = decision
	ev.Reason = reason
	ev.Duration = time.Since(start)
	if g.audit != nil {
		g.audit(*ev)
	}
}

// check applies the whole request policy without any I/O.
func (g *Gateway) check(req Request) (call, *outcome.Error) {
	ep := g.endpoints[req.Endpoint]
	if ep == nil {
		return call{}, outcome.New(outcome.Denied, "endpoint %q is not granted to this task", clip(req.Endpoint))
	}
	deny := func(format string, args ...any) (call, *outcome.Error) {
		return call{}, outcome.New(outcome.Denied, "endpoint %q: "+format, append([]any{ep.name}, args...)...)
	}
	if !isMethodToken(req.Method) {
		return deny("method %q is not an upper-case HTTP method", clip(req.Method))
	}
	if req.Method == http.MethodConnect || req.Method == http.MethodTrace {
		return deny("method %s is never allowed", req.Method)
	}
	segs, rawPath, rawQuery, err := ValidateTarget(req.Target)
	if err != nil {
		return deny("%v", err)
	}
	if !matchAny(ep.rules, req.Method, segs) {
		return deny("%s %s not allowed by any rule", req.Method, clip(rawPath))
	}
	h := make(http.Header, len(req.Header)+2) // + the credential and Accept-Encoding
	for name, vals := range req.Header {
		if !httpguts.ValidHeaderFieldName(name) {
			return deny("header name %q is not a valid token", clip(name))
		}
		k := http.CanonicalHeaderKey(name)
		if forbiddenHeader(k) || (ep.auth.Kind == AuthHeader && k == ep.auth.Header) ||
			(ep.idempotencyKey && k == "Idempotency-Key") {
			return deny("header %q may not be set by a task", k)
		}
		for _, v := range vals {
			if !httpguts.ValidHeaderFieldValue(v) {
				return deny("header %q: value contains CR, LF, NUL or another control character", k)
			}
		}
		h[k] = append(h[k], vals...)
	}
	if int64(len(req.Body)) > ep.maxReq {
		return deny("request body of %d bytes is over the limit of %d", len(req.Body), ep.maxReq)
	}
	if ep.auth.Kind == AuthQuery && hasParam(rawQuery, ep.auth.Param) {
		return deny("query parameter %q is injected by the host and may not be set by a task", ep.auth.Param)
	}
	return call{ep: ep, segments: segs, rawPath: rawPath, rawQuery: rawQuery, header: h}, nil
}

// send fetches the credential, performs the request and wraps the response. On error it
// emits the audit event itself.
func (g *Gateway) send(ctx context.Context, job JobRef, c call, req Request, ev *Event, start time.Time) (*Response, error) {
	ep := c.ep
	fail := func(reason string, err error) (*Response, error) {
		g.finish(ev, start, "allow", reason)
		return nil, err
	}
	if oe := ctxOutcome(ctx, ep.name); oe != nil {
		return fail(string(oe.Code), oe)
	}
	secret, err := g.credential(ctx, ep)
	if err != nil {
		var oe *outcome.Error
		errors.As(err, &oe) // credential returns only *outcome.Error
		return fail(string(oe.Code)+": "+oe.Msg, oe)
	}
	u, err := ep.buildURL(c.rawPath, c.rawQuery)
	if err != nil {
		// Unreachable unless ValidateTarget and net/url disagree; refuse rather than guess.
		oe := outcome.Wrap(outcome.Denied, err, "endpoint %q: target does not map onto the endpoint's base URL", ep.name)
		g.finish(ev, start, "deny", oe.Msg)
		return nil, oe
	}
	b := &body{
		g: g, ep: ep, ctx: ctx,
		max: ep.maxResp, start: start, hop: hop{ep: ep, secret: secret},
	}
	// The endpoint timeout bounds the whole call, dial, TLS handshake and body included.
	b.callCtx, b.cancel = context.WithTimeout(ctx, ep.timeout)
	reqCtx := context.WithValue(b.callCtx, hopKey{}, &b.hop)
	if g.transports != nil {
		reqCtx = httptrace.WithClientTrace(reqCtx, &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { awaitQuiet(b.callCtx, info) },
		})
	}
	callCtx, cancel := b.callCtx, b.cancel
	if req.Method != http.MethodHead {
		// The gateway decodes what it asks for itself (decodeBody); the transport does not.
		c.header["Accept-Encoding"] = acceptGzip
	}
	if ep.idempotencyKey && job.Job != "" && !safeMethod(req.Method) {
		c.header["Idempotency-Key"] = []string{job.Job}
	}
	// The request is built from parts that are already checked (the origin by prepare, the
	// path and query by ValidateTarget and buildURL), so it is never printed and parsed again.
	hreq := (&http.Request{
		Method:     req.Method,
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     c.header,
		Host:       ep.host,
	}).WithContext(reqCtx)
	if len(req.Body) > 0 {
		data := req.Body
		hreq.ContentLength = int64(len(data))
		hreq.Body = io.NopCloser(bytes.NewReader(data))
		// A 307/308 hop re-sends the body.
		hreq.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }
	}
	ep.inject(hreq, secret)
	resp, err := ep.client.Do(hreq)
	if err != nil {
		var oe *outcome.Error
		if errors.As(err, &oe) && oe.Code == outcome.Denied {
			cancel()
			if resp != nil {
				resp.Body.Close()
			}
			g.finish(ev, start, "deny", oe.Msg)
			return nil, oe
		}
		e := g.classify(ctx, callCtx, ep, err) // before cancel: it tells the timeouts apart
		cancel()
		return fail(reasonOf(e), e)
	}
	raw, err := decodeBody(resp, req.Method)
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The gateway never asks for an upgrade; an upgraded connection would be a raw
		// socket to the upstream, outside every limit, that no timeout closes.
		err = errors.New("the server switched protocols, which is not supported")
	}
	if err != nil {
		resp.Body.Close()
		cancel()
		ev.Status = resp.StatusCode
		e := &UpstreamError{Endpoint: ep.name, Err: errors.New(g.redact(ep, err.Error()))}
		return fail(reasonOf(e), e)
	}
	b.raw = raw
	b.ev = *ev
	b.ev.Status = resp.StatusCode
	b.lim = io.LimitedReader{R: raw, N: ep.maxResp + 1}
	b.cnt = countingReader{r: &b.lim, n: &b.n}
	b.r = g.redactor.NewReader(&b.cnt)
	if ep.address != nil {
		b.r2 = ep.address.NewReader(b.r)
	}
	return &Response{Status: resp.StatusCode, Header: g.responseHeader(ep, resp.Header), Body: b}, nil
}

// redact removes credentials and, when the endpoint asks for it, its own address from s.
func (g *Gateway) redact(ep *endpoint, s string) string {
	s = g.redactor.RedactString(s)
	if ep.address != nil {
		s = ep.address.RedactString(s)
	}
	return s
}

// safeMethod reports the methods that never carry an idempotency key: RFC 9110 §9.2.1's
// safe methods, which have no side effect to deduplicate.
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// hop is what a redirect hop needs to re-apply the policy: the endpoint and the credential
// fetched for this call. It travels in the request context under hopKey, so that one
// http.Client serves every call. (A context prints a value of this type by its type name
// only, never its fields.)
type hop struct {
	ep     *endpoint
	secret string
}

type hopKey struct{}

// acceptGzip is the Accept-Encoding the gateway sends and decodes. Shared: a header value
// slice is only read, and an Add would append to a copy (its capacity is 1).
var acceptGzip = []string{"gzip"}

// redirectPolicy is the shared client's CheckRedirect: the endpoint's policy, applied to
// every hop before it is sent. A request without its hop state fails closed.
func redirectPolicy(r *http.Request, via []*http.Request) error {
	h, _ := r.Context().Value(hopKey{}).(*hop)
	if h == nil {
		return outcome.New(outcome.Denied, "redirect refused: the request carries no endpoint policy")
	}
	return h.ep.checkRedirect(r, via, h.secret)
}

// credential returns the value to inject ("" for AuthNone). Errors are *outcome.Error.
func (g *Gateway) credential(ctx context.Context, ep *endpoint) (string, error) {
	if ep.auth.Kind == AuthNone {
		return "", nil
	}
	secret, err := g.creds.Credential(ctx, ep.auth.Credential)
	if err != nil {
		if oe := ctxOutcome(ctx, ep.name); oe != nil {
			return "", oe
		}
		var oe *outcome.Error
		if errors.As(err, &oe) {
			return "", oe
		}
		return "", outcome.Wrap(outcome.CredentialUnavailable, err, "credential %q for endpoint %q could not be fetched", ep.auth.Credential, ep.name)
	}
	if secret == "" {
		return "", outcome.New(outcome.CredentialUnavailable, "credential %q for endpoint %q is empty", ep.auth.Credential, ep.name)
	}
	if ep.auth.Kind != AuthQuery && !httpguts.ValidHeaderFieldValue(secret) {
		return "", outcome.New(outcome.CredentialUnavailable, "credential %q for endpoint %q contains control characters and cannot go in a header", ep.auth.Credential, ep.name)
	}
	return secret, nil
}

// buildURL joins the base URL and a validated target so that the request line is exactly
// base + rawPath (+ "?" + rawQuery), and checks that with the function net/http itself uses to
// write the request line. The origin parts were checked once, by prepare.
func (ep *endpoint) buildURL(rawPath, rawQuery string) (*url.URL, error) {
	dec, err := url.PathUnescape(rawPath)
	if err != nil {
		return nil, err
	}
	want := ep.baseRawPath + rawPath
	path := want // the decoded path, when neither part holds an escape
	if dec != rawPath || ep.basePath != ep.baseRawPath {
		path = ep.basePath + dec
	}
	u := &url.URL{
		Scheme:   ep.scheme,
		Host:     ep.host,
		Path:     path,
		RawPath:  want,
		RawQuery: rawQuery,
	}
	if u.EscapedPath() != want {
		return nil, errors.New("escaped path differs from the validated target")
	}
	ruri := u.RequestURI()
	if !strings.HasPrefix(ruri, want) || !isQueryPart(ruri[len(want):], rawQuery) {
		return nil, errors.New("request line differs from the validated target")
	}
	return u, nil
}

// isQueryPart reports whether rest is what follows the path on the request line for rawQuery:
// nothing, or "?" and the query.
func isQueryPart(rest, rawQuery string) bool {
	if rawQuery == "" {
		return rest == ""
	}
	return len(rest) == 1+len(rawQuery) && rest[0] == '?' && rest[1:] == rawQuery
}

// inject sets the credential on one hop.
func (ep *endpoint) inject(r *http.Request, secret string) {
	switch ep.auth.Kind {
	case AuthHeader:
		// Header is canonical (prepare), so this is Header.Set without re-canonicalising.
		r.Header[ep.auth.Header] = []string{ep.authPrefix + secret + ep.authSuffix}
	case AuthBasic:
		r.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(ep.auth.Username+":"+secret)))
	case AuthQuery:
		q := removeParam(r.URL.RawQuery, ep.auth.Param)
		if q != "" {
			q += "&"
		}
		r.URL.RawQuery = q + url.QueryEscape(ep.auth.Param) + "=" + url.QueryEscape(secret)
	}
}

// checkRedirect re-applies the endpoint's policy to every hop before it is sent, so that a
// credential (which net/http copies to same-host hops) never reaches an unapproved one.
func (ep *endpoint) checkRedirect(r *http.Request, via []*http.Request, secret string) error {
	deny := func(what string) error {
		return outcome.New(outcome.Denied, "endpoint %q: %s", ep.name, what)
	}
	if len(via) > MaxRedirects {
		return deny(fmt.Sprintf("more than %d redirects", MaxRedirects))
	}
	u := r.URL
	if !strings.EqualFold(u.Scheme, ep.scheme) || strings.ToLower(u.Hostname()) != ep.hostname ||
		portOf(u) != ep.port || u.User != nil || u.Opaque != "" {
		return deny("redirect to another origin refused")
	}
	p := u.EscapedPath()
	if ep.baseRawPath != "" {
		if !strings.HasPrefix(p, ep.baseRawPath+"/") {
			return deny("redirect to a path the rules do not allow")
		}
		p = p[len(ep.baseRawPath):]
	}
	target := p
	if u.RawQuery != "" {
		target += "?" + u.RawQuery
	}
	segs, _, _, err := ValidateTarget(target)
	if err != nil || !matchAny(ep.rules, r.Method, segs) {
		return deny("redirect to a path the rules do not allow")
	}
	// Keep the Host header consistent with the (same) origin, whatever casing the Location used.
	r.Host = ep.host
	ep.inject(r, secret)
	return nil
}

// classify turns a transport error into the error Do returns.
func (g *Gateway) classify(ctx, callCtx context.Context, ep *endpoint, err error) error {
	if oe := ctxOutcome(ctx, ep.name); oe != nil {
		return oe
	}
	if expired(callCtx) {
		return &UpstreamError{Endpoint: ep.name, Err: ErrEndpointTimeout}
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err // url.Error's text holds the URL, and the URL may hold a query credential
	}
	return &UpstreamError{Endpoint: ep.name, Err: errors.New(g.redact(ep, withoutAddress(err)))}
}

// withoutAddress describes a connection failure without the addresses that net's and
// crypto/x509's messages carry (the resolved IP and port, the host a certificate is valid
// for): the error reaches the task, and from there maybe the control plane.
func withoutAddress(err error) string {
	var (
		dns  *net.DNSError
		op   *net.OpError
		host x509.HostnameError
	)
	switch {
	case errors.As(err, &dns):
		return "lookup of the endpoint's host failed: " + dns.Err
	case errors.As(err, &host):
		return "TLS: the endpoint's certificate is not valid for its host"
	case errors.As(err, &op):
		return op.Op + ": " + op.Err.Error() // Op is "dial", "read", "write"; Err has no address
	}
	return err.Error()
}

func reasonOf(err error) string {
	var ue *UpstreamError
	if errors.As(err, &ue) {
		return "upstream: " + ue.Err.Error()
	}
	var oe *outcome.Error
	if errors.As(err, &oe) {
		return string(oe.Code)
	}
	return "internal"
}

// expired reports whether ctx is done or its deadline has passed. An I/O error caused by the
// deadline (a dial or TLS handshake cut short) can be seen a moment before the context says
// it is done, and must be read as the same event.
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// ctxOutcome returns the job's timeout or cancellation, or nil while ctx is live.
func ctxOutcome(ctx context.Context, endpoint string) *outcome.Error {
	switch err := ctx.Err(); {
	case err == nil && expired(ctx):
		return outcome.Wrap(outcome.Timeout, context.DeadlineExceeded, "job deadline reached during a call to endpoint %q", endpoint)
	case err == nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		return outcome.Wrap(outcome.Timeout, err, "job deadline reached during a call to endpoint %q", endpoint)
	default:
		return outcome.Wrap(outcome.Cancelled, err, "job cancelled during a call to endpoint %q", endpoint)
	}
}

// clip bounds task-supplied strings quoted in messages and audit events.
func clip(s string) string {
	const max = 200
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

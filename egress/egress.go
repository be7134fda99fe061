package egress

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Endpoint is one internal system a task may reach, as the security team configured it.
type Endpoint struct {
	Name string
	// BaseURL is http or https with a host, an optional port and an optional path prefix;
	// never userinfo, query or fragment. Request paths are appended to its path.
	BaseURL *url.URL
	// Rules allow method+path pairs; a request that matches none is denied.
	Rules []Rule
	// Auth says how the credential is injected. The zero value injects nothing.
	Auth Auth
	// Timeout bounds one call (connect to end of body). Optional; default DefaultTimeout;
	// negative is refused by New, as for every number here (docs/embedding.md).
	Timeout time.Duration
	// MaxResponseBytes bounds the response body. Optional; default DefaultMaxResponseBytes.
	MaxResponseBytes int64
	// MaxRequestBytes bounds the request body. Optional; default DefaultMaxRequestBytes.
	MaxRequestBytes int64
	// RootCAs verifies an https endpoint's certificate. Optional; default the host's roots.
	RootCAs *x509.CertPool
	// ClientCertificate is presented to an https endpoint that asks for one (mutual TLS).
	// Optional; default none.
	ClientCertificate *tls.Certificate
	// RedactAddress adds the endpoint's own address (host, host:port, origin and base URL,
	// in every encoding the redactor knows) to what is redacted from its responses, so that
	// an API echoing its Host header does not hand the task an internal address. Optional;
	// the zero value redacts nothing more (the policy loader sets it unless told otherwise).
	RedactAddress bool
	// IdempotencyKey makes the gateway send "Idempotency-Key: <job id>" with every request
	// whose method is not safe (anything but GET, HEAD and OPTIONS); a task may then not set
	// that header itself. The job id is the same on every attempt of a job, so an API that
	// honours the header applies a retried job's side effect once. Optional; default off.
	IdempotencyKey bool
}

const (
	DefaultTimeout          = 10 * time.Second
	DefaultMaxResponseBytes = 1 << 20
	DefaultMaxRequestBytes  = 1 << 20
)

// AuthKind says where a credential goes.
type AuthKind int

const (
	AuthNone   AuthKind = iota
	AuthHeader          // Header: Format with "{secret}" replaced, e.g. "Bearer {secret}"
	AuthBasic           // Authorization: Basic base64(Username ":" secret)
	AuthQuery           // query parameter Param=secret
)

// Auth is how an endpoint's credential is injected into each request (and each allowed
// same-origin redirect hop).
type Auth struct {
	Kind       AuthKind
	Credential string // name of the credential in the policy; never its value
	Header     string // AuthHeader: header name, canonicalised
	Format     string // AuthHeader: template containing "{secret}" exactly once
	Username   string // AuthBasic: literal user name
	Param      string // AuthQuery: query parameter name
}

// String says where the credential goes, for reviews and reports: "header X-Api-Key:
// Bearer {secret}", "basic auth password for user svc", "query parameter key" or "none". It
// never holds a credential value (an Auth has none).
func (a Auth) String() string {
	switch a.Kind {
	case AuthHeader:
		return fmt.Sprintf("header %s: %s", a.Header, a.Format)
	case AuthBasic:
		return fmt.Sprintf("basic auth password for user %s", a.Username)
	case AuthQuery:
		return fmt.Sprintf("query parameter %s", a.Param)
	}
	return "none"
}

// Credentials resolves a credential name to its value, at call time (values may rotate).
// Errors must be *outcome.Error with code CredentialUnavailable and a message free of
// secrets and tokens.
type Credentials interface {
	Credential(ctx context.Context, name string) (string, error)
}

// Request is what a task asks for.
type Request struct {
	Endpoint string      // logical endpoint name
	Method   string      // upper-case token
	Target   string      // path plus optional "?query", exactly as the task sent it
	Header   http.Header // task-supplied headers; sensitive ones are refused
	Body     []byte
}

// Response is what the task gets back: status, redacted headers (no Set-Cookie, no
// hop-by-hop headers) and a body that is capped and redacted while it streams.
type Response struct {
	Status int
	Header http.Header
	// Body yields at most the endpoint's MaxResponseBytes; one more byte makes Read return
	// ErrResponseTooLarge. Close must be called; it emits the call's audit event.
	Body io.ReadCloser
}

// JobRef names who is calling, for audit events.
type JobRef struct {
	Task string
	Job  string
}

// Event is one audit record per call. It never holds a body, a header value, a query string
// or a credential.
type Event struct {
	Time          time.Time
	Task          string
	Job           string
	Endpoint      string
	Method        string
	Path          string // path only, without the query (a query may carry an injected credential)
	Status        int    // 0 when no response was received
	RequestBytes  int64
	ResponseBytes int64
	Duration      time.Duration
	Decision      string // "allow" or "deny"
	Reason        string // why denied, or why the call failed ("upstream: ...", "response too large")
}

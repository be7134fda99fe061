// Package egress performs the HTTP requests that sandboxed tasks ask for, on their behalf and
// under the security team's policy. A task never supplies a URL: it names a logical endpoint
// ("crm"), a method and a path. The gateway builds the URL from the endpoint's base URL,
// refuses anything that could escape or confuse it, matches the method and path against the
// endpoint's allow rules, injects the credential host-side, and redacts every credential form
// from what comes back before the task sees it.
//
// CONTRACT (written first so the sandbox, the policy loader and this package can be built in
// parallel). Implementations live in the other files of this package.
package egress

import (
	"context"
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
	// Timeout bounds one call (connect to end of body). Optional, default DefaultTimeout.
	Timeout time.Duration
	// MaxResponseBytes bounds the response body. Optional, default DefaultMaxResponseBytes.
	MaxResponseBytes int64
	// MaxRequestBytes bounds the request body. Optional, default DefaultMaxRequestBytes.
	MaxRequestBytes int64
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

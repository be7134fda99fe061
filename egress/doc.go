// Package egress performs the HTTP requests that sandboxed tasks ask for, on their behalf and
// under the security team's policy. A task never supplies a URL: it names a logical endpoint
// ("crm"), a method and a path. The gateway builds the URL from the endpoint's base URL,
// refuses anything that could escape or confuse it, matches the method and path against the
// endpoint's allow rules, injects the credential host-side, and redacts every credential form
// from what comes back before the task sees it.
//
// # Threat model
//
// The adversary is the task: a WebAssembly module that may be buggy, compromised through a
// dependency, or written to abuse the access it was approved for. It runs in a sandbox with
// no sockets, so this package is its only way out, and every byte of a Request is hostile.
// It wants to read a credential, to reach a host, path or method its policy does not grant,
// or to use an internal API as a stepping stone (request smuggling, header spoofing). The
// upstreams are internal services run by the same organisation: honest, but not careful
// (they echo headers, redirect, set cookies) and not all parsing URLs the same way.
//
// A task therefore never supplies a URL. It names an endpoint; the host comes from the
// security team's configuration and nothing the task sends can change it. Spin's
// CVE-2024-32980 shows why that must hold by construction: a relative request URL there
// could be steered to an arbitrary host through the Host header. Here Host, Forwarded,
// X-Forwarded-* and the hop-by-hop headers are refused outright, the target must be a
// plain path, and after the URL is built (and again after it is re-parsed) its scheme and
// host are compared with the base URL's.
//
// Allowlisting by host name alone is not enough either. Extism's built-in http_request
// glob-matches only the host name ("*example.com" also matches "attackerexample.com"),
// ignores scheme and port, follows redirects to hosts that were never allowed while still
// sending the guest's headers, uses http.DefaultClient (environment proxies, shared
// connection state) and has no credential hook, so secrets end up in config the guest can
// read. This package scopes each endpoint to one origin and a path prefix; rules match the
// method and whole decoded path segments; every redirect hop is re-checked against the
// origin, the prefix and the rules before it is sent, so the credential (injected host-side
// from Credentials at call time, and re-injected on each allowed hop) never reaches a hop
// the policy would refuse; and each endpoint has its own net/http Transport: HTTP/1.1, no
// proxy, its own connection pool, dial and TLS handshake bounded by the endpoint's timeout,
// and its own CA and client certificate. A pooled connection carries a new request only once
// it is at rest (net/http's reader waits on it with nothing unread in its buffer, the TLS
// layer or the socket), so that no upstream can answer one call, maybe another job's, with
// bytes it sent after the previous response.
//
// Path rules are only as strong as the agreement between this parser and the upstream's.
// ValidateTarget is therefore much stricter than RFC 3986: no dot segments in any
// encoding, no encoded slashes, backslashes, percent signs or control characters, no
// ";" path parameters (Tomcat's "/..;/"), no raw non-ASCII, no "//", "@", "#" or white
// space. Headers that let a framework override the method or the path
// (X-HTTP-Method-Override, X-Original-URL, ...) are refused for the same reason.
//
// What comes back is redacted before the task sees it: header values and the body, which
// streams through the Redactor with a byte cap, so neither a huge nor an endless response is
// ever held in memory. Accept-Encoding and Range are refused so that an echoed credential
// comes back whole, where the redactor can recognise it: the gateway asks for gzip itself and
// decompresses it before the redactor reads the body. The codings of all Content-Encoding
// lines are taken together (RFC 9110 §5.3); anything but none or a single gzip layer fails
// the call. The redactor knows
// the exact forms of each credential (raw, base64, URL and hex encodings); an upstream that
// transforms a credential some other way, or hands it out piece by piece over many calls, is
// outside what this package can catch.
//
// Errors and audit events are written for people who must not see secrets: a denial names
// the endpoint, method and path, never the base URL, host or credential; an UpstreamError
// never carries the request URL (its query may hold a credential); an Event holds no header
// value, query or body. A job's own deadline or cancellation is an *outcome.Error (Timeout or
// Cancelled); an endpoint that is down or slow is an *UpstreamError, which the task may retry.
package egress

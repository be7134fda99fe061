package egress

import (
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// hopByHop headers belong to one connection, not to the request: a task that sets them can
// desynchronise the proxy chain (request smuggling), and upstream ones mean nothing to a task.
var hopByHop = map[string]struct{}{
	"Connection":          {},
	"Keep-Alive":          {},
	"Proxy-Connection":    {},
	"Proxy-Authenticate":  {},
	"Proxy-Authorization": {},
	"Te":                  {},
	"Trailer":             {},
	"Transfer-Encoding":   {},
	"Upgrade":             {},
}

// taskForbidden are request headers a task may never set (canonical form). Beyond the ABI's
// list: Accept-Encoding and Range/If-Range would let an echoed credential come back
// compressed or in pieces the redactor cannot recognise, and the method- and URL-override
// headers would let a task reach a method or path that the rules never allowed.
var taskForbidden = map[string]struct{}{
	"Authorization":          {},
	"Cookie":                 {},
	"Cookie2":                {},
	"Host":                   {},
	"Content-Length":         {},
	"Forwarded":              {},
	"X-Real-Ip":              {},
	"Accept-Encoding":        {},
	"Range":                  {},
	"If-Range":               {},
	"X-Http-Method-Override": {},
	"X-Http-Method":          {},
	"X-Method-Override":      {},
	"X-Original-Url":         {},
	"X-Rewrite-Url":          {},
}

func forbiddenHeader(canonical string) bool {
	if _, ok := hopByHop[canonical]; ok {
		return true
	}
	if _, ok := taskForbidden[canonical]; ok {
		return true
	}
	return strings.HasPrefix(canonical, "Proxy-") || strings.HasPrefix(canonical, "X-Forwarded-")
}

// queryKeys calls f with every decoded parameter name of a raw query. Both "&" and ";" count
// as separators, since some servers split on either.
func queryKeys(raw string, f func(key string) bool) {
	for _, part := range strings.FieldsFunc(raw, func(r rune) bool { return r == '&' || r == ';' }) {
		k, _, _ := strings.Cut(part, "=")
		if dk, err := url.QueryUnescape(k); err == nil {
			k = dk
		}
		if !f(k) {
			return
		}
	}
}

// hasParam reports whether raw names param, in any encoding or case (some frameworks fold
// parameter names).
func hasParam(raw, param string) bool {
	found := false
	queryKeys(raw, func(k string) bool {
		found = strings.EqualFold(k, param)
		return !found
	})
	return found
}

// removeParam drops every "&"-separated pair named param (a redirect hop may carry the
// previous hop's credential; the current one is appended afterwards).
func removeParam(raw, param string) string {
	if !hasParam(raw, param) {
		return raw
	}
	var kept []string
	for _, part := range strings.Split(raw, "&") {
		if part != "" && !hasParam(part, param) {
			kept = append(kept, part)
		}
	}
	return strings.Join(kept, "&")
}

// responseHeader returns the headers a task may see: no cookies, no hop-by-hop headers (nor
// those the Connection header names), every value redacted, and no header whose very name
// holds a credential, in any letter case (net/http re-cases names as it parses them).
//
// It filters h in place: the map comes from the transport and belongs to this call alone, so
// a call whose headers hold nothing to redact allocates nothing here. Every name and every
// value that is kept goes through the redactor, whatever its length or name.
func (g *Gateway) responseHeader(ep *endpoint, h http.Header) http.Header {
	for k := range h {
		if http.CanonicalHeaderKey(k) != k {
			// Not from net/http's own parsers (they canonicalise): merge into canonical keys
			// first, so that no spelling of a dropped header slips past the checks below.
			h = canonicalCopy(h)
			break
		}
	}
	var named []string // what the Connection header names: connection-scoped, dropped
	for _, v := range h["Connection"] {
		for name := range strings.SplitSeq(v, ",") {
			named = append(named, http.CanonicalHeaderKey(strings.TrimSpace(name)))
		}
	}
	for k, vals := range h {
		if _, hop := hopByHop[k]; hop || k == "Set-Cookie" || k == "Set-Cookie2" ||
			slices.Contains(named, k) || g.redactor.ContainsFold(k) ||
			(ep.address != nil && ep.address.ContainsFold(k)) {
			delete(h, k) // deleting the current key while ranging is defined behaviour
			continue
		}
		for i, v := range vals {
			vals[i] = g.redact(ep, v)
		}
	}
	return h
}

// canonicalCopy returns h with every key canonicalised, values of keys that canonicalise alike
// merged.
func canonicalCopy(h http.Header) http.Header {
	out := make(http.Header, len(h))
	for k, vals := range h {
		ck := http.CanonicalHeaderKey(k)
		out[ck] = append(out[ck], vals...)
	}
	return out
}

package policy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"
	"unicode"

	"go.yaml.in/yaml/v3"
	"golang.org/x/net/http/httpguts"

	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/strictyaml"
	"github.com/castellan-dev/castellan/secrets"
)

// Sections are decoded in dependency order (vault, credentials, endpoints, tasks) whatever
// their order in the file, so references can be checked as they are met; problems are sorted
// by line at the end.
func (d *decoder) policy(data []byte) *Policy {
	p := &Policy{
		Credentials: map[string]secrets.Spec{},
		Endpoints:   map[string]*egress.Endpoint{},
		Tasks:       map[string]*Task{},
	}
	n := d.root(data)
	if n == nil {
		return p
	}
	top, ok := d.Mapping(n, "", n.Line, []string{"version", "vault", "credentials", "endpoints", "tasks", "plugins"})
	if !ok {
		return p
	}
	if v := top.Get("version"); v == nil {
		d.Add(n.Line, "version", "missing; add \"version: 1\" at the top of the file")
	} else if ver, ok := d.Int(v, "version", 0, math32); ok && ver != 1 {
		d.Add(v.Line, "version", "unsupported version %d; this worker reads version 1", ver)
	}
	if v := top.Get("vault"); v != nil {
		p.Vault = d.vault(v, top.KeyLine["vault"])
	}
	if v := top.Get("credentials"); v != nil {
		d.credentials(p, v, top.KeyLine["credentials"])
	}
	if v := top.Get("endpoints"); v != nil {
		d.endpoints(p, v, top.KeyLine["endpoints"])
	}
	if v := top.Get("tasks"); v != nil {
		d.tasks(p, v, top.KeyLine["tasks"])
	}
	p.Plugins = d.plugins(top.Get("plugins"), top.KeyLine["plugins"])
	return p
}

const math32 = 1<<31 - 1

func (d *decoder) vault(n *yaml.Node, line int) *secrets.VaultConfig {
	const path = "vault"
	m, _ := d.Mapping(n, path, line, []string{"address", "namespace", "auth", "ca_cert", "cache_ttl", "request_timeout"})
	vc := &secrets.VaultConfig{
		AuthMethod:     DefaultVaultAuthMethod,
		CacheTTL:       DefaultVaultCacheTTL,
		RequestTimeout: DefaultVaultRequestTimeout,
	}
	if v := m.Get("address"); v != nil {
		if u, ok := d.httpURL(v, strictyaml.Field(path, "address"), false); ok {
			vc.Address = u.String()
		}
	}
	if v := m.Get("namespace"); v != nil {
		if s, ok := d.Str(v, strictyaml.Field(path, "namespace")); ok {
			if strings.IndexFunc(s, unicode.IsControl) >= 0 {
				d.Add(v.Line, strictyaml.Field(path, "namespace"), "must be a single line without control characters")
			}
			vc.Namespace = s
		}
	}
	set(m, "ca_cert", &vc.CACert, d.path)
	set(m, "cache_ttl", &vc.CacheTTL, d.durationUpTo(24*time.Hour))
	set(m, "request_timeout", &vc.RequestTimeout, d.durationUpTo(5*time.Minute))
	d.vaultAuth(vc, m.Get("auth"), strictyaml.Field(path, "auth"), m.KeyLine["auth"])
	return vc
}

func (d *decoder) vaultAuth(vc *secrets.VaultConfig, n *yaml.Node, path string, line int) {
	m, _ := d.Mapping(n, path, line, []string{"method", "token_env", "token_file", "role_id", "secret_id_file", "secret_id_env", "mount"})
	if v := m.Get("method"); v != nil {
		if s, ok := d.text(v, strictyaml.Field(path, "method")); ok {
			if s != "token" && s != "approle" {
				d.Add(v.Line, strictyaml.Field(path, "method"), "unknown method %q; use token or approle", s)
			}
			vc.AuthMethod = s
		}
	}
	// Options for the other method are refused rather than ignored: a reviewer reading
	// "secret_id_file" would believe AppRole is in use.
	only := func(key, method string) {
		valid := vc.AuthMethod == "token" || vc.AuthMethod == "approle"
		if v := m.Get(key); v != nil && valid && vc.AuthMethod != method {
			d.Add(m.KeyLine[key], strictyaml.Field(path, key), "only applies to method %s, but method is %s; remove it or set method: %s", method, vc.AuthMethod, method)
		}
	}
	for _, k := range []string{"token_env", "token_file"} {
		only(k, "token")
	}
	for _, k := range []string{"role_id", "secret_id_file", "secret_id_env", "mount"} {
		only(k, "approle")
	}
	switch vc.AuthMethod {
	case "token":
		set(m, "token_env", &vc.TokenEnv, d.envName)
		set(m, "token_file", &vc.TokenFile, d.path)
		if m.Get("token_env") == nil && m.Get("token_file") == nil {
			vc.TokenEnv = DefaultVaultTokenEnv
		}
	case "approle":
		vc.AppRoleMount = DefaultVaultAppRoleMount
		if v := m.Get("role_id"); v == nil {
			d.Add(m.Line, strictyaml.Field(path, "role_id"), "missing; AppRole needs role_id (it is not a secret)")
		} else {
			vc.RoleID, _ = d.text(v, strictyaml.Field(path, "role_id"))
		}
		f, e := m.Get("secret_id_file"), m.Get("secret_id_env")
		switch {
		case f == nil && e == nil:
			d.Add(m.Line, path, "AppRole needs the secret id from secret_id_file or secret_id_env")
		case f != nil && e != nil:
			d.Add(m.KeyLine["secret_id_env"], strictyaml.Field(path, "secret_id_env"), "set only one of secret_id_file and secret_id_env")
		case f != nil:
			vc.SecretIDFile, _ = d.path(f, strictyaml.Field(path, "secret_id_file"))
		default:
			vc.SecretIDEnv, _ = d.envName(e, strictyaml.Field(path, "secret_id_env"))
		}
		set(m, "mount", &vc.AppRoleMount, d.vaultPath)
	}
}

func (d *decoder) credentials(p *Policy, n *yaml.Node, line int) {
	const path = "credentials"
	m, _ := d.Mapping(n, path, line, nil)
	for _, name := range m.Keys {
		cpath := strictyaml.Field(path, name)
		cline := m.KeyLine[name]
		d.name("credential", name, cline, cpath)
		c, ok := d.Mapping(m.Vals[name], cpath, cline, []string{"env", "file", "vault", "aws"})
		var spec secrets.Spec
		if !ok {
			p.Credentials[name] = spec // declared, so references to it do not cascade
			continue
		}
		var sources []string
		for _, k := range []string{"env", "file", "vault", "aws"} {
			if c.Get(k) != nil {
				sources = append(sources, k)
			}
		}
		switch len(sources) {
		case 0:
			d.Add(cline, cpath, "no source; set exactly one of env, file, vault or aws")
		case 1:
		default:
			d.Add(cline, cpath, "has %s; set exactly one of env, file, vault or aws", strings.Join(sources, " and "))
		}
		set(c, "env", &spec.Env, d.envName)
		set(c, "file", &spec.File, d.path)
		if v := c.Get("vault"); v != nil {
			vpath := strictyaml.Field(cpath, "vault")
			spec.Vault = d.vaultRef(v, vpath, c.KeyLine["vault"])
			if p.Vault == nil {
				d.Add(v.Line, vpath, "uses Vault, but the policy has no vault section; add one (\"vault: {}\" takes VAULT_ADDR and VAULT_TOKEN from the environment)")
			}
		}
		if v := c.Get("aws"); v != nil {
			spec.AWS = d.awsRef(v, strictyaml.Field(cpath, "aws"), c.KeyLine["aws"])
		}
		p.Credentials[name] = spec
	}
}

// awsSecretIDRE is what Secrets Manager accepts as a SecretId: a name (letters, digits and
// /_+=.@-) or an ARN (which adds ":"), at most 2048 characters.
var awsSecretIDRE = regexp.MustCompile(`^[A-Za-z0-9/_+=.@:-]+$`)

// awsStageRE is a staging label: 1 to 256 characters, no spaces or control characters.
var awsStageRE = regexp.MustCompile(`^[A-Za-z0-9_+=.@:/-]{1,256}$`)

func (d *decoder) awsRef(n *yaml.Node, path string, line int) *secrets.AWSRef {
	m, ok := d.Mapping(n, path, line, []string{"secret_id", "field", "version_stage"})
	ref := &secrets.AWSRef{VersionStage: secrets.DefaultAWSVersionStage}
	if !ok {
		return ref
	}
	if v := m.Get("secret_id"); v == nil {
		d.Add(m.Line, strictyaml.Field(path, "secret_id"), "missing; name the secret or give its ARN, e.g. secret_id: castellan/ticketing")
	} else if s, ok := d.text(v, strictyaml.Field(path, "secret_id")); ok {
		if !awsSecretIDRE.MatchString(s) || len(s) > 2048 {
			d.Add(v.Line, strictyaml.Field(path, "secret_id"), "want a secret name (letters, digits and /_+=.@-) or an ARN, at most 2048 characters")
		}
		ref.SecretID = s
	}
	set(m, "field", &ref.Field, d.text)
	if v := m.Get("version_stage"); v != nil {
		if s, ok := d.text(v, strictyaml.Field(path, "version_stage")); ok {
			if !awsStageRE.MatchString(s) {
				d.Add(v.Line, strictyaml.Field(path, "version_stage"), "want a staging label such as AWSCURRENT or AWSPREVIOUS (no spaces, at most 256 characters)")
			}
			ref.VersionStage = s
		}
	}
	return ref
}

func (d *decoder) vaultRef(n *yaml.Node, path string, line int) *secrets.VaultRef {
	m, ok := d.Mapping(n, path, line, []string{"mount", "path", "field"})
	ref := &secrets.VaultRef{Mount: DefaultVaultMount}
	if !ok {
		return ref
	}
	set(m, "mount", &ref.Mount, d.vaultPath)
	if v := m.Get("path"); v == nil {
		d.Add(m.Line, strictyaml.Field(path, "path"), "missing; name the KV v2 secret, e.g. path: castellan/ticketing")
	} else {
		ref.Path, _ = d.vaultPath(v, strictyaml.Field(path, "path"))
	}
	if v := m.Get("field"); v == nil {
		d.Add(m.Line, strictyaml.Field(path, "field"), "missing; name the key inside the secret, e.g. field: api_key")
	} else {
		ref.Field, _ = d.text(v, strictyaml.Field(path, "field"))
	}
	return ref
}

var vaultSegRE = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// vaultPath checks a Vault mount or secret path: segments of letters, digits, ".", "_", "-",
// with no leading or trailing slash and no "." or ".." segment (which Vault's router would
// resolve somewhere the reviewer did not read).
func (d *decoder) vaultPath(n *yaml.Node, path string) (string, bool) {
	s, ok := d.text(n, path)
	if !ok {
		return "", false
	}
	for _, seg := range strings.Split(s, "/") {
		if !vaultSegRE.MatchString(seg) || seg == "." || seg == ".." {
			d.Add(n.Line, path, "Vault path %q: want segments of letters, digits, \".\", \"_\" or \"-\" separated by single \"/\", without leading or trailing \"/\" or \".\"/\"..\" segments", s)
			return "", false
		}
	}
	return s, true
}

// httpURL checks an http(s) URL with a host and no userinfo, query or fragment. The URL is
// never echoed in a message: a malformed one may be exactly the one carrying a password.
func (d *decoder) httpURL(n *yaml.Node, path string, allowPath bool) (*url.URL, bool) {
	s, ok := d.text(n, path)
	if !ok {
		return nil, false
	}
	bad := func(format string, args ...any) (*url.URL, bool) {
		d.Add(n.Line, path, format, args...)
		return nil, false
	}
	if strings.ContainsAny(s, " \t\\") {
		return bad("must not contain white space or backslashes")
	}
	u, err := url.Parse(s)
	if err != nil {
		// url's messages quote parts of the URL (an "invalid port" may be a password), so
		// only the shape of the fix is given.
		if strings.Contains(s, "@") {
			return bad("must not contain user info (user:password@); put credentials under auth")
		}
		return bad("not a valid URL; write it as https://host:port/path")
	}
	switch {
	case u.User != nil:
		return bad("must not contain user info (user:password@); put credentials under auth")
	case u.Scheme != "http" && u.Scheme != "https":
		if u.Scheme == "" {
			return bad("needs a scheme; write it as https://host:port/path")
		}
		return bad("scheme %q is not allowed; use http or https", u.Scheme)
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return bad("needs a host; write it as %s://host:port/path", u.Scheme)
	case u.RawQuery != "" || u.ForceQuery:
		return bad("must not contain a query (\"?...\"); put query credentials under auth.query, other parameters in the task's request")
	case u.Fragment != "" || strings.Contains(s, "#"):
		return bad("must not contain a fragment (\"#...\")")
	}
	if p := u.EscapedPath(); p != "" && p != "/" {
		if !allowPath {
			return bad("must not have a path; write it as %s://host:port", u.Scheme)
		}
		for _, seg := range strings.Split(strings.Trim(u.Path, "/"), "/") {
			if seg == "" || seg == "." || seg == ".." {
				return bad("path must not contain empty, \".\" or \"..\" segments")
			}
		}
	}
	return u, true
}

func (d *decoder) endpoints(p *Policy, n *yaml.Node, line int) {
	const path = "endpoints"
	m, _ := d.Mapping(n, path, line, nil)
	for _, name := range m.Keys {
		epath := strictyaml.Field(path, name)
		eline := m.KeyLine[name]
		d.name("endpoint", name, eline, epath)
		e, ok := d.Mapping(m.Vals[name], epath, eline, []string{"base_url", "allow", "auth", "timeout", "max_response_bytes", "max_request_bytes",
			"ca_file", "client_cert", "client_key", "redact_address", "idempotency_key"})
		ep := &egress.Endpoint{
			Name:             name,
			Timeout:          egress.DefaultTimeout,
			MaxResponseBytes: egress.DefaultMaxResponseBytes,
			MaxRequestBytes:  egress.DefaultMaxRequestBytes,
			RedactAddress:    true,
		}
		p.Endpoints[name] = ep
		if !ok {
			continue
		}
		if v := e.Get("base_url"); v == nil {
			d.Add(eline, strictyaml.Field(epath, "base_url"), "missing; set the endpoint's base URL, e.g. https://crm.internal/")
		} else {
			ep.BaseURL, _ = d.httpURL(v, strictyaml.Field(epath, "base_url"), true)
		}
		d.rules(ep, e.Get("allow"), strictyaml.Field(epath, "allow"), eline)
		if v := e.Get("auth"); v != nil {
			ep.Auth = d.auth(p, v, strictyaml.Field(epath, "auth"), e.KeyLine["auth"])
		}
		set(e, "timeout", &ep.Timeout, d.durationUpTo(MaxEndpointTimeout))
		set(e, "max_response_bytes", &ep.MaxResponseBytes, d.sizeIn(1, MaxEndpointBytes))
		set(e, "max_request_bytes", &ep.MaxRequestBytes, d.sizeIn(1, MaxEndpointBytes))
		set(e, "redact_address", &ep.RedactAddress, d.Bool)
		set(e, "idempotency_key", &ep.IdempotencyKey, d.Bool)
		d.endpointTLS(ep, e, epath)
	}
}

// endpointTLS reads an endpoint's CA and client certificate files. They are read once, when
// the policy is loaded, so that a missing or malformed file is a policy error at its line
// rather than a failure of every call.
func (d *decoder) endpointTLS(ep *egress.Endpoint, e *strictyaml.Mapping, epath string) {
	ca, cert, key := e.Get("ca_file"), e.Get("client_cert"), e.Get("client_key")
	if ca == nil && cert == nil && key == nil {
		return
	}
	if ep.BaseURL != nil && ep.BaseURL.Scheme != "https" {
		for _, k := range []string{"ca_file", "client_cert", "client_key"} {
			if e.Get(k) != nil {
				d.Add(e.KeyLine[k], strictyaml.Field(epath, k), "only applies to an https base_url; remove it or use https")
			}
		}
		return
	}
	if ca != nil {
		cpath := strictyaml.Field(epath, "ca_file")
		if file, ok := d.path(ca, cpath); ok {
			if data, ok := d.readFile(ca, cpath, file); ok {
				pool := x509.NewCertPool()
				if !pool.AppendCertsFromPEM(data) {
					d.Add(ca.Line, cpath, "%s holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")", file)
				} else {
					ep.RootCAs = pool
				}
			}
		}
	}
	switch {
	case cert == nil && key == nil:
		return
	case cert == nil:
		d.Add(e.KeyLine["client_key"], strictyaml.Field(epath, "client_key"), "needs client_cert as well (the certificate that goes with the key)")
		return
	case key == nil:
		d.Add(e.KeyLine["client_cert"], strictyaml.Field(epath, "client_cert"), "needs client_key as well (the private key of the certificate)")
		return
	}
	cpath, kpath := strictyaml.Field(epath, "client_cert"), strictyaml.Field(epath, "client_key")
	certFile, ok1 := d.path(cert, cpath)
	keyFile, ok2 := d.path(key, kpath)
	if !ok1 || !ok2 {
		return
	}
	certPEM, ok1 := d.readFile(cert, cpath, certFile)
	keyPEM, ok2 := d.readFile(key, kpath, keyFile)
	if !ok1 || !ok2 {
		return
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// crypto/tls's messages name what is wrong (no certificate, key mismatch), never the
		// key's bytes.
		d.Add(cert.Line, cpath, "%s with %s is not a usable client certificate: %v", certFile, keyFile, err)
		return
	}
	ep.ClientCertificate = &pair
}

// readFile reads a file the policy names, reporting why it cannot at the value's line.
func (d *decoder) readFile(n *yaml.Node, path, file string) ([]byte, bool) {
	data, err := os.ReadFile(file)
	if err != nil {
		why := "file does not exist"
		switch pe, ok := err.(*os.PathError); {
		case os.IsPermission(err):
			why = "permission denied; the worker's user needs read access"
		case ok && !os.IsNotExist(err):
			why = pe.Err.Error() // a *PathError repeats the path, named here already
		case !ok:
			why = err.Error()
		}
		d.Add(n.Line, path, "cannot read %s: %s", file, why)
		return nil, false
	}
	return data, true
}

func (d *decoder) rules(ep *egress.Endpoint, n *yaml.Node, path string, line int) {
	if n == nil {
		d.Add(line, path, "missing; an endpoint needs at least one rule such as \"GET /api/customers/*\"")
		return
	}
	items, ok := d.List(n, path)
	if !ok {
		return
	}
	if len(items) == 0 {
		d.Add(n.Line, path, "empty; an endpoint needs at least one rule such as \"GET /api/customers/*\" (remove the endpoint if nothing may reach it)")
		return
	}
	seen := map[string]int{}
	for i, it := range items {
		ipath := strictyaml.Index(path, i)
		s, ok := d.text(it, ipath)
		if !ok {
			continue
		}
		r, err := egress.ParseRule(s)
		if err != nil {
			d.Add(it.Line, ipath, "%v", err)
			continue
		}
		if first, dup := seen[r.String()]; dup {
			d.Add(it.Line, ipath, "rule %q repeats allow[%d]; remove one", s, first)
			continue
		}
		seen[r.String()] = i
		ep.Rules = append(ep.Rules, r)
	}
}

var (
	// Headers that a proxy or the transport owns: a credential there would be stripped,
	// misrouted or break message framing.
	forbiddenAuthHeaders = map[string]bool{
		"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true, "Trailer": true,
		"Transfer-Encoding": true, "Upgrade": true, "Host": true, "Content-Length": true,
	}
	queryParamRE = regexp.MustCompile(`^[A-Za-z0-9_.~\[\]-]+$`)
)

func (d *decoder) auth(p *Policy, n *yaml.Node, path string, line int) egress.Auth {
	kinds := []string{"bearer", "header", "basic", "query"}
	m, ok := d.Mapping(n, path, line, kinds)
	if !ok {
		return egress.Auth{}
	}
	if len(m.Keys) != 1 {
		what := "nothing"
		if len(m.Keys) > 1 {
			what = strings.Join(m.Keys, " and ")
		}
		d.Add(line, path, "has %s; set exactly one of bearer, header, basic or query (or remove auth)", what)
		if len(m.Keys) == 0 {
			return egress.Auth{}
		}
	}
	kind := m.Keys[0]
	kpath, v := strictyaml.Field(path, kind), m.Vals[kind]
	switch kind {
	case "bearer":
		return egress.Auth{Kind: egress.AuthHeader, Credential: d.credRef(p, v, kpath),
			Header: "Authorization", Format: "Bearer {secret}"}
	case "header":
		h, ok := d.Mapping(v, kpath, m.KeyLine[kind], []string{"name", "format", "credential"})
		a := egress.Auth{Kind: egress.AuthHeader, Format: "{secret}"}
		if !ok {
			return a
		}
		if hn := h.Get("name"); hn == nil {
			d.Add(h.Line, strictyaml.Field(kpath, "name"), "missing; name the header, e.g. X-API-Key")
		} else if s, ok := d.text(hn, strictyaml.Field(kpath, "name")); ok {
			canon := http.CanonicalHeaderKey(s)
			switch {
			case !httpguts.ValidHeaderFieldName(s):
				d.Add(hn.Line, strictyaml.Field(kpath, "name"), "header name %q is not a valid HTTP token", s)
			case forbiddenAuthHeaders[canon] || strings.HasPrefix(canon, "Proxy-"):
				d.Add(hn.Line, strictyaml.Field(kpath, "name"), "header %q is hop-by-hop or controls message framing and cannot carry a credential; use e.g. Authorization or X-API-Key", canon)
			}
			a.Header = canon
		}
		if f := h.Get("format"); f != nil {
			if s, ok := d.text(f, strictyaml.Field(kpath, "format")); ok {
				if c := strings.Count(s, "{secret}"); c != 1 {
					d.Add(f.Line, strictyaml.Field(kpath, "format"), "must contain {secret} exactly once (found %d), e.g. \"Token {secret}\"", c)
				}
				a.Format = s
			}
		}
		a.Credential = d.requiredCredRef(p, h, kpath)
		return a
	case "basic":
		b, ok := d.Mapping(v, kpath, m.KeyLine[kind], []string{"username", "credential"})
		a := egress.Auth{Kind: egress.AuthBasic}
		if !ok {
			return a
		}
		if u := b.Get("username"); u == nil {
			d.Add(b.Line, strictyaml.Field(kpath, "username"), "missing; set the literal user name (the credential is the password)")
		} else if s, ok := d.text(u, strictyaml.Field(kpath, "username")); ok {
			if strings.Contains(s, ":") {
				d.Add(u.Line, strictyaml.Field(kpath, "username"), "must not contain \":\" (basic auth separates user and password with it)")
			}
			a.Username = s
		}
		a.Credential = d.requiredCredRef(p, b, kpath)
		return a
	default: // query
		q, ok := d.Mapping(v, kpath, m.KeyLine[kind], []string{"param", "credential"})
		a := egress.Auth{Kind: egress.AuthQuery}
		if !ok {
			return a
		}
		if pn := q.Get("param"); pn == nil {
			d.Add(q.Line, strictyaml.Field(kpath, "param"), "missing; name the query parameter, e.g. api_key")
		} else if s, ok := d.text(pn, strictyaml.Field(kpath, "param")); ok {
			if !queryParamRE.MatchString(s) {
				d.Add(pn.Line, strictyaml.Field(kpath, "param"), "query parameter %q: use letters, digits, \"_\", \".\", \"-\", \"~\" or brackets", s)
			}
			a.Param = s
		}
		a.Credential = d.requiredCredRef(p, q, kpath)
		return a
	}
}

func (d *decoder) requiredCredRef(p *Policy, m *strictyaml.Mapping, path string) string {
	v := m.Get("credential")
	if v == nil {
		d.Add(m.Line, strictyaml.Field(path, "credential"), "missing; name a credential from the credentials section")
		return ""
	}
	return d.credRef(p, v, strictyaml.Field(path, "credential"))
}

// credRef checks that a credential name refers to a declared credential.
func (d *decoder) credRef(p *Policy, n *yaml.Node, path string) string {
	s, ok := d.text(n, path)
	if !ok {
		return ""
	}
	if _, ok := p.Credentials[s]; !ok {
		d.Add(n.Line, path, "unknown credential %q; declare it under credentials%s", s, known(p.Credentials))
	}
	return s
}

func known[V any](m map[string]V) string {
	if len(m) == 0 {
		return " (there are none yet)"
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return fmt.Sprintf(" (declared: %s)", strings.Join(names, ", "))
}

func (d *decoder) tasks(p *Policy, n *yaml.Node, line int) {
	const path = "tasks"
	m, _ := d.Mapping(n, path, line, nil)
	for _, name := range m.Keys {
		tpath := strictyaml.Field(path, name)
		tline := m.KeyLine[name]
		d.name("task", name, tline, tpath)
		t, ok := d.Mapping(m.Vals[name], tpath, tline, []string{"module", "sha256", "entry", "version", "title", "description", "input_schema", "output_schema", "annotations", "endpoints", "on_secret_in_output", "limits"})
		task := &Task{
			Name:             name,
			Entry:            DefaultEntry,
			Version:          DefaultTaskVersion,
			OnSecretInOutput: DefaultOnSecretInOutput,
			Endpoints:        []string{},
		}
		p.Tasks[name] = task
		if !ok {
			continue
		}
		if v := t.Get("module"); v == nil {
			// Without a module the task is a grant for the plugin of the same name. Keys that
			// only a module's author can answer come from the plugin's manifest instead, so
			// writing them here is refused rather than silently ignored.
			var authorKeys []string
			for _, k := range pluginManifestKeys {
				if t.Get(k) != nil {
					authorKeys = append(authorKeys, k)
				}
			}
			if len(authorKeys) > 0 {
				d.Add(tline, strictyaml.Field(tpath, "module"), "missing; set the path of the task's .wasm file, or remove %s to make this task a grant for the plugin named %q (its manifest supplies them; see docs/plugins.md)",
					strings.Join(authorKeys, ", "), name)
			}
		} else {
			task.Module, _ = d.path(v, strictyaml.Field(tpath, "module"))
		}
		if v := t.Get("sha256"); v != nil {
			if s, ok := d.text(v, strictyaml.Field(tpath, "sha256")); ok {
				if !sha256RE.MatchString(s) {
					d.Add(v.Line, strictyaml.Field(tpath, "sha256"), "must be 64 hexadecimal characters (the output of sha256sum), got %d characters", len(s))
				}
				task.SHA256 = strings.ToLower(s)
			}
		}
		if v := t.Get("entry"); v != nil {
			if s, ok := d.text(v, strictyaml.Field(tpath, "entry")); ok {
				if len(s) > 256 {
					d.Add(v.Line, strictyaml.Field(tpath, "entry"), "export name longer than 256 bytes")
				}
				task.Entry = s
			}
		}
		if v := t.Get("version"); v != nil {
			if s, ok := d.text(v, strictyaml.Field(tpath, "version")); ok {
				if len(s) > 64 {
					d.Add(v.Line, strictyaml.Field(tpath, "version"), "longer than 64 bytes")
				}
				task.Version = s
			}
		}
		set(t, "title", &task.Title, d.title)
		set(t, "description", &task.Description, d.Str)
		if v := t.Get("annotations"); v != nil {
			task.Annotations = d.annotations(v, strictyaml.Field(tpath, "annotations"), t.KeyLine["annotations"])
		}
		set(t, "input_schema", &task.InputSchema, d.path)
		set(t, "output_schema", &task.OutputSchema, d.path)
		if v := t.Get("on_secret_in_output"); v != nil {
			if s, ok := d.text(v, strictyaml.Field(tpath, "on_secret_in_output")); ok {
				if s != "fail" && s != "redact" {
					d.Add(v.Line, strictyaml.Field(tpath, "on_secret_in_output"), "unknown value %q; use fail or redact", s)
				}
				task.OnSecretInOutput = s
			}
		}
		if v := t.Get("endpoints"); v != nil {
			d.grants(p, task, v, strictyaml.Field(tpath, "endpoints"))
		}
		task.Limits = d.limits(t.Get("limits"), strictyaml.Field(tpath, "limits"), t.KeyLine["limits"])
	}
}

// title decodes a task title: one line of at most MaxTitle bytes.
func (d *decoder) title(n *yaml.Node, path string) (string, bool) {
	s, ok := d.text(n, path)
	if !ok {
		return "", false
	}
	if len(s) > MaxTitle {
		d.Add(n.Line, path, "is %d bytes, at most %d", len(s), MaxTitle)
		return "", false
	}
	// A title is printed by terminals (audit, policy check) and agents' UIs: no line breaks
	// or escape sequences.
	if strings.IndexFunc(s, unicode.IsControl) >= 0 {
		d.Add(n.Line, path, "must be a single line without control characters")
		return "", false
	}
	return s, true
}

// annotations decodes a task's annotations mapping; every key is optional.
func (d *decoder) annotations(n *yaml.Node, path string, line int) *Annotations {
	m, ok := d.Mapping(n, path, line, []string{"read_only", "destructive", "idempotent"})
	if !ok {
		return nil
	}
	a := &Annotations{}
	for _, k := range []struct {
		key string
		dst **bool
	}{{"read_only", &a.ReadOnly}, {"destructive", &a.Destructive}, {"idempotent", &a.Idempotent}} {
		if v := m.Get(k.key); v != nil {
			if b, ok := d.Bool(v, strictyaml.Field(path, k.key)); ok {
				*k.dst = &b
			}
		}
	}
	if a.ReadOnly != nil && *a.ReadOnly && a.Destructive != nil && *a.Destructive {
		d.Add(m.KeyLine["destructive"], strictyaml.Field(path, "destructive"), "a read_only task cannot be destructive; set one of them to false")
	}
	if a.ReadOnly == nil && a.Destructive == nil && a.Idempotent == nil {
		return nil
	}
	return a
}

var sha256RE = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)

func (d *decoder) grants(p *Policy, task *Task, n *yaml.Node, path string) {
	items, ok := d.List(n, path)
	if !ok {
		return
	}
	seen := map[string]int{}
	for i, it := range items {
		ipath := strictyaml.Index(path, i)
		s, ok := d.text(it, ipath)
		if !ok {
			continue
		}
		if _, ok := p.Endpoints[s]; !ok {
			d.Add(it.Line, ipath, "unknown endpoint %q; declare it under endpoints%s", s, known(p.Endpoints))
			continue
		}
		if first, dup := seen[s]; dup {
			d.Add(it.Line, ipath, "endpoint %q is already granted at endpoints[%d]; remove one", s, first)
			continue
		}
		seen[s] = i
		task.Endpoints = append(task.Endpoints, s)
	}
}

func (d *decoder) limits(n *yaml.Node, path string, line int) Limits {
	l := Limits{
		MemoryPages: DefaultMemory / WasmPageSize,
		Timeout:     DefaultTimeout,
		OutputBytes: DefaultOutput,
		HTTPCalls:   DefaultHTTPCalls,
		LogBytes:    DefaultLogBytes,
	}
	m, _ := d.Mapping(n, path, line, []string{"memory", "timeout", "output_bytes", "http_calls", "log_bytes"})
	if v := m.Get("memory"); v != nil {
		if s, ok := d.size(v, strictyaml.Field(path, "memory"), MinMemory, MaxMemory); ok {
			l.MemoryPages = uint32((s + WasmPageSize - 1) / WasmPageSize)
		}
	}
	set(m, "timeout", &l.Timeout, d.durationUpTo(MaxTimeout))
	set(m, "output_bytes", &l.OutputBytes, d.sizeIn(0, MaxOutput))
	if v := m.Get("http_calls"); v != nil {
		if c, ok := d.Int(v, strictyaml.Field(path, "http_calls"), 0, MaxHTTPCalls); ok {
			l.HTTPCalls = int(c)
		}
	}
	set(m, "log_bytes", &l.LogBytes, d.sizeIn(0, MaxLogBytes))
	return l
}

package secrets

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"
	"go.uber.org/zap"
)

// vaultClient talks to one Vault server with one identity. Every token gets its own clone of
// the api.Client (same configuration and connection pool, that token set), so that a re-login
// never changes the token of a read in flight.
type vaultClient struct {
	api     *api.Client // no token: clones are made from it, and AppRole logs in through it
	addr    string
	cfg     VaultConfig
	timeout time.Duration
	log     *zap.Logger
	bg      context.Context // cancelled by Store.Close: stops renewal
	wg      *sync.WaitGroup

	login chan struct{} // a one-slot lock around obtaining a token; select-able with ctx

	mu      sync.Mutex // guards the token state below
	token   string
	client  *api.Client          // a clone of api carrying token
	watcher *api.LifetimeWatcher // renews token; nil when it is not renewed
	expires time.Time            // zero when the token does not expire (or we do not know)
}

func newVaultClient(cfg VaultConfig, log *zap.Logger, bg context.Context, wg *sync.WaitGroup) (*vaultClient, error) {
	addr := cfg.Address
	if addr == "" {
		addr = os.Getenv("VAULT_ADDR")
	}
	if addr == "" {
		return nil, errors.New("secrets: vault: no address: set the vault address in the worker config or VAULT_ADDR")
	}
	u, err := url.Parse(addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil {
		return nil, fmt.Errorf("secrets: vault: address %q is not an http(s) URL with a host", addr)
	}
	switch cfg.AuthMethod {
	case "", "token":
		cfg.AuthMethod = "token"
		if cfg.TokenEnv == "" {
			cfg.TokenEnv = defaultTokenEnv
		}
	case "approle":
		if cfg.RoleID == "" {
			return nil, errors.New("secrets: vault: approle auth needs a role id")
		}
		if cfg.SecretIDFile == "" && cfg.SecretIDEnv == "" {
			return nil, errors.New("secrets: vault: approle auth needs a secret id file or environment variable")
		}
		if cfg.AppRoleMount == "" {
			cfg.AppRoleMount = defaultAppRoleMount
		}
		cfg.AppRoleMount = strings.Trim(cfg.AppRoleMount, "/")
	default:
		return nil, fmt.Errorf("secrets: vault: auth method %q is not supported (use \"token\" or \"approle\")", cfg.AuthMethod)
	}
	timeout := cfg.RequestTimeout
	if timeout <= 0 {
		timeout = defaultRequestTimeout
	}

	// DefaultConfig also reads the VAULT_* variables of Vault's own CLI (VAULT_CACERT,
	// VAULT_SKIP_VERIFY, ...), as operators expect; explicit settings below win.
	conf := api.DefaultConfig()
	if conf.Error != nil {
		return nil, fmt.Errorf("secrets: vault: client configuration from VAULT_* environment: %w", conf.Error)
	}
	conf.Address = addr
	conf.Timeout = timeout
	conf.MaxRetries = 2 // on 5xx and connection errors, quickly: the job is retried anyway
	conf.MinRetryWait = 100 * time.Millisecond
	conf.MaxRetryWait = time.Second
	conf.CloneHeaders = true // a token's clone keeps the namespace header
	if cfg.CACert != "" {
		if _, err := os.Stat(cfg.CACert); err != nil {
			return nil, fmt.Errorf("secrets: vault: CA certificate %s: %w", cfg.CACert, err)
		}
		if err := conf.ConfigureTLS(&api.TLSConfig{CACert: cfg.CACert}); err != nil {
			return nil, fmt.Errorf("secrets: vault: CA certificate %s: %w", cfg.CACert, err)
		}
	}
	client, err := api.NewClient(conf)
	if err != nil {
		return nil, fmt.Errorf("secrets: vault: %w", err)
	}
	client.ClearToken() // NewClient picks up VAULT_TOKEN; we send tokens per request
	if cfg.Namespace != "" {
		client.SetNamespace(cfg.Namespace)
	}
	return &vaultClient{
		api: client, addr: addr, cfg: cfg, timeout: timeout, log: log, bg: bg, wg: wg,
		login: make(chan struct{}, 1),
	}, nil
}

// readKV returns the data of the current version of the KV v2 secret ref.
func (c *vaultClient) readKV(ctx context.Context, ref VaultRef) (map[string]any, error) {
	where := ref.Mount + "/data/" + ref.Path
	tok, client, err := c.currentToken(ctx)
	if err != nil {
		return nil, err
	}
	sec, err := c.get(ctx, client, ref)
	if c.cfg.AuthMethod == "approle" && isStatus(err, http.StatusForbidden) {
		// The token may have expired or been revoked: log in again, once.
		c.dropToken(tok)
		if _, client, err = c.currentToken(ctx); err != nil {
			return nil, err
		}
		sec, err = c.get(ctx, client, ref)
	}
	if errors.Is(err, api.ErrSecretNotFound) {
		return nil, fail(nil, "vault: %s: not found (404)", where)
	}
	if err != nil {
		return nil, c.failure(ctx, "vault: "+where, err)
	}
	if sec.Data == nil {
		// KV v2 keeps metadata of deleted and destroyed versions: data is null then.
		return nil, fail(nil, "vault: %s: no data (deleted version, or not a KV v2 mount?)", where)
	}
	return sec.Data, nil
}

// get reads ref with KVv2. Its errors may quote Vault's response, so they are only ever
// classified (failure), never shown.
func (c *vaultClient) get(ctx context.Context, client *api.Client, ref VaultRef) (*api.KVSecret, error) {
	sec, err := client.KVv2(ref.Mount).Get(ctx, ref.Path)
	if err != nil && !errors.Is(err, api.ErrSecretNotFound) && !isResponse(err) && ctx.Err() == nil &&
		!errors.Is(err, context.DeadlineExceeded) && !isNetwork(err) {
		// The response was not a KV v2 secret (its parse error quotes the data).
		return nil, errNotKVv2
	}
	return sec, err
}

var errNotKVv2 = errors.New("the response is not a KV v2 secret")

// currentToken returns a usable token and its client, reading or logging in for one if needed.
func (c *vaultClient) currentToken(ctx context.Context) (string, *api.Client, error) {
	if tok, cl := c.validToken(); tok != "" {
		return tok, cl, nil
	}
	select {
	case c.login <- struct{}{}:
	case <-ctx.Done():
		return "", nil, fail(ctx.Err(), "vault: cancelled while waiting for login (%v)", ctx.Err())
	}
	defer func() { <-c.login }()
	if tok, cl := c.validToken(); tok != "" { // someone else logged in meanwhile
		return tok, cl, nil
	}
	var (
		auth *api.SecretAuth
		err  error
	)
	if c.cfg.AuthMethod == "approle" {
		auth, err = c.appRoleLogin(ctx)
	} else {
		auth, err = c.staticToken(ctx)
	}
	if err != nil {
		return "", nil, err
	}
	client, err := c.api.Clone()
	if err != nil {
		return "", nil, fail(errors.New("client clone failed"), "vault: cannot set up a client for the token")
	}
	client.SetToken(auth.ClientToken)
	var w *api.LifetimeWatcher
	if auth.Renewable && auth.LeaseDuration > 0 {
		// The watcher renews with the token it was given (renew-self), whatever client.
		w, err = c.api.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: &api.Secret{Auth: auth}})
		if err != nil {
			w = nil
			c.log.Warn("cannot watch the vault token; it will not be renewed")
		}
	}
	c.mu.Lock()
	old := c.watcher
	c.token, c.client, c.watcher = auth.ClientToken, client, w
	c.expires = time.Time{}
	if auth.LeaseDuration > 0 {
		c.expires = time.Now().Add(time.Duration(auth.LeaseDuration) * time.Second)
	}
	c.mu.Unlock()
	if old != nil {
		old.Stop()
	}
	if w != nil {
		c.wg.Add(2)
		go func() { defer c.wg.Done(); w.Start() }()
		go c.watch(w, auth.ClientToken)
	}
	return auth.ClientToken, client, nil
}

// validToken returns the current token and its client unless there is none or it has
// expired.
func (c *vaultClient) validToken() (string, *api.Client) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == "" || (!c.expires.IsZero() && time.Now().After(c.expires)) {
		return "", nil
	}
	return c.token, c.client
}

// dropToken forgets tok if it is still the current token (a rejected or expiring token is
// not reused: the next read reads the token again, or logs in), and stops its renewal.
func (c *vaultClient) dropToken(tok string) {
	c.mu.Lock()
	var w *api.LifetimeWatcher
	if c.token == tok {
		w = c.watcher
		c.token, c.client, c.watcher = "", nil, nil
	}
	c.mu.Unlock()
	if w != nil {
		w.Stop()
	}
}

// watch follows the renewal of tok by w until the store closes, the token is replaced, or
// Vault stops renewing it. A token that is no longer renewed is dropped shortly before it
// expires, so that the next read logs in again (AppRole) or reads the token again.
func (c *vaultClient) watch(w *api.LifetimeWatcher, tok string) {
	defer c.wg.Done()
	for {
		select {
		case <-c.bg.Done():
			w.Stop()
			<-w.DoneCh() // a renewal in flight ends before Close returns
			return
		case err := <-w.DoneCh():
			reason := "the token reached its maximum lifetime or was replaced"
			if err != nil {
				reason = c.failure(c.bg, "renew-self", err).Error()
			}
			c.mu.Lock()
			current := c.token == tok
			c.mu.Unlock()
			if current {
				c.log.Info("vault token is no longer renewed; it is replaced at the next read", zap.String("reason", reason))
				c.dropToken(tok)
			}
			return
		case out := <-w.RenewCh():
			if out.Secret == nil || out.Secret.Auth == nil {
				continue
			}
			lease := time.Duration(out.Secret.Auth.LeaseDuration) * time.Second
			c.mu.Lock()
			if c.token == tok && lease > 0 {
				c.expires = time.Now().Add(lease)
			}
			c.mu.Unlock()
			c.log.Debug("vault token renewed", zap.Duration("lease", lease))
		}
	}
}

// staticToken reads the token from its file or environment variable and looks it up to
// learn whether it should be renewed. A failed look-up is not fatal: the token may lack the
// permission, and the read that follows will say whether it works.
func (c *vaultClient) staticToken(ctx context.Context) (*api.SecretAuth, error) {
	tok, err := c.readSecretSetting("vault token", c.cfg.TokenFile, c.cfg.TokenEnv)
	if err != nil {
		return nil, err
	}
	auth := &api.SecretAuth{ClientToken: tok}
	client, err := c.api.Clone()
	if err != nil {
		return auth, nil
	}
	client.SetToken(tok)
	sec, err := client.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil || sec == nil {
		if err == nil {
			err = errors.New("empty response")
		}
		c.log.Warn("cannot look up the vault token; it will not be renewed",
			zap.String("reason", c.failure(ctx, "lookup-self", err).Error()))
		return auth, nil
	}
	ttl, _ := sec.TokenTTL()
	auth.Renewable, _ = sec.TokenIsRenewable()
	auth.LeaseDuration = int(ttl / time.Second)
	return auth, nil
}

// appRoleLogin logs in with vault/api's AppRole method. The secret id is read by us, as
// every credential setting is, so that its errors are ours.
func (c *vaultClient) appRoleLogin(ctx context.Context) (*api.SecretAuth, error) {
	secretID, err := c.readSecretSetting("vault approle secret id", c.cfg.SecretIDFile, c.cfg.SecretIDEnv)
	if err != nil {
		return nil, err
	}
	where := "vault: approle login at auth/" + c.cfg.AppRoleMount + "/login"
	method, err := approle.NewAppRoleAuth(c.cfg.RoleID, &approle.SecretID{FromString: secretID}, approle.WithMountPath(c.cfg.AppRoleMount))
	if err != nil {
		return nil, fail(errors.New("approle configuration"), "%s: invalid configuration", where)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	sec, err := method.Login(ctx, c.api)
	if err != nil {
		return nil, c.failure(ctx, where, err)
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return nil, fail(nil, "%s: no token in the response", where)
	}
	c.log.Info("logged in to vault with approle", zap.String("role_id", c.cfg.RoleID),
		zap.Duration("lease", time.Duration(sec.Auth.LeaseDuration)*time.Second))
	return sec.Auth, nil
}

// readSecretSetting reads a token or secret id from a file (preferred) or an environment
// variable, with surrounding whitespace trimmed.
func (c *vaultClient) readSecretSetting(what, file, env string) (string, error) {
	if file != "" {
		v, err := readSecretFile(file)
		if err != nil {
			var f *failure
			errors.As(err, &f)
			return "", fail(f.cause, "%s: %s", what, f.msg)
		}
		return strings.TrimSpace(v), nil
	}
	v := strings.TrimSpace(os.Getenv(env))
	if v == "" {
		return "", fail(nil, "%s: environment variable %s is not set", what, env)
	}
	return v, nil
}

// statusError is an HTTP status from Vault, without Vault's message (which can echo request
// details) so that it is safe to keep as an error's cause.
type statusError struct{ code int }

func (e *statusError) Error() string { return fmt.Sprintf("vault answered %d", e.code) }

// status returns the HTTP status of a Vault error response in err's chain.
func status(err error) (int, bool) {
	var re *api.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode, true
	}
	var se *statusError
	if errors.As(err, &se) {
		return se.code, true
	}
	return 0, false
}

func isStatus(err error, code int) bool {
	c, ok := status(err)
	return ok && c == code
}

func isResponse(err error) bool {
	_, ok := status(err)
	return ok
}

// isNetwork reports whether err is a transport failure (failure classifies it further).
func isNetwork(err error) bool {
	var netErr net.Error
	var opErr *net.OpError
	var dnsErr *net.DNSError
	var urlErr *url.Error
	return errors.As(err, &netErr) || errors.As(err, &opErr) || errors.As(err, &dnsErr) || errors.As(err, &urlErr) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// failure turns an error from do into a message fit for the control plane, prefixed with
// what (e.g. "vault: secret/data/x"). Only our own words and status codes go (never the
// address: the message reaches the control plane, which must not learn the network layout)
// into it; the cause kept is a context error, an errno, a status or a generic error.
func (c *vaultClient) failure(ctx context.Context, what string, err error) error {
	var f *failure
	if errors.As(err, &f) {
		return err
	}
	if code, ok := status(err); ok {
		return fail(&statusError{code: code}, "%s: %s", what, statusText(code))
	}
	if errors.Is(err, errNotKVv2) {
		return fail(errNotKVv2, "%s: %v", what, errNotKVv2)
	}
	return transportFailure(ctx, err, what, "vault", c.timeout, "set the CA certificate?")
}

// transportFailure words an error that happened on the way to a secrets service (service is
// "vault" or "Secrets Manager"), in our own words only: a context error, an errno, a DNS,
// certificate or timeout failure, never the address or the library's text, which may name the
// host. caHint says how to trust the service's certificate.
func transportFailure(ctx context.Context, err error, what, service string, timeout time.Duration, caHint string) *failure {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || (ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded)):
		return fail(context.DeadlineExceeded, "%s: %s did not answer within %s (or the job's deadline)", what, service, timeout)
	case ctx.Err() != nil:
		return fail(ctx.Err(), "%s: cancelled (%v)", what, ctx.Err())
	case errors.Is(err, syscall.ECONNREFUSED):
		return fail(syscall.ECONNREFUSED, "%s: %s unreachable (connection refused)", what, service)
	case errors.Is(err, syscall.ECONNRESET):
		return fail(syscall.ECONNRESET, "%s: %s unreachable (connection reset)", what, service)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fail(errors.New("host not found"), "%s: %s unreachable (host not found)", what, service)
	}
	var (
		unknownCA   x509.UnknownAuthorityError
		hostErr     x509.HostnameError
		invalidCert x509.CertificateInvalidError
		verifyErr   *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &hostErr) || errors.As(err, &invalidCert) || errors.As(err, &verifyErr) {
		return fail(errors.New("tls certificate not trusted"), "%s: %s TLS certificate not trusted (%s)", what, service, caHint)
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return fail(context.DeadlineExceeded, "%s: %s timed out", what, service)
	}
	if isNetwork(err) {
		return fail(errors.New("network error"), "%s: %s unreachable", what, service)
	}
	return fail(errors.New("request failed"), "%s: request to %s failed", what, service)
}

func statusText(code int) string {
	switch code {
	case http.StatusBadRequest:
		return "bad request (400)"
	case http.StatusUnauthorized:
		return "unauthorized (401)"
	case http.StatusForbidden:
		return "permission denied (403)"
	case http.StatusNotFound:
		return "not found (404)"
	case http.StatusTooManyRequests:
		return "rate limited (429)"
	case http.StatusServiceUnavailable:
		return "vault is sealed or unavailable (503)"
	}
	if code >= 500 {
		return fmt.Sprintf("vault server error (%d)", code)
	}
	return fmt.Sprintf("unexpected status (%d)", code)
}

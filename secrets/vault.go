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
	"go.uber.org/zap"
)

// vaultClient talks to one Vault server with one identity. It builds every request itself
// with an explicit token, rather than setting the token on the shared api.Client, so that a
// re-login never races with reads in flight.
type vaultClient struct {
	api     *api.Client
	addr    string
	cfg     VaultConfig
	timeout time.Duration
	log     *zap.Logger
	bg      context.Context // cancelled by Store.Close: stops renewal
	wg      *sync.WaitGroup

	login chan struct{} // a one-slot lock around obtaining a token; select-able with ctx

	mu      sync.Mutex // guards the token state below
	token   string
	gen     int       // incremented for every new token; older renewal loops exit
	expires time.Time // zero when the token does not expire (or we do not know)
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

// readKV returns .data.data of the KV v2 secret at path ("mount/data/path").
func (c *vaultClient) readKV(ctx context.Context, path string) (map[string]any, error) {
	tok, err := c.currentToken(ctx)
	if err != nil {
		return nil, err
	}
	sec, err := c.do(ctx, http.MethodGet, path, tok, nil)
	if c.cfg.AuthMethod == "approle" && isStatus(err, http.StatusForbidden) {
		// The token may have expired or been revoked: log in again, once.
		c.dropToken(tok)
		if tok, err = c.currentToken(ctx); err != nil {
			return nil, err
		}
		sec, err = c.do(ctx, http.MethodGet, path, tok, nil)
	}
	if err != nil {
		return nil, c.failure(ctx, "vault: "+path, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, fail(nil, "vault: %s: not found (404)", path)
	}
	data, ok := sec.Data["data"].(map[string]any)
	if !ok {
		// KV v2 keeps metadata of deleted and destroyed versions: data is null then.
		return nil, fail(nil, "vault: %s: no data (deleted version, or not a KV v2 mount?)", path)
	}
	return data, nil
}

// currentToken returns a usable token, reading or logging in for one if needed.
func (c *vaultClient) currentToken(ctx context.Context) (string, error) {
	if tok := c.validToken(); tok != "" {
		return tok, nil
	}
	select {
	case c.login <- struct{}{}:
	case <-ctx.Done():
		return "", fail(ctx.Err(), "vault: cancelled while waiting for login (%v)", ctx.Err())
	}
	defer func() { <-c.login }()
	if tok := c.validToken(); tok != "" { // someone else logged in meanwhile
		return tok, nil
	}
	var (
		tok       string
		lease     time.Duration
		renewable bool
		err       error
	)
	if c.cfg.AuthMethod == "approle" {
		tok, lease, renewable, err = c.appRoleLogin(ctx)
	} else {
		tok, lease, renewable, err = c.staticToken(ctx)
	}
	if err != nil {
		return "", err
	}
	c.mu.Lock()
	c.token = tok
	c.gen++
	gen := c.gen
	c.expires = time.Time{}
	if lease > 0 {
		c.expires = time.Now().Add(lease)
	}
	c.mu.Unlock()
	if renewable && lease > 0 {
		c.wg.Add(1)
		go c.renewLoop(gen, tok, lease)
	}
	return tok, nil
}

// validToken returns the current token unless there is none or it has expired.
func (c *vaultClient) validToken() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == "" || (!c.expires.IsZero() && time.Now().After(c.expires)) {
		return ""
	}
	return c.token
}

// dropToken forgets tok if it is still the current token (a rejected token is not reused).
func (c *vaultClient) dropToken(tok string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == tok {
		c.token = ""
		c.gen++
	}
}

// staticToken reads the token from its file or environment variable and looks it up to
// learn whether it should be renewed. A failed look-up is not fatal: the token may lack the
// permission, and the read that follows will say whether it works.
func (c *vaultClient) staticToken(ctx context.Context) (string, time.Duration, bool, error) {
	tok, err := c.readSecretSetting("vault token", c.cfg.TokenFile, c.cfg.TokenEnv)
	if err != nil {
		return "", 0, false, err
	}
	sec, err := c.do(ctx, http.MethodGet, "auth/token/lookup-self", tok, nil)
	if err != nil {
		c.log.Warn("cannot look up the vault token; it will not be renewed",
			zap.String("reason", c.failure(ctx, "lookup-self", err).Error()))
		return tok, 0, false, nil
	}
	ttl, _ := sec.TokenTTL()
	renewable, _ := sec.TokenIsRenewable()
	return tok, ttl, renewable, nil
}

func (c *vaultClient) appRoleLogin(ctx context.Context) (string, time.Duration, bool, error) {
	secretID, err := c.readSecretSetting("vault approle secret id", c.cfg.SecretIDFile, c.cfg.SecretIDEnv)
	if err != nil {
		return "", 0, false, err
	}
	path := "auth/" + c.cfg.AppRoleMount + "/login"
	sec, err := c.do(ctx, http.MethodPost, path, "", map[string]any{"role_id": c.cfg.RoleID, "secret_id": secretID})
	if err != nil {
		return "", 0, false, c.failure(ctx, "vault: approle login at "+path, err)
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return "", 0, false, fail(nil, "vault: approle login at %s: no token in the response", path)
	}
	c.log.Info("logged in to vault with approle", zap.String("role_id", c.cfg.RoleID),
		zap.Duration("lease", time.Duration(sec.Auth.LeaseDuration)*time.Second))
	return sec.Auth.ClientToken, time.Duration(sec.Auth.LeaseDuration) * time.Second, sec.Auth.Renewable, nil
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

// renewLoop renews tok at two thirds of its lease until the store closes, the token is
// replaced, or Vault stops renewing it. With AppRole, a token that can no longer be renewed
// is dropped so that the next read logs in again.
func (c *vaultClient) renewLoop(gen int, tok string, lease time.Duration) {
	defer c.wg.Done()
	t := time.NewTimer(renewAfter(lease))
	defer t.Stop()
	for {
		select {
		case <-c.bg.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		current := c.gen == gen
		c.mu.Unlock()
		if !current {
			return
		}
		sec, err := c.do(c.bg, http.MethodPost, "auth/token/renew-self", tok, map[string]any{})
		if err == nil && (sec == nil || sec.Auth == nil) {
			err = errors.New("no auth in the response")
		}
		if err != nil {
			if c.bg.Err() != nil {
				return
			}
			c.log.Warn("vault token renewal failed", zap.String("reason", c.failure(c.bg, "renew-self", err).Error()))
			if c.cfg.AuthMethod == "approle" {
				c.dropToken(tok)
				return
			}
			t.Reset(min(renewAfter(lease), 30*time.Second))
			continue
		}
		lease = time.Duration(sec.Auth.LeaseDuration) * time.Second
		c.mu.Lock()
		if c.gen == gen {
			c.expires = time.Now().Add(lease)
		}
		c.mu.Unlock()
		c.log.Debug("vault token renewed", zap.Duration("lease", lease))
		if !sec.Auth.Renewable || lease <= 0 {
			c.log.Info("vault token is no longer renewable; it will be replaced when it expires")
			return
		}
		t.Reset(renewAfter(lease))
	}
}

func renewAfter(lease time.Duration) time.Duration {
	return max(lease*2/3, 10*time.Millisecond)
}

// do sends one request with an explicit token (none when tok is empty).
func (c *vaultClient) do(ctx context.Context, method, path, tok string, body any) (*api.Secret, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req := c.api.NewRequest(method, "/v1/"+path)
	req.ClientToken = tok
	if body != nil {
		if err := req.SetJSONBody(body); err != nil {
			return nil, err
		}
	}
	//nolint:staticcheck // RawRequestWithContext is the one call that takes a per-request token.
	resp, err := c.api.RawRequestWithContext(ctx, req)
	if resp != nil {
		defer resp.Body.Close()
	}
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 {
			return nil, &statusError{code: resp.StatusCode}
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	if resp.StatusCode == http.StatusNoContent {
		return nil, nil
	}
	return api.ParseSecret(resp.Body)
}

// statusError is an HTTP status from Vault, without Vault's message (which can echo request
// details) so that it is safe to keep as an error's cause.
type statusError struct{ code int }

func (e *statusError) Error() string { return fmt.Sprintf("vault answered %d", e.code) }

func isStatus(err error, code int) bool {
	var se *statusError
	return errors.As(err, &se) && se.code == code
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
	var se *statusError
	if errors.As(err, &se) {
		return fail(se, "%s: %s", what, statusText(se.code))
	}
	switch {
	case ctx.Err() != nil:
		return fail(ctx.Err(), "%s: cancelled (%v)", what, ctx.Err())
	case errors.Is(err, context.DeadlineExceeded):
		return fail(context.DeadlineExceeded, "%s: vault did not answer within %s", what, c.timeout)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fail(syscall.ECONNREFUSED, "%s: vault unreachable (connection refused)", what)
	case errors.Is(err, syscall.ECONNRESET):
		return fail(syscall.ECONNRESET, "%s: vault unreachable (connection reset)", what)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fail(errors.New("host not found"), "%s: vault unreachable (host not found)", what)
	}
	var (
		unknownCA   x509.UnknownAuthorityError
		hostErr     x509.HostnameError
		invalidCert x509.CertificateInvalidError
		verifyErr   *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &hostErr) || errors.As(err, &invalidCert) || errors.As(err, &verifyErr) {
		return fail(errors.New("tls certificate not trusted"), "%s: vault TLS certificate not trusted (set the CA certificate?)", what)
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return fail(context.DeadlineExceeded, "%s: vault timed out", what)
	}
	return fail(errors.New("request failed"), "%s: request to vault failed", what)
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

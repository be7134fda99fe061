package secrets

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/redact"
)

// Every fake token and the AppRole secret id contain this marker, so one strings.Contains
// proves none of them leaked into an error or a log line.
const marker = "SECRETTOKEN"

const (
	staticToken = "hvs.static-token-" + marker
	roleID      = "castellan-role-id"
	secretID    = "approle-secret-id-" + marker
	apiKey      = "vault-api-key-0123456789"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// vaultStore returns a Store reading credential "c" from secret/castellan/ticketing, field
// api_key, through the fake, with a fake cache clock and an observed logger.
func vaultStore(t *testing.T, f *fakeVault, vc VaultConfig, specs map[string]Spec) (*Store, *fakeClock, *observer.ObservedLogs) {
	t.Helper()
	if vc.Address == "" {
		vc.Address = f.srv.URL
	}
	if specs == nil {
		specs = map[string]Spec{"c": {Vault: &VaultRef{Path: "castellan/ticketing", Field: "api_key"}}}
	}
	core, logs := observer.New(zap.DebugLevel)
	s, err := NewStore(specs, &vc, redact.NewSet(), zap.New(core))
	if err != nil {
		t.Fatalf("NewStore = %v", err)
	}
	t.Cleanup(func() { s.Close() })
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s.now = clock.Now
	t.Cleanup(func() { checkLogs(t, logs) })
	return s, clock, logs
}

func checkLogs(t *testing.T, logs *observer.ObservedLogs) {
	t.Helper()
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		for _, bad := range []string{marker, apiKey} {
			if strings.Contains(line, bad) {
				t.Errorf("log line %q contains a secret (%q)", line, bad)
			}
		}
	}
}

func tokenConfig(t *testing.T) VaultConfig {
	return VaultConfig{TokenFile: writeFile(t, staticToken+"\n")}
}

func appRoleConfig(t *testing.T, f *fakeVault, ttl int) VaultConfig {
	f.mu.Lock()
	f.roleID, f.secretID, f.loginTTL = roleID, secretID, ttl
	f.mu.Unlock()
	return VaultConfig{AuthMethod: "approle", RoleID: roleID, SecretIDFile: writeFile(t, secretID+"\n")}
}

func mustCredential(t *testing.T, s *Store, name, want string) {
	t.Helper()
	got, err := s.Credential(t.Context(), name)
	if err != nil || got != want {
		t.Fatalf("Credential(%q) = %q, %v, want %q", name, got, err, want)
	}
}

// poll waits until cond holds, failing after a generous deadline. No fixed sleeps.
// concurrentCredential asks s for credential "c" from callers goroutines while the first
// request is held at the fake server (seen is signalled when it arrives, release lets it
// go), once all the others wait on it, and checks that every caller gets want.
func concurrentCredential(t *testing.T, s *Store, callers int, seen <-chan struct{}, release chan struct{}, want string) {
	t.Helper()
	errs := make(chan error, callers)
	call := func() {
		v, err := s.Credential(t.Context(), "c")
		if err == nil && v != want {
			err = fmt.Errorf("value %q, want %q", v, want)
		}
		errs <- err
	}
	go call()
	<-seen // the first request is at the server, blocked
	for range callers - 1 {
		go call()
	}
	poll(t, "all callers to wait on the in-flight request", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.waits == callers-1
	})
	close(release)
	for range callers {
		if err := <-errs; err != nil {
			t.Errorf("Credential = %v", err)
		}
	}
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const readKey = "GET /v1/secret/data/castellan/ticketing"

func TestVaultTokenAuth(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.namespace = "team-a"
	f.addToken(staticToken, 0, false)
	f.put("secret/castellan/ticketing", map[string]any{"api_key": apiKey, "user": "svc"})
	f.put("kv/other/thing", map[string]any{"password": "other-password-value"})
	vc := tokenConfig(t)
	vc.Namespace = "team-a"
	s, _, _ := vaultStore(t, f, vc, map[string]Spec{
		"c":     {Vault: &VaultRef{Path: "castellan/ticketing", Field: "api_key"}},
		"other": {Vault: &VaultRef{Mount: "kv", Path: "/other/thing/", Field: "password"}},
	})
	mustCredential(t, s, "c", apiKey)
	mustCredential(t, s, "other", "other-password-value")
	if !s.red.Contains([]byte(apiKey)) {
		t.Errorf("redact set does not contain the Vault value")
	}
	if n := f.count("GET /v1/auth/token/lookup-self"); n != 1 {
		t.Errorf("lookup-self requests = %d, want 1", n)
	}
}

func TestVaultAppRole(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.put("secret/castellan/ticketing", map[string]any{"api_key": apiKey})
	f.put("secret/castellan/erp", map[string]any{"token": "erp-token-value-42"})
	s, _, _ := vaultStore(t, f, appRoleConfig(t, f, 3600), map[string]Spec{
		"c":   {Vault: &VaultRef{Path: "castellan/ticketing", Field: "api_key"}},
		"erp": {Vault: &VaultRef{Path: "castellan/erp", Field: "token"}},
	})
	mustCredential(t, s, "c", apiKey)
	mustCredential(t, s, "erp", "erp-token-value-42")
	if n := f.count("POST /v1/auth/approle/login"); n != 1 {
		t.Errorf("approle logins = %d, want 1 (the token is reused)", n)
	}
}

func TestVaultAppRoleLogsInAgainWhenTokenRevoked(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.put("secret/castellan/ticketing", map[string]any{"api_key": apiKey})
	s, clock, _ := vaultStore(t, f, appRoleConfig(t, f, 3600), nil)
	mustCredential(t, s, "c", apiKey)
	f.revokeAll()
	clock.Advance(defaultCacheTTL + time.Second)
	mustCredential(t, s, "c", apiKey)
	if n := f.count("POST /v1/auth/approle/login"); n != 2 {
		t.Errorf("approle logins = %d, want 2 (a rejected token triggers one new login)", n)
	}
}

func TestVaultCache(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.addToken(staticToken, 0, false)
	f.put("secret/castellan/ticketing", map[string]any{"api_key": apiKey, "other": "second-field-value"})
	vc := tokenConfig(t)
	vc.CacheTTL = time.Minute
	s, clock, _ := vaultStore(t, f, vc, map[string]Spec{
		"c":     {Vault: &VaultRef{Path: "castellan/ticketing", Field: "api_key"}},
		"other": {Vault: &VaultRef{Path: "castellan/ticketing", Field: "other"}},
	})
	mustCredential(t, s, "c", apiKey)
	mustCredential(t, s, "c", apiKey)
	mustCredential(t, s, "other", "second-field-value") // same secret, other field
	clock.Advance(59 * time.Second)
	mustCredential(t, s, "c", apiKey)
	if n := f.count(readKey); n != 1 {
		t.Errorf("reads within the TTL = %d, want 1", n)
	}
	f.put("secret/castellan/ticketing", map[string]any{"api_key": "rotated-api-key-value"})
	clock.Advance(2 * time.Second)
	mustCredential(t, s, "c", "rotated-api-key-value")
	if n := f.count(readKey); n != 2 {
		t.Errorf("reads after the TTL = %d, want 2", n)
	}
}

func TestVaultConcurrentCallsShareOneRequest(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.addToken(staticToken, 0, false)
	f.put("secret/castellan/ticketing", map[string]any{"api_key": apiKey})
	release := make(chan struct{})
	f.setBlock(release)
	s, _, _ := vaultStore(t, f, tokenConfig(t), nil)

	const callers = 8
	concurrentCredential(t, s, callers, f.seen, release, apiKey)
	if n := f.count(readKey); n != 1 {
		t.Errorf("requests for %d concurrent callers = %d, want 1", callers, n)
	}
}

func TestVaultRenewal(t *testing.T) {
	t.Parallel()
	for _, method := range []string{"token", "approle"} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			f := newFakeVault(t)
			f.put("secret/castellan/ticketing", map[string]any{"api_key": apiKey})
			var vc VaultConfig
			if method == "token" {
				f.addToken(staticToken, 1, true) // 1 s lease: renewed about every 0.67 s
				vc = tokenConfig(t)
			} else {
				vc = appRoleConfig(t, f, 1)
			}
			s, _, _ := vaultStore(t, f, vc, nil)
			mustCredential(t, s, "c", apiKey)
			poll(t, "two renewals", func() bool { return f.count("POST /v1/auth/token/renew-self") >= 2 })
			s.Close() // must stop the renewal goroutine (Close waits for it)
			n := f.count("POST /v1/auth/token/renew-self")
			s.vault.wg.Wait()
			if m := f.count("POST /v1/auth/token/renew-self"); m != n {
				t.Errorf("renewals went on after Close: %d then %d", n, m)
			}
		})
	}
}

func TestVaultNoRenewalOfRootLikeToken(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.addToken(staticToken, 0, false) // ttl 0: never expires, nothing to renew
	f.put("secret/castellan/ticketing", map[string]any{"api_key": apiKey})
	s, _, _ := vaultStore(t, f, tokenConfig(t), nil)
	mustCredential(t, s, "c", apiKey)
	s.Close()
	if n := f.count("POST /v1/auth/token/renew-self"); n != 0 {
		t.Errorf("renew-self requests = %d, want 0", n)
	}
}

// TestVaultErrors covers each failure and checks, for all of them, that no token, secret id
// or secret value appears in the error, its causes, or the logs.
func TestVaultErrors(t *testing.T) {
	t.Parallel()
	down := newFakeVault(t)
	down.srv.Close() // a closed listener: connection refused

	tests := []struct {
		name  string
		setup func(t *testing.T, f *fakeVault) (VaultConfig, *fakeVault)
		want  string
	}{
		{"wrong token", func(t *testing.T, f *fakeVault) (VaultConfig, *fakeVault) {
			f.put("secret/castellan/ticketing", map[string]any{"api_key": apiKey})
			return tokenConfig(t), f // token never added
		}, `credential "c": vault: secret/data/castellan/ticketing: permission denied (403)`},
		{"wrong namespace", func(t *testing.T, f *fakeVault) (VaultConfig, *fakeVault) {
			f.namespace = "team-b"
			f.addToken(staticToken, 0, false)
			f.put("secret/castellan/ticketing", map[string]any{"api_key": apiKey})
			vc := tokenConfig(t)
			vc.Namespace = "team-a"
			return vc, f
		}, "permission denied (403)"},
		{"missing secret", func(t *testing.T, f *fakeVault) (VaultConfig, *fakeVault) {
			f.addToken(staticToken, 0, false)
			return tokenConfig(t), f
		}, `credential "c": vault: secret/data/castellan/ticketing: not found (404)`},
		{"missing field", func(t *testing.T, f *fakeVault) (VaultConfig, *fakeVault) {
			f.addToken(staticToken, 0, false)
			f.put("secret/castellan/ticketing", map[string]any{"user": "svc-user-name"})
			return tokenConfig(t), f
		}, `vault: secret/data/castellan/ticketing: field "api_key" not found in secret`},
		{"field not a string", func(t *testing.T, f *fakeVault) (VaultConfig, *fakeVault) {
			f.addToken(staticToken, 0, false)
			f.put("secret/castellan/ticketing", map[string]any{"api_key": map[string]any{"nested": apiKey}})
			return tokenConfig(t), f
		}, `field "api_key" is not a string`},
		{"short value", func(t *testing.T, f *fakeVault) (VaultConfig, *fakeVault) {
			f.addToken(staticToken, 0, false)
			f.put("secret/castellan/ticketing", map[string]any{"api_key": "tiny"})
			return tokenConfig(t), f
		}, "value shorter than 8 bytes cannot be redacted safely; use a longer credential"},
		{"server down", func(t *testing.T, f *fakeVault) (VaultConfig, *fakeVault) {
			return tokenConfig(t), down
		}, "vault unreachable (connection refused)"},
		{"approle bad secret id", func(t *testing.T, f *fakeVault) (VaultConfig, *fakeVault) {
			vc := appRoleConfig(t, f, 3600)
			f.secretID = "another-" + marker
			return vc, f
		}, `credential "c": vault: approle login at auth/approle/login: bad request (400)`},
		{"token env unset", func(t *testing.T, f *fakeVault) (VaultConfig, *fakeVault) {
			return VaultConfig{TokenEnv: "CASTELLAN_TEST_NO_SUCH_TOKEN"}, f
		}, "vault token: environment variable CASTELLAN_TEST_NO_SUCH_TOKEN is not set"},
		{"token file missing", func(t *testing.T, f *fakeVault) (VaultConfig, *fakeVault) {
			return VaultConfig{TokenFile: "/nonexistent/token"}, f
		}, "vault token: file /nonexistent/token does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			vc, f := tt.setup(t, newFakeVault(t))
			vc.Address = f.srv.URL
			s, _, _ := vaultStore(t, f, vc, nil)
			_, err := s.Credential(t.Context(), "c")
			checkErr(t, "Credential(c)", err, tt.want)
			checkNoSecrets(t, err)
		})
	}
}

// checkNoSecrets looks at the error's text, its detailed formatting and every cause.
func checkNoSecrets(t *testing.T, err error) {
	t.Helper()
	texts := []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)}
	for e := errors.Unwrap(err); e != nil; e = errors.Unwrap(e) {
		texts = append(texts, e.Error(), fmt.Sprintf("%#v", e))
	}
	for _, text := range texts {
		for _, bad := range []string{marker, apiKey, "svc-user-name", "tiny"} {
			if strings.Contains(text, bad) {
				t.Errorf("error text %q contains %q", text, bad)
			}
		}
	}
}

func TestVaultContextCancelled(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.addToken(staticToken, 0, false)
	f.put("secret/castellan/ticketing", map[string]any{"api_key": apiKey})
	f.setBlock(make(chan struct{})) // never released: only cancellation ends the request
	s, _, _ := vaultStore(t, f, tokenConfig(t), nil)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-f.seen
		cancel()
	}()
	_, err := s.Credential(ctx, "c")
	checkErr(t, "Credential(cancelled)", err, `credential "c": vault: secret/data/castellan/ticketing: cancelled`)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is(%v, context.Canceled) = false, want true", err)
	}
	checkNoSecrets(t, err)

	// A failed fetch is not cached: the next call asks again.
	f.setBlock(nil)
	mustCredential(t, s, "c", apiKey)
}

// TestVaultHammer runs many callers while the cache keeps expiring, for -race.
func TestVaultHammer(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t)
	f.put("secret/castellan/ticketing", map[string]any{"api_key": apiKey})
	s, clock, _ := vaultStore(t, f, appRoleConfig(t, f, 3600), nil)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				if v, err := s.Credential(t.Context(), "c"); err != nil || v != apiKey {
					t.Errorf("Credential(c) = %q, %v, want the api key", v, err)
					return
				}
				clock.Advance(defaultCacheTTL / 10)
			}
		})
	}
	wg.Wait()
	if n := f.count("POST /v1/auth/approle/login"); n != 1 {
		t.Errorf("approle logins = %d, want 1", n)
	}
	if n := f.count(readKey); n < 2 || n > 400 {
		t.Errorf("reads = %d, want between 2 and 400 (expired entries refetched, never more than one per call)", n)
	}
}

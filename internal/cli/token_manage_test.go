package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// startEmbeddedNATS runs a JetStream server for the test.
func startEmbeddedNATS(t *testing.T) string {
	t.Helper()
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("the embedded NATS server did not start")
	}
	t.Cleanup(ns.Shutdown)
	return ns.ClientURL()
}

// TestTokenListRevoke: `castellan token create --ttl`, `token list` and `token revoke` work
// the same over direct database access, direct NATS access and the API (admin token): the
// expiry is stored and shown, the status follows the clock, a revoked token is listed as
// revoked, and revoking an unknown or already revoked id fails.
func TestTokenListRevoke(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	viaAPI := filepath.Join(dir, "api.db")
	var sink bytes.Buffer
	admin, err := TokenCreate(t.Context(), TokenConfig{DB: viaAPI, Role: "admin", Pool: "*"}, &sink)
	must(t, err)
	adminFile := filepath.Join(dir, "admin.token")
	must(t, os.WriteFile(adminFile, []byte(admin.Secret+"\n"), 0o600))
	base, _ := startServer(t, ServerConfig{DB: viaAPI, Listen: "127.0.0.1:0", LeaseTTL: time.Minute, LogLevel: "error", NoMCP: true})

	targets := []struct {
		name string
		cfg  TokenConfig
		exit int // exit code of a refused revoke
	}{
		{"db", TokenConfig{DB: filepath.Join(dir, "direct.db")}, ExitUsage},
		{"nats", TokenConfig{NATS: startEmbeddedNATS(t), Replicas: 1}, ExitUsage},
		{"server", TokenConfig{Server: base, TokenFile: adminFile}, ExitTaskFailed},
	}
	for _, tt := range targets {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			clock := start
			cfg := tt.cfg
			cfg.Now = func() time.Time { return clock }
			create := cfg
			create.Role, create.Pool, create.Name, create.TTL = "client", "default", "ci", 24*time.Hour
			var out bytes.Buffer
			tok, err := TokenCreate(t.Context(), create, &out)
			must(t, err)
			if strings.TrimSpace(out.String()) != tok.Secret || tok.ExpiresAt == nil {
				t.Fatalf("token create --ttl 24h printed %q, token %+v; want the secret and an expiry", out.String(), tok)
			}
			if d := tok.ExpiresAt.Sub(tok.CreatedAt); d != 24*time.Hour {
				t.Fatalf("expires_at - created_at = %v, want 24h", d)
			}

			row := func() string {
				t.Helper()
				var out bytes.Buffer
				_, err := TokenList(t.Context(), cfg, &out)
				must(t, err)
				lines := strings.Split(out.String(), "\n")
				if !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "EXPIRES") || !strings.Contains(lines[0], "STATUS") {
					t.Fatalf("token list header %q", lines[0])
				}
				if strings.Contains(out.String(), api.TokenPrefix) {
					t.Fatalf("token list printed a secret: %q", out.String())
				}
				for _, l := range lines {
					if strings.HasPrefix(l, tok.ID+" ") {
						return strings.Join(strings.Fields(l), " ")
					}
				}
				t.Fatalf("token list = %q, no row for %s", out.String(), tok.ID)
				return ""
			}
			want := tok.ID + " client default ci " + tok.CreatedAt.UTC().Format(time.RFC3339) + " " + tok.ExpiresAt.UTC().Format(time.RFC3339) + " active"
			if got := row(); got != want {
				t.Fatalf("token list row = %q, want %q", got, want)
			}
			clock = start.Add(25 * time.Hour)
			if got := row(); !strings.HasSuffix(got, " expired") {
				t.Fatalf("token list row a day later = %q, want status expired", got)
			}

			js := cfg
			js.JSON = true
			out.Reset()
			_, err = TokenList(t.Context(), js, &out)
			must(t, err)
			var list api.TokenList
			if err := json.Unmarshal(out.Bytes(), &list); err != nil {
				t.Fatalf("token list --json = %q: %v", out.String(), err)
			}
			found := false
			for _, l := range list.Tokens {
				found = found || (l.ID == tok.ID && l.ExpiresAt != nil && l.ExpiresAt.Equal(*tok.ExpiresAt) && l.Secret == "")
			}
			if !found {
				t.Fatalf("token list --json = %s, want %s with its expires_at and no secret", out.String(), tok.ID)
			}

			out.Reset()
			must(t, TokenRevoke(t.Context(), cfg, tok.ID, &out))
			if out.String() != "revoked "+tok.ID+"\n" {
				t.Fatalf("token revoke printed %q", out.String())
			}
			if got := row(); !strings.Contains(got, " revoked ") {
				t.Fatalf("token list row after revoke = %q, want status revoked", got)
			}
			for _, id := range []string{tok.ID, "tok_000000000000", "nope"} {
				err := TokenRevoke(t.Context(), cfg, id, &out)
				if err == nil || ExitCode(err) != tt.exit || strings.Contains(err.Error(), api.TokenPrefix) {
					t.Fatalf("token revoke %s (not active) = %v (exit %d), want exit %d", id, err, ExitCode(err), tt.exit)
				}
			}
		})
	}
}

// TestTokenCommandUsage: bad --ttl values and a revoke without an id are usage errors, and
// nothing is created.
func TestTokenCommandUsage(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "cp.db")
	for _, args := range [][]string{
		{"token", "create", "--db", db, "--role", "client", "--ttl", "-1h"},
		{"token", "create", "--db", db, "--role", "client", "--ttl", "500ms"},
		{"token", "create", "--db", db, "--role", "client", "--ttl", "1.5s"},
		{"token", "create", "--db", db, "--role", "client", "--ttl", "100000h"},
		{"token", "revoke", "--db", db},
		{"token", "revoke", "--db", db, "tok_1", "tok_2"},
		{"token", "list", "--db", db, "--server", "http://127.0.0.1:1"},
	} {
		code, out, errs := runApp(t.Context(), args...)
		if code != ExitUsage || out != "" {
			t.Errorf("castellan %s = exit %d, stdout %q, stderr %q; want exit 2 and no output", strings.Join(args, " "), code, out, errs)
		}
	}
	code, out, errs := runApp(t.Context(), "token", "list", "--db", db)
	if code != ExitOK || strings.Count(out, "\n") != 1 {
		t.Fatalf("token list after refused creates = exit %d %q %q, want only the header", code, out, errs)
	}
}

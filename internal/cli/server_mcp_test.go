package cli

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/mcp"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// mcpTools connects to base/mcp as an agent with token and returns the tool names.
func mcpTools(t *testing.T, base, token string, rt http.RoundTripper) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c := sdk.NewClient(&sdk.Implementation{Name: "test-agent", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &sdk.StreamableClientTransport{Endpoint: base + mcp.Path,
		HTTPClient: &http.Client{Transport: bearerHeader{token, rt}}}, nil)
	if err != nil {
		t.Fatalf("Connect(%s%s) = %v", base, mcp.Path, err)
	}
	defer cs.Close()
	if got := cs.InitializeResult(); got == nil || got.ProtocolVersion == "" {
		t.Fatalf("InitializeResult() = %+v, want a negotiated revision", got)
	}
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatalf("ListTools() = %v", err)
	}
	var names []string
	for _, tl := range res.Tools {
		names = append(names, tl.Name)
	}
	slices.Sort(names)
	return names
}

// mcpUnauthorized posts an initialize without a token and returns the status and the
// WWW-Authenticate header.
func mcpUnauthorized(t *testing.T, base string, rt http.RoundTripper) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, base+mcp.Path,
		strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		t.Fatalf("POST %s%s: %v", base, mcp.Path, err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
}

// serverCert writes a self-signed certificate for cp.example only (not the loopback
// address the server dials for /mcp) and returns the cert and key files and a pool.
func serverCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "cp.example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"cp.example"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	kder, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	certFile, keyFile = filepath.Join(dir, "cp.crt"), filepath.Join(dir, "cp.key")
	must(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	must(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
	c, err := x509.ParseCertificate(der)
	must(t, err)
	pool = x509.NewCertPool()
	pool.AddCert(c)
	return certFile, keyFile, pool
}

// TestServerMCP: `castellan server` serves /mcp in both control-plane modes (and over TLS
// with a certificate that does not name the loopback address): an agent with a client
// token initializes and lists its pool's tools; without a token it gets the 401 of the MCP
// authorization spec; --mcp=false leaves /mcp unrouted.
func TestServerMCP(t *testing.T) {
	t.Parallel()
	plain := http.DefaultTransport
	published := []string{mcp.ResultToolName, mcp.PlanResultToolName, mcp.SubmitPlanToolName, "echo"} // sorted
	publish := func(t *testing.T, base, workerTok string, rt http.RoundTripper) {
		t.Helper()
		w, err := client.New(base, workerTok, client.WithHTTPClient(&http.Client{Transport: rt}))
		must(t, err)
		if _, err := w.Register(t.Context(), api.RegisterRequest{Name: "w", AgentVersion: "test"}); err != nil {
			t.Fatalf("Register() = %v", err)
		}
		if _, err := w.PublishCatalog(t.Context(), []api.TaskDef{{Name: "echo", Version: "1",
			InputSchema: json.RawMessage(`{"type":"object"}`)}}); err != nil {
			t.Fatalf("PublishCatalog() = %v", err)
		}
	}

	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		cfg := ServerConfig{Listen: "127.0.0.1:0", LogLevel: "error", PublicURL: "https://cp.example:8443"}
		cfg.DB = filepath.Join(t.TempDir(), "cp.db")
		var out strings.Builder
		tok, err := TokenCreate(t.Context(), TokenConfig{DB: cfg.DB, Role: "client", Pool: "default", Name: "agent"}, &out)
		must(t, err)
		wtok, err := TokenCreate(t.Context(), TokenConfig{DB: cfg.DB, Role: "worker", Pool: "default", Name: "w"}, &out)
		must(t, err)
		base, _ := startServer(t, cfg)
		publish(t, base, wtok.Secret, plain)
		if got := mcpTools(t, base, tok.Secret, plain); !slices.Equal(got, published) {
			t.Errorf("tools = %v, want %v", got, published)
		}
		code, wa := mcpUnauthorized(t, base, plain)
		if want := `Bearer resource_metadata="https://cp.example:8443` + mcp.MetadataPath + mcp.Path + `"`; code != http.StatusUnauthorized || wa != want {
			t.Errorf("POST /mcp without a token = %d, WWW-Authenticate %q; want 401, %q", code, wa, want)
		}
		if code, body := httpGet(t, base+mcp.MetadataPath+mcp.Path); code != 200 || !strings.Contains(body, `"resource":"https://cp.example:8443/mcp"`) {
			t.Errorf("GET %s = %d %q, want 200 naming the public URL", mcp.MetadataPath+mcp.Path, code, body)
		}
	})

	t.Run("sqlite-tls", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		certFile, keyFile, pool := serverCert(t, dir)
		cfg := ServerConfig{Listen: "127.0.0.1:0", LogLevel: "error", TLSCert: certFile, TLSKey: keyFile, DB: filepath.Join(dir, "cp.db")}
		var out strings.Builder
		tok, err := TokenCreate(t.Context(), TokenConfig{DB: cfg.DB, Role: "client", Pool: "default", Name: "agent"}, &out)
		must(t, err)
		wtok, err := TokenCreate(t.Context(), TokenConfig{DB: cfg.DB, Role: "worker", Pool: "default", Name: "w"}, &out)
		must(t, err)
		base, _ := startServer(t, cfg)
		if !strings.HasPrefix(base, "https://") {
			t.Fatalf("base URL %s, want https", base)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, ServerName: "cp.example"}
		publish(t, base, wtok.Secret, tr)
		if got := mcpTools(t, base, tok.Secret, tr); !slices.Equal(got, published) {
			t.Errorf("tools over TLS = %v, want %v", got, published)
		}
		code, wa := mcpUnauthorized(t, base, tr)
		if code != http.StatusUnauthorized || !strings.HasPrefix(wa, `Bearer resource_metadata="https://`) {
			t.Errorf("POST /mcp without a token = %d, WWW-Authenticate %q; want 401 naming an https metadata URL", code, wa)
		}
	})

	t.Run("sqlite-tls-leaf-of-a-ca", func(t *testing.T) {
		// The --tls-cert file holds only a leaf signed by a private CA (not in the file): the
		// leaf alone is what /mcp trusts.
		t.Parallel()
		dir := t.TempDir()
		caFile, cert := testCA(t, dir, "private-ca")
		kder, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
		must(t, err)
		cfg := ServerConfig{Listen: "127.0.0.1:0", LogLevel: "error", TLSCert: filepath.Join(dir, "leaf.crt"), TLSKey: filepath.Join(dir, "leaf.key"), DB: filepath.Join(dir, "cp.db")}
		must(t, os.WriteFile(cfg.TLSCert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o644))
		must(t, os.WriteFile(cfg.TLSKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600))
		var out strings.Builder
		tok, err := TokenCreate(t.Context(), TokenConfig{DB: cfg.DB, Role: "client", Pool: "default", Name: "agent"}, &out)
		must(t, err)
		base, _ := startServer(t, cfg)
		caPEM, err := os.ReadFile(caFile)
		must(t, err)
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
		if got, want := mcpTools(t, base, tok.Secret, tr), []string{mcp.ResultToolName}; !slices.Equal(got, want) {
			t.Errorf("tools = %v, want %v", got, want)
		}
	})

	t.Run("sqlite-wildcard-listen", func(t *testing.T) {
		// Listening on 0.0.0.0, /mcp reaches the API through 127.0.0.1.
		t.Parallel()
		cfg := ServerConfig{Listen: "0.0.0.0:0", LogLevel: "error", DB: filepath.Join(t.TempDir(), "cp.db")}
		var out strings.Builder
		tok, err := TokenCreate(t.Context(), TokenConfig{DB: cfg.DB, Role: "client", Pool: "default", Name: "agent"}, &out)
		must(t, err)
		base, _ := startServer(t, cfg)
		_, port, err := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
		must(t, err)
		if got, want := mcpTools(t, "http://127.0.0.1:"+port, tok.Secret, plain), []string{mcp.ResultToolName}; !slices.Equal(got, want) {
			t.Errorf("tools = %v, want %v", got, want)
		}
	})

	t.Run("sqlite-mcp-off", func(t *testing.T) {
		t.Parallel()
		cfg := ServerConfig{Listen: "127.0.0.1:0", LogLevel: "error", NoMCP: true, DB: filepath.Join(t.TempDir(), "cp.db")}
		base, _ := startServer(t, cfg)
		if code, _ := mcpUnauthorized(t, base, plain); code != http.StatusNotFound {
			t.Errorf("POST /mcp with --mcp=false = %d, want 404", code)
		}
	})

	t.Run("nats", func(t *testing.T) {
		t.Parallel()
		ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
			StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
		must(t, err)
		go ns.Start()
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatal("the embedded NATS server did not start")
		}
		t.Cleanup(ns.Shutdown)
		var out strings.Builder
		tok, err := TokenCreate(t.Context(), TokenConfig{NATS: ns.ClientURL(), Role: "client", Pool: "default", Name: "agent"}, &out)
		must(t, err)
		base, _ := startServer(t, ServerConfig{NATS: ns.ClientURL(), Listen: "127.0.0.1:0", Replicas: 1, LogLevel: "error"})
		// No worker publishes here: the pool's catalog is empty, so only the result tool.
		if got, want := mcpTools(t, base, tok.Secret, plain), []string{mcp.ResultToolName}; !slices.Equal(got, want) {
			t.Errorf("tools = %v, want %v", got, want)
		}
		code, wa := mcpUnauthorized(t, base, plain)
		if want := `Bearer resource_metadata="` + base + mcp.MetadataPath + mcp.Path + `"`; code != http.StatusUnauthorized || wa != want {
			t.Errorf("POST /mcp without a token = %d, WWW-Authenticate %q; want 401, %q", code, wa, want)
		}
	})
}

// A --tls-cert that /mcp cannot check against any name it carries is a configuration
// error at start (with the way out), not a /mcp that fails every call.
func TestSelfTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	write := func(name string, tmpl *x509.Certificate) string {
		tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = big.NewInt(1), time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		must(t, err)
		f := filepath.Join(dir, name)
		must(t, os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
		return f
	}
	notPEM := filepath.Join(dir, "not.pem")
	must(t, os.WriteFile(notPEM, []byte("hello"), 0o644))
	for _, tc := range []struct {
		file, serverName, err string
	}{
		{write("dns.crt", &x509.Certificate{DNSNames: []string{"cp.example", "other.example"}}), "cp.example", ""},
		{write("wild.crt", &x509.Certificate{DNSNames: []string{"*.example.com"}}), "castellan.example.com", ""},
		{write("ip.crt", &x509.Certificate{IPAddresses: []net.IP{net.IPv4(10, 0, 0, 5)}}), "10.0.0.5", ""},
		{write("cn.crt", &x509.Certificate{Subject: pkix.Name{CommonName: "cp.example"}}), "", "names no DNS name or IP address"},
		{notPEM, "", "no PEM certificate"},
	} {
		c, err := selfTLS(tc.file)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("selfTLS(%s) = %v, want an error containing %q", filepath.Base(tc.file), err, tc.err)
			}
		case err != nil || c.ServerName != tc.serverName:
			t.Errorf("selfTLS(%s) = %+v, %v; want ServerName %q", filepath.Base(tc.file), c, err, tc.serverName)
		}
	}
	cfg := ServerConfig{Listen: "127.0.0.1:0", LogLevel: "error", DB: filepath.Join(dir, "cp.db"),
		TLSCert: filepath.Join(dir, "cn.crt"), TLSKey: filepath.Join(dir, "cn.crt")}
	var out strings.Builder
	if err := Server(t.Context(), cfg, &out, &out, nil); err == nil || !strings.Contains(err.Error(), "--mcp=false") {
		t.Errorf("Server(--tls-cert without a name) = %v, want a usage error naming --mcp=false", err)
	}
}

// An agent's open session (the SDK client holds a standalone SSE stream open) must not hold
// up the server's graceful shutdown: its streams end as a dropped connection would.
func TestServerMCPShutdownWithOpenSession(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "cp.db")
	var out strings.Builder
	tok, err := TokenCreate(t.Context(), TokenConfig{DB: db, Role: "client", Pool: "default", Name: "agent"}, &out)
	must(t, err)
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	sigs := make(chan os.Signal, 2)
	done := make(chan error, 1)
	go func() {
		done <- Server(t.Context(), ServerConfig{DB: db, Listen: "127.0.0.1:0", LogLevel: "error"}, stdout, stderr, sigs)
	}()
	var base string
	for deadline := time.Now().Add(20 * time.Second); ; {
		if _, rest, ok := strings.Cut(stdout.String(), "listening on "); ok {
			base = strings.TrimSpace(rest)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no listening line; stderr %q", stderr.String())
		}
		time.Sleep(5 * time.Millisecond) // polling for the listening line
	}
	c := sdk.NewClient(&sdk.Implementation{Name: "test-agent", Version: "1"}, nil)
	cs, err := c.Connect(t.Context(), &sdk.StreamableClientTransport{Endpoint: base + mcp.Path,
		HTTPClient: &http.Client{Transport: bearerHeader{tok.Secret, http.DefaultTransport}}}, nil)
	must(t, err)
	defer cs.Close()
	if _, err := cs.ListTools(t.Context(), nil); err != nil {
		t.Fatalf("ListTools() = %v", err)
	}
	start := time.Now()
	sigs <- os.Interrupt
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Server() after a signal = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		sigs <- os.Interrupt
		<-done
		t.Fatalf("Server() took more than 5s to shut down with an open MCP session (stopped by a second signal after %s)", time.Since(start).Round(time.Millisecond))
	}
}

// A --public-url that is not scheme://host[:port] is a configuration error at start.
func TestServerPublicURLInvalid(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"cp.example:8443", "ftp://cp.example", "https://cp.example/mcp", "https://cp.example?x=1", "https://"} {
		var out strings.Builder
		err := Server(t.Context(), ServerConfig{DB: filepath.Join(t.TempDir(), "cp.db"), Listen: "127.0.0.1:0", LogLevel: "error", PublicURL: u}, &out, &out, nil)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), "--public-url") {
			t.Errorf("Server(--public-url %q) = %v, want a usage error naming --public-url", u, err)
		}
	}
}

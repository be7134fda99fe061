package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// testCA makes a CA and a server certificate for 127.0.0.1 signed by it; it returns the
// CA's PEM file and the server's key pair.
func testCA(t *testing.T, dir, name string) (caFile string, cert tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	must(t, err)
	ca, err := x509.ParseCertificate(caDER)
	must(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	must(t, err)
	caFile = filepath.Join(dir, name+".pem")
	must(t, os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644))
	return caFile, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestCAFile: every command that calls the control plane trusts a private CA given with
// --ca-file or CASTELLAN_CA_FILE, and without it refuses the certificate.
func TestCAFile(t *testing.T) {
	dir := t.TempDir()
	caFile, cert := testCA(t, dir, "private-ca")
	otherCA, _ := testCA(t, dir, "other-ca")
	notPEM := filepath.Join(dir, "not.pem")
	must(t, os.WriteFile(notPEM, []byte("hello"), 0o644))
	tokenFile := filepath.Join(dir, "token")
	must(t, os.WriteFile(tokenFile, []byte("cst_test\n"), 0o600))

	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/v1/jobs/j1":
			_ = json.NewEncoder(w).Encode(api.Job{ID: "j1", Task: "t", State: api.StateSucceeded})
		case r.Method == http.MethodPost && r.URL.Path == "/v1/tokens":
			_ = json.NewEncoder(w).Encode(api.Token{ID: "tok1", Secret: "cst_new", Role: api.RoleWorker, Pool: "default"})
		default:
			http.NotFound(w, r)
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	tests := []struct {
		name   string
		env    string // CASTELLAN_CA_FILE
		args   []string
		exit   int
		stdout string // substring
		stderr string // substring
	}{
		{"job get with --ca-file", "", []string{"job", "get", "--server", srv.URL, "--token-file", tokenFile, "--ca-file", caFile, "j1"}, ExitOK, "succeeded", ""},
		{"job get with env", caFile, []string{"job", "get", "--server", srv.URL, "--token-file", tokenFile, "j1"}, ExitOK, "succeeded", ""},
		{"job get without", "", []string{"job", "get", "--server", srv.URL, "--token-file", tokenFile, "j1"}, ExitTaskFailed, "", "certificate"},
		{"job get other CA", "", []string{"job", "get", "--server", srv.URL, "--token-file", tokenFile, "--ca-file", otherCA, "j1"}, ExitTaskFailed, "", "certificate"},
		{"job get not PEM", "", []string{"job", "get", "--server", srv.URL, "--token-file", tokenFile, "--ca-file", notPEM, "j1"}, ExitUsage, "", "no PEM certificate"},
		{"job get missing file", "", []string{"job", "get", "--server", srv.URL, "--token-file", tokenFile, "--ca-file", filepath.Join(dir, "nope.pem"), "j1"}, ExitUsage, "", "--ca-file"},
		{"token create --server", "", []string{"token", "create", "--server", srv.URL, "--token-file", tokenFile, "--ca-file", caFile, "--role", "worker"}, ExitOK, "cst_new", ""},
		{"token create --server without", "", []string{"token", "create", "--server", srv.URL, "--token-file", tokenFile, "--role", "worker"}, ExitTaskFailed, "", "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("CASTELLAN_CA_FILE", tt.env)
			t.Setenv("SSL_CERT_FILE", filepath.Join(dir, "none")) // no system roots either way
			code, out, errs := runApp(t.Context(), tt.args...)
			if code != tt.exit || !strings.Contains(out, tt.stdout) || !strings.Contains(errs, tt.stderr) {
				t.Fatalf("castellan %s = exit %d, stdout %q, stderr %q; want exit %d, stdout with %q, stderr with %q",
					strings.Join(tt.args, " "), code, out, errs, tt.exit, tt.stdout, tt.stderr)
			}
		})
	}
}

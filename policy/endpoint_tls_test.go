package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writePEM writes a self-signed certificate and its key to dir as ca.pem / key.pem, and a
// second, unrelated key as other-key.pem.
func writePEM(t *testing.T, dir string) {
	t.Helper()
	newKey := func() (*ecdsa.PrivateKey, []byte) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	key, keyPEM := newKey()
	_, otherPEM := newKey()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"ca.pem":        pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"key.pem":       keyPEM,
		"other-key.pem": otherPEM,
		"not-pem.txt":   []byte("hello\n"),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestParseEndpointOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writePEM(t, dir)
	const doc = `version: 1
endpoints:
  crm:
    base_url: https://crm.internal
    allow: ["POST /a"]
    ca_file: ca.pem
    client_cert: ca.pem
    client_key: key.pem
    redact_address: false
    idempotency_key: true
  plain:
    base_url: https://plain.internal
    allow: ["GET /a"]
`
	p, err := Parse("policy.yaml", []byte(doc), dir)
	if err != nil {
		t.Fatalf("Parse() error:\n%v", err)
	}
	crm, plain := p.Endpoints["crm"], p.Endpoints["plain"]
	if crm.RootCAs == nil || crm.ClientCertificate == nil || crm.ClientCertificate.Leaf == nil && len(crm.ClientCertificate.Certificate) == 0 {
		t.Errorf("crm TLS = roots %v, client %v; want both loaded", crm.RootCAs, crm.ClientCertificate)
	}
	if crm.RedactAddress || !crm.IdempotencyKey {
		t.Errorf("crm redact_address = %v, idempotency_key = %v; want false, true as written", crm.RedactAddress, crm.IdempotencyKey)
	}
	if plain.RootCAs != nil || plain.ClientCertificate != nil || !plain.RedactAddress || plain.IdempotencyKey {
		t.Errorf("plain = %+v; want system roots, no client certificate, redact_address on and idempotency_key off by default", plain)
	}
}

func TestParseEndpointOptionErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writePEM(t, dir)
	const ep = "version: 1\nendpoints:\n  crm:\n    base_url: https://crm.internal/\n    allow: [\"GET /a\"]\n"
	for _, tt := range []struct {
		name, yaml, field, msg string
	}{
		{"missing ca file", ep + "    ca_file: nope.pem #!\n", "endpoints.crm.ca_file", "nope.pem: file does not exist"},
		{"ca file without certificates", ep + "    ca_file: not-pem.txt #!\n", "endpoints.crm.ca_file", "holds no PEM certificate"},
		{"client cert without key", ep + "    client_cert: ca.pem #!\n", "endpoints.crm.client_cert", "needs client_key"},
		{"client key without cert", ep + "    client_key: key.pem #!\n", "endpoints.crm.client_key", "needs client_cert"},
		{"key of another certificate", ep + "    client_cert: ca.pem #!\n    client_key: other-key.pem\n", "endpoints.crm.client_cert", "not a usable client certificate"},
		{"missing key file", ep + "    client_cert: ca.pem\n    client_key: gone.pem #!\n", "endpoints.crm.client_key", "gone.pem: file does not exist"},
		{"tls on plain http", "version: 1\nendpoints:\n  crm:\n    base_url: http://crm.internal/\n    allow: [\"GET /a\"]\n    ca_file: ca.pem #!\n",
			"endpoints.crm.ca_file", "only applies to an https base_url"},
		{"redact_address not a boolean", ep + "    redact_address: yes please #!\n", "endpoints.crm.redact_address", "must be true or false"},
		{"idempotency_key not a boolean", ep + "    idempotency_key: \"true\" #!\n", "endpoints.crm.idempotency_key", "must be true or false"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			wantOneProblem(t, tt.yaml, dir, tt.field, tt.msg)
		})
	}
}

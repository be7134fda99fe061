package plugins

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/approval"
)

// TestSignatureFileStrict mints plugin signatures by hand (crypto/ed25519 over the compact
// signing input, no JOSE library), with the publisher's real key, and checks that Verify
// accepts exactly the one well-formed form: every header and payload variant below is
// properly signed, and each is refused.
func TestSignatureFileStrict(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	key, err := approval.LoadPrivateKey(f.alice)
	if err != nil {
		t.Fatal(err)
	}
	priv := key.Key.(ed25519.PrivateKey)
	trust, err := LoadTrust(strings.TrimSuffix(f.alice, approval.PrivateKeySuffix) + approval.PublicKeySuffix)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := readForSigning(f.dir)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(pl)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	mint := func(header, payload string) string {
		signed := b64([]byte(header)) + "." + b64([]byte(payload))
		return signed + "." + b64(ed25519.Sign(priv, []byte(signed)))
	}
	const hdr = `{"alg":"EdDSA","kid":"alice","typ":"castellan-plugin+jws"}`
	genuine := mint(hdr, string(body))
	for _, tt := range []struct {
		name, sig string
		ok        bool
	}{
		{"minted independently", genuine + "\n", true},
		{"extra header parameter jku", mint(`{"alg":"EdDSA","jku":"https://keys.invalid/","kid":"alice","typ":"castellan-plugin+jws"}`, string(body)), false},
		{"duplicate header kid", mint(`{"alg":"EdDSA","kid":"mallory","kid":"alice","typ":"castellan-plugin+jws"}`, string(body)), false},
		{"header typ of an approval", mint(`{"alg":"EdDSA","kid":"alice","typ":"castellan-approval+jws"}`, string(body)), false},
		{"duplicate payload member", mint(hdr, strings.Replace(string(body), `{"typ"`, `{"name":"other","typ"`, 1)), false},
		{"payload member in other case", mint(hdr, strings.Replace(string(body), `"name"`, `"NAME"`, 1)), false},
		{"line break inside the token", genuine[:10] + "\n" + genuine[10:] + "\n", false},
		{"carriage return inside the token", genuine[:10] + "\r" + genuine[10:] + "\n", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			write(t, filepath.Join(f.dir, SignatureFile), tt.sig)
			_, err := Verify(f.dir, trust)
			if tt.ok && err != nil {
				t.Fatalf("Verify(%s) = %v, want success", tt.name, err)
			}
			if !tt.ok && err == nil {
				t.Fatalf("Verify(%s) = nil, want a refusal", tt.name)
			}
		})
	}
}

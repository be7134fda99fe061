package approval

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

func TestGenerateKey(t *testing.T) {
	t.Parallel()
	priv, pub := newKey(t, "")
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if want := base64.RawURLEncoding.EncodeToString(tp); priv.KeyID != want || pub.KeyID != want {
		t.Errorf("GenerateKey(\"\") kids = %q, %q, want the RFC 7638 thumbprint %q", priv.KeyID, pub.KeyID, want)
	}
	if priv.IsPublic() || !pub.IsPublic() || pub.Algorithm != "EdDSA" || pub.Use != "sig" {
		t.Errorf("GenerateKey(\"\") = private %v, public %v/%s/%s, want a private key and its EdDSA sig public half", !priv.IsPublic(), pub.IsPublic(), pub.Algorithm, pub.Use)
	}
	named, _ := newKey(t, "alice-2026")
	if named.KeyID != "alice-2026" {
		t.Errorf("GenerateKey(alice-2026).KeyID = %q", named.KeyID)
	}
}

func TestWriteKeyFilesRoundTrip(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	privPath, pubPath, err := WriteKeyFiles(dir, "alice-2026")
	if err != nil {
		t.Fatalf("WriteKeyFiles = %v", err)
	}
	for path, mode := range map[string]os.FileMode{privPath: 0o600, pubPath: 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("mode of %s = %o, want %o", path, fi.Mode().Perm(), mode)
		}
	}
	pubText, _ := os.ReadFile(pubPath)
	if strings.Contains(string(pubText), `"d"`) {
		t.Errorf("public key file %s contains private material: %s", pubPath, pubText)
	}

	priv, err := LoadPrivateKey(privPath)
	if err != nil {
		t.Fatalf("LoadPrivateKey(%s) = %v", privPath, err)
	}
	set, err := LoadKeySet(pubPath)
	if err != nil {
		t.Fatalf("LoadKeySet(%s) = %v", pubPath, err)
	}
	r, want := baseRequest()
	tok, _, err := Sign(priv, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewVerifier(set, NewMemoryReplayStore()).Verify(t.Context(), tok, want); err != nil {
		t.Fatalf("Verify(token signed with the written key) = %v", err)
	}

	// Never overwrite, even when only one of the two files exists.
	if _, _, err := WriteKeyFiles(dir, "alice-2026"); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Errorf("WriteKeyFiles(existing) = %v, want a refusal", err)
	}
	if err := os.Remove(privPath); err != nil {
		t.Fatal(err)
	}
	if _, _, err := WriteKeyFiles(dir, "alice-2026"); err == nil {
		t.Errorf("WriteKeyFiles(public file exists) = nil, want a refusal")
	}
	after, _ := os.ReadFile(pubPath)
	if string(after) != string(pubText) {
		t.Errorf("WriteKeyFiles changed %s after refusing", pubPath)
	}
	for _, name := range []string{"", "../x", "a/b", ".hidden"} {
		if _, _, err := WriteKeyFiles(dir, name); err == nil {
			t.Errorf("WriteKeyFiles(%q) = nil, want an error for a name that is not a plain file name", name)
		}
	}
}

func TestLoadPrivateKeyRejects(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, pubPath, err := WriteKeyFiles(dir, "k")
	if err != nil {
		t.Fatal(err)
	}
	_, pub := newKey(t, "k")
	pubJWK := writeJSON(t, dir, "pub.jwk", pub)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaPath := writeJSON(t, dir, "rsa.jwk", jose.JSONWebKey{Key: rsaKey, KeyID: "r"})
	tests := []struct{ path, want string }{
		{filepath.Join(dir, "missing.jwk"), "reading private key"},
		{pubPath, "not a JWK"}, // a JWKS is not a single key
		{pubJWK, "holds a public key"},
		{rsaPath, "Ed25519"},
	}
	for _, tt := range tests {
		if _, err := LoadPrivateKey(tt.path); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("LoadPrivateKey(%s) = %v, want an error mentioning %q", filepath.Base(tt.path), err, tt.want)
		}
	}
}

func writeJSON(t *testing.T, dir, name string, v any) string {
	t.Helper()
	p := filepath.Join(dir, name)
	var b []byte
	switch v := v.(type) {
	case string:
		b = []byte(v)
	default:
		b = mustJSON(t, v)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadKeySet(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	alicePriv, alicePub := newKey(t, "alice")
	_, bobPub := newKey(t, "bob")
	_, bob2Pub := newKey(t, "bob")
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	noKid := alicePub
	noKid.KeyID = ""
	wrongAlg := alicePub
	wrongAlg.Algorithm = "RS256"
	encUse := alicePub
	encUse.Use = "enc"

	set := func(keys ...jose.JSONWebKey) jose.JSONWebKeySet { return jose.JSONWebKeySet{Keys: keys} }
	files := map[string]string{
		"alice.jwks":    writeJSON(t, dir, "alice.jwks", set(alicePub)),
		"bob.jwk":       writeJSON(t, dir, "bob.jwk", bobPub), // a single JWK, not a set
		"bob2.jwks":     writeJSON(t, dir, "bob2.jwks", set(bob2Pub)),
		"private.jwks":  writeJSON(t, dir, "private.jwks", set(alicePriv)),
		"rsa.jwks":      writeJSON(t, dir, "rsa.jwks", set(jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "corp-rsa"})),
		"ec.jwks":       writeJSON(t, dir, "ec.jwks", set(jose.JSONWebKey{Key: &ecKey.PublicKey, KeyID: "corp-ec"})),
		"oct.jwks":      writeJSON(t, dir, "oct.jwks", `{"keys":[{"kty":"oct","kid":"shared","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}`),
		"nokid.jwks":    writeJSON(t, dir, "nokid.jwks", set(noKid)),
		"wrongalg.jwks": writeJSON(t, dir, "wrongalg.jwks", set(wrongAlg)),
		"enc.jwks":      writeJSON(t, dir, "enc.jwks", set(encUse)),
		"empty.jwks":    writeJSON(t, dir, "empty.jwks", `{"keys":[]}`),
		"garbage.jwks":  writeJSON(t, dir, "garbage.jwks", `not json`),
		"keysnotarray":  writeJSON(t, dir, "keysnotarray", `{"keys":{"kty":"OKP"}}`),
	}
	tests := []struct {
		name  string
		files []string
		want  []string // substrings of the error; nil means success
		kids  []string
	}{
		{name: "set and single JWK", files: []string{"alice.jwks", "bob.jwk"}, kids: []string{"alice", "bob"}},
		{name: "private key refused", files: []string{"private.jwks"}, want: []string{"private.jwks", `"alice"`, "PRIVATE"}},
		{name: "RSA refused", files: []string{"rsa.jwks"}, want: []string{"rsa.jwks", `"corp-rsa"`, "Ed25519"}},
		{name: "EC refused", files: []string{"ec.jwks"}, want: []string{"ec.jwks", `"corp-ec"`, "Ed25519"}},
		{name: "symmetric refused", files: []string{"oct.jwks"}, want: []string{"oct.jwks", "shared"}},
		{name: "no kid refused", files: []string{"nokid.jwks"}, want: []string{"nokid.jwks", "no kid"}},
		{name: "alg other than EdDSA refused", files: []string{"wrongalg.jwks"}, want: []string{"wrongalg.jwks", "RS256"}},
		{name: "use enc refused", files: []string{"enc.jwks"}, want: []string{"enc.jwks", "use"}},
		{name: "duplicate kid across files", files: []string{"bob.jwk", "bob2.jwks"}, want: []string{"bob2.jwks", `"bob"`, "bob.jwk"}},
		{name: "empty set", files: []string{"empty.jwks"}, want: []string{"empty.jwks", "no keys"}},
		{name: "not JSON", files: []string{"garbage.jwks"}, want: []string{"garbage.jwks"}},
		{name: "keys not an array", files: []string{"keysnotarray"}, want: []string{"keysnotarray", "array"}},
		{name: "no files", files: nil, want: []string{"no trusted key files"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var paths []string
			for _, f := range tt.files {
				paths = append(paths, files[f])
			}
			got, err := LoadKeySet(paths...)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("LoadKeySet(%v) = %v, want success", tt.files, err)
				}
				var kids []string
				for _, k := range got.Keys {
					kids = append(kids, k.KeyID)
					if !k.IsPublic() {
						t.Errorf("LoadKeySet(%v) key %q is not public", tt.files, k.KeyID)
					}
				}
				if strings.Join(kids, ",") != strings.Join(tt.kids, ",") {
					t.Fatalf("LoadKeySet(%v) kids = %v, want %v", tt.files, kids, tt.kids)
				}
				return
			}
			if err == nil {
				t.Fatalf("LoadKeySet(%v) = nil error, want one mentioning %q", tt.files, tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("LoadKeySet(%v) = %v, want the error to mention %q", tt.files, err, w)
				}
			}
			if strings.Contains(err.Error(), `"d":`) || strings.Contains(err.Error(), "c2VjcmV0") {
				t.Errorf("LoadKeySet(%v) error %q contains key material", tt.files, err)
			}
		})
	}
}

// The public JWKS written by WriteKeyFiles is a plain JWKS that other JOSE tools read.
func TestPublicFileIsStandardJWKS(t *testing.T) {
	t.Parallel()
	_, pubPath, err := WriteKeyFiles(t.TempDir(), "k")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(pubPath)
	var doc struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil || len(doc.Keys) != 1 {
		t.Fatalf("public file = %s, %v, want a JWKS with one key", data, err)
	}
	k := doc.Keys[0]
	if k["kty"] != "OKP" || k["crv"] != "Ed25519" || k["kid"] != "k" || k["alg"] != "EdDSA" || k["use"] != "sig" || k["x"] == nil {
		t.Errorf("public key = %v, want kty OKP, crv Ed25519, kid k, alg EdDSA, use sig, x", k)
	}
}

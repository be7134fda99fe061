package approval

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/go-jose/go-jose/v4"
)

// File names written by WriteKeyFiles, after the key name.
const (
	PrivateKeySuffix = ".private.jwk.json"
	PublicKeySuffix  = ".public.jwks.json"
)

// GenerateKey returns a new Ed25519 signing key and its public half as JWKs with alg EdDSA
// and use sig. An empty kid is replaced by the key's RFC 7638 SHA-256 thumbprint, which is
// unique without coordination; a readable kid ("alice-2026-11") makes rotation easier to
// follow in logs, but then keeping kids unique is the operator's job.
func GenerateKey(kid string) (private, public jose.JSONWebKey, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return jose.JSONWebKey{}, jose.JSONWebKey{}, fmt.Errorf("approval: generating an Ed25519 key: %w", err)
	}
	if kid == "" {
		tmp := jose.JSONWebKey{Key: pub}
		tp, err := tmp.Thumbprint(crypto.SHA256)
		if err != nil {
			return jose.JSONWebKey{}, jose.JSONWebKey{}, fmt.Errorf("approval: key thumbprint: %w", err)
		}
		kid = base64.RawURLEncoding.EncodeToString(tp)
	}
	private = jose.JSONWebKey{Key: priv, KeyID: kid, Algorithm: string(jose.EdDSA), Use: "sig"}
	return private, private.Public(), nil
}

// WriteKeyFiles generates a key whose kid is name and writes it into dir as
// <name>.private.jwk.json (the private JWK, mode 0600: it stays on the approver's machine)
// and <name>.public.jwks.json (a JWKS holding the public key, mode 0644: it goes to the
// workers). It never overwrites: if either file exists it fails and leaves both alone.
func WriteKeyFiles(dir, name string) (privPath, pubPath string, err error) {
	if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") || strings.ContainsAny(name, `/\`) {
		return "", "", fmt.Errorf("approval: key name %q must be a plain file name (letters, digits, '-', '_'), not a path", name)
	}
	privPath = filepath.Join(dir, name+PrivateKeySuffix)
	pubPath = filepath.Join(dir, name+PublicKeySuffix)
	for _, p := range []string{privPath, pubPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", "", fmt.Errorf("approval: %s already exists; refusing to overwrite a key (choose another name, or move the old files away)", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", "", fmt.Errorf("approval: checking %s: %w", p, err)
		}
	}
	priv, pub, err := GenerateKey(name)
	if err != nil {
		return "", "", err
	}
	privJSON, err := json.MarshalIndent(priv, "", "  ")
	if err != nil {
		return "", "", fmt.Errorf("approval: encoding the private key: %w", err)
	}
	pubJSON, err := json.MarshalIndent(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}}, "", "  ")
	if err != nil {
		return "", "", fmt.Errorf("approval: encoding the public key set: %w", err)
	}
	if err := writeNew(privPath, append(privJSON, '\n'), 0o600); err != nil {
		return "", "", err
	}
	if err := writeNew(pubPath, append(pubJSON, '\n'), 0o644); err != nil {
		_ = os.Remove(privPath) // a private key without its public half is of no use
		return "", "", err
	}
	return privPath, pubPath, nil
}

// writeNew creates path exclusively (O_EXCL closes the race between the existence check
// and the write), writes data and syncs it. The mode is set explicitly so that a permissive
// umask cannot widen it, and a restrictive one cannot make the public set unreadable.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("approval: creating %s: %w", path, err)
	}
	_, werr := f.Write(data)
	if werr == nil {
		werr = f.Chmod(mode)
	}
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		_ = os.Remove(path)
		return fmt.Errorf("approval: writing %s: %w", path, werr)
	}
	return nil
}

// LoadPrivateKey reads a private Ed25519 JWK (as written by WriteKeyFiles) for Sign. The
// file must hold exactly one private key with a kid.
func LoadPrivateKey(path string) (jose.JSONWebKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("approval: reading private key: %w", err)
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(data); err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("approval: %s is not a JWK: %v", path, safeJOSEError(err))
	}
	if k.IsPublic() {
		return jose.JSONWebKey{}, fmt.Errorf("approval: %s (kid %q) holds a public key; signing needs the private key file (*%s)", path, k.KeyID, PrivateKeySuffix)
	}
	if _, ok := k.Key.(ed25519.PrivateKey); !ok {
		return jose.JSONWebKey{}, fmt.Errorf("approval: %s (kid %q) is a %s key; approvals are signed with Ed25519 (EdDSA) keys only", path, k.KeyID, keyKind(k.Key))
	}
	if err := checkKeyParams(k); err != nil {
		return jose.JSONWebKey{}, fmt.Errorf("approval: %s: %w", path, err)
	}
	return k, nil
}

// LoadKeySet reads the keys a worker trusts. Each path is a JWKS ({"keys": [...]}) or a
// single JWK. Every key must be an Ed25519 public key with a unique kid. A private key is
// refused rather than stripped to its public half: finding one on a worker means a signing
// key was copied where it must not be, and the operator should know.
func LoadKeySet(paths ...string) (*jose.JSONWebKeySet, error) {
	if len(paths) == 0 {
		return nil, errors.New("approval: no trusted key files given")
	}
	set := &jose.JSONWebKeySet{}
	origin := map[string]string{} // kid -> file, for duplicate messages
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("approval: reading trusted keys: %w", err)
		}
		raws, err := splitKeyFile(data)
		if err != nil {
			return nil, fmt.Errorf("approval: %s: %w", path, err)
		}
		if len(raws) == 0 {
			return nil, fmt.Errorf("approval: %s holds no keys", path)
		}
		for i, raw := range raws {
			var k jose.JSONWebKey
			if err := k.UnmarshalJSON(raw); err != nil {
				return nil, fmt.Errorf("approval: %s: key #%d is not a valid JWK: %v", path, i+1, safeJOSEError(err))
			}
			if k.KeyID == "" {
				return nil, fmt.Errorf("approval: %s: key #%d has no kid; every trusted key needs one, since tokens name their key by kid", path, i+1)
			}
			if !k.IsPublic() {
				return nil, fmt.Errorf("approval: %s: key %q is a PRIVATE key; workers must trust public keys only (use the *%s file, and remove this one from the worker)", path, k.KeyID, PublicKeySuffix)
			}
			if _, ok := k.Key.(ed25519.PublicKey); !ok {
				return nil, fmt.Errorf("approval: %s: key %q is a %s key; only Ed25519 (kty OKP, crv Ed25519) keys are accepted", path, k.KeyID, keyKind(k.Key))
			}
			if err := checkKeyParams(k); err != nil {
				return nil, fmt.Errorf("approval: %s: %w", path, err)
			}
			if prev, dup := origin[k.KeyID]; dup {
				return nil, fmt.Errorf("approval: %s: kid %q is already used by a key in %s; kids must be unique across the trusted set", path, k.KeyID, prev)
			}
			origin[k.KeyID] = path
			set.Keys = append(set.Keys, k)
		}
	}
	return set, nil
}

// splitKeyFile returns the raw JWKs in a JWKS document, or the document itself if it is a
// single JWK.
func splitKeyFile(data []byte) ([]json.RawMessage, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("not a JSON object (want a JWKS or a JWK): %v", err)
	}
	rawKeys, isSet := probe["keys"]
	if !isSet {
		return []json.RawMessage{json.RawMessage(data)}, nil
	}
	var keys []json.RawMessage
	if err := json.Unmarshal(rawKeys, &keys); err != nil {
		return nil, fmt.Errorf(`"keys" must be an array of JWKs: %v`, err)
	}
	return keys, nil
}

func checkKeyParams(k jose.JSONWebKey) error {
	if k.Algorithm != "" && k.Algorithm != string(jose.EdDSA) {
		return fmt.Errorf("key %q has alg %q; only EdDSA is accepted", k.KeyID, k.Algorithm)
	}
	if k.Use != "" && k.Use != "sig" {
		return fmt.Errorf("key %q has use %q; approval keys must have use \"sig\"", k.KeyID, k.Use)
	}
	if k.KeyID == "" {
		return errors.New("key has no kid")
	}
	return nil
}

func keyKind(key any) string {
	switch key.(type) {
	case []byte:
		return "symmetric (oct)"
	case ed25519.PublicKey, ed25519.PrivateKey:
		return "Ed25519"
	}
	s := fmt.Sprintf("%T", key)
	return strings.TrimPrefix(s, "*")
}

// safeJOSEError strips go-jose's package prefix; the messages never echo key material.
func safeJOSEError(err error) string {
	return strings.TrimPrefix(err.Error(), "go-jose/go-jose: ")
}

// publicKeys indexes a trusted set by kid. Keys that cannot verify approvals are kept with
// the reason, so that a token naming them is rejected with a useful message rather than
// as an unknown key.
func publicKeys(set *jose.JSONWebKeySet) map[string]trustedKey {
	out := map[string]trustedKey{}
	if set == nil {
		return out
	}
	for _, k := range set.Keys {
		var tk trustedKey
		switch key := k.Key.(type) {
		case ed25519.PublicKey:
			tk.pub = key
		case ed25519.PrivateKey:
			tk.pub = key.Public().(ed25519.PublicKey)
		default:
			tk.problem = fmt.Sprintf("trusted key %q is a %s key, not Ed25519", k.KeyID, keyKind(k.Key))
		}
		if k.Algorithm != "" && k.Algorithm != string(jose.EdDSA) {
			tk = trustedKey{problem: fmt.Sprintf("trusted key %q is restricted to alg %q", k.KeyID, k.Algorithm)}
		}
		if prev, dup := out[k.KeyID]; dup && (prev.problem != "" || tk.problem != "" || !bytes.Equal(prev.pub, tk.pub)) {
			tk = trustedKey{problem: fmt.Sprintf("kid %q names more than one trusted key", k.KeyID)}
		}
		out[k.KeyID] = tk
	}
	return out
}

type trustedKey struct {
	pub     ed25519.PublicKey
	problem string
}

package plugins

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/go-json-experiment/json"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/jws"
	"github.com/castellan-dev/castellan/policy"
)

// SignatureFile is the detached signature's file name inside a plugin directory.
const SignatureFile = "plugin.sig"

// SignatureType is the JWS "typ" header of a plugin signature.
const SignatureType = "castellan-plugin+jws"

// PayloadType marks a plugin signature payload, so that a JWS made for something else with
// the same key (an approval token) can never pass as a plugin signature.
const PayloadType = "castellan-plugin-signature/v1"

// Signature is a verified plugin signature.
type Signature struct {
	KeyID string            // kid of the trusted publisher key that signed
	Files map[string]string // file name in the plugin directory -> hex SHA-256, as signed
}

// payload is what a publisher signs: the plugin's name and version, and the digest of every
// file that makes the plugin (manifest, module, schema files). The name is included so that a
// signed plugin cannot be renamed into another task's grant.
type payload struct {
	Type    string            `json:"typ"`
	Name    string            `json:"name"`
	Version string            `json:"version"`
	Files   map[string]string `json:"files"`
}

// Trust is the set of publisher keys whose plugin signatures are accepted.
type Trust struct {
	keys map[string]ed25519.PublicKey
}

// LoadTrust reads publisher key files (JWKS or single JWK, Ed25519 public keys with unique
// kids, as written by `castellan keygen`). No paths gives an empty trust: every signed plugin
// is then refused as signed by an unknown key.
func LoadTrust(paths ...string) (*Trust, error) {
	t := &Trust{keys: map[string]ed25519.PublicKey{}}
	if len(paths) == 0 {
		return t, nil
	}
	set, err := approval.LoadKeySet(paths...)
	if err != nil {
		return nil, fmt.Errorf("trusted publishers: %s", strings.TrimPrefix(err.Error(), "approval: "))
	}
	for _, k := range set.Keys {
		t.keys[k.KeyID] = k.Key.(ed25519.PublicKey) // LoadKeySet admits Ed25519 public keys only
	}
	return t, nil
}

// KeyIDs returns the trusted kids, sorted.
func (t *Trust) KeyIDs() []string {
	var out []string
	if t != nil {
		for k := range t.keys {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// Sign signs the plugin in dir (a plugin directory, or any file inside one such as its .wasm)
// with the Ed25519 private JWK in keyFile and writes dir/plugin.sig (a JWS in compact form,
// alg EdDSA, kid of the key). It returns the signature's path.
func Sign(dirOrFile, keyFile string) (string, error) {
	dir, err := pluginDir(dirOrFile)
	if err != nil {
		return "", err
	}
	key, err := approval.LoadPrivateKey(keyFile)
	if err != nil {
		return "", errors.New(strings.TrimPrefix(err.Error(), "approval: "))
	}
	pl, err := readForSigning(dir)
	if err != nil {
		return "", err
	}
	body, err := json.Marshal(pl, json.Deterministic(true))
	if err != nil {
		return "", err
	}
	compact, err := jws.Sign(key.Key.(ed25519.PrivateKey), key.KeyID, SignatureType, body) // LoadPrivateKey admits Ed25519 keys only
	if err != nil {
		return "", fmt.Errorf("signing %s: %v", dir, err)
	}
	out := filepath.Join(dir, SignatureFile)
	// Write-then-rename, so a watching worker never reads half a signature.
	tmp := filepath.Join(dir, "."+SignatureFile+".tmp")
	if err := os.WriteFile(tmp, []byte(compact+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("writing %s: %v", out, unwrapPath(err))
	}
	if err := os.Rename(tmp, out); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("writing %s: %v", out, unwrapPath(err))
	}
	return out, nil
}

// Verify checks the signature of the plugin in dirOrFile against trust, without a policy: the
// manifest must parse, the module must exist, and the signature must be valid, by a trusted
// key, over exactly these files. It returns the verified signature.
func Verify(dirOrFile string, trust *Trust) (*Signature, error) {
	dir, err := pluginDir(dirOrFile)
	if err != nil {
		return nil, err
	}
	pl, err := readForSigning(dir)
	if err != nil {
		return nil, err
	}
	root, err := openDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", dir, err)
	}
	defer root.Close()
	p := &Plugin{Name: pl.Name, Dir: dir, files: map[string][]byte{}}
	for name := range pl.Files {
		b, err := readIn(root, name)
		if err != nil {
			return nil, err
		}
		p.files[name] = b
	}
	p.Manifest = &policy.Manifest{Name: pl.Name, Version: pl.Version}
	sig, err := p.verify(root, trust)
	if err != nil {
		return nil, fmt.Errorf("plugin %q (%s): %v", pl.Name, dir, err)
	}
	if sig == nil {
		return nil, fmt.Errorf("plugin %q (%s): unsigned (no %s); sign it with `castellan plugin sign --key KEY %s`", pl.Name, dir, SignatureFile, dir)
	}
	return sig, nil
}

func pluginDir(dirOrFile string) (string, error) {
	st, err := os.Stat(dirOrFile)
	if err != nil {
		return "", fmt.Errorf("%s: %v", dirOrFile, unwrapPath(err))
	}
	if st.IsDir() {
		return dirOrFile, nil
	}
	return filepath.Dir(dirOrFile), nil
}

// readForSigning builds the payload for the plugin in dir from the files on disk, read as
// Open reads them (readIn).
func readForSigning(dir string) (*payload, error) {
	root, err := openDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", dir, err)
	}
	defer root.Close()
	mfPath := filepath.Join(dir, policy.ManifestFile)
	data, err := readIn(root, policy.ManifestFile)
	if err != nil {
		return nil, fmt.Errorf("%s is not a plugin directory: %v", dir, err)
	}
	mf, err := policy.ParseManifest(mfPath, data, reader(root))
	if err != nil {
		return nil, err
	}
	pl := &payload{Type: PayloadType, Name: mf.Name, Version: mf.Version, Files: map[string]string{policy.ManifestFile: digest(data)}}
	names := []string{mf.Module}
	for _, f := range mf.SchemaFiles {
		names = append(names, f)
	}
	for _, n := range names {
		b, err := readIn(root, n)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", dir, err)
		}
		pl.Files[n] = digest(b)
	}
	return pl, nil
}

// verify checks dir/plugin.sig against the bytes in p.files. It returns nil, nil when there
// is no signature file; a signature that is present but bad is always an error, whatever the
// policy says about unsigned plugins.
func (p *Plugin) verify(root *os.Root, trust *Trust) (*Signature, error) {
	raw, err := readIn(root, SignatureFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cannot read %v", err)
	}
	// The file is the compact token and the newline Sign writes after it; the token itself
	// must be exact (internal/jws, the same reader as approvals).
	tok, err := jws.Parse(strings.TrimSuffix(string(raw), "\n"), SignatureType)
	if err != nil {
		return nil, fmt.Errorf("%s is not a valid signature (want a compact EdDSA JWS from `castellan plugin sign`): %v", SignatureFile, err)
	}
	kid := tok.Kid
	var pub ed25519.PublicKey
	if trust != nil {
		pub = trust.keys[kid]
	}
	if pub == nil {
		return nil, fmt.Errorf("signed by unknown key %q; trusted publisher keys: %s (policy plugins.trusted_publishers)", kid, orNone(trust.KeyIDs()))
	}
	body, ok := tok.Verify(pub)
	if !ok {
		return nil, fmt.Errorf("%s does not verify with trusted key %q: the signature was altered or made with another key", SignatureFile, kid)
	}
	// Strict: exact member names, no duplicates, no unknown members (go-json-experiment/json).
	var pl payload
	if err := json.Unmarshal(body, &pl, json.RejectUnknownMembers(true)); err != nil || pl.Type != PayloadType {
		return nil, fmt.Errorf("%s (key %q) is not a plugin signature (payload type is not %s)", SignatureFile, kid, PayloadType)
	}
	if pl.Name != p.Name || (p.Manifest != nil && pl.Version != p.Manifest.Version) {
		return nil, fmt.Errorf("%s (key %q) was made for plugin %q version %q, not %q version %q", SignatureFile, kid, pl.Name, pl.Version, p.Name, p.Manifest.Version)
	}
	var problems []string
	for name, b := range p.files {
		want, ok := pl.Files[name]
		switch {
		case !ok:
			problems = append(problems, name+" is not covered by the signature")
		case want != digest(b):
			problems = append(problems, fmt.Sprintf("%s has sha256 %s, the signature says %s", name, digest(b), want))
		}
	}
	for name := range pl.Files {
		if _, ok := p.files[name]; !ok {
			problems = append(problems, name+" is signed but not part of the plugin any more")
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return nil, fmt.Errorf("tampered: the files do not match the signature by key %q:\n  %s\nre-sign after a legitimate change", kid, strings.Join(problems, "\n  "))
	}
	return &Signature{KeyID: kid, Files: pl.Files}, nil
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

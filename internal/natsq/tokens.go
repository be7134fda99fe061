package natsq

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/castellan-dev/castellan/internal/server"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TokensBucket holds the API's bearer tokens, keyed by the SHA-256 of the secret: the
// secret itself is never stored, as on SQLite. Workers never use these tokens in NATS mode:
// they authenticate to NATS itself, and their account's subject permissions are their role.
const TokensBucket = "castellan_tokens"

var tokenPoolRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// tokenEntry is a token as stored in the TokensBucket.
type tokenEntry struct {
	ID        string     `json:"id"`
	Role      api.Role   `json:"role"`
	Pool      string     `json:"pool"`
	Name      string     `json:"name,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

func tokenKey(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return "sha256_" + hex.EncodeToString(sum[:])
}

func tokensKV(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: TokensBucket,
		Description: "Castellan API bearer tokens (SHA-256 hashes)", History: 1, Replicas: max(replicas, 1)})
	if err != nil {
		return nil, fmt.Errorf("natsq: create bucket %s: %w", TokensBucket, err)
	}
	return kv, nil
}

// CreateToken makes a new random bearer token for the JetStream control plane's API, stores
// only its hash in the TokensBucket and returns it with Secret set (print it once). Roles
// are client, approver and admin; worker tokens do not exist in this mode (workers
// authenticate to NATS). Admin tokens default to every pool ("*").
func CreateToken(ctx context.Context, nc *nats.Conn, role api.Role, pool, name string, replicas int) (api.Token, error) {
	if role == api.RoleWorker {
		return api.Token{}, errors.New("in NATS mode workers authenticate to NATS (credentials file, token or user), not with an API token: create a client, approver or admin token")
	}
	if !slices.Contains(api.Roles, role) {
		return api.Token{}, fmt.Errorf("role %q is not one of client, approver, admin", role)
	}
	if pool == "" && role == api.RoleAdmin {
		pool = api.AllPools
	}
	if pool != api.AllPools && !tokenPoolRE.MatchString(pool) {
		return api.Token{}, fmt.Errorf("pool %q is invalid: use 1-63 of a-z 0-9 _ . - starting with a letter or digit, or \"*\"", pool)
	}
	if len(name) > 128 {
		return api.Token{}, fmt.Errorf("token name is %d bytes, at most 128", len(name))
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return api.Token{}, fmt.Errorf("natsq: %w", err)
	}
	kv, err := tokensKV(ctx, js, replicas)
	if err != nil {
		return api.Token{}, err
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return api.Token{}, err
	}
	secret := server.TokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	key := tokenKey(secret)
	now := time.Now().UTC().Truncate(time.Millisecond)
	e := tokenEntry{ID: "tok_" + key[len("sha256_"):][:12], Role: role, Pool: pool, Name: name, CreatedAt: now}
	data, err := json.Marshal(e)
	if err != nil {
		return api.Token{}, err
	}
	if _, err := kv.Create(ctx, key, data); err != nil {
		return api.Token{}, fmt.Errorf("natsq: store token in %s: %w", TokensBucket, err)
	}
	return api.Token{ID: e.ID, Role: role, Pool: pool, Name: name, CreatedAt: now, Secret: secret}, nil
}

// principal is an authenticated API caller.
type principal struct {
	tokenID string
	role    api.Role
	pool    string
}

func (p principal) canPool(pool string) bool {
	return p.role == api.RoleAdmin || p.pool == api.AllPools || p.pool == pool
}

var errTokenInvalid = errors.New("invalid bearer token")

// authenticate resolves a bearer token through the TokensBucket. The lookup is by hash, so
// a wrong secret can only miss; there is nothing to compare in constant time.
func authenticate(ctx context.Context, kv jetstream.KeyValue, secret string) (principal, error) {
	body, ok := strings.CutPrefix(secret, server.TokenPrefix)
	if !ok || len(body) != 43 {
		return principal{}, errTokenInvalid
	}
	if b, err := base64.RawURLEncoding.DecodeString(body); err != nil || len(b) != 32 {
		return principal{}, errTokenInvalid
	}
	ent, err := kv.Get(ctx, tokenKey(secret))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return principal{}, errTokenInvalid
	}
	if err != nil {
		return principal{}, fmt.Errorf("natsq: read %s: %w", TokensBucket, err)
	}
	var e tokenEntry
	if err := json.Unmarshal(ent.Value(), &e); err != nil || e.RevokedAt != nil || e.Role == api.RoleWorker {
		return principal{}, errTokenInvalid
	}
	return principal{tokenID: e.ID, role: e.Role, pool: e.Pool}, nil
}

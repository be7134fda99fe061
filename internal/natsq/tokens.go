package natsq

import (
	"bytes"
	"cmp"
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

	"github.com/castellan-dev/castellan/internal/controlplane"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// TokensBucket holds the API's bearer tokens, keyed by the SHA-256 of the secret: the
// secret itself is never stored, as on SQLite. Workers never use these tokens in NATS mode:
// they authenticate to NATS itself, and their account's subject permissions are their role.
const TokensBucket = "castellan_tokens"

// tokenEntry is a token as stored in the TokensBucket.
type tokenEntry struct {
	ID        string     `json:"id"`
	Role      api.Role   `json:"role"`
	Pool      string     `json:"pool"`
	Name      string     `json:"name,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

func (e tokenEntry) token() api.Token {
	return api.Token{ID: e.ID, Role: e.Role, Pool: e.Pool, Name: e.Name, CreatedAt: e.CreatedAt, RevokedAt: e.RevokedAt, ExpiresAt: e.ExpiresAt}
}

func tokenKey(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return "sha256_" + hex.EncodeToString(sum[:])
}

func tokensKV(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := ensureKV(ctx, js, jetstream.KeyValueConfig{Bucket: TokensBucket,
		Description: "Castellan API bearer tokens (SHA-256 hashes)", History: 1, Replicas: max(replicas, 1)})
	if err != nil {
		return nil, fmt.Errorf("natsq: create bucket %s: %w", TokensBucket, err)
	}
	return kv, nil
}

// CreateToken makes a new random bearer token that never expires; see NewToken.
func CreateToken(ctx context.Context, nc *nats.Conn, role api.Role, pool, name string, replicas int) (api.Token, error) {
	return NewToken(ctx, nc, api.TokenCreateRequest{Role: role, Pool: pool, Name: name}, replicas, time.Now())
}

// NewToken makes a new random bearer token for the JetStream control plane's API as req
// asks with direct NATS access (`castellan token create --nats`), stores only its hash in
// the TokensBucket, records it in the audit log as DirectActor's, and returns it with
// Secret set (print it once). See newToken for the roles.
func NewToken(ctx context.Context, nc *nats.Conn, req api.TokenCreateRequest, replicas int, now time.Time) (api.Token, error) {
	kv, err := tokensBucket(ctx, nc, replicas)
	if err != nil {
		return api.Token{}, err
	}
	t, err := newToken(ctx, kv, req, now)
	if err != nil {
		return api.Token{}, err
	}
	detail, _ := json.Marshal(controlplane.TokenAuditDetail(t))
	if err := appendDirect(ctx, nc, replicas, api.AuditEntry{At: t.CreatedAt, Actor: DirectActor, Role: "direct", Action: "token.create", Detail: detail}); err != nil {
		return t, fmt.Errorf("natsq: token %s created, but recording it in the audit log failed: %w", t.ID, err)
	}
	return t, nil
}

// tokenRequestError is a token request refused for what it asks.
type tokenRequestError struct{ error }

// newToken checks req (api.CheckTokenRequest) and stores a new token in kv. Roles are
// client, approver and admin: worker tokens do not exist in this mode (workers
// authenticate to NATS), nor do registration tokens. With req.TTLSeconds the token stops
// authenticating that long after now.
func newToken(ctx context.Context, kv jetstream.KeyValue, req api.TokenCreateRequest, now time.Time) (api.Token, error) {
	switch req.Role {
	case api.RoleWorker:
		return api.Token{}, tokenRequestError{errors.New("in NATS mode workers authenticate to NATS (credentials file, token or user), not with an API token: create a client, approver or admin token")}
	case api.RoleRegistration:
		return api.Token{}, tokenRequestError{errors.New("in NATS mode there are no registration tokens: workers authenticate to NATS with NATS credentials, which only the account's signing key can mint (nsc); see docs/deploy.md")}
	}
	req, err := api.CheckTokenRequest(req)
	if err != nil {
		return api.Token{}, tokenRequestError{err}
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return api.Token{}, err
	}
	secret := api.TokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	key := tokenKey(secret)
	now = now.UTC().Truncate(time.Millisecond)
	e := tokenEntry{ID: "tok_" + key[len("sha256_"):][:12], Role: req.Role, Pool: req.Pool, Name: req.Name, CreatedAt: now}
	if req.TTLSeconds > 0 {
		exp := now.Add(time.Duration(req.TTLSeconds) * time.Second)
		e.ExpiresAt = &exp
	}
	data, err := json.Marshal(e)
	if err != nil {
		return api.Token{}, err
	}
	if _, err := kv.Create(ctx, key, data); err != nil {
		return api.Token{}, fmt.Errorf("natsq: store token in %s: %w", TokensBucket, err)
	}
	t := e.token()
	t.Secret = secret
	return t, nil
}

// DirectActor is the audit actor of token changes made with direct NATS access.
const DirectActor = "cli --nats"

func tokensBucket(ctx context.Context, nc *nats.Conn, replicas int) (jetstream.KeyValue, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("natsq: %w", err)
	}
	return tokensKV(ctx, js, replicas)
}

// ListTokens lists every token of the TokensBucket with direct NATS access (`castellan
// token list --nats`), as GET /v1/tokens does.
func ListTokens(ctx context.Context, nc *nats.Conn, replicas int) ([]api.Token, error) {
	kv, err := tokensBucket(ctx, nc, replicas)
	if err != nil {
		return nil, err
	}
	return listTokens(ctx, kv)
}

// RevokeToken revokes token id with direct NATS access (`castellan token revoke --nats`),
// as DELETE /v1/tokens/{id} does; false when there is no active token id.
func RevokeToken(ctx context.Context, nc *nats.Conn, id string, replicas int, now time.Time) (bool, error) {
	kv, err := tokensBucket(ctx, nc, replicas)
	if err != nil {
		return false, err
	}
	ok, err := revokeToken(ctx, kv, id, now)
	if err != nil || !ok {
		return ok, err
	}
	detail, _ := json.Marshal(map[string]string{"id": id})
	if err := appendDirect(ctx, nc, replicas, api.AuditEntry{At: now, Actor: DirectActor, Role: "direct", Action: "token.revoke", Detail: detail}); err != nil {
		return true, fmt.Errorf("natsq: token %s revoked, but recording it in the audit log failed: %w", id, err)
	}
	return true, nil
}

// principal is an authenticated API caller.
type principal struct {
	tokenID   string
	name      string
	role      api.Role
	pool      string
	createdAt time.Time
	expiresAt *time.Time // nil: never; the /v1 layer refuses the token once it has passed
}

var errTokenInvalid = errors.New("invalid bearer token")

// authenticate resolves a bearer token through the TokensBucket. The lookup is by hash, so
// a wrong secret can only miss; there is nothing to compare in constant time. Expiry is
// the /v1 layer's check (controlplane), not this one's.
func authenticate(ctx context.Context, nc *nats.Conn, secret string) (principal, error) {
	body, ok := strings.CutPrefix(secret, api.TokenPrefix)
	if !ok || len(body) != 43 {
		return principal{}, errTokenInvalid
	}
	if b, err := base64.RawURLEncoding.DecodeString(body); err != nil || len(b) != 32 {
		return principal{}, errTokenInvalid
	}
	e, found, err := readToken(ctx, nc, tokenKey(secret))
	if err != nil {
		return principal{}, err
	}
	if !found || e.RevokedAt != nil || e.Role == api.RoleWorker || e.Role == api.RoleRegistration || !slices.Contains(api.Roles, e.Role) {
		return principal{}, errTokenInvalid
	}
	return principal{tokenID: e.ID, name: e.Name, role: e.Role, pool: e.Pool, createdAt: e.CreatedAt, expiresAt: e.ExpiresAt}, nil
}

// readToken reads a token's entry from the stream leader ($JS.API.STREAM.MSG.GET) rather
// than with the KV's direct get: in a cluster a direct get may be answered by a follower
// that has not applied a revocation yet, and a revoked token must fail at once on every
// replica. It costs the same one round trip, always to the leader. An unreadable entry is
// reported as not found: it authenticates nobody.
func readToken(ctx context.Context, nc *nats.Conn, key string) (tokenEntry, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := json.Marshal(map[string]string{"last_by_subj": "$KV." + TokensBucket + "." + key})
	msg, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.KV_"+TokensBucket, req)
	if err != nil {
		return tokenEntry{}, false, fmt.Errorf("natsq: read %s: %w", TokensBucket, err)
	}
	var resp struct {
		Message *struct {
			Hdrs []byte `json:"hdrs"`
			Data []byte `json:"data"`
		} `json:"message"`
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return tokenEntry{}, false, fmt.Errorf("natsq: read %s: unreadable reply: %w", TokensBucket, err)
	}
	switch {
	case resp.Error != nil && resp.Error.Code == 404:
		return tokenEntry{}, false, nil
	case resp.Error != nil:
		return tokenEntry{}, false, fmt.Errorf("natsq: read %s: %s (code %d)", TokensBucket, resp.Error.Description, resp.Error.ErrCode)
	case resp.Message == nil:
		return tokenEntry{}, false, fmt.Errorf("natsq: read %s: a reply with neither message nor error", TokensBucket)
	}
	if bytes.Contains(bytes.ToLower(resp.Message.Hdrs), []byte("kv-operation:")) {
		// A delete or purge marker: the key is gone. (A put carries no such header; it may
		// carry the Nats-Expected-* headers of a compare-and-set.)
		return tokenEntry{}, false, nil
	}
	var e tokenEntry
	if err := json.Unmarshal(resp.Message.Data, &e); err != nil {
		return tokenEntry{}, false, nil
	}
	return e, true, nil
}

// tokenIDRE is what a token id looks like: "tok_" and the first 12 hex digits of the
// secret's SHA-256 (the key's), so that revoke can find the key by its prefix.
var tokenIDRE = regexp.MustCompile(`^tok_[0-9a-f]{12}$`)

// listTokens returns every token, revoked ones included, oldest first (as on SQLite),
// without secrets: the bucket holds none. It reads the whole bucket (one ordered
// consumer); tokens are few.
func listTokens(ctx context.Context, kv jetstream.KeyValue) ([]api.Token, error) {
	// Creation times have millisecond precision; tokens created within one millisecond are
	// ordered by their entry's revision (the order of their last write), not at random.
	type listed struct {
		tok api.Token
		rev uint64
	}
	var all []listed
	err := scanKV(ctx, kv, TokensBucket, ">", func(ent jetstream.KeyValueEntry) {
		var e tokenEntry
		if err := json.Unmarshal(ent.Value(), &e); err != nil || e.ID == "" {
			return // authenticates nobody either
		}
		all = append(all, listed{e.token(), ent.Revision()})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(all, func(a, b listed) int {
		if c := a.tok.CreatedAt.Compare(b.tok.CreatedAt); c != 0 {
			return c
		}
		return cmp.Compare(a.rev, b.rev)
	})
	out := make([]api.Token, 0, len(all))
	for _, l := range all {
		out = append(out, l.tok)
	}
	return out, nil
}

// revokeToken marks the active token id revoked and reports whether there was one. The
// entry stays (listed with revoked_at); every replica reads the entry from the stream
// leader on every request, so the token fails authentication everywhere as soon as this
// returns. Finding the key costs one key listing of the TokensBucket.
func revokeToken(ctx context.Context, kv jetstream.KeyValue, id string, now time.Time) (bool, error) {
	if !tokenIDRE.MatchString(id) {
		return false, nil
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return false, fmt.Errorf("natsq: list %s: %w", TokensBucket, err)
	}
	prefix := "sha256_" + strings.TrimPrefix(id, "tok_")
	var matching []string
	for k := range keys.Keys() {
		if strings.HasPrefix(k, prefix) {
			matching = append(matching, k)
		}
	}
	revoked := false
	// Ids are 48 bits of the hash: two tokens sharing one is all but impossible, and if it
	// happens both are revoked rather than one chosen at random.
	for _, k := range matching {
		for {
			ent, err := kv.Get(ctx, k)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				break
			}
			if err != nil {
				return revoked, fmt.Errorf("natsq: read %s: %w", TokensBucket, err)
			}
			var e tokenEntry
			if err := json.Unmarshal(ent.Value(), &e); err != nil || e.ID != id || e.RevokedAt != nil {
				break
			}
			at := now.UTC().Truncate(time.Millisecond)
			e.RevokedAt = &at
			data, err := json.Marshal(e)
			if err != nil {
				return revoked, err
			}
			_, err = kv.Update(ctx, k, data, ent.Revision())
			if err == nil {
				revoked = true
				break
			}
			if !casConflict(err) {
				return revoked, fmt.Errorf("natsq: revoke token %s: %w", id, err)
			}
			// Changed meanwhile (revoked by another replica?): read again.
		}
	}
	return revoked, nil
}

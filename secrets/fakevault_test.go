package secrets

// This file is a FAKE Vault: an httptest server speaking only the subset of Vault's HTTP
// API the Store uses, because no Vault server can be installed on the machines this
// project is built on (not in Debian, not buildable from the Go module proxy). It follows
// Vault's documented request and response shapes:
//
//	GET  /v1/{mount}/data/{path}        KV v2 read: {"data":{"data":{...},"metadata":{...}}}
//	PUT  /v1/auth/{mount}/login         {"auth":{"client_token","lease_duration","renewable"}} (POST too)
//	PUT  /v1/auth/token/renew-self      same "auth" shape (POST too)
//	GET  /v1/auth/token/lookup-self     {"data":{"id","ttl","renewable"}}
//
// It checks X-Vault-Token and X-Vault-Namespace, answers 403 {"errors":["permission
// denied"]} for a bad token and 404 for a missing secret. Unlike the real Vault, its error
// bodies deliberately echo the token presented, so that a Store that copied response bodies
// into its errors would be caught. TestRealVault runs the same Store against a real Vault
// when VAULT_ADDR and VAULT_TOKEN are set.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

type fakeToken struct {
	ttl       int // seconds; 0 = never expires
	renewable bool
}

type fakeVault struct {
	srv       *httptest.Server
	namespace string

	mu       sync.Mutex
	tokens   map[string]fakeToken
	secrets  map[string]map[string]any // "mount/path" -> data
	roleID   string
	secretID string
	loginTTL int
	issued   int
	requests map[string]int // "METHOD /v1/path" -> count
	block    chan struct{}  // when set, KV reads wait for it (or for the client to go away)
	status   int            // when set, KV reads answer this status (a body naming the path)
	seen     chan struct{}  // receives (non-blocking) when a KV read arrives
}

func newFakeVault(t *testing.T) *fakeVault {
	t.Helper()
	f := &fakeVault{
		tokens:   map[string]fakeToken{},
		secrets:  map[string]map[string]any{},
		requests: map[string]int{},
		seen:     make(chan struct{}, 100),
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeVault) addToken(tok string, ttl int, renewable bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens[tok] = fakeToken{ttl: ttl, renewable: renewable}
}

// setBlock makes KV reads wait until ch is closed (nil: answer at once).
func (f *fakeVault) setBlock(ch chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.block = ch
}

func (f *fakeVault) revokeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.tokens)
}

func (f *fakeVault) put(mountPath string, data map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.secrets[mountPath] = data
}

func (f *fakeVault) remove(mountPath string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.secrets, mountPath)
}

func (f *fakeVault) count(key string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests[key]
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func (f *fakeVault) serve(w http.ResponseWriter, r *http.Request) {
	tok := r.Header.Get("X-Vault-Token")
	f.mu.Lock()
	key := r.Method + " " + r.URL.Path
	if r.Method == http.MethodPut {
		key = http.MethodPost + " " + r.URL.Path
	}
	f.requests[key]++
	info, valid := f.tokens[tok]
	block := f.block
	f.mu.Unlock()

	denied := func() {
		writeJSON(w, http.StatusForbidden, map[string]any{"errors": []string{"permission denied", "bad token " + tok}})
	}
	if r.Header.Get("X-Vault-Namespace") != f.namespace {
		denied()
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/v1/")
	switch {
	case strings.HasPrefix(path, "auth/") && strings.HasSuffix(path, "/login") && (r.Method == http.MethodPost || r.Method == http.MethodPut): // any AppRole mount
		var body struct{ RoleID, SecretID string }
		var raw map[string]string
		if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]any{"errors": []string{err.Error()}})
			return
		}
		body.RoleID, body.SecretID = raw["role_id"], raw["secret_id"]
		f.mu.Lock()
		ok := body.RoleID == f.roleID && body.SecretID == f.secretID
		var newTok string
		if ok {
			f.issued++
			newTok = fmt.Sprintf("hvs.approle-token-%d-SECRETTOKEN", f.issued)
			f.tokens[newTok] = fakeToken{ttl: f.loginTTL, renewable: true}
		}
		ttl := f.loginTTL
		f.mu.Unlock()
		if !ok {
			writeJSON(w, http.StatusBadRequest, map[string]any{"errors": []string{"invalid role or secret ID: " + body.SecretID}})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"auth": map[string]any{
			"client_token": newTok, "lease_duration": ttl, "renewable": true, "policies": []string{"castellan"},
		}})
	case path == "auth/token/renew-self" && (r.Method == http.MethodPost || r.Method == http.MethodPut):
		if !valid {
			denied()
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"auth": map[string]any{
			"client_token": tok, "lease_duration": info.ttl, "renewable": info.renewable,
		}})
	case path == "auth/token/lookup-self" && r.Method == http.MethodGet:
		if !valid {
			denied()
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{
			"id": tok, "ttl": info.ttl, "renewable": info.renewable, "policies": []string{"castellan"},
		}})
	case strings.Contains(path, "/data/") && r.Method == http.MethodGet:
		select {
		case f.seen <- struct{}{}:
		default:
		}
		if block != nil {
			select {
			case <-block:
			case <-r.Context().Done():
				return
			}
		}
		if !valid {
			denied()
			return
		}
		f.mu.Lock()
		status := f.status
		f.mu.Unlock()
		if status != 0 {
			writeJSON(w, status, map[string]any{"errors": []string{"failing on purpose for " + path}})
			return
		}
		mount, rest, _ := strings.Cut(path, "/data/")
		f.mu.Lock()
		data, ok := f.secrets[mount+"/"+rest]
		f.mu.Unlock()
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]any{"errors": []string{}})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"data": map[string]any{
			"data":     data,
			"metadata": map[string]any{"version": 1, "created_time": time.Now().UTC().Format(time.RFC3339Nano), "deletion_time": "", "destroyed": false},
		}})
	default:
		writeJSON(w, http.StatusNotFound, map[string]any{"errors": []string{"no handler for route " + path}})
	}
}

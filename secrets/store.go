package secrets

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/outcome"
	"github.com/castellan-dev/castellan/redact"
)

const (
	defaultMount          = "secret"
	defaultTokenEnv       = "VAULT_TOKEN"
	defaultAppRoleMount   = "approle"
	defaultCacheTTL       = 5 * time.Minute
	defaultRequestTimeout = 10 * time.Second
	// maxFileSize bounds what a file credential may hold: a credential is short, and a
	// misconfigured path to a large file should fail, not fill memory.
	maxFileSize = 64 << 10
)

// Store resolves credential names to values. It is safe for concurrent use.
type Store struct {
	specs map[string]Spec
	red   *redact.Set
	log   *zap.Logger
	vault *vaultClient // nil when no credential comes from Vault
	aws   *awsClient   // nil when no credential comes from AWS Secrets Manager
	ttl   time.Duration
	now   func() time.Time // the cache's clock; tests replace it

	mu    sync.Mutex
	cache map[string]*entry // by "mount/data/path" (Vault) or awsKey
	waits int               // callers that joined an in-flight fetch; read by tests

	closeOnce sync.Once
	stop      context.CancelFunc
	wg        sync.WaitGroup
}

// entry is one secret (Vault's data map, or an *awsSecret), fetched or being fetched. data
// and err are written once, before done is closed, and read only after.
type entry struct {
	done    chan struct{}
	data    any
	err     error
	expires time.Time
}

// NewStore checks specs and the Vault configuration and returns a Store. It contacts no
// provider: call Preload for that. vault may be nil (every field then takes its default or
// environment fallback); it is only used when some spec names Vault. log may be nil.
func NewStore(specs map[string]Spec, vault *VaultConfig, red *redact.Set, log *zap.Logger) (*Store, error) {
	if red == nil {
		return nil, errors.New("secrets: NewStore needs the worker's redact.Set")
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Store{
		specs: make(map[string]Spec, len(specs)),
		red:   red,
		log:   log,
		ttl:   defaultCacheTTL,
		now:   time.Now,
		cache: make(map[string]*entry),
	}
	needVault, needAWS, needRegion := false, false, false
	for name, sp := range specs {
		sp, err := checkSpec(name, sp)
		if err != nil {
			return nil, err
		}
		s.specs[name] = sp
		needVault = needVault || sp.Vault != nil
		needAWS = needAWS || sp.AWS != nil
		needRegion = needRegion || (sp.AWS != nil && regionOf(sp.AWS.SecretID) == "")
	}
	if vault != nil && vault.CacheTTL > 0 {
		s.ttl = vault.CacheTTL
	}
	if needAWS {
		ac, err := newAWSClient(needRegion, log.Named("aws"))
		if err != nil {
			return nil, err
		}
		s.aws = ac
	}
	bg, stop := context.WithCancel(context.Background())
	s.stop = stop
	if needVault {
		cfg := VaultConfig{}
		if vault != nil {
			cfg = *vault
		}
		vc, err := newVaultClient(cfg, log.Named("vault"), bg, &s.wg)
		if err != nil {
			stop()
			return nil, err
		}
		s.vault = vc
	}
	return s, nil
}

func checkSpec(name string, sp Spec) (Spec, error) {
	if name == "" {
		return sp, errors.New("secrets: a credential has an empty name")
	}
	n := 0
	for _, set := range []bool{sp.Env != "", sp.File != "", sp.Vault != nil, sp.AWS != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return sp, fmt.Errorf("secrets: credential %q: set exactly one of env, file, vault or aws (found %d)", name, n)
	}
	if sp.AWS != nil {
		ref := *sp.AWS
		if ref.SecretID == "" || hasControl(ref.SecretID) {
			return sp, fmt.Errorf("secrets: credential %q: aws secret_id is empty or has control characters", name)
		}
		if ref.VersionStage == "" {
			ref.VersionStage = DefaultAWSVersionStage
		}
		if hasControl(ref.VersionStage) || hasControl(ref.Field) {
			return sp, fmt.Errorf("secrets: credential %q: aws version_stage or field has control characters", name)
		}
		sp.AWS = &ref
	}
	if sp.Vault != nil {
		ref := *sp.Vault // copy: the caller's struct stays theirs
		ref.Mount = strings.Trim(ref.Mount, "/")
		if ref.Mount == "" {
			ref.Mount = defaultMount
		}
		ref.Path = strings.Trim(ref.Path, "/")
		if ref.Path == "" {
			return sp, fmt.Errorf("secrets: credential %q: vault path is empty", name)
		}
		for _, seg := range strings.Split(ref.Mount+"/"+ref.Path, "/") {
			if seg == "" || seg == "." || seg == ".." {
				return sp, fmt.Errorf("secrets: credential %q: vault mount/path %q has an empty, \".\" or \"..\" segment", name, ref.Mount+"/"+ref.Path)
			}
		}
		if ref.Field == "" {
			return sp, fmt.Errorf("secrets: credential %q: vault field is empty (which key of the secret holds the value?)", name)
		}
		sp.Vault = &ref
	}
	return sp, nil
}

// failure is the local reason a credential could not be read: msg may name where it lives
// (a path, an environment variable, a Vault path) and is only ever put in an Error's detail;
// cause is already stripped of anything that could hold a secret or a token.
type failure struct {
	msg   string
	cause error
}

func (f *failure) Error() string { return f.msg }
func (f *failure) Unwrap() error { return f.cause }

func fail(cause error, format string, args ...any) *failure {
	return &failure{msg: fmt.Sprintf(format, args...), cause: cause}
}

// Error is why a credential is unavailable. It has two faces. Error, the text that may leave
// the worker (a job's outcome message goes to the control plane), names the credential by
// its logical name only. Detail, for the worker's own log, says where the credential lives
// and what went wrong there: the file path, the environment variable, the Vault mount, path
// and field, the status Vault answered, the AWS secret id, region and error code. The Store
// logs the detail of every failure itself, so nothing else needs to carry it.
type Error struct {
	Name   string // the credential's name in the policy
	detail string
	cause  error
}

func (e *Error) Error() string {
	return fmt.Sprintf("credential %q is unavailable (see the worker's log)", e.Name)
}

// Detail is the local reason, which names host details: for the worker's own log only.
func (e *Error) Detail() string { return fmt.Sprintf("credential %q: %s", e.Name, e.detail) }

// Unwrap returns the cause: a context error, an errno, a Vault status, an AWS error code and
// status, one of the Err* values of this package, or nil.
func (e *Error) Unwrap() error { return e.cause }

// Detail returns the local detail of every *Error in err (one per line, for the joined
// errors of Preload), or err's own text when it holds none.
func Detail(err error) string {
	if err == nil {
		return ""
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var lines []string
		for _, e := range j.Unwrap() {
			lines = append(lines, Detail(e))
		}
		return strings.Join(lines, "\n")
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Detail()
	}
	return err.Error()
}

// Credential returns the current value of the named credential and makes sure the
// redactor knows it. Errors are *outcome.Error with code CredentialUnavailable wrapping an
// *Error; their message names only the credential, and the detail goes to the Store's log.
func (s *Store) Credential(ctx context.Context, name string) (string, error) {
	v, err := s.value(ctx, name)
	if err == nil && len(v) < redact.MinSecretLen {
		err = fail(nil, "value shorter than %d bytes cannot be redacted safely; use a longer credential", redact.MinSecretLen)
	}
	if err == nil {
		err = s.red.Add(v) // cannot fail after the length check; kept for safety
	}
	if err != nil {
		e := &Error{Name: name, detail: "unavailable"}
		var f *failure
		if errors.As(err, &f) {
			e.detail, e.cause = f.msg, f.cause
		}
		s.log.Warn("credential unavailable", zap.String("credential", name), zap.String("detail", e.Detail()))
		return "", outcome.Wrap(outcome.CredentialUnavailable, e, "%s", e.Error())
	}
	return v, nil
}

func (s *Store) value(ctx context.Context, name string) (string, error) {
	sp, ok := s.specs[name]
	if !ok {
		return "", fail(nil, "no such credential in the policy")
	}
	if err := ctx.Err(); err != nil {
		return "", fail(err, "cancelled before it was read (%v)", err)
	}
	switch {
	case sp.Env != "":
		v, ok := os.LookupEnv(sp.Env)
		if !ok {
			return "", fail(nil, "environment variable %s is not set", sp.Env)
		}
		if v == "" {
			return "", fail(nil, "environment variable %s is empty", sp.Env)
		}
		return v, nil
	case sp.File != "":
		return readSecretFile(sp.File)
	case sp.AWS != nil:
		return s.awsValue(ctx, *sp.AWS)
	default:
		return s.vaultValue(ctx, *sp.Vault)
	}
}

// readSecretFile reads a small file and trims one trailing newline ("\n" or "\r\n").
func readSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fileFailure(path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return "", fileFailure(path, err)
	}
	if len(b) > maxFileSize {
		return "", fail(nil, "file %s is larger than %d bytes; is it the right file?", path, maxFileSize)
	}
	v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if v == "" {
		return "", fail(nil, "file %s is empty", path)
	}
	return v, nil
}

func fileFailure(path string, err error) *failure {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err // an errno: no content, and we print the path ourselves
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fail(err, "file %s does not exist", path)
	case errors.Is(err, fs.ErrPermission):
		return fail(err, "file %s: permission denied", path)
	}
	return fail(err, "file %s: cannot read it (%v)", path, err)
}

// vaultValue returns one field of a (cached) Vault secret.
func (s *Store) vaultValue(ctx context.Context, ref VaultRef) (string, error) {
	where := ref.Mount + "/data/" + ref.Path
	data, err := s.vaultSecret(ctx, ref)
	if err != nil {
		return "", err
	}
	return stringField(data, ref.Field, "vault: "+where)
}

// stringField returns the string field of a secret's decoded data (a Vault KV secret, a JSON
// SecretString); where names the secret in errors.
func stringField(data map[string]any, field, where string) (string, error) {
	raw, ok := data[field]
	if !ok {
		return "", fail(ErrFieldNotFound, "%s: field %q not found in secret", where, field)
	}
	v, ok := raw.(string)
	if !ok {
		return "", fail(ErrFieldNotString, "%s: field %q is not a string", where, field)
	}
	return v, nil
}

// vaultSecret returns the data of the KV v2 secret ref, from the cache while it is fresh.
func (s *Store) vaultSecret(ctx context.Context, ref VaultRef) (map[string]any, error) {
	path := ref.Mount + "/data/" + ref.Path
	v, err := s.cached(ctx, path, "vault: "+path, func(ctx context.Context) (any, error) {
		return s.vault.readKV(ctx, ref)
	})
	if err != nil {
		return nil, err
	}
	return v.(map[string]any), nil
}

// cached returns the secret cached under key while it is fresh, or fetches it. Callers
// asking for the same uncached key at the same time share one request; if that request
// dies with its caller's context, the others try again with their own. Failures are not
// cached. what names the secret in a cancellation's detail.
func (s *Store) cached(ctx context.Context, path, what string, fetch func(context.Context) (any, error)) (any, error) {
	for {
		s.mu.Lock()
		e := s.cache[path]
		if e != nil {
			select {
			case <-e.done:
				if e.err == nil && s.now().Before(e.expires) {
					s.mu.Unlock()
					return e.data, nil
				}
				e = nil // stale: fetch again below
			default:
			}
		}
		if e != nil { // in flight: wait for it
			s.waits++
			s.mu.Unlock()
			select {
			case <-e.done:
			case <-ctx.Done():
				return nil, fail(ctx.Err(), "%s: cancelled while waiting for the request in flight (%v)", what, ctx.Err())
			}
			if e.err != nil && isContextErr(e.err) && ctx.Err() == nil {
				continue // the fetching caller gave up, we have not
			}
			return e.data, e.err
		}
		e = &entry{done: make(chan struct{})}
		s.cache[path] = e
		s.mu.Unlock()

		data, err := fetch(ctx)
		s.mu.Lock()
		e.data, e.err = data, err
		e.expires = s.now().Add(s.ttl)
		if err != nil && s.cache[path] == e {
			delete(s.cache, path) // failures are not cached
		}
		close(e.done)
		s.mu.Unlock()
		return data, err
	}
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// Preload fetches every credential now, so that a worker fails at start rather than on the
// first job, and so that every value is known to the redactor before any task runs. It
// returns all failures joined, in name order.
func (s *Store) Preload(ctx context.Context) error {
	names := make([]string, 0, len(s.specs))
	for n := range s.specs {
		names = append(names, n)
	}
	slices.Sort(names)
	var errs []error
	for _, n := range names {
		if _, err := s.Credential(ctx, n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close stops token renewal and waits for it to finish. Credential keeps working after
// Close (values are still fetched on demand) but tokens are no longer renewed.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.stop()
		s.wg.Wait()
	})
	return nil
}

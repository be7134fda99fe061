package api

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"regexp"
	"slices"
	"time"
	"unicode"
	"unicode/utf8"
)

// The rules below are the API's, in both control-plane modes: a name, id or limit is
// checked here once so that SQLite and JetStream cannot drift apart (issue 14 found pool
// names of 63 bytes in one mode and 64 in the other, and retry delays with and without
// jitter).

// Limits of the /v1 API (docs/api.md).
const (
	DefaultMaxAttempts = 3               // a submit without max_attempts
	MaxWaitSeconds     = 60              // lease wait_seconds and job wait timeout
	DefaultWaitSeconds = 30              // likewise, when not given
	DefaultMaxInput    = 1 << 20         // a job's input, compacted
	DefaultMaxOutput   = 4 << 20         // a job's output, compacted
	MaxErrorMessage    = 4096            // a completion's error_message
	MaxLeaseBatch      = 100             // a lease's max
	RetryBase          = time.Second     // the first retry's back-off ceiling
	RetryCap           = 5 * time.Minute // no back-off ceiling is higher
	MaxDenyReason      = 1000            // a deny's reason, in bytes
)

var (
	poolRE     = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)
	taskNameRE = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,63}$`)
	versionRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$`)
	jobIDRE    = regexp.MustCompile(`^job_[0-9a-f]{24}$`)
	idemKeyRE  = regexp.MustCompile(`^[\x21-\x7e]{1,200}$`)
)

// ValidPoolName reports whether s may name a pool: 1-63 of a-z 0-9 _ . -, starting with a
// letter or digit. "*" (AllPools) is a token's scope, not a pool.
func ValidPoolName(s string) bool { return poolRE.MatchString(s) }

// ValidTaskName reports whether s may name a task: 1-64 of a-z 0-9 _ . -, starting with a
// letter.
func ValidTaskName(s string) bool { return taskNameRE.MatchString(s) }

// ValidTaskVersion reports whether s may be a task version: 1-64 of A-Z a-z 0-9 _ . + -,
// starting with a letter or digit.
func ValidTaskVersion(s string) bool { return versionRE.MatchString(s) }

// ValidJobID reports whether s has the form of the ids NewJobID makes. Anything else names
// no job (404) without a lookup.
func ValidJobID(s string) bool { return jobIDRE.MatchString(s) }

// ValidIdempotencyKey reports whether s may be an idempotency key: 1-200 printable ASCII
// characters, no space.
func ValidIdempotencyKey(s string) bool { return idemKeyRE.MatchString(s) }

// NewJobID returns a fresh random job id: "job_" and 24 hex digits (96 random bits).
func NewJobID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail on supported platforms
	return "job_" + hex.EncodeToString(b[:])
}

// RetryCeiling is the upper bound of the back-off after a retryable failure of attempt
// (1-based): base doubled per earlier attempt, at most ceiling.
func RetryCeiling(attempt int, base, ceiling time.Duration) time.Duration {
	d := base
	for i := 1; i < attempt && d < ceiling; i++ {
		d *= 2
	}
	return min(d, ceiling)
}

// FullJitter picks a delay uniformly in [0, max): retries of jobs that failed together
// (an upstream outage) spread out instead of coming back at once.
func FullJitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return time.Duration(mrand.Int64N(int64(max)))
}

// RetryDelay is the back-off after a retryable failure of attempt: full jitter under
// RetryCeiling. Both modes use it, so a retried job waits the same in each.
func RetryDelay(attempt int, base, ceiling time.Duration) time.Duration {
	return FullJitter(RetryCeiling(attempt, base, ceiling))
}

// CheckDenyReason says why reason cannot be a deny's reason, or nil: it is shown to the
// submitter (and an MCP caller) as the job's error_message, so it is 1..MaxDenyReason bytes
// of valid UTF-8 with no control character (no newline, escape or bidi override to forge a
// line of a terminal or log).
func CheckDenyReason(reason string) error {
	switch {
	case reason == "":
		return errors.New("reason is required: say why the job is denied")
	case len(reason) > MaxDenyReason:
		return fmt.Errorf("reason is %d bytes, at most %d", len(reason), MaxDenyReason)
	case !utf8.ValidString(reason):
		return errors.New("reason is not valid UTF-8")
	}
	for i, r := range reason {
		if unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) || r == '\u2028' || r == '\u2029' {
			return fmt.Errorf("reason has a control character (U+%04X) at byte %d", r, i)
		}
	}
	return nil
}

// MaxTokenName bounds a token's name, in bytes.
const MaxTokenName = 128

// CheckTokenRequest returns req with the pool a new token gets ("*" for an admin token that
// names none), or why it cannot make one: the role must be one of Roles, the pool a pool
// name or "*", a worker or registration token must name one pool, the name is at most
// MaxTokenName bytes, ttl_seconds passes CheckTokenTTL, and a registration token is
// short-lived (ttl_seconds 1..MaxRegistrationTTLSeconds). Every way of making a token
// (POST /v1/tokens in both modes, castellan token create --db and --nats) checks this.
func CheckTokenRequest(req TokenCreateRequest) (TokenCreateRequest, error) {
	if !slices.Contains(Roles, req.Role) {
		return req, fmt.Errorf("role %q is not one of worker, client, approver, admin, registration", req.Role)
	}
	if req.Pool == "" && req.Role == RoleAdmin {
		req.Pool = AllPools
	}
	if req.Pool != AllPools && !ValidPoolName(req.Pool) {
		return req, fmt.Errorf("pool %q is invalid: use 1-63 of a-z 0-9 _ . - starting with a letter or digit, or \"*\"", req.Pool)
	}
	if (req.Role == RoleWorker || req.Role == RoleRegistration) && req.Pool == AllPools {
		return req, fmt.Errorf(`a %s token must name one pool, not "*"`, req.Role)
	}
	if len(req.Name) > MaxTokenName {
		return req, fmt.Errorf("token name is %d bytes, at most %d", len(req.Name), MaxTokenName)
	}
	if err := CheckTokenTTL(req.TTLSeconds); err != nil {
		return req, err
	}
	if req.Role == RoleRegistration && (req.TTLSeconds == 0 || req.TTLSeconds > MaxRegistrationTTLSeconds) {
		return req, fmt.Errorf("a registration token must be short-lived: give ttl_seconds 1..%d (--ttl, e.g. 1h)", MaxRegistrationTTLSeconds)
	}
	return req, nil
}

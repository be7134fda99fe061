package api

import (
	"fmt"
	"time"
)

// TokenExpiredError is a known bearer token past its expires_at, in both control-plane
// modes. Its text goes back to the caller in a 401: it names the token's id and expiry,
// never the secret.
type TokenExpiredError struct {
	ID string
	At time.Time
}

func (e *TokenExpiredError) Error() string {
	return fmt.Sprintf("the bearer token %s expired at %s: ask an admin for a new one (castellan token create --ttl)",
		e.ID, e.At.UTC().Format(time.RFC3339))
}

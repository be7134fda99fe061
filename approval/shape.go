package approval

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// MaxTokenBytes bounds an approval token. Real ones are well under 1 KiB.
const MaxTokenBytes = 16 << 10

// CheckShape reports whether tok looks like a compact JWS approval: three base64url parts and a
// header that is a JSON object naming an alg. It verifies nothing. Control planes use it to
// refuse obvious garbage at the door; workers verify every approval with a Verifier.
func CheckShape(tok string) error {
	if len(tok) > MaxTokenBytes {
		return fmt.Errorf("approval is %d bytes, at most %d", len(tok), MaxTokenBytes)
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return fmt.Errorf("approval must be a compact JWS with 3 dot-separated parts, got %d", len(parts))
	}
	for i, p := range parts {
		if p == "" && i != 1 {
			return fmt.Errorf("approval part %d is empty", i+1)
		}
		if _, err := base64.RawURLEncoding.DecodeString(p); err != nil {
			return fmt.Errorf("approval part %d is not base64url without padding", i+1)
		}
	}
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
	var h struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(hdr, &h); err != nil || h.Alg == "" {
		return errors.New("approval header is not a JSON object with an \"alg\"")
	}
	return nil
}

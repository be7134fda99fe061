package approval

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/go-json-experiment/json"

	"github.com/castellan-dev/castellan/internal/jws"
)

// MaxTokenBytes bounds an approval token. A single job's approval is well under 1 KiB; a
// plan approval of MaxPlanSteps steps with 32-character job IDs is 25 to 28 KiB, and SignPlan
// refuses to make one larger than this.
const MaxTokenBytes = 64 << 10

// CheckShape reports whether tok looks like a compact JWS approval: exactly three base64url
// parts (no whitespace anywhere, as Verify requires) and a header that is a JSON object
// naming an alg. It verifies nothing. Control planes use it to refuse obvious garbage at
// the door; workers verify every approval with a Verifier.
func CheckShape(tok string) error {
	if len(tok) > MaxTokenBytes {
		return fmt.Errorf("approval is %d bytes, at most %d", len(tok), MaxTokenBytes)
	}
	if err := jws.CheckCompact(tok); err != nil {
		return fmt.Errorf("approval is not an exact compact JWS: %v", err)
	}
	parts := strings.Split(tok, ".")
	for i, p := range parts {
		if p == "" && i != 1 {
			return fmt.Errorf("approval part %d is empty", i+1)
		}
	}
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0]) // checked by CheckCompact
	var h struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(hdr, &h); err != nil || h.Alg == "" {
		return errors.New("approval header is not a JSON object with an \"alg\"")
	}
	return nil
}

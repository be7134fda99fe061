package controlplane

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// Decode reads exactly one JSON object into dst from r's body, at most limit bytes,
// refusing unknown fields and trailing data with the API's codes. An empty body is
// allowed only if allowEmpty (dst keeps its zero value).
func Decode(w http.ResponseWriter, r *http.Request, limit int64, dst any, allowEmpty bool) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return Refuse(http.StatusRequestEntityTooLarge, api.CodeBodyTooLarge, "request body is over %d bytes", limit)
		}
		return Refuse(http.StatusBadRequest, api.CodeInvalidJSON, "reading request body: %v", err)
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		if allowEmpty {
			return nil
		}
		return Refuse(http.StatusBadRequest, api.CodeInvalidJSON, "request body is empty: send a JSON object")
	}
	if trimmed[0] != '{' {
		// null, arrays, strings, numbers: encoding/json would take null as an empty object.
		return Refuse(http.StatusBadRequest, api.CodeInvalidJSON, "request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Refuse(http.StatusBadRequest, api.CodeInvalidJSON, "request body has data after the JSON object")
	}
	return nil
}

func jsonError(err error) *client.APIError {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return Refuse(http.StatusBadRequest, api.CodeInvalidJSON, "malformed JSON at byte %d: %v", se.Offset, err)
	case errors.As(err, &te):
		if te.Field == "" {
			return Refuse(http.StatusBadRequest, api.CodeInvalidJSON, "request body must be a JSON object, got %s", te.Value)
		}
		return Refuse(http.StatusBadRequest, api.CodeInvalidJSON, "field %q must be %s, got %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return Refuse(http.StatusBadRequest, api.CodeUnknownField, "%s is not part of this request (see docs/api.md)",
			strings.TrimPrefix(err.Error(), "json: "))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Refuse(http.StatusBadRequest, api.CodeInvalidJSON, "malformed JSON: body ends early")
	}
	return Refuse(http.StatusBadRequest, api.CodeInvalidJSON, "malformed JSON: %v", err)
}

func jsonKind(k string) string {
	switch k {
	case "int", "int64", "int32", "uint", "uint64", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "slice":
		return "an array"
	case "struct", "map":
		return "an object"
	case "ptr":
		return "a number or null"
	}
	return k
}

// OnlyParams refuses query parameters the endpoint does not define, so that a typo is an
// error rather than a silently ignored filter.
func OnlyParams(r *http.Request, allowed ...string) error {
	for k := range r.URL.Query() {
		if !slices.Contains(allowed, k) {
			if len(allowed) == 0 {
				return Refuse(http.StatusBadRequest, api.CodeUnknownField, "query parameter %q is not defined for this endpoint (it takes none)", k)
			}
			return Refuse(http.StatusBadRequest, api.CodeUnknownField, "query parameter %q is not defined for this endpoint (allowed: %s)", k, strings.Join(allowed, ", "))
		}
	}
	return nil
}

// IntParam parses the query parameter name's value v: def when empty, else an integer in
// lo..hi.
func IntParam(v, name string, def, lo, hi int) (int, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, Refuse(http.StatusBadRequest, api.CodeInvalidField, "%s %q must be an integer in %d..%d", name, v, lo, hi)
	}
	return n, nil
}

// ResolvePool picks the pool a request acts on: the one named, or the token's own.
func ResolvePool(p Principal, pool string) (string, error) {
	if pool == "" {
		if p.Pool == api.AllPools {
			return "", Refuse(http.StatusBadRequest, api.CodeInvalidField, "pool is required: your token is not bound to one pool")
		}
		return p.Pool, nil
	}
	if !api.ValidPoolName(pool) {
		return "", Refuse(http.StatusBadRequest, api.CodeInvalidField, "pool %q is invalid: use 1-63 of a-z 0-9 _ . -", pool)
	}
	if !p.CanPool(pool) {
		return "", Refuse(http.StatusForbidden, api.CodeForbidden, "your token is for pool %q, not %q", p.Pool, pool)
	}
	return pool, nil
}

// CompactJSON returns raw without insignificant whitespace (raw itself if it is not JSON).
func CompactJSON(raw json.RawMessage) []byte {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}

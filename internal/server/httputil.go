package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// apiError is an expected failure with its HTTP status and stable code. Its message must
// never contain a secret (tokens, approvals): it goes back to the caller and the log.
type apiError struct {
	status  int
	code    string
	msg     string
	details []api.SchemaIssue
}

func (e *apiError) Error() string { return e.code + ": " + e.msg }

func errf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.Encode(v) //nolint:errcheck // the client went away; nothing to do
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, api.ErrorBody{Error: api.ErrorDetail{Code: e.code, Message: e.msg, Details: e.details}})
}

// decode reads exactly one JSON object of type T from the body, at most limit bytes,
// rejecting unknown fields and trailing data. An empty body is allowed only if allowEmpty.
func decode(w http.ResponseWriter, r *http.Request, limit int64, dst any, allowEmpty bool) *apiError {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errf(http.StatusRequestEntityTooLarge, api.CodeBodyTooLarge, "request body is over %d bytes", limit)
		}
		return errf(http.StatusBadRequest, api.CodeInvalidJSON, "reading request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if allowEmpty {
			return nil
		}
		return errf(http.StatusBadRequest, api.CodeInvalidJSON, "request body is empty: send a JSON object")
	}
	if bytes.TrimSpace(body)[0] != '{' {
		// null, arrays, strings, numbers: encoding/json would take null as an empty object.
		return errf(http.StatusBadRequest, api.CodeInvalidJSON, "request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return errf(http.StatusBadRequest, api.CodeInvalidJSON, "request body has data after the JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errf(http.StatusBadRequest, api.CodeInvalidJSON, "request body has data after the JSON object")
	}
	return nil
}

func jsonError(err error) *apiError {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return errf(http.StatusBadRequest, api.CodeInvalidJSON, "malformed JSON at byte %d: %v", se.Offset, err)
	case errors.As(err, &te):
		field := te.Field
		if field == "" {
			return errf(http.StatusBadRequest, api.CodeInvalidJSON, "request body must be a JSON object, got %s", te.Value)
		}
		return errf(http.StatusBadRequest, api.CodeInvalidJSON, "field %q must be %s, got %s", field, jsonKind(te.Type.Kind().String()), te.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return errf(http.StatusBadRequest, api.CodeUnknownField, "%s is not part of this request (see docs/api.md)",
			strings.TrimPrefix(err.Error(), "json: "))
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errf(http.StatusBadRequest, api.CodeInvalidJSON, "malformed JSON: body ends early")
	}
	return errf(http.StatusBadRequest, api.CodeInvalidJSON, "malformed JSON: %v", err)
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

// validRawJSON reports whether raw holds one JSON value (json.RawMessage fields are
// checked by the decoder already; this also rejects an absent value).
func validRawJSON(raw json.RawMessage) bool {
	return len(bytes.TrimSpace(raw)) > 0 && json.Valid(raw)
}

// compactJSON returns raw without insignificant whitespace.
func compactJSON(raw json.RawMessage) []byte {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return raw
	}
	return b.Bytes()
}

package api

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// WriteJSON writes v as the JSON body of a response with status, never cached.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away; nothing to do
}

// WriteError writes the API's error body.
func WriteError(w http.ResponseWriter, status int, e ErrorDetail) {
	WriteJSON(w, status, ErrorBody{Error: e})
}

// Routes serves m, answering what m has no route for with the API's JSON errors instead of
// the mux's plain text: a path no pattern matches is 404 not_found (hint ends the message),
// a known path with another method 405 method_not_allowed with its Allow header. Both
// control-plane modes serve their routes through it, so an unknown route reads the same.
func Routes(m *http.ServeMux, hint string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := m.Handler(r); pattern != "" {
			m.ServeHTTP(w, r)
			return
		}
		rec := &statusRecorder{header: http.Header{}}
		h, _ := m.Handler(r)
		h.ServeHTTP(rec, r)
		if rec.status == http.StatusMethodNotAllowed {
			allow := rec.header.Get("Allow")
			w.Header().Set("Allow", allow)
			WriteError(w, http.StatusMethodNotAllowed, ErrorDetail{Code: CodeMethodNotAllowed,
				Message: fmt.Sprintf("%s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, allow)})
			return
		}
		WriteError(w, http.StatusNotFound, ErrorDetail{Code: CodeNotFound,
			Message: fmt.Sprintf("no endpoint %s %s (%s)", r.Method, r.URL.Path, hint)})
	})
}

type statusRecorder struct {
	header http.Header
	status int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(code int)        { r.status = code }

// Healthz answers GET /healthz in both modes: the process serves HTTP. No token needed.
func Healthz(w http.ResponseWriter, _ *http.Request) {
	WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

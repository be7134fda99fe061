package democrm

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Limits on the test routes, so that a typo cannot make the server stream for hours.
const (
	MaxBigBytes = 1 << 30
	MaxSlow     = 5 * time.Minute
	maxEchoBody = 1 << 20
)

// Customer is one CRM record, as served by GET /api/customers/{id}.
type Customer struct {
	CustomerID  string `json:"customer_id"`
	Name        string `json:"name"`
	Tier        string `json:"tier"`
	OpenTickets int    `json:"open_tickets"`
	Email       string `json:"email"`
	Since       string `json:"customer_since"`
}

// customers are the seeded records. Email and Since are there so that tasks have fields to
// leave out of their output.
var customers = map[string]Customer{
	"7":    {CustomerID: "7", Name: "Grace Hopper", Tier: "silver", OpenTickets: 0, Email: "grace@example.com", Since: "2019-03-14"},
	"42":   {CustomerID: "42", Name: "Ada Lovelace", Tier: "gold", OpenTickets: 2, Email: "ada@example.com", Since: "2015-12-10"},
	"1001": {CustomerID: "1001", Name: "Alan Turing", Tier: "bronze", OpenTickets: 5, Email: "alan@example.com", Since: "2023-06-23"},
}

// Lookup returns the seeded record with this id (42, 7 and 1001 exist), for tests that
// compare a task's output with what the CRM holds.
func Lookup(id string) (Customer, bool) {
	c, ok := customers[id]
	return c, ok
}

// Server is the demo CRM. Its handler is safe for concurrent use.
type Server struct {
	want     []byte // "Bearer <token>"
	requests atomic.Int64
	mux      *http.ServeMux
}

// New returns a server that accepts only "Authorization: Bearer <token>" on /api routes.
// It panics if token is empty, because an empty token would let "Bearer " through.
func New(token string) *Server {
	if token == "" {
		panic("democrm.New: empty token; pass the credential the worker will inject")
	}
	s := &Server{want: []byte("Bearer " + token), mux: http.NewServeMux()}
	api := http.NewServeMux()
	api.HandleFunc("GET /api/customers/{id}", s.customer)
	api.HandleFunc("/api/echo", s.echo)
	api.HandleFunc("GET /api/echo-b64", s.echoB64)
	api.HandleFunc("GET /api/redirect", s.redirect)
	api.HandleFunc("GET /api/big", s.big)
	api.HandleFunc("GET /api/slow", s.slow)
	api.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such route"})
	})
	s.mux.Handle("/api/", s.authenticate(api))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	return s
}

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.mux }

// Requests returns how many authenticated /api requests the server has received.
func (s *Server) Requests() int64 { return s.requests.Load() }

func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := r.Header.Values("Authorization")
		if len(got) != 1 || subtle.ConstantTimeCompare([]byte(got[0]), s.want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="democrm"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
			return
		}
		s.requests.Add(1)
		next.ServeHTTP(w, r)
	})
}

func (s *Server) customer(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	c, ok := Lookup(id)
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("customer %q not found", id)})
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// Echo is the body of /api/echo.
type Echo struct {
	Method   string              `json:"method"`
	Path     string              `json:"path"`
	RawQuery string              `json:"raw_query"`
	Headers  map[string][]string `json:"headers"`
	Body     string              `json:"body"`
}

// echo deliberately reflects every request header, Authorization included.
func (s *Server) echo(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxEchoBody+1))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "reading body: " + err.Error()})
		return
	}
	if len(body) > maxEchoBody {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": fmt.Sprintf("body over %d bytes", maxEchoBody)})
		return
	}
	h := map[string][]string(r.Header.Clone())
	if r.Host != "" {
		h["Host"] = []string{r.Host}
	}
	writeJSON(w, http.StatusOK, Echo{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Headers: h, Body: string(body)})
}

// echoB64 deliberately returns the Authorization header, base64-encoded (standard alphabet,
// padded).
func (s *Server) echoB64(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{
		"authorization_b64": base64.StdEncoding.EncodeToString([]byte(r.Header.Get("Authorization"))),
	})
}

func (s *Server) redirect(w http.ResponseWriter, r *http.Request) {
	to := r.URL.Query().Get("to")
	if to == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "query parameter to is required"})
		return
	}
	// Set Location by hand: http.Redirect would clean the path, hiding the tricks tests need.
	w.Header().Set("Location", to)
	w.WriteHeader(http.StatusFound)
}

// Filler returns byte i of the /api/big body: a repeating a..z pattern, so tests can check
// that a streamed body arrives intact.
func Filler(i int64) byte { return byte('a' + i%26) }

func (s *Server) big(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
	if err != nil || n < 0 || n > MaxBigBytes {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("query parameter bytes must be an integer from 0 to %d", MaxBigBytes)})
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	// No Content-Length: the body is streamed in chunks, so a client's size limit has to
	// count as it reads rather than trust a header.
	chunk := make([]byte, 32<<10)
	for i := range chunk {
		chunk[i] = Filler(int64(i))
	}
	flusher, _ := w.(http.Flusher)
	for sent := int64(0); sent < n; {
		// chunk's length is a multiple of 26 plus an offset, so restart the pattern where it
		// left off.
		off := sent % 26
		m := min(int64(len(chunk))-26, n-sent)
		if _, err := w.Write(chunk[off : off+m]); err != nil {
			return // client gone
		}
		sent += m
		if flusher != nil {
			flusher.Flush()
		}
	}
}

func (s *Server) slow(w http.ResponseWriter, r *http.Request) {
	ms, err := strconv.ParseInt(r.URL.Query().Get("ms"), 10, 64)
	if err != nil || ms < 0 || time.Duration(ms)*time.Millisecond > MaxSlow {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("query parameter ms must be an integer from 0 to %d", MaxSlow.Milliseconds())})
		return
	}
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		writeJSON(w, http.StatusOK, map[string]int64{"slept_ms": ms})
	case <-r.Context().Done():
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// Start serves New(token) on a fresh 127.0.0.1 port until stop is called or ctx is done.
// baseURL has no trailing slash, e.g. "http://127.0.0.1:41234".
func Start(ctx context.Context, token string) (baseURL string, stop func(), err error) {
	if token == "" {
		return "", nil, errEmptyToken
	}
	return New(token).Start(ctx)
}

var errEmptyToken = errors.New("democrm: empty token; pass the credential the worker will inject")

// started maps the base URL of each server started with Start to the server, so that a
// caller holding only the URL can ask for its request count.
var started sync.Map // string -> *Server

// Requests returns how many authenticated /api requests the server that Start returned
// baseURL for has received, or 0 if no such server is running.
func Requests(baseURL string) int64 {
	if s, ok := started.Load(baseURL); ok {
		return s.(*Server).Requests()
	}
	return 0
}

// Start serves s on a fresh 127.0.0.1 port until stop is called or ctx is done. stop waits
// for the server to shut down and may be called more than once.
func (s *Server) Start(ctx context.Context) (baseURL string, stop func(), err error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("democrm: listening on 127.0.0.1: %w", err)
	}
	baseURL = "http://" + ln.Addr().String()
	started.Store(baseURL, s)
	shutdown, served := s.serve(ln)
	stopAndForget := func() {
		shutdown()
		started.CompareAndDelete(baseURL, s)
	}
	go func() {
		select {
		case <-ctx.Done():
			stopAndForget()
		case <-served:
		}
	}()
	return baseURL, stopAndForget, nil
}

// ListenAndServe serves New(token) on addr until ctx is done, then shuts down and returns
// nil. It writes one line with the base URL to w once it is listening.
func ListenAndServe(ctx context.Context, addr, token string, w io.Writer) error {
	if token == "" {
		return errEmptyToken
	}
	s := New(token)
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("democrm: listening on %s: %w", addr, err)
	}
	stop, served := s.serve(ln)
	defer stop()
	fmt.Fprintf(w, "demo CRM listening on http://%s (every /api request needs the bearer token)\n", ln.Addr())
	select {
	case <-ctx.Done():
		return nil
	case <-served:
		return fmt.Errorf("democrm: server on %s stopped unexpectedly", ln.Addr())
	}
}

// serve serves s on ln. stop cancels in-flight requests, shuts the server down, waits for it
// and may be called more than once; served is closed when the server has stopped.
func (s *Server) serve(ln net.Listener) (stop func(), served <-chan struct{}) {
	// Requests see a context that stop cancels, so /api/slow and /api/big end at once
	// instead of holding up shutdown.
	base, cancelBase := context.WithCancel(context.Background())
	srv := &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return base }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancelBase()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if srv.Shutdown(sctx) != nil {
				srv.Close()
			}
			<-done
		})
	}
	return stop, done
}

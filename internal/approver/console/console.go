// Package console is the approver's web page (`castellan approver --ui`): the jobs no rule
// decided, each with what a person needs to decide it, and Approve and Deny buttons. It runs
// inside the approver process, on the approver's machine; signing happens there, with the
// approver's key, never in the browser.
//
// The page can approve work, so it is guarded against the other pages the same browser
// visits and against other users of the machine: a session secret printed once as a URL
// (which sets an HttpOnly SameSite=Strict cookie), a CSRF token on every POST checked on the
// server, the Origin and Sec-Fetch-Site headers of every POST, the Host header checked
// against the bound address (DNS rebinding), and a Content-Security-Policy of
// default-src 'self' with every asset embedded in the binary.
package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/internal/approver/process"
	"github.com/castellan-dev/castellan/internal/server/api"
)

//go:embed static/app.css static/app.js templates/page.html
var assets embed.FS

// CookieName is the session cookie.
const CookieName = "castellan_console"

// CSP is the Content-Security-Policy of every response: nothing but this origin, no
// framing, forms only to this origin.
const CSP = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"

// Catalog gives the input schemas of a pool's tasks; *client.Client implements it.
type Catalog interface {
	Catalog(ctx context.Context, pool string) (api.CatalogResponse, error)
}

// Config configures New.
type Config struct {
	Approver *process.Approver
	Catalog  Catalog // optional: without it inputs are shown without their schema
	// Addr is the address the console is bound to (host:port, the host an IP literal or
	// localhost): requests whose Host header names anything else are refused.
	Addr string
	// Person is who approves from this console: approved_by {person: Person}.
	Person string
	Logger *zap.Logger
	Now    func() time.Time
}

// Console serves the page.
type Console struct {
	cfg     Config
	log     *zap.Logger
	secret  string // the session secret, also the cookie value
	csrf    string // per-session CSRF token, derived from the secret
	hosts   map[string]bool
	origins map[string]bool
	tmpl    *template.Template
	static  http.Handler

	mu      sync.Mutex
	schemas map[string]json.RawMessage // pool/task/version -> input schema
	fetched map[string]time.Time       // pool -> last catalog fetch
}

// New returns a Console with a fresh session secret.
func New(cfg Config) (*Console, error) {
	if cfg.Approver == nil {
		return nil, errors.New("console: Config.Approver is required")
	}
	if cfg.Person == "" || !utf8.ValidString(cfg.Person) || len(cfg.Person) > approval.MaxApprovedByBytes ||
		strings.ContainsFunc(cfg.Person, unicode.IsControl) {
		return nil, fmt.Errorf("console: the approving person's name must be 1 to %d bytes of UTF-8 without control characters (--as)", approval.MaxApprovedByBytes)
	}
	hosts, err := allowedHosts(cfg.Addr)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	secret := base64.RawURLEncoding.EncodeToString(raw[:])
	mac := hmac.New(sha256.New, raw[:])
	mac.Write([]byte("castellan console csrf"))
	tmpl, err := template.New("page.html").Funcs(template.FuncMap{"since": since}).ParseFS(assets, "templates/page.html")
	if err != nil {
		return nil, err
	}
	sub, err := fs.Sub(assets, "static")
	if err != nil {
		return nil, err
	}
	c := &Console{cfg: cfg, log: cfg.Logger, secret: secret, csrf: hex.EncodeToString(mac.Sum(nil)),
		hosts: hosts, origins: map[string]bool{}, tmpl: tmpl,
		static:  http.StripPrefix("/static/", http.FileServerFS(sub)),
		schemas: map[string]json.RawMessage{}, fetched: map[string]time.Time{}}
	for h := range hosts {
		c.origins["http://"+h] = true
	}
	return c, nil
}

// CheckAddr refuses a console address that is not an IP literal or localhost with a port,
// an unspecified address (0.0.0.0, ::: the Host check needs the one address browsers use),
// and a non-loopback address unless allowRemote. It reports whether the address is remote.
func CheckAddr(addr string, allowRemote bool) (remote bool, err error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return false, fmt.Errorf("--ui %q: want HOST:PORT, e.g. 127.0.0.1:8470", addr)
	}
	if host == "localhost" {
		return false, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false, fmt.Errorf("--ui %q: the host must be an IP address or localhost (the console checks the Host header against it)", addr)
	}
	switch {
	case ip.IsUnspecified():
		return false, fmt.Errorf("--ui %q: give the one address browsers will use, not a wildcard (the console checks the Host header against it)", addr)
	case ip.IsLoopback():
		return false, nil
	case !allowRemote:
		return true, fmt.Errorf("--ui %q is not a loopback address: anyone who reaches it could try the console; use 127.0.0.1, or add --ui-allow-remote deliberately", addr)
	}
	return true, nil
}

func allowedHosts(addr string) (map[string]bool, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" || port == "0" {
		return nil, fmt.Errorf("console: Config.Addr %q: want the bound HOST:PORT", addr)
	}
	hosts := map[string]bool{net.JoinHostPort(host, port): true}
	if ip, err := netip.ParseAddr(host); (err == nil && ip.IsLoopback()) || host == "localhost" {
		hosts[net.JoinHostPort("localhost", port)] = true
		hosts[net.JoinHostPort("127.0.0.1", port)] = true
	}
	return hosts, nil
}

// SessionURL is the URL that opens a session: print it once, to the person starting the
// approver.
func (c *Console) SessionURL() string {
	return "http://" + c.cfg.Addr + "/?session=" + c.secret
}

// CSRFToken is the token every POST must carry (form field csrf), for clients that drive
// the console's forms the way the page does.
func (c *Console) CSRFToken() string { return c.csrf }

// Handler serves the console.
func (c *Console) Handler() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", c.page)
	m.HandleFunc("GET /queue", c.queue)
	m.HandleFunc("GET /events", c.events)
	m.HandleFunc("POST /jobs/{id}/approve", c.approve)
	m.HandleFunc("POST /jobs/{id}/deny", c.deny)
	m.HandleFunc("POST /plans/{id}/approve", c.approvePlan)
	m.HandleFunc("POST /plans/{id}/deny", c.denyPlan)
	m.Handle("GET /static/", c.static)
	return c.guard(m)
}

// guard applies the checks every request passes: the Host header, the session (except for
// static assets and the session URL itself), and for POSTs the origin and the CSRF token.
func (c *Console) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		// same-origin, not no-referrer: under no-referrer Chromium sends "Origin: null" with
		// the page's own form posts, which the origin check must refuse. Other origins still
		// get no Referer (the session URL never leaves the console).
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		if !c.hosts[strings.ToLower(r.Host)] {
			c.refuse(w, r, http.StatusMisdirectedRequest, "this console answers only at http://"+c.cfg.Addr)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/static/") && r.Method == http.MethodGet {
			next.ServeHTTP(w, r)
			return
		}
		if r.URL.Path == "/" && r.Method == http.MethodGet && r.URL.Query().Has("session") {
			c.login(w, r)
			return
		}
		ck, err := r.Cookie(CookieName)
		if err != nil || !equal(ck.Value, c.secret) {
			c.refuse(w, r, http.StatusUnauthorized, "no session: open the console URL the approver printed when it started")
			return
		}
		if r.Method == http.MethodPost {
			if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" {
				c.refuse(w, r, http.StatusForbidden, "cross-site request refused")
				return
			}
			if o := r.Header.Get("Origin"); o != "" && !c.origins[strings.ToLower(o)] {
				c.refuse(w, r, http.StatusForbidden, "cross-origin request refused")
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
			if err := r.ParseForm(); err != nil || !equal(r.PostForm.Get("csrf"), c.csrf) {
				c.refuse(w, r, http.StatusForbidden, "missing or wrong CSRF token: reload the console")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

func (c *Console) refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	c.log.Warn("console refused a request", zap.Int("status", status), zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.String("why", msg))
	http.Error(w, msg, status)
}

// login exchanges the session URL for the cookie and redirects to a URL without the
// secret, so it stays out of the address bar and the history's later entries.
func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if !equal(r.URL.Query().Get("session"), c.secret) {
		c.refuse(w, r, http.StatusUnauthorized, "wrong session secret: open the console URL the approver printed when it started")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: c.secret, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// view is one job as the template shows it.
type view struct {
	ID, Task, Version, Pool, Requester, Rule, Reason string
	Since                                            time.Time
	Fields                                           []field
	Raw                                              string
	Hash                                             string
	Attempts                                         int
	HasSchema                                        bool
}

type field struct {
	Name, Label, Type, Value, Description string
	Extra                                 bool // not in the schema's properties
}

// planView is one plan waiting for a person: one row, its steps in order, each shown as a
// job is.
type planView struct {
	ID, Requester string
	Since         time.Time
	Steps         []view
}

type pageData struct {
	Jobs    []view
	Plans   []planView
	CSRF    string
	Person  string
	Pools   string
	CanDeny bool
	Notice  string
	Error   string
}

func (c *Console) data(r *http.Request) pageData {
	pend := c.cfg.Approver.Pending()
	d := pageData{CSRF: c.csrf, Person: c.cfg.Person, Pools: strings.Join(c.cfg.Approver.Pools(), ", "),
		CanDeny: c.cfg.Approver.CanDeny(), Notice: notices[r.URL.Query().Get("done")], Error: errorsShown[r.URL.Query().Get("error")]}
	for _, p := range pend {
		d.Jobs = append(d.Jobs, c.view(r.Context(), p))
	}
	for _, pp := range c.cfg.Approver.PendingPlans() {
		v := planView{ID: pp.Plan.ID, Requester: pp.Requester, Since: pp.Since}
		for _, j := range pp.Plan.Steps {
			v.Steps = append(v.Steps, c.view(r.Context(), process.Pending{Job: j, Requester: pp.Requester, Since: pp.Since}))
		}
		d.Plans = append(d.Plans, v)
	}
	return d
}

var notices = map[string]string{"approved": "Approved: the signed approval was attached.", "denied": "Denied.",
	"plan-approved": "Plan approved: one signed plan approval was attached; its steps run in order.", "plan-denied": "Plan denied: every step is denied."}

var errorsShown = map[string]string{
	"gone":    "That job is no longer waiting here: it was decided elsewhere.",
	"reason":  fmt.Sprintf("A deny needs a reason: one line, at most %d bytes.", api.MaxDenyReason),
	"failed":  "The control plane did not take the decision; the job is still waiting. See the approver's log.",
	"nodeny":  "This control plane cannot deny jobs.",
	"noplans": "This control plane has no plans.",
	"changed": "That plan changed since it was shown (a step was added or altered), so nothing was signed: review it again below.",
	"unknown": "Unknown request.",
}

func (c *Console) view(ctx context.Context, p process.Pending) view {
	j := p.Job
	v := view{ID: j.ID, Task: j.Task, Version: j.TaskVersion, Pool: j.Pool, Requester: p.Requester, Rule: p.Rule,
		Reason: p.Reason, Since: p.Since, Attempts: j.MaxAttempts}
	v.Hash, _ = approval.InputHash(j.Input)
	if canon, err := approval.CanonicalJSON(j.Input); err == nil {
		var pretty strings.Builder
		var anyv any
		if json.Unmarshal(canon, &anyv) == nil {
			b, _ := json.MarshalIndent(anyv, "", "  ")
			pretty.Write(b)
		}
		v.Raw = pretty.String()
	}
	schema := c.schema(ctx, j.Pool, j.Task, j.TaskVersion)
	v.HasSchema = schema != nil
	v.Fields = fields(j.Input, schema)
	return v
}

// fields lays the input's top-level members out against the schema's properties: the
// schema's title and description, and members the schema does not name marked as such.
func fields(input []byte, schema json.RawMessage) []field {
	var obj map[string]json.RawMessage
	if json.Unmarshal(input, &obj) != nil {
		return nil
	}
	var s struct {
		Properties map[string]struct {
			Title       string `json:"title"`
			Description string `json:"description"`
			Type        any    `json:"type"`
		} `json:"properties"`
	}
	if schema != nil {
		_ = json.Unmarshal(schema, &s)
	}
	names := make([]string, 0, len(obj))
	for k := range obj {
		names = append(names, k)
	}
	sort.Strings(names)
	out := make([]field, 0, len(names))
	for _, k := range names {
		f := field{Name: k, Label: k}
		if p, ok := s.Properties[k]; ok {
			if p.Title != "" {
				f.Label = p.Title
			}
			f.Description = p.Description
			if t, ok := p.Type.(string); ok {
				f.Type = t
			}
		} else {
			f.Extra = schema != nil
		}
		var str string
		if json.Unmarshal(obj[k], &str) == nil {
			f.Value = str
		} else {
			f.Value = string(obj[k])
		}
		out = append(out, f)
	}
	return out
}

// schema returns the input schema of pool's task, fetching the catalog at most every 10s.
func (c *Console) schema(ctx context.Context, pool, task, version string) json.RawMessage {
	if c.cfg.Catalog == nil {
		return nil
	}
	key := pool + "\x00" + task + "\x00" + version
	c.mu.Lock()
	s, ok := c.schemas[key]
	stale := c.cfg.Now().Sub(c.fetched[pool]) > 10*time.Second
	c.mu.Unlock()
	if ok || !stale {
		return s
	}
	cat, err := c.cfg.Catalog.Catalog(ctx, pool)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fetched[pool] = c.cfg.Now()
	if err != nil {
		c.log.Warn("cannot fetch the catalog for input schemas", zap.String("pool", pool), zap.Error(err))
		return nil
	}
	for _, t := range cat.Tasks {
		c.schemas[pool+"\x00"+t.Name+"\x00"+t.Version] = t.InputSchema
	}
	return c.schemas[key]
}

func since(t time.Time) string {
	d := time.Since(t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return d.String()
}

func (c *Console) page(w http.ResponseWriter, r *http.Request) {
	c.render(w, "page", c.data(r))
}

// queue is the job list alone, which the page's script swaps in on each change.
func (c *Console) queue(w http.ResponseWriter, r *http.Request) {
	c.render(w, "queue", c.data(r))
}

func (c *Console) render(w http.ResponseWriter, name string, d pageData) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := c.tmpl.ExecuteTemplate(w, name, d); err != nil {
		c.log.Warn("console: rendering failed", zap.Error(err))
	}
}

// events is a server-sent event stream with one "changed" event per change of the queue
// (and a comment every 15s, so proxies and the browser keep it open).
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	tick := time.NewTicker(15 * time.Second)
	defer tick.Stop()
	for {
		ch := c.cfg.Approver.Changed()
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
			fmt.Fprint(w, ": keep-alive\n\n")
		case <-ch:
			fmt.Fprint(w, "event: changed\ndata: {}\n\n")
		}
		fl.Flush()
	}
}

func (c *Console) approve(w http.ResponseWriter, r *http.Request) {
	err := c.cfg.Approver.ApproveAsPerson(r.Context(), r.PathValue("id"), c.cfg.Person)
	c.after(w, r, err, "approved")
}

func (c *Console) deny(w http.ResponseWriter, r *http.Request) {
	reason := strings.TrimSpace(r.PostForm.Get("reason"))
	if api.CheckDenyReason(reason) != nil {
		redirect(w, r, "error", "reason")
		return
	}
	err := c.cfg.Approver.DenyAsPerson(r.Context(), r.PathValue("id"), c.cfg.Person, reason)
	c.after(w, r, err, "denied")
}

// approvePlan signs ONE plan approval over the plan's steps as shown, in the approver
// process with its key, and attaches it.
func (c *Console) approvePlan(w http.ResponseWriter, r *http.Request) {
	err := c.cfg.Approver.ApprovePlanAsPerson(r.Context(), r.PathValue("id"), c.cfg.Person)
	c.after(w, r, err, "plan-approved")
}

func (c *Console) denyPlan(w http.ResponseWriter, r *http.Request) {
	reason := strings.TrimSpace(r.PostForm.Get("reason"))
	if api.CheckDenyReason(reason) != nil {
		redirect(w, r, "error", "reason")
		return
	}
	err := c.cfg.Approver.DenyPlanAsPerson(r.Context(), r.PathValue("id"), c.cfg.Person, reason)
	c.after(w, r, err, "plan-denied")
}

func (c *Console) after(w http.ResponseWriter, r *http.Request, err error, done string) {
	switch {
	case err == nil:
		redirect(w, r, "done", done)
	case errors.Is(err, process.ErrNotPending):
		redirect(w, r, "error", "gone")
	case errors.Is(err, process.ErrCannotDeny):
		redirect(w, r, "error", "nodeny")
	case errors.Is(err, process.ErrCannotPlan):
		redirect(w, r, "error", "noplans")
	case errors.Is(err, process.ErrPlanChanged):
		redirect(w, r, "error", "changed")
	default:
		redirect(w, r, "error", "failed")
	}
}

func redirect(w http.ResponseWriter, r *http.Request, k, v string) {
	http.Redirect(w, r, "/?"+url.Values{k: {v}}.Encode(), http.StatusSeeOther)
}

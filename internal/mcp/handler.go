package mcp

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/modelcontextprotocol/go-sdk/oauthex"

	"github.com/castellan-dev/castellan/internal/client"
	"github.com/castellan-dev/castellan/internal/schema"
	"github.com/castellan-dev/castellan/internal/server/api"
)

// Path is where the Streamable HTTP transport is served.
const Path = "/mcp"

// MetadataPath is the RFC 9728 protected-resource metadata document; MetadataPath+Path is
// the path-suffixed form that clients of the MCP authorization spec try first.
const MetadataPath = "/.well-known/oauth-protected-resource"

// PoolParam (a query parameter of the /mcp URL) and PoolHeader choose the pool of a
// session opened with a token of every pool ("*"); a token of one pool may name only it.
const (
	PoolParam  = "pool"
	PoolHeader = "X-Castellan-Pool"
)

// ResultToolName is the tool that fetches the result of a job a call stopped waiting for.
const ResultToolName = "castellan_job_result"

// Options configure Handler. The zero value is usable.
type Options struct {
	// CallWait bounds how long tools/call waits for its job before answering that the job
	// is still pending (with its id and how to fetch the result). Optional, default 60s.
	CallWait time.Duration
	// CatalogPoll is how often a session re-reads its pool's catalog to send
	// notifications/tools/list_changed. Optional, default 2s, at least 100ms.
	CatalogPoll time.Duration
	// ProgressPoll is how often a call that asked for progress (a progressToken) re-reads
	// its job to report a state change other than the end, which /v1 has no long-poll for;
	// the end itself arrives by long-poll. Optional, default 200ms, at least 20ms.
	ProgressPoll time.Duration
	// SessionIdle closes a session that has had no POST for this long (a call in flight
	// counts; an open GET stream does not), so that an agent which vanished without
	// DELETE stops costing a catalog poll; its client gets 404 and opens a new session.
	// Optional, default 1h.
	SessionIdle time.Duration
	// ResourceURL is the canonical URL of the /mcp endpoint, named in the protected-resource
	// metadata. Optional, default derived from the request (scheme from TLS, and Host).
	ResourceURL string
	// Logger receives the SDK's and this layer's diagnostics; SlogLogger bridges a zap
	// logger. Optional, default discard.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.CallWait <= 0 {
		o.CallWait = 60 * time.Second
	}
	if o.CatalogPoll <= 0 {
		o.CatalogPoll = 2 * time.Second
	}
	o.CatalogPoll = max(o.CatalogPoll, 100*time.Millisecond)
	if o.SessionIdle <= 0 {
		o.SessionIdle = time.Hour
	}
	if o.ProgressPoll <= 0 {
		o.ProgressPoll = 200 * time.Millisecond
	}
	o.ProgressPoll = max(o.ProgressPoll, 20*time.Millisecond)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// requestIDHeader carries the JSON-RPC id of a single tools/call from the HTTP layer to the
// tool handler: the SDK does not expose request ids to handlers, and the idempotency key
// is derived from (session id, request id). A client-sent value is always replaced.
const requestIDHeader = "Castellan-Mcp-Request-Id"

type principalKey struct{}

// Handler serves MCP over Streamable HTTP at Path, plus the protected-resource metadata.
// Every request needs `Authorization: Bearer <token>`; the token's pool decides the
// session's tools, and every call is made to the backend with that token.
func Handler(b Backend, opts Options) http.Handler {
	opts = opts.withDefaults()
	h := &handler{b: b, opts: opts, schemas: &schema.Cache{}}
	h.probe = sdk.NewServer(implementation, h.serverOptions(nil))
	stream := sdk.NewStreamableHTTPHandler(h.newServer, &sdk.StreamableHTTPOptions{Logger: opts.Logger, SessionTimeout: opts.SessionIdle})
	verifier := func(ctx context.Context, token string, r *http.Request) (*auth.TokenInfo, error) {
		pool, err := poolChoice(r)
		if err != nil {
			return nil, err
		}
		p, err := b.Authenticate(ctx, token, pool)
		switch {
		case errors.Is(err, ErrUnauthenticated):
			return nil, fmt.Errorf("%w: %v", auth.ErrInvalidToken, err)
		case errors.Is(err, ErrPoolChoice):
			return nil, badRequest{err}
		case err != nil:
			return nil, errors.New("control plane unavailable")
		}
		// UserID binds the session to this exact token and pool: the SDK refuses a
		// session id presented with another token, or with the same token for another pool.
		return &auth.TokenInfo{UserID: tokenKey(token + "\x00" + p.Pool), Extra: map[string]any{"principal": p}}, nil
	}
	mux := http.NewServeMux()
	meta := func(w http.ResponseWriter, r *http.Request) {
		auth.ProtectedResourceMetadataHandler(&oauthex.ProtectedResourceMetadata{
			Resource:               h.resourceURL(r),
			BearerMethodsSupported: []string{"header"},
			ResourceName:           "Castellan control plane (MCP)",
		}).ServeHTTP(w, r)
	}
	mux.HandleFunc(MetadataPath, meta)
	mux.HandleFunc(MetadataPath+Path, meta)
	mux.HandleFunc(Path, func(w http.ResponseWriter, r *http.Request) {
		mw := auth.RequireBearerToken(verifier, &auth.RequireBearerTokenOptions{
			ResourceMetadataURL:    h.origin(r) + MetadataPath + Path,
			AllowMissingExpiration: true,
		})
		mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			slot := &serverSlot{method: tagRequestID(r)}
			stream.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), serverSlotKey{}, slot)))
		})).ServeHTTP(w, r)
	})
	return mux
}

// poolChoice is the pool a request names, by PoolParam or PoolHeader (empty: none).
func poolChoice(r *http.Request) (string, error) {
	q, h := r.URL.Query().Get(PoolParam), r.Header.Get(PoolHeader)
	if q != "" && h != "" && q != h {
		return "", badRequest{fmt.Errorf("?%s=%s and %s: %s name different pools", PoolParam, q, PoolHeader, h)}
	}
	if q != "" {
		return q, nil
	}
	return h, nil
}

// badRequest is a refusal that the SDK's bearer middleware answers with 400 and the
// error's text (it maps auth.ErrOAuth to 400).
type badRequest struct{ err error }

func (e badRequest) Error() string        { return e.err.Error() }
func (e badRequest) Is(target error) bool { return target == auth.ErrOAuth }

type handler struct {
	b       Backend
	opts    Options
	schemas *schema.Cache
	// probe answers the SDK's per-request question for a server (it reads the protocol
	// versions) on requests of an existing session, whose own server it then uses.
	probe *sdk.Server
}

// serverSlot holds the server built for one HTTP request: the SDK asks for a server twice
// when it opens a session, and must get one session's server, built once. method is the
// request's JSON-RPC method, when the body is one request.
type serverSlot struct {
	method string
	srv    *sdk.Server
}

type serverSlotKey struct{}

var implementation = &sdk.Implementation{Name: "castellan", Title: "Castellan"}

func (h *handler) origin(r *http.Request) string {
	if h.opts.ResourceURL != "" {
		return strings.TrimSuffix(strings.TrimSuffix(h.opts.ResourceURL, "/"), Path)
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func (h *handler) resourceURL(r *http.Request) string {
	if h.opts.ResourceURL != "" {
		return h.opts.ResourceURL
	}
	return h.origin(r) + Path
}

// tagRequestID sets requestIDHeader when the POST body is one tools/call request, and
// returns the method of a body that is one request. Batches (2025-03-26 only) get no tag,
// so their calls carry no idempotency key.
func tagRequestID(r *http.Request) (method string) {
	r.Header.Del(requestIDHeader)
	if r.Method != http.MethodPost || r.Body == nil {
		return ""
	}
	// Read no more than the SDK accepts; a longer body is passed on whole for the SDK to
	// refuse with 413.
	body, err := io.ReadAll(io.LimitReader(r.Body, sdk.DefaultMaxRequestBodyBytes+1))
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
	if err != nil || len(body) > sdk.DefaultMaxRequestBodyBytes {
		return ""
	}
	msg, err := jsonrpc.DecodeMessage(body)
	if err != nil {
		return ""
	}
	req, ok := msg.(*jsonrpc.Request)
	if !ok {
		return ""
	}
	if req.Method == "tools/call" && req.ID.IsValid() {
		if id, err := json.Marshal(req.ID.Raw()); err == nil {
			r.Header.Set(requestIDHeader, string(id))
		}
	}
	return req.Method
}

// session is one MCP session: its principal and the tools of its pool.
type session struct {
	h   *handler
	p   Principal
	srv *sdk.Server

	mu      sync.Mutex
	tasks   map[string]api.TaskDef
	version [32]byte
	// planTools are the task names castellan_submit_plan was last offered with;
	// planResult whether castellan_plan_result is offered (plans.go).
	planTools  []string
	planResult bool
}

// newServer is the SDK's getServer, which it calls on every HTTP request. Only an
// initialize request without a session id opens a session; the others (requests of an
// open session, a sessionless revision the SDK then refuses) get the shared probe, so that
// a call costs no catalog read and no rebuilt tool list.
func (h *handler) newServer(r *http.Request) *sdk.Server {
	slot, _ := r.Context().Value(serverSlotKey{}).(*serverSlot)
	if r.Header.Get("Mcp-Session-Id") != "" || slot == nil || slot.method != "initialize" {
		return h.probe
	}
	if slot.srv != nil {
		return slot.srv
	}
	ti := auth.TokenInfoFromContext(r.Context())
	if ti == nil {
		return nil
	}
	p, ok := ti.Extra["principal"].(Principal)
	if !ok {
		return nil
	}
	h.opts.Logger.Info("mcp: session", "token_id", p.TokenID, "token_name", p.Name, "role", string(p.Role), "pool", p.Pool)
	s := &session{h: h, p: p, tasks: map[string]api.TaskDef{}}
	s.srv = sdk.NewServer(implementation, h.serverOptions(s))
	s.srv.AddTool(resultTool(), s.callResult)
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	s.refresh(ctx)
	slot.srv = s.srv
	return s.srv
}

// serverOptions are a session's server options; s is nil for the probe.
func (h *handler) serverOptions(s *session) *sdk.ServerOptions {
	o := &sdk.ServerOptions{
		Instructions: "Each tool runs a task as a Castellan job on a private worker. A job waits for an approver " +
			"(a person or a rule) before it runs; this server never approves. If a call answers that its job is " +
			"still pending, call " + ResultToolName + " with the job_id later.",
		Logger:       h.opts.Logger,
		Capabilities: &sdk.ServerCapabilities{Tools: &sdk.ToolCapabilities{ListChanged: true}},
		// A tool list is one pool's, fetched with one token: no intermediary may serve it
		// to anyone else (the SDK's default scope is "public").
		SetCacheable: func(_ context.Context, _ sdk.Request, c *sdk.Cacheable) {
			c.CacheScope, c.TTLMs = "private", 0
		},
	}
	if s != nil {
		o.InitializedHandler = func(_ context.Context, req *sdk.InitializedRequest) {
			go s.watch(req.Session)
		}
	}
	return o
}

// watch re-reads the catalog until the session ends; the SDK sends list_changed when
// refresh adds or removes a tool.
func (s *session) watch(ss *sdk.ServerSession) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = ss.Wait(); cancel() }()
	t := time.NewTicker(s.h.opts.CatalogPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
			s.refresh(rctx)
			rcancel()
		}
	}
}

func (s *session) refresh(ctx context.Context) {
	defs, err := s.h.b.Tasks(ctx, s.p)
	if err != nil {
		s.h.opts.Logger.Warn("mcp: cannot read the catalog", "pool", s.p.Pool, "error", safeErr(err))
		return
	}
	text, _ := json.Marshal(defs)
	v := sha256.Sum256(text)
	s.mu.Lock()
	defer s.mu.Unlock()
	if v == s.version {
		return
	}
	s.version = v
	next := map[string]api.TaskDef{}
	for _, d := range defs {
		if d.Name == ResultToolName || d.Name == SubmitPlanToolName || d.Name == PlanResultToolName {
			continue
		}
		next[d.Name] = d // the catalog lists versions oldest first; the last one wins
	}
	var gone []string
	for name := range s.tasks {
		if _, ok := next[name]; !ok {
			gone = append(gone, name)
		}
	}
	if len(gone) > 0 {
		s.srv.RemoveTools(gone...)
	}
	prev := s.tasks
	s.tasks = map[string]api.TaskDef{}
	for name, d := range next {
		if old, ok := prev[name]; ok && old.Version == d.Version && bytes.Equal(old.InputSchema, d.InputSchema) &&
			bytes.Equal(old.OutputSchema, d.OutputSchema) && old.Description == d.Description &&
			// Title and annotations may change under the same version (the policy's, not
			// the module's); the tool is re-added so the client sees the new hints.
			old.Title == d.Title && reflect.DeepEqual(old.Annotations, d.Annotations) {
			s.tasks[name] = old
			continue
		}
		if err := s.addTool(d); err != nil {
			s.h.opts.Logger.Warn("mcp: task not offered as a tool", "task", d.Name, "version", d.Version, "error", err)
			continue
		}
		s.tasks[name] = d
	}
	s.planToolsLocked()
}

// addTool offers one task. The SDK panics on a schema it cannot serve (not an object, bad
// header annotations); a worker's catalog must not take the session down, so that is an
// error here.
func (s *session) addTool(d api.TaskDef) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the SDK refused the tool: %v", r)
		}
	}()
	var in map[string]any
	if json.Unmarshal(d.InputSchema, &in) != nil || in["type"] != "object" {
		return errors.New(`input_schema is not a JSON object schema with "type": "object"`)
	}
	if _, err := s.h.schemas.Get(d.InputSchema); err != nil {
		return fmt.Errorf("input_schema does not compile: %v", err)
	}
	t := &sdk.Tool{
		Name:        d.Name,
		Description: describe(d),
		InputSchema: json.RawMessage(d.InputSchema),
		Title:       d.Title,
		Annotations: toolAnnotations(d.Annotations),
	}
	if len(d.OutputSchema) > 0 {
		t.OutputSchema = json.RawMessage(d.OutputSchema)
	}
	s.srv.AddTool(t, func(ctx context.Context, req *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
		return s.callTask(ctx, req, d)
	})
	return nil
}

// toolAnnotations maps the policy's annotations to MCP hints. Without any, none are sent: a
// client must not read a hint nobody set. A hint the policy leaves unset takes the
// protocol's default, which is the cautious answer for each (not read-only, destructive,
// not idempotent): the SDK sends readOnlyHint and idempotentHint always, and leaves
// destructiveHint out when nil.
func toolAnnotations(a *api.ToolAnnotations) *sdk.ToolAnnotations {
	if a == nil {
		return nil
	}
	return &sdk.ToolAnnotations{
		ReadOnlyHint:    a.ReadOnly != nil && *a.ReadOnly,
		DestructiveHint: a.Destructive,
		IdempotentHint:  a.Idempotent != nil && *a.Idempotent,
	}
}

func describe(d api.TaskDef) string {
	desc := strings.TrimSpace(d.Description)
	if desc != "" {
		desc += "\n\n"
	}
	return desc + fmt.Sprintf("Runs Castellan task %s version %s as a job that an approver must approve first.", d.Name, d.Version)
}

func resultTool() *sdk.Tool {
	return &sdk.Tool{
		Name:  ResultToolName,
		Title: "Fetch a Castellan job's result",
		Description: "Returns the result of a job that a tool call stopped waiting for. Waits up to " +
			"wait_seconds (default 30, at most 60) for the job to end.",
		InputSchema: json.RawMessage(`{"type":"object","properties":{"job_id":{"type":"string","minLength":1,"maxLength":200},` +
			`"wait_seconds":{"type":"integer","minimum":0,"maximum":60}},"required":["job_id"],"additionalProperties":false}`),
		Annotations: &sdk.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true},
	}
}

// idempotencyKey derives the submit key from (session id, JSON-RPC request id), so that a
// client resending the same request in its session gets the same job back.
func idempotencyKey(sessionID string, req *sdk.CallToolRequest) string {
	if req.Extra == nil || req.Extra.Header == nil {
		return ""
	}
	id := req.Extra.Header.Get(requestIDHeader)
	if id == "" || sessionID == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(sessionID + "\x00" + id))
	return "mcp-" + hex.EncodeToString(sum[:20])
}

func (s *session) callTask(ctx context.Context, req *sdk.CallToolRequest, d api.TaskDef) (*sdk.CallToolResult, error) {
	args := []byte(req.Params.Arguments)
	if len(bytes.TrimSpace(args)) == 0 || string(bytes.TrimSpace(args)) == "null" {
		args = []byte("{}")
	}
	sch, err := s.h.schemas.Get(d.InputSchema)
	if err != nil {
		return toolError("task %s has an input schema that does not compile", d.Name), nil
	}
	issues, err := schema.Validate(sch, args)
	if err != nil {
		return toolError("arguments are not JSON: %v", err), nil
	}
	if len(issues) > 0 {
		return toolError("invalid arguments: %s", schema.Message(issues)), nil
	}
	sid := ""
	if req.Session != nil {
		sid = req.Session.ID()
	}
	job, err := s.h.b.Submit(ctx, s.p, api.SubmitRequest{
		Task: d.Name, TaskVersion: d.Version, Pool: s.p.Pool, Input: json.RawMessage(args),
		IdempotencyKey: idempotencyKey(sid, req),
	})
	if err != nil {
		return apiToolError("submit", err), nil
	}
	return s.follow(ctx, req, job, s.h.opts.CallWait, true)
}

func (s *session) callResult(ctx context.Context, req *sdk.CallToolRequest) (*sdk.CallToolResult, error) {
	id, wait, bad := s.fetchArgs(resultTool(), "job_id", req.Params.Arguments)
	if bad != nil {
		return bad, nil
	}
	job, err := s.h.b.Get(ctx, s.p, id)
	if err != nil {
		return apiToolError("get", err), nil
	}
	return s.follow(ctx, req, job, wait, false)
}

// fetchArgs checks the arguments of a fetch-later tool (castellan_job_result,
// castellan_plan_result) against tool's schema and returns the id named idField and how long
// to wait (wait_seconds, default 30 s); bad is the tool error for arguments that do not fit.
func (s *session) fetchArgs(tool *sdk.Tool, idField string, args json.RawMessage) (id string, wait time.Duration, bad *sdk.CallToolResult) {
	sch, _ := s.h.schemas.Get(tool.InputSchema.(json.RawMessage))
	if issues, err := schema.Validate(sch, args); err != nil || len(issues) > 0 {
		if err != nil {
			return "", 0, toolError("arguments are not JSON: %v", err)
		}
		return "", 0, toolError("invalid arguments: %s", schema.Message(issues))
	}
	var in map[string]json.RawMessage
	_ = json.Unmarshal(args, &in)
	_ = json.Unmarshal(in[idField], &id)
	wait = 30 * time.Second
	var secs *int
	if _ = json.Unmarshal(in["wait_seconds"], &secs); secs != nil {
		wait = time.Duration(*secs) * time.Second
	}
	return id, wait, nil
}

// follow waits for job to end, at most wait, by long-poll. When the client asked for
// progress, it reports each state the job is seen in, the last one included, and all of
// them before the result. If ctx ends (the client sent notifications/cancelled) and
// cancelOnStop is set, the job is cancelled.
func (s *session) follow(ctx context.Context, req *sdk.CallToolRequest, job api.Job, wait time.Duration, cancelOnStop bool) (*sdk.CallToolResult, error) {
	type point struct {
		state   api.State
		attempt int
	}
	var mu sync.Mutex
	var seen point
	step := 0.0
	token := req.Params.GetProgressToken()
	progress := func(j api.Job) {
		if token == nil || req.Session == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if (point{j.State, j.Attempt}) == seen {
			return
		}
		seen = point{j.State, j.Attempt}
		step++
		_ = req.Session.NotifyProgress(ctx, &sdk.ProgressNotificationParams{ProgressToken: token, Progress: step, Message: stateMessage(j)})
	}
	progress(job)
	if job.State.Terminal() {
		return finished(job), nil
	}
	watching := make(chan struct{})
	wctx, stopWatch := context.WithCancel(ctx)
	if token != nil && req.Session != nil {
		go func() {
			defer close(watching)
			s.watchStates(wctx, job.ID, progress)
		}()
	} else {
		close(watching)
	}
	next, err := s.h.b.Wait(ctx, s.p, job.ID, wait)
	stopWatch()
	<-watching // no progress notification may follow the result
	if ctx.Err() != nil {
		if cancelOnStop {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			_, cerr := s.h.b.Cancel(cctx, s.p, job.ID)
			cancel()
			if cerr != nil && !client.IsCode(cerr, api.CodeInvalidState) {
				s.h.opts.Logger.Warn("mcp: cannot cancel the job of a cancelled call", "job", job.ID, "error", safeErr(cerr))
			}
		}
		return nil, ctx.Err()
	}
	if err != nil {
		return apiToolError("wait", err), nil
	}
	progress(next)
	if !next.State.Terminal() {
		return pending(next), nil
	}
	return finished(next), nil
}

// watchStates re-reads the job every ProgressPoll until ctx ends, for the progress of
// states other than the end (approved, leased, requeued for a retry).
func (s *session) watchStates(ctx context.Context, id string, progress func(api.Job)) {
	t := time.NewTicker(s.h.opts.ProgressPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if j, err := s.h.b.Get(ctx, s.p, id); err == nil && ctx.Err() == nil {
				progress(j)
			}
		}
	}
}

func stateMessage(j api.Job) string {
	switch j.State {
	case api.StatePendingApproval:
		return fmt.Sprintf("job %s: pending approval", j.ID)
	case api.StateQueued:
		if j.Attempt > 0 {
			return fmt.Sprintf("job %s: queued for a retry (attempt %d of %d done)", j.ID, j.Attempt, j.MaxAttempts)
		}
		return fmt.Sprintf("job %s: queued", j.ID)
	case api.StateRunning, api.StateCancelRequested:
		return fmt.Sprintf("job %s: running, attempt %d of %d", j.ID, j.Attempt, j.MaxAttempts)
	}
	return fmt.Sprintf("job %s: %s", j.ID, j.State)
}

func pending(j api.Job) *sdk.CallToolResult {
	msg := fmt.Sprintf("job %s is still %s (not finished yet). Fetch its result later with the %s tool and arguments {\"job_id\": %q}.",
		j.ID, j.State, ResultToolName, j.ID)
	// isError so that a tool with an outputSchema is not taken to have produced output.
	return &sdk.CallToolResult{IsError: true, Content: []sdk.Content{&sdk.TextContent{Text: msg}},
		StructuredContent: map[string]any{"job_id": j.ID, "state": string(j.State), "pending": true}}
}

func finished(j api.Job) *sdk.CallToolResult {
	if j.State == api.StateSucceeded && (j.Outcome == "" || j.Outcome == "ok") {
		text := string(j.Output)
		if text == "" {
			text = "null"
		}
		res := &sdk.CallToolResult{Content: []sdk.Content{&sdk.TextContent{Text: text}}}
		var obj map[string]any
		if json.Unmarshal(j.Output, &obj) == nil && obj != nil {
			res.StructuredContent = json.RawMessage(j.Output)
		}
		return res
	}
	if j.State == api.StateDenied {
		// The code, who and why, so that the agent can tell its user and does not retry
		// blindly; the text carries all three, as many clients show the model only that.
		code := cmp.Or(j.Outcome, api.OutcomeDeniedByApprover)
		msg := fmt.Sprintf("job %s ended denied: outcome %s: denied by approver %q: %s", j.ID, code, j.DeniedBy, j.ErrorMessage)
		return &sdk.CallToolResult{IsError: true, Content: []sdk.Content{&sdk.TextContent{Text: msg}},
			StructuredContent: map[string]any{"job_id": j.ID, "state": string(j.State), "outcome": code,
				"denied_by": j.DeniedBy, "message": j.ErrorMessage}}
	}
	code := j.Outcome
	if code == "" {
		code = string(j.State)
	}
	msg := fmt.Sprintf("job %s ended %s: outcome %s", j.ID, j.State, code)
	if j.ErrorMessage != "" {
		msg += ": " + j.ErrorMessage
	}
	return &sdk.CallToolResult{IsError: true, Content: []sdk.Content{&sdk.TextContent{Text: msg}},
		StructuredContent: map[string]any{"job_id": j.ID, "state": string(j.State), "outcome": code, "message": j.ErrorMessage}}
}

func toolError(format string, args ...any) *sdk.CallToolResult {
	return &sdk.CallToolResult{IsError: true, Content: []sdk.Content{&sdk.TextContent{Text: fmt.Sprintf(format, args...)}}}
}

// apiToolError turns a backend error into a tool error. Control-plane API errors are
// written for clients and pass through; anything else (a dial error names a host) does not.
func apiToolError(op string, err error) *sdk.CallToolResult {
	var ae *client.APIError
	if errors.As(err, &ae) {
		r := toolError("%s refused: %s: %s", op, ae.Code, ae.Message)
		if len(ae.Details) > 0 {
			r.StructuredContent = map[string]any{"code": ae.Code, "details": ae.Details}
		}
		return r
	}
	return toolError("%s failed: the control plane is unavailable; retry later", op)
}

// safeErr keeps API error text and drops transport errors, which name hosts.
func safeErr(err error) string {
	var ae *client.APIError
	if errors.As(err, &ae) {
		return ae.Error()
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err.Error()
	}
	return "transport error"
}

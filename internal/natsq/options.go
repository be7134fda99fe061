package natsq

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/internal/controlplane"
)

// Options configures a connection to NATS and the transport on top of it. The zero value
// (apart from Pool for workers) connects without credentials, which suits tests only.
type Options struct {
	// API configures the /v1 layer of an APIServer (internal/controlplane: auto-approval,
	// limits, MCP). Optional; the Logger defaults to Log's.
	API controlplane.Config

	// Name labels the connection in the server's monitoring (`nats server report
	// connections`). Optional; default "castellan".
	Name string

	// User and Password authenticate with a username and password. Optional.
	User, Password string
	// Token authenticates with a bearer token. Optional.
	Token string
	// CredsFile is a JWT + NKey seed credentials file (`nsc generate creds`), the usual way
	// to authenticate in an operator-mode deployment. Optional.
	CredsFile string
	// NKeySeedFile is a file holding an NKey user seed (SU...). Optional.
	NKeySeedFile string

	// CAFile is the PEM bundle of CAs that sign the servers' certificates. Optional; default
	// the system roots (TLS is used when the URL is tls:// or wss://, or when set).
	CAFile string
	// CertFile and KeyFile are a client certificate and key for mutual TLS. Optional.
	CertFile, KeyFile string
	// TLSConfig, when set, is used as the base TLS configuration. Optional.
	TLSConfig *tls.Config

	// Pool is the worker's pool; a worker consumes only its pool's jobs. Required for workers,
	// unused by the Dispatcher. Must be a NATS subject token (letters, digits, '-', '_').
	Pool string
	// Replicas is the number of replicas of the streams and buckets this side creates.
	// Optional; default 1. Use 3 on a 3-node cluster.
	Replicas int
	// AckWait is the lease: how long a delivered job stays invisible to other workers
	// without a heartbeat. Optional; default 30s. Workers heartbeat every third of it.
	AckWait time.Duration
	// MaxJobBytes bounds a job message; larger ones are terminated and dead-lettered
	// unread. Optional; default 1 MiB.
	MaxJobBytes int
	// RetryBase and RetryCap bound the redelivery delay after a retryable failure: full
	// jitter under RetryBase doubled per attempt, at most RetryCap (api.RetryDelay, as over
	// SQLite). Optional; defaults 1s and 5m.
	RetryBase, RetryCap time.Duration
	// MultiTaskPoll is how long a worker serving several tasks waits on one task's consumer
	// before it looks at the next one. Optional; default 250ms.
	MultiTaskPoll time.Duration
	// ClaimTimeout bounds each of a worker's tries to claim a pulled job from the
	// dispatchers. A try nobody answers is made again, the delivery kept (InProgress), until
	// one answers; three answers that are neither a grant nor a refusal hand the job back
	// unrun. Keep it well under AckWait. Optional; default 5s.
	ClaimTimeout time.Duration
	// SweepInterval is how often a dispatcher looks for running jobs past their lease whose
	// message JetStream no longer holds, and expires them as SQLite's reaper does
	// (sweep.go). Optional; default 1s; negative turns the sweep off (tests drive it).
	SweepInterval time.Duration
	// SweepGrace is how long the sweep leaves a running job past its lease (granted at the
	// claim, for AckWait) whose message it found gone from the stream, for a result
	// published just before the ack to be recorded, before it expires the attempt.
	// Optional; default AckWait.
	SweepGrace time.Duration

	// InboxPrefix is the subject prefix of this connection's replies and pulled messages,
	// instead of NATS's "_INBOX". A worker user must be allowed to subscribe to its
	// replies, and with the shared "_INBOX.>" it could read every reply in its account
	// (other pools' pulled jobs, the control plane's reads of job records): give each
	// pool's workers a prefix of their own and allow only "<prefix>.>". Optional; DialWorker
	// defaults it to "_INBOX_<pool>", other connections to "_INBOX".
	InboxPrefix string

	// Log is the transport's logger. Optional; default no logging.
	Log *zap.Logger

	// Now is the API server's clock, for token expiry and worker presence. Optional;
	// default time.Now. Tests inject one.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Name == "" {
		o.Name = "castellan"
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	if o.MaxJobBytes <= 0 {
		o.MaxJobBytes = 1 << 20
	}
	if o.RetryBase <= 0 {
		o.RetryBase = time.Second
	}
	if o.RetryCap <= 0 {
		o.RetryCap = 5 * time.Minute
	}
	if o.MultiTaskPoll <= 0 {
		o.MultiTaskPoll = 250 * time.Millisecond
	}
	if o.ClaimTimeout <= 0 {
		o.ClaimTimeout = 5 * time.Second
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Second
	}
	if o.SweepGrace <= 0 {
		o.SweepGrace = o.AckWait
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Connect dials NATS at serverURL (nats://, tls://, ws:// or wss://; several URLs may be
// separated by commas) with the credentials and TLS settings in o. The connection
// reconnects forever: a worker behind a flaky link keeps its place.
func Connect(serverURL string, o Options) (*nats.Conn, error) {
	o = o.withDefaults()
	if serverURL == "" {
		return nil, errors.New("natsq: the server URL is empty: pass nats://host:4222 (or wss://host:443)")
	}
	secure := false
	for _, u := range splitURLs(serverURL) {
		p, err := url.Parse(u)
		if err != nil || p.Host == "" {
			return nil, fmt.Errorf("natsq: server URL %q is not scheme://host[:port]", redactURL(u))
		}
		switch p.Scheme {
		case "nats", "ws":
		case "tls", "wss":
			secure = true
		default:
			return nil, fmt.Errorf("natsq: server URL %q has scheme %q; use nats://, tls://, ws:// or wss://", redactURL(u), p.Scheme)
		}
	}
	auth := 0
	for _, set := range []bool{o.User != "", o.Token != "", o.CredsFile != "", o.NKeySeedFile != ""} {
		if set {
			auth++
		}
	}
	if auth > 1 {
		return nil, errors.New("natsq: set only one of user/password, token, credentials file and NKey seed file")
	}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				o.Log.Warn("disconnected from NATS; reconnecting", zap.Error(err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			o.Log.Info("reconnected to NATS", zap.String("server", redactURL(nc.ConnectedUrl())))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			o.Log.Warn("NATS asynchronous error", zap.String("subscription", subj), zap.Error(err))
		}),
	}
	switch {
	case o.User != "":
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	case o.Token != "":
		opts = append(opts, nats.Token(o.Token))
	case o.CredsFile != "":
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	case o.NKeySeedFile != "":
		opt, err := nats.NkeyOptionFromSeed(o.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("natsq: NKey seed file %s: %w", o.NKeySeedFile, err)
		}
		opts = append(opts, opt)
	}
	if o.InboxPrefix != "" {
		if !validInboxPrefix(o.InboxPrefix) {
			return nil, fmt.Errorf("natsq: inbox prefix %q must be subject tokens (letters, digits, '_', '-', '~') separated by dots, with no wildcard", o.InboxPrefix)
		}
		opts = append(opts, nats.CustomInboxPrefix(o.InboxPrefix))
	}
	if o.TLSConfig != nil {
		opts = append(opts, nats.Secure(o.TLSConfig.Clone()))
	} else if secure || o.CAFile != "" || o.CertFile != "" {
		opts = append(opts, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12}))
	}
	if o.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("natsq: a client certificate needs both CertFile and KeyFile")
	}
	if o.CertFile != "" {
		opts = append(opts, nats.ClientCert(o.CertFile, o.KeyFile))
	}
	nc, err := nats.Connect(serverURL, opts...)
	if err != nil {
		// nats errors never echo the password or token; the URL may embed them, so it is
		// redacted.
		return nil, fmt.Errorf("natsq: connect to %s: %w", redactURL(serverURL), err)
	}
	return nc, nil
}

var inboxPrefixRE = regexp.MustCompile(`^[A-Za-z0-9_~-]+(\.[A-Za-z0-9_~-]+)*$`)

func validInboxPrefix(p string) bool { return len(p) <= 128 && inboxPrefixRE.MatchString(p) }

// WorkerInboxPrefix is the inbox prefix DialWorker uses for pool when none is set.
func WorkerInboxPrefix(pool string) string { return "_INBOX_" + token(pool) }

func splitURLs(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out = append(out, u)
		}
	}
	return out
}

// redactURL drops a user:password or token embedded in a URL before it is shown.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		if err != nil {
			return "(unparseable URL)"
		}
		return s
	}
	u.User = url.User("REDACTED")
	return u.String()
}

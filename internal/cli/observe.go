package cli

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/approval"
	"github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/internal/metrics"
	"github.com/castellan-dev/castellan/internal/tasks"
	"github.com/castellan-dev/castellan/internal/tracing"
	"github.com/castellan-dev/castellan/internal/worker"
	"github.com/castellan-dev/castellan/redact"
)

// observability bundles what the worker records about its jobs: the tamper-evident audit
// log (always on), Prometheus metrics (opt-in listener) and traces (opt-in OTLP export).
type observability struct {
	audit    *audit.Log
	observer worker.Observer
	httpCall func(egress.Event)
	close    func()
}

func newObservability(ctx context.Context, cfg WorkerConfig, stateDir string, store credentialSource, red *redact.Set, log *zap.Logger) (*observability, error) {
	path := cfg.AuditLog
	if path == "" {
		path = filepath.Join(stateDir, "audit.log")
	}
	key, err := auditKey(ctx, cfg, stateDir, store)
	if err != nil {
		return nil, err
	}
	if cfg.AuditKeyFile != "" && (within(stateDir, cfg.AuditKeyFile) || within(filepath.Dir(path), cfg.AuditKeyFile)) {
		log.Warn("the audit signing key file lies beside the audit log: whoever can edit the log can likely re-sign it (docs/audit-log.md)")
	}
	alog, err := audit.Open(audit.Options{Path: path, Key: key, Scrub: red})
	if err != nil {
		return nil, fmt.Errorf("--audit-log %s: %w", path, err)
	}
	reg := prometheus.NewRegistry()
	wm, err := metrics.NewWorker(reg)
	if err != nil {
		_ = alog.Close()
		return nil, err
	}
	tp, shutdown, err := tracing.NewProvider(ctx, tracing.Options{Endpoint: cfg.OTLP, Service: "castellan-worker", Log: log.Named("tracing")})
	if err != nil {
		_ = alog.Close()
		return nil, fmt.Errorf("--otlp-endpoint: %w", err)
	}
	wt := tracing.NewWorker(tp)
	mctx, stopMetrics := context.WithCancel(context.Background())
	if cfg.MetricsAddr != "" {
		go func() {
			if err := metrics.Serve(mctx, cfg.MetricsAddr, reg); err != nil && mctx.Err() == nil {
				log.Error("metrics listener failed", zap.Error(err))
			}
		}()
		log.Info("metrics listener enabled", zap.String("addr", cfg.MetricsAddr))
	}
	logAudit := tasks.LogAudit(log.Named("audit"))
	return &observability{
		audit:    alog,
		observer: fanout{wm, wt},
		httpCall: func(ev egress.Event) {
			logAudit(ev)
			if err := alog.Append(audit.HTTPCall(ev)); err != nil {
				log.Error("audit log write failed", zap.Error(err))
			}
			wm.HTTPCall(ev)
			wt.HTTPCall(ev)
		},
		close: func() {
			stopMetrics()
			_ = shutdown(context.Background())
			if err := alog.Close(); err != nil {
				log.Error("closing the audit log", zap.Error(err))
			}
		},
	}, nil
}

// fanout sends each worker event to several observers.
type fanout []worker.Observer

func (f fanout) Observe(ctx context.Context, ev worker.Event) context.Context {
	for _, o := range f {
		ctx = o.Observe(ctx, ev)
	}
	return ctx
}

// credentialSource resolves a policy credential; *secrets.Store implements it.
type credentialSource interface {
	Credential(ctx context.Context, name string) (string, error)
}

// auditKey loads the worker's audit signing key: from --audit-key-credential, from
// --audit-key-file, or from the state directory, creating it there on first start. Its
// public half is what `castellan audit verify --key` takes.
func auditKey(ctx context.Context, cfg WorkerConfig, stateDir string, store credentialSource) (ed25519.PrivateKey, error) {
	var k jose.JSONWebKey
	switch {
	case cfg.AuditKeyCredential != "" && cfg.AuditKeyFile != "":
		return nil, errors.New("--audit-key-file and --audit-key-credential both name the audit signing key: give one")
	case cfg.AuditKeyCredential != "":
		v, err := store.Credential(ctx, cfg.AuditKeyCredential)
		if err != nil {
			return nil, fmt.Errorf("--audit-key-credential: %v", err)
		}
		// The value is a secret: the decoder's message is not repeated.
		if err := k.UnmarshalJSON([]byte(v)); err != nil || k.IsPublic() {
			return nil, fmt.Errorf("--audit-key-credential %s: the value is not a private Ed25519 JWK (as `castellan keygen --name audit` writes)", cfg.AuditKeyCredential)
		}
	case cfg.AuditKeyFile != "":
		var err error
		if k, err = approval.LoadPrivateKey(cfg.AuditKeyFile); err != nil {
			return nil, fmt.Errorf("--audit-key-file: %w (create one with `castellan keygen --name audit`)", err)
		}
	default:
		priv := filepath.Join(stateDir, "audit.private.jwk.json")
		if _, err := os.Stat(priv); errors.Is(err, os.ErrNotExist) {
			if _, _, err := approval.WriteKeyFiles(stateDir, "audit"); err != nil {
				return nil, fmt.Errorf("create the audit signing key in %s: %w", stateDir, err)
			}
		}
		var err error
		if k, err = approval.LoadPrivateKey(priv); err != nil {
			return nil, fmt.Errorf("audit signing key: %w", err)
		}
	}
	key, ok := k.Key.(ed25519.PrivateKey)
	if !ok {
		return nil, errors.New("the audit signing key is not an Ed25519 private key")
	}
	return key, nil
}

// within reports whether path lies in dir or below it.
func within(dir, path string) bool {
	d, err1 := filepath.Abs(dir)
	p, err2 := filepath.Abs(path)
	if err1 != nil || err2 != nil {
		return false
	}
	rel, err := filepath.Rel(d, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

func isNATSURL(u string) bool {
	for _, p := range []string{"nats://", "tls://", "ws://", "wss://"} {
		if strings.HasPrefix(u, p) {
			return true
		}
	}
	return false
}

package tracing

import (
	"context"
	"fmt"
	"net/url"
	"os"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/zap"
)

// ScopeName names Castellan's tracers.
const ScopeName = "github.com/castellan-dev/castellan"

// Options configure NewProvider.
type Options struct {
	// Endpoint is the OTLP/HTTP collector URL (e.g. http://127.0.0.1:4318). Optional; when
	// empty, the OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
	// environment variable is used; when both are empty, tracing is off.
	Endpoint string
	// Service is the service.name resource attribute ("castellan-worker",
	// "castellan-server").
	Service string
	// Log receives the exporter's errors (a collector that is down or refuses spans), which
	// OpenTelemetry otherwise prints with the standard log package, as plain text among
	// the JSON log lines. Optional; when set and an endpoint is configured, it becomes
	// OpenTelemetry's error handler, which is process-wide.
	Log *zap.Logger
}

// NewProvider returns the tracer provider to use and a shutdown function that flushes it.
// Without a configured endpoint it is a no-op provider and shutdown does nothing.
func NewProvider(ctx context.Context, opts Options) (trace.TracerProvider, func(context.Context) error, error) {
	endpoint := opts.Endpoint
	if endpoint == "" && os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	var eopts []otlptracehttp.Option
	if endpoint != "" {
		u, err := tracesURL(endpoint)
		if err != nil {
			return nil, nil, err
		}
		eopts = append(eopts, otlptracehttp.WithEndpointURL(u))
	}
	if opts.Log != nil {
		log := opts.Log
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn("trace export failed", zap.Error(err))
		}))
	}
	exp, err := otlptracehttp.New(ctx, eopts...)
	if err != nil {
		return nil, nil, fmt.Errorf("tracing: OTLP exporter for %q: %w", endpoint, err)
	}
	tp := NewSDKProvider(sdktrace.NewBatchSpanProcessor(exp), opts.Service)
	return tp, tp.Shutdown, nil
}

// tracesURL is where spans go for an endpoint given as a flag. It reads the flag the way the
// OpenTelemetry specification reads OTEL_EXPORTER_OTLP_ENDPOINT, the variable operators set
// to the same value: a base URL to which the signal's path, /v1/traces, is appended. A URL
// that has a path already is taken as it is, like OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.
func tracesURL(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("tracing: OTLP endpoint %q: want http(s)://host:port, e.g. http://127.0.0.1:4318", endpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/traces"
	}
	return u.String(), nil
}

// NewSDKProvider returns an SDK provider sending spans to sp; tests pass a
// tracetest.SpanRecorder or an in-memory exporter's syncer.
func NewSDKProvider(sp sdktrace.SpanProcessor, service string) *sdktrace.TracerProvider {
	if service == "" {
		service = "castellan"
	}
	res := resource.NewSchemaless(attribute.String("service.name", service))
	return sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sp), sdktrace.WithResource(res))
}

var propagator = propagation.TraceContext{}

// Extract returns ctx carrying the remote span context named by traceparent (a W3C
// traceparent value); an empty or malformed value leaves ctx as it is.
func Extract(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return propagator.Extract(ctx, propagation.MapCarrier{"traceparent": traceparent})
}

// TraceParent returns the W3C traceparent of the span in ctx, or "" when there is none.
func TraceParent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	propagator.Inject(ctx, c)
	return c["traceparent"]
}

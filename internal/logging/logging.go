// Package logging builds the daemon's zap loggers. Every encoded line passes through the
// credential redactor on its way to the sink, so no field, error text or message (including a
// task's captured stdout or an upstream error) can carry a credential value into a log,
// whichever component wrote it.
package logging

import (
	"fmt"
	"io"
	"sync"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Scrubber removes credential values from bytes; *redact.Set implements it.
type Scrubber interface {
	Redact([]byte) []byte
}

// Options configure New.
type Options struct {
	Level  string // debug, info, warn, error; default info
	Format string // console (default) or json
	Scrub  Scrubber
}

// New returns a logger writing to w.
func New(w io.Writer, opts Options) (*zap.Logger, error) {
	level := zapcore.InfoLevel
	if opts.Level != "" {
		if err := level.Set(opts.Level); err != nil {
			return nil, fmt.Errorf("log level %q: want debug, info, warn or error", opts.Level)
		}
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	switch opts.Format {
	case "", "console":
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	case "json":
		enc = zapcore.NewJSONEncoder(ec)
	default:
		return nil, fmt.Errorf("log format %q: want console or json", opts.Format)
	}
	sink := zapcore.AddSync(w)
	if opts.Scrub != nil {
		sink = &scrubbing{w: w, s: opts.Scrub}
	}
	return zap.New(zapcore.NewCore(enc, sink, level)), nil
}

// scrubbing redacts each encoded entry. zap writes one entry per Write call.
type scrubbing struct {
	mu sync.Mutex
	w  io.Writer
	s  Scrubber
}

func (s *scrubbing) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.w.Write(s.s.Redact(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *scrubbing) Sync() error {
	if f, ok := s.w.(interface{ Sync() error }); ok {
		return f.Sync()
	}
	return nil
}

// CaptureStdlib sends what the standard library's log package prints through log, so that it
// is scrubbed and encoded like every other line. net/http prints there, among other things,
// the first bytes of an unsolicited response from an upstream ("Unsolicited response received
// on idle HTTP channel"), which may echo a credential. It returns a function that restores the
// previous output. The standard logger is process-wide, so only the daemon's commands call it.
func CaptureStdlib(log *zap.Logger) (restore func()) {
	return zap.RedirectStdLog(log.Named("stdlib"))
}

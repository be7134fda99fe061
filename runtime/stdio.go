package runtime

import (
	"bytes"
	"io"
	"sync"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/hostfuncs"
)

// maxLine bounds a line held while waiting for its newline.
const maxLine = 4 << 10

// stdio captures a guest's stdout and stderr line by line into the worker's log. Lines are
// never part of the job's output. Every line, empty or not, costs its bytes plus
// hostfuncs.LogLineOverhead against the instance's log budget. Once a job is bound, lines are
// scrubbed like task log lines and count against the job's budget; before that (while
// _initialize runs, possibly ahead of time) they go to the module's log, and what they cost
// is charged to the job the instance later serves: one instance, one budget.
type stdio struct {
	mu      sync.Mutex
	log     *zap.Logger
	budget  int64
	used    int64 // by lines written before a job was bound
	muted   bool
	job     *hostfuncs.Job
	partial map[string]*bytes.Buffer
}

func newStdio(log *zap.Logger, budget int64) *stdio {
	return &stdio{log: log, budget: budget, partial: map[string]*bytes.Buffer{}}
}

func (s *stdio) bind(j *hostfuncs.Job) {
	s.mu.Lock()
	s.job = j
	j.ChargeLog(s.used)
	s.mu.Unlock()
}

func (s *stdio) stream(name string) io.Writer { return streamWriter{s, name} }

type streamWriter struct {
	s    *stdio
	name string
}

func (w streamWriter) Write(p []byte) (int, error) {
	s := w.s
	s.mu.Lock()
	defer s.mu.Unlock()
	buf := s.partial[w.name]
	if buf == nil {
		buf = &bytes.Buffer{}
		s.partial[w.name] = buf
	}
	rest := p
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			room := maxLine - buf.Len()
			if len(rest) < room {
				buf.Write(rest)
				break
			}
			buf.Write(rest[:room])
			rest = rest[room:]
			s.emit(w.name, buf.Bytes())
			buf.Reset()
			continue
		}
		buf.Write(rest[:i])
		rest = rest[i+1:]
		s.emit(w.name, buf.Bytes())
		buf.Reset()
	}
	return len(p), nil
}

func (s *stdio) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, buf := range s.partial {
		if buf.Len() > 0 {
			s.emit(name, buf.Bytes())
			buf.Reset()
		}
	}
}

func (s *stdio) emit(stream string, line []byte) {
	level := 1
	if stream == "stderr" {
		level = 2
	}
	if s.job != nil {
		s.job.WriteLog(level, "task "+stream, line)
		return
	}
	if s.muted {
		return
	}
	cost := hostfuncs.LogCost(len(line))
	if s.used+cost > s.budget {
		s.muted = true
		s.log.Warn("task log budget exhausted during initialisation; further lines dropped", zap.Int64("log_bytes", s.budget))
		s.used = s.budget
		return
	}
	s.used += cost
	// Without a job there is no job scrubber; initialisation output holds no upstream data,
	// since http_request is refused outside a job.
	s.log.Info("task "+stream+" during initialisation", zap.ByteString("msg", bytes.ToValidUTF8(line, []byte("\uFFFD"))))
}

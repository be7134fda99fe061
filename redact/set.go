package redact

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
)

// Placeholder replaces every occurrence of a secret form.
const Placeholder = "[REDACTED]"

// MinSecretLen is the shortest secret a Set accepts. Shorter values cannot be redacted
// without destroying ordinary text, so the secrets store refuses them outright.
const MinSecretLen = 8

// ErrTooShort is returned by Set.Add for a secret shorter than MinSecretLen.
var ErrTooShort = fmt.Errorf("redact: secret shorter than %d bytes cannot be redacted without destroying ordinary text", MinSecretLen)

// Set is a concurrency-safe set of secrets and their encoded forms. Add may be called while
// other goroutines redact: they see either the old or the new set, never a torn one. The
// zero value is not usable; use NewSet.
type Set struct {
	mu      sync.Mutex          // serialises Add
	secrets map[string]struct{} // guarded by mu
	forms   map[string]struct{} // guarded by mu
	m       atomic.Pointer[matcher]
	n       atomic.Int64
}

// NewSet returns an empty set.
func NewSet() *Set {
	return &Set{secrets: make(map[string]struct{}), forms: make(map[string]struct{})}
}

// Add makes secret and all its Forms redacted from now on. Adding a known secret is cheap
// (no rebuild), so callers may Add every value they load. The error never contains the
// secret.
func (s *Set) Add(secret string) error {
	if len(secret) < MinSecretLen {
		return ErrTooShort
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.secrets[secret]; ok {
		return nil
	}
	s.secrets[secret] = struct{}{}
	for _, f := range Forms(secret) {
		s.forms[f] = struct{}{}
	}
	all := make([][]byte, 0, len(s.forms))
	for f := range s.forms {
		all = append(all, []byte(f))
	}
	slices.SortFunc(all, bytes.Compare)
	s.m.Store(newMatcher(all))
	s.n.Store(int64(len(s.secrets)))
	return nil
}

// Len returns the number of distinct secrets added.
func (s *Set) Len() int { return int(s.n.Load()) }

// Redact returns b with every occurrence of every form replaced by Placeholder
// (leftmost-longest, overlapping occurrences merged). When nothing matches it returns b
// itself without copying; otherwise a new slice, and b is left untouched.
func (s *Set) Redact(b []byte) []byte {
	m := s.m.Load()
	start := m.first(b)
	if start < 0 {
		return b
	}
	out := make([]byte, start, len(b)+len(Placeholder))
	copy(out, b[:start])
	out, _, _ = m.scan(out, b[start:], 0, true)
	return out
}

// RedactString is Redact for strings; it returns str itself when nothing matches.
func (s *Set) RedactString(str string) string {
	if len(str) < MinSecretLen {
		return str
	}
	b := []byte(str)
	if out := s.Redact(b); &out[0] != &b[0] || len(out) != len(b) {
		return string(out)
	}
	return str
}

// Contains reports whether b holds any form of any secret.
func (s *Set) Contains(b []byte) bool {
	return s.m.Load().first(b) >= 0
}

// chunkSize is how much a Reader reads, or a Writer processes, per step. It bounds the
// memory of a stream together with the longest form.
const chunkSize = 32 << 10

// firstChunk is a Reader's first read size.
const firstChunk = 4 << 10

// stream is the state shared by Reader and Writer: the undecided tail of the input and the
// length of an open overlapping run at its start.
type stream struct {
	set   *Set
	in    []byte
	carry int
	out   []byte
}

// step appends data to the pending input and redacts what can be decided.
func (st *stream) step(data []byte, final bool) []byte {
	m := st.set.m.Load()
	if need := len(st.in) + len(data); cap(st.in) < need {
		st.in = append(make([]byte, 0, max(need, len(data)+maxLenOf(m))), st.in...)
	}
	st.in = append(st.in, data...)
	var consumed int
	st.out, consumed, st.carry = m.scan(st.out[:0], st.in, st.carry, final)
	st.in = st.in[:copy(st.in, st.in[consumed:])]
	return st.out
}

func maxLenOf(m *matcher) int {
	if m == nil {
		return 0
	}
	return m.maxLen
}

// NewReader returns a reader yielding r's bytes redacted exactly as Redact would redact the
// whole stream. It holds back at most (longest form − 1) bytes until it knows whether they
// start a secret, and its memory does not grow with the stream's length. An error from r
// is returned after the bytes read before it, themselves redacted as if the stream ended
// there.
func (s *Set) NewReader(r io.Reader) io.Reader {
	return &reader{src: r, st: stream{set: s}}
}

type reader struct {
	src  io.Reader
	st   stream
	out  []byte // redacted bytes not yet returned
	err  error
	done bool
	buf  []byte
	full bool // the last read filled buf
}

func (r *reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for empty := 0; len(r.out) == 0; {
		if r.done {
			return 0, r.err
		}
		switch {
		case r.buf == nil:
			// Most responses a task reads are small: start small and grow while reads fill
			// the buffer, up to chunkSize.
			r.buf = make([]byte, firstChunk)
		case r.full && len(r.buf) < chunkSize:
			r.buf = make([]byte, 2*len(r.buf))
		}
		n, err := r.src.Read(r.buf)
		r.full = n == len(r.buf)
		if n == 0 && err == nil {
			if empty++; empty >= 100 {
				return 0, io.ErrNoProgress
			}
			continue
		}
		r.out = r.st.step(r.buf[:n], err != nil)
		if err != nil {
			r.done, r.err = true, err
		}
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}

// NewWriter returns a writer that redacts what is written to it, exactly as Redact would
// redact the concatenation of all writes, and writes the result to w. It holds back at most
// (longest form − 1) bytes between writes; Close flushes them. Close does not close w.
func (s *Set) NewWriter(w io.Writer) io.WriteCloser {
	return &writer{dst: w, st: stream{set: s}}
}

type writer struct {
	dst    io.Writer
	st     stream
	err    error
	closed bool
}

var errClosed = errors.New("redact: write to closed writer")

func (w *writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errClosed
	}
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		c := p[:min(len(p), chunkSize)]
		if err := w.write(w.st.step(c, false)); err != nil {
			w.err = err
			return n, err
		}
		n += len(c)
		p = p[len(c):]
	}
	return n, nil
}

// Close writes the held-back tail. It does not close the underlying writer.
func (w *writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	if w.err != nil {
		return w.err
	}
	if err := w.write(w.st.step(nil, true)); err != nil {
		w.err = err
		return err
	}
	return nil
}

func (w *writer) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	_, err := w.dst.Write(b)
	return err
}

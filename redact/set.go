package redact

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"
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
	mu      sync.Mutex             // serialises Add
	secrets map[string]struct{}    // guarded by mu
	forms   [3]map[string]struct{} // guarded by mu; raw, one and two layers (see secretForms)
	m       atomic.Pointer[searcher]
	fold    atomic.Pointer[matcher] // the forms in lower case, for ContainsFold
	n       atomic.Int64
}

// NewSet returns an empty set.
func NewSet() *Set {
	s := &Set{secrets: make(map[string]struct{})}
	for i := range s.forms {
		s.forms[i] = make(map[string]struct{})
	}
	return s
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
	fs := formsOf(secret)
	var tiers [3][][]byte
	for i, tier := range [][]string{fs.raw, fs.one, fs.two} {
		for _, f := range tier {
			s.forms[i][f] = struct{}{}
		}
		for f := range s.forms[i] {
			tiers[i] = append(tiers[i], []byte(f))
		}
		slices.SortFunc(tiers[i], bytes.Compare)
	}
	all := tiers[0]
	lowerSeen := make(map[string]bool, len(all))
	lower := make([][]byte, 0, len(all))
	for _, f := range all {
		if l := bytes.ToLower(f); !lowerSeen[string(l)] {
			lowerSeen[string(l)] = true
			lower = append(lower, l)
		}
	}
	slices.SortFunc(lower, bytes.Compare)
	s.fold.Store(newMatcher(lower))
	s.m.Store(newSearcher(tiers[0], tiers[1], tiers[2]))
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
	return m.redact(b, start)
}

// redact redacts b, which has its first occurrence at start.
func (s *searcher) redact(b []byte, start int) []byte {
	out := make([]byte, start, len(b)+len(Placeholder))
	copy(out, b[:start])
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	// The bytes before start are context: decoding from there splits the escapes as
	// decoding from the beginning does.
	ctx := syncBefore(b, start, start)
	out, _, _ = s.scan(out, b[ctx:], start-ctx, 0, true, sc)
	return out
}

// RedactString is Redact for strings; it returns str itself when nothing matches.
func (s *Set) RedactString(str string) string {
	if len(str) < MinSecretLen {
		return str
	}
	// A read-only view of str's bytes: the matcher never writes to its text and the view does
	// not outlive this call, so the common case (nothing to redact) costs no copy. Converting
	// with []byte(str) would allocate for every header value and audit path the gateway checks.
	b := unsafe.Slice(unsafe.StringData(str), len(str))
	m := s.m.Load()
	start := m.first(b)
	if start < 0 {
		return str
	}
	return string(m.redact(b, start))
}

// Contains reports whether b holds any form of any secret.
func (s *Set) Contains(b []byte) bool {
	return s.m.Load().first(b) >= 0
}

// ContainsFold reports whether str holds any form of any secret, ignoring ASCII letter
// case. It is for text that something may have re-cased on the way, such as HTTP header
// names, which net/http canonicalises ("x-tok-abc" arrives as "X-Tok-Abc"): a credential
// echoed there would no longer match exactly, and Redact would miss it.
func (s *Set) ContainsFold(str string) bool {
	if len(str) < MinSecretLen {
		return false
	}
	m := s.fold.Load()
	if m == nil {
		return false
	}
	lower := []byte(strings.ToLower(str))
	if m.first(lower) >= 0 {
		return true
	}
	// Escaped, as in a header name like "X-%74ok-..." (percent-escapes may stand for
	// upper-case letters, so each view is lower-cased in turn).
	found := false
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	eachView(lower, sc, func(v *view, _, _ bool) {
		for i, c := range v.b {
			v.b[i] = toLowerASCII(c)
		}
		found = found || m.first(v.b) >= 0
	})
	return found
}

// chunkSize is how much a Reader reads, or a Writer processes, per step. It bounds the
// memory of a stream together with the longest occurrence.
const chunkSize = 32 << 10

// firstChunk is a Reader's first read size.
const firstChunk = 4 << 10

// stream is the state shared by Reader and Writer: the undecided tail of the input and the
// length of an open overlapping run at its start.
type stream struct {
	set   *Set
	in    []byte // ctx bytes of context, then the undecided tail
	ctx   int
	carry int
	out   []byte
	sc    scratch
}

// step appends data to the pending input and redacts what can be decided.
func (st *stream) step(data []byte, final bool) []byte {
	m := st.set.m.Load()
	if need := len(st.in) + len(data); cap(st.in) < need {
		st.in = append(make([]byte, 0, max(need, len(data)+maxLenOf(m))), st.in...)
	}
	st.in = append(st.in, data...)
	if !final && len(st.in)-st.ctx < holdBack(m) {
		return st.out[:0] // too little to decide anything yet
	}
	var consumed int
	st.out, consumed, st.carry = m.scan(st.out[:0], st.in, st.ctx, st.carry, final, &st.sc)
	st.in, st.ctx = keepTail(st.in, consumed)
	return st.out
}

// keepTail moves the undecided in[consumed:] to the front of in, after the bytes before it
// that the decoders need as context, and returns the new in and the context's length.
func keepTail(in []byte, consumed int) ([]byte, int) {
	from := syncBefore(in, consumed, maxContext)
	return in[:copy(in, in[from:])], consumed - from
}

// maxContext bounds the context a stream keeps before its undecided tail. Decoding is exact
// when the context reaches back to a position where no escape is open; only text made of
// '%', '\\', 'u' and hex digits alone for this long, cut at a chunk boundary, may be split
// differently than the whole stream would be.
const maxContext = 2 * syncWindow

// holdBack is how many undecided bytes a stream collects before it scans them. Each scan
// decodes and searches all of them to decide the first len − maxLen, so scanning only once
// maxLen/2 bytes can be decided keeps the work per byte bounded when a source dribbles in
// a few bytes per read.
func holdBack(m *searcher) int {
	if m == nil {
		return 0
	}
	return m.maxLen + m.maxLen/2
}

func maxLenOf(m *searcher) int {
	if m == nil {
		return 0
	}
	return m.maxLen
}

// NewReader returns a reader yielding r's bytes redacted exactly as Redact would redact the
// whole stream. It holds back a bounded tail until it knows whether it starts a secret (see
// the package documentation), and its memory does not grow with the stream's length. An error from r
// is returned after the bytes read before it, themselves redacted as if the stream ended
// there.
//
// The reader also implements io.Closer. Its working buffers come from a pool and go back to
// it when the reader reaches the end of r or is closed, whichever comes first; Close may be
// called while a Read is blocked in r (the buffers then go back when that Read returns), and
// every Read after Close fails with ErrReaderClosed. A reader that is never closed leaves its
// buffers to the garbage collector. Close does not close r.
func (s *Set) NewReader(r io.Reader) io.Reader {
	return &reader{src: r, set: s, size: firstChunk}
}

// ErrReaderClosed is returned by a Read after Close.
var ErrReaderClosed = errors.New("redact: read from closed reader")

// readerBufs are a reader's working buffers. They are pooled because most responses a task
// reads are small, and allocating (and zeroing) a 4 KiB window per response was most of a
// scoped HTTP call's garbage.
type readerBufs struct {
	in  []byte // context, the undecided tail of the input, then the next read
	out []byte // redacted bytes of the last step
	sc  scratch
}

var bufPool = sync.Pool{New: func() any { return new(readerBufs) }}

// maxPooled bounds what goes back to the pool: a response full of placeholders can grow out,
// and one such response should not pin a large buffer for the rest of the process.
const maxPooled = 4 * chunkSize

type reader struct {
	src io.Reader
	set *Set

	// mu guards closed, reading and the hand-back of bufs. It is never held across src.Read:
	// Close must not wait for a Read blocked on the network.
	mu      sync.Mutex
	closed  bool
	reading bool
	bufs    *readerBufs // nil before the first Read and once handed back

	out   []byte // redacted bytes not yet returned; a view into bufs.out
	ctx   int    // length of the context at the start of bufs.in
	carry int
	size  int  // how much the next read asks for at least
	full  bool // the last read filled the space it was offered
	err   error
	done  bool
}

func (r *reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0, ErrReaderClosed
	}
	r.reading = true
	r.mu.Unlock()

	n, err := r.read(p)

	r.mu.Lock()
	r.reading = false
	if r.closed || (r.done && len(r.out) == 0) {
		r.release()
	}
	r.mu.Unlock()
	return n, err
}

// Close hands the buffers back (at once, or when a concurrent Read returns). It does not
// close the source.
func (r *reader) Close() error {
	r.mu.Lock()
	r.closed = true
	if !r.reading {
		r.release()
	}
	r.mu.Unlock()
	return nil
}

// release returns the buffers to the pool. Callers hold mu and no Read is running, so
// nothing can touch the buffers afterwards: out is dropped with them, and read takes new
// ones only while neither closed nor done.
func (r *reader) release() {
	b := r.bufs
	if b == nil {
		return
	}
	r.bufs, r.out = nil, nil
	if cap(b.in) > maxPooled || cap(b.out) > maxPooled {
		return
	}
	b.in, b.out = b.in[:0], b.out[:0]
	bufPool.Put(b)
}

// read fills r.out with the next redacted bytes and copies what fits into p. It runs with
// r.reading set, so the buffers are not handed back under it.
func (r *reader) read(p []byte) (int, error) {
	for empty := 0; len(r.out) == 0; {
		if r.done {
			return 0, r.err
		}
		if r.bufs == nil {
			r.bufs = bufPool.Get().(*readerBufs)
		}
		m := r.set.m.Load()
		in := r.bufs.in
		// Most responses a task reads are small: start with firstChunk and ask for more while
		// reads fill what they are offered, up to chunkSize. A pooled buffer may already be
		// larger; all of its spare room is offered then.
		if r.full && r.size < chunkSize {
			r.size = min(2*r.size, chunkSize)
		}
		if cap(in)-len(in) < r.size {
			grown := make([]byte, len(in), len(in)+r.size+maxLenOf(m))
			copy(grown, in)
			in = grown
		}
		space := in[len(in):cap(in)]
		n, err := r.src.Read(space)
		r.full = n == len(space)
		in = in[:len(in)+n]
		r.bufs.in = in
		if n == 0 && err == nil {
			if empty++; empty >= 100 {
				return 0, io.ErrNoProgress
			}
			continue
		}
		if err == nil && len(in)-r.ctx < holdBack(m) {
			continue // too little to decide anything yet: read on
		}
		var consumed int
		r.bufs.out, consumed, r.carry = m.scan(r.bufs.out[:0], in, r.ctx, r.carry, err != nil, &r.bufs.sc)
		r.bufs.in, r.ctx = keepTail(in, consumed)
		r.out = r.bufs.out
		if err != nil {
			r.done, r.err = true, err
		}
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}

// NewWriter returns a writer that redacts what is written to it, exactly as Redact would
// redact the concatenation of all writes, and writes the result to w. It holds back a
// bounded tail between writes, as a reader does; Close flushes it. Close does not close w.
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

func (s *Set) occurrences(b []byte) []occ { return s.m.Load().occurrences(b) }

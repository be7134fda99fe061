package redact

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// gate is a source whose first Read blocks until release is closed, then yields data.
type gate struct {
	started chan struct{}
	release chan struct{}
	data    []byte
	once    sync.Once
}

func (g *gate) Read(p []byte) (int, error) {
	g.once.Do(func() { close(g.started) })
	<-g.release
	if len(g.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, g.data)
	g.data = g.data[n:]
	return n, nil
}

// TestReaderCloseDuringBlockedRead: Close does not wait for a Read blocked in the source, the
// blocked Read still returns its (redacted) bytes, and every later Read fails, so the pooled
// buffers handed back when that Read returned are never touched again. Run with -race.
func TestReaderCloseDuringBlockedRead(t *testing.T) {
	t.Parallel()
	s := mustSet(t, secB)
	g := &gate{started: make(chan struct{}), release: make(chan struct{}), data: []byte("x " + secB + " y")}
	r := s.NewReader(g)
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		p := make([]byte, 256)
		n, err := r.Read(p)
		done <- result{p[:n], err}
	}()
	<-g.started
	closed := make(chan struct{})
	go func() {
		r.(io.Closer).Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close() waited for a Read blocked in the source")
	}
	close(g.release)
	got := <-done
	if want := "x " + Placeholder + " y"; got.err != nil || string(got.b) != want {
		t.Errorf("blocked Read() = %q, %v; want %q, nil", got.b, got.err, want)
	}
	if n, err := r.Read(make([]byte, 8)); n != 0 || !errors.Is(err, ErrReaderClosed) {
		t.Errorf("Read() after Close = %d, %v; want 0, ErrReaderClosed", n, err)
	}
	if rr := r.(*reader); rr.bufs != nil || rr.out != nil {
		t.Errorf("closed reader still holds its buffers (bufs %v, out %d bytes)", rr.bufs != nil, len(rr.out))
	}
}

func TestReaderAfterCloseAndEOF(t *testing.T) {
	t.Parallel()
	s := mustSet(t, secB)
	tests := []struct {
		name  string
		after func(io.Reader)
		want  error
	}{
		{"close before read", func(r io.Reader) { r.(io.Closer).Close() }, ErrReaderClosed},
		{"close twice", func(r io.Reader) { r.(io.Closer).Close(); r.(io.Closer).Close() }, ErrReaderClosed},
		{"read to EOF", func(r io.Reader) { io.ReadAll(r) }, io.EOF},
		{"EOF then close", func(r io.Reader) { io.ReadAll(r); r.(io.Closer).Close() }, ErrReaderClosed},
	}
	for _, tt := range tests {
		r := s.NewReader(bytes.NewReader([]byte("abc " + secB)))
		tt.after(r)
		if n, err := r.Read(make([]byte, 8)); n != 0 || !errors.Is(err, tt.want) {
			t.Errorf("%s: Read() = %d, %v; want 0, %v", tt.name, n, err, tt.want)
		}
		if rr := r.(*reader); tt.name != "close before read" && rr.bufs != nil {
			t.Errorf("%s: reader holds its buffers after it is finished", tt.name)
		}
	}
}

// TestReaderPoolHammer: many readers at once, each over its own text, with random chunk
// sizes and random early Closes, so that pooled buffers change hands all the time. Every
// reader must yield exactly a prefix of Redact(its own text): a buffer used after it went
// back to the pool would show another reader's bytes (and -race would flag it).
func TestReaderPoolHammer(t *testing.T) {
	t.Parallel()
	s := mustSet(t, secA, secB, secC)
	const workers, rounds = 8, 200
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for round := range rounds {
				var in bytes.Buffer
				for in.Len() < rng.IntN(20000)+10 {
					fmt.Fprintf(&in, "w%d-r%d ", w, round)
					if rng.IntN(8) == 0 {
						in.WriteString([]string{secA, secB, secC}[rng.IntN(3)])
					}
				}
				want := s.Redact(in.Bytes())
				r := s.NewReader(&chunked{data: in.Bytes(), sizes: []int{rng.IntN(5000) + 1, rng.IntN(300) + 1}})
				stopAt := len(want) + 1
				if rng.IntN(3) == 0 {
					stopAt = rng.IntN(len(want) + 1)
				}
				var got []byte
				p := make([]byte, rng.IntN(700)+1)
				for len(got) < stopAt {
					n, err := r.Read(p)
					got = append(got, p[:n]...)
					if err != nil {
						break
					}
				}
				r.(io.Closer).Close()
				if !bytes.HasPrefix(want, got) {
					errs <- fmt.Errorf("worker %d round %d: reader yielded %d bytes that are not a prefix of Redact(input)", w, round, len(got))
					return
				}
				if stopAt > len(want) && len(got) != len(want) {
					errs <- fmt.Errorf("worker %d round %d: reader yielded %d bytes, want %d", w, round, len(got), len(want))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestReaderBuffersBounded: reading a long stream keeps the reader's window bounded by the
// chunk size plus the longest form, as before the buffers were pooled.
func TestReaderBuffersBounded(t *testing.T) {
	t.Parallel()
	s := mustSet(t, secA, secB)
	longest := holdBack(s.m.Load()) + maxContext
	r := s.NewReader(bytes.NewReader(bytes.Repeat([]byte("plain text, no secret. "), 20000)))
	p := make([]byte, 64<<10)
	for {
		_, err := r.Read(p)
		if rr := r.(*reader); rr.bufs != nil && cap(rr.bufs.in) > maxPooled {
			t.Fatalf("reader window grew to %d bytes, want <= %d", cap(rr.bufs.in), maxPooled)
		}
		if err != nil {
			break
		}
	}
	if c := chunkSize + longest; c > maxPooled {
		t.Fatalf("chunkSize + longest form = %d is over maxPooled %d: full-size windows would never be pooled", c, maxPooled)
	}
}

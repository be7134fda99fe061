package redact

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"testing/iotest"
)

// chunked yields data in the given chunk sizes (cycled), one chunk per Read.
type chunked struct {
	data  []byte
	sizes []int
	i     int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(c.sizes) > 0 {
		n = max(1, c.sizes[c.i%len(c.sizes)])
		c.i++
	}
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func readAll(t testing.TB, s *Set, r io.Reader) []byte {
	t.Helper()
	out, err := io.ReadAll(s.NewReader(r))
	if err != nil {
		t.Fatalf("ReadAll(NewReader) = %v", err)
	}
	return out
}

func writeAll(t testing.TB, s *Set, data []byte, sizes []int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := s.NewWriter(&buf)
	for i := 0; len(data) > 0; i++ {
		n := len(data)
		if len(sizes) > 0 {
			n = min(n, max(1, sizes[i%len(sizes)]))
		}
		if _, err := w.Write(data[:n]); err != nil {
			t.Fatalf("Write = %v", err)
		}
		data = data[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	return buf.Bytes()
}

const (
	secA = "abababab"                   // self-overlapping
	secB = "Tok/en+with\"quotes-and-é!" // many distinct forms
	secC = "ababababXYZ12345"           // overlaps secA
)

func streamInput() []byte {
	var b strings.Builder
	b.WriteString("head ")
	for _, s := range []string{secA, secB, secC} {
		// A sample of the literal forms (all of them make the every-split test quadratic in
		// a long text), and escapings that only decoding finds: lower-case percent-encoding,
		// every character JSON-escaped, and both nested in each other.
		for i, f := range Forms(s) {
			if i < 8 || i%25 == 0 {
				b.WriteString(f)
				b.WriteString(" | ")
			}
		}
		for _, f := range []string{
			lowerHexEscapes(url.QueryEscape(s)),
			jsonEscape(s, jsonStyle{all: true, upper: true}),
			url.QueryEscape(jsonEscape(s, jsonStyle{slash: true})),
			jsonEscape(lowerHexEscapes(url.PathEscape(s)), jsonStyle{all: true}),
		} {
			b.WriteString(f)
			b.WriteString(" | ")
		}
	}
	b.WriteString(secA + secA + "ab" + secC + "tail")
	b.WriteString(base64.StdEncoding.EncodeToString([]byte("u:" + secB)))
	return []byte(b.String())
}

// TestStreamsMatchRedactAtEverySplit is the property that makes streaming safe: however the
// input is cut, the reader and the writer produce exactly what Redact produces.
func TestStreamsMatchRedactAtEverySplit(t *testing.T) {
	t.Parallel()
	s := mustSet(t, secA, secB, secC)
	in := streamInput()
	want := s.Redact(in)
	if ref, _ := reference(s, allForms(secA, secB, secC), in); !bytes.Equal(want, ref) {
		t.Fatalf("Redact(input) = %q, want %q", want, ref)
	}
	for split := 0; split <= len(in); split++ {
		sizes := []int{split, len(in)}
		if got := readAll(t, s, &chunked{data: in, sizes: sizes}); !bytes.Equal(got, want) {
			t.Fatalf("reader split at %d = %q, want %q", split, got, want)
		}
		if got := writeAll(t, s, in, sizes); !bytes.Equal(got, want) {
			t.Fatalf("writer split at %d = %q, want %q", split, got, want)
		}
	}
	if got := readAll(t, s, iotest.OneByteReader(bytes.NewReader(in))); !bytes.Equal(got, want) {
		t.Errorf("one-byte reader = %q, want %q", got, want)
	}
	if got := readAll(t, s, iotest.DataErrReader(bytes.NewReader(in))); !bytes.Equal(got, want) {
		t.Errorf("data+EOF reader = %q, want %q", got, want)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		sizes := make([]int, 1+rng.IntN(8))
		for i := range sizes {
			sizes[i] = 1 + rng.IntN(40)
		}
		if got := readAll(t, s, &chunked{data: in, sizes: sizes}); !bytes.Equal(got, want) {
			t.Fatalf("reader chunks %v = %q, want %q", sizes, got, want)
		}
		if got := writeAll(t, s, in, sizes); !bytes.Equal(got, want) {
			t.Fatalf("writer chunks %v = %q, want %q", sizes, got, want)
		}
	}
}

// TestStreamHoldsBackLittle checks the memory bound: after each write, everything but the
// last holdBack bytes has been passed on, and a long run of overlapping
// occurrences (which Redact turns into a single placeholder) does not accumulate either.
func TestStreamHoldsBackLittle(t *testing.T) {
	t.Parallel()
	s := mustSet(t, secA, secB)
	longest := holdBack(s.m.Load()) + 1
	var buf bytes.Buffer
	w := s.NewWriter(&buf)
	chunk := []byte("plain text without any secret in it; ")
	written := 0
	for range 2000 {
		if _, err := w.Write(chunk); err != nil {
			t.Fatal(err)
		}
		written += len(chunk)
		if held := written - buf.Len(); held > longest-1 {
			t.Fatalf("after %d bytes the writer holds back %d, want <= %d", written, held, longest-1)
		}
	}
	// An endless overlapping run: "abab..." matches secA at every even offset.
	for range 10000 {
		if _, err := w.Write([]byte("abababababababab")); err != nil {
			t.Fatal(err)
		}
	}
	ww := w.(*writer)
	if n := len(ww.st.in) - ww.st.ctx; n > longest-1 {
		t.Errorf("writer buffers %d bytes inside a long run, want <= %d", n, longest-1)
	}
	if c := cap(ww.st.in); c > 2*chunkSize+longest {
		t.Errorf("writer input buffer grew to %d, want bounded", c)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(buf.String(), Placeholder); got != 1 {
		t.Errorf("placeholders for one long overlapping run = %d, want 1", got)
	}
}

func TestReaderPassesErrorsAfterData(t *testing.T) {
	t.Parallel()
	s := mustSet(t, secB)
	boom := errors.New("boom")
	in := []byte("before " + secB + " after")
	r := s.NewReader(io.MultiReader(bytes.NewReader(in), iotest.ErrReader(boom)))
	got, err := io.ReadAll(r)
	if !errors.Is(err, boom) {
		t.Errorf("ReadAll error = %v, want boom", err)
	}
	if want := "before " + Placeholder + " after"; string(got) != want {
		t.Errorf("ReadAll = %q, want %q", got, want)
	}
}

func TestWriterAfterClose(t *testing.T) {
	t.Parallel()
	w := mustSet(t, secB).NewWriter(io.Discard)
	if err := w.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Errorf("Write after Close = nil error, want an error")
	}
}

func TestEmptySetStreams(t *testing.T) {
	t.Parallel()
	s := NewSet()
	in := []byte("nothing is secret here")
	if got := readAll(t, s, iotest.HalfReader(bytes.NewReader(in))); !bytes.Equal(got, in) {
		t.Errorf("empty set reader = %q, want %q", got, in)
	}
	if got := writeAll(t, s, in, []int{3}); !bytes.Equal(got, in) {
		t.Errorf("empty set writer = %q, want %q", got, in)
	}
}

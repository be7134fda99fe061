package redact

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
)

func mustSet(t testing.TB, secrets ...string) *Set {
	t.Helper()
	s := NewSet()
	for _, sec := range secrets {
		if err := s.Add(sec); err != nil {
			t.Fatalf("Add(%d-byte secret) = %v, want nil", len(sec), err)
		}
	}
	return s
}

// reference is the obviously correct, slow redactor the fast one must agree with: mark
// every occurrence of every literal form (found with bytes.Index) and every occurrence in
// the decoded views of b (those of s), merge overlapping occurrences, replace each merged
// run with one placeholder. It also returns where the placeholders are in the output.
func reference(s *Set, forms []string, b []byte) (out []byte, holes [][2]int) {
	type iv struct{ s, e int }
	var ivs []iv
	if m := s.m.Load(); m != nil && len(b) >= m.minLen {
		var sc scratch
		for _, o := range m.viewOccs(b, 0, len(b)-m.minLen, &sc) {
			ivs = append(ivs, iv{o.s, o.e})
		}
	}
	for _, f := range forms {
		for i := 0; ; i++ {
			j := bytes.Index(b[i:], []byte(f))
			if j < 0 {
				break
			}
			i += j
			ivs = append(ivs, iv{i, i + len(f)})
		}
	}
	slices.SortFunc(ivs, func(a, b iv) int { return a.s - b.s })
	pos := 0
	for i := 0; i < len(ivs); {
		s, e := ivs[i].s, ivs[i].e
		for i++; i < len(ivs) && ivs[i].s < e; i++ {
			e = max(e, ivs[i].e)
		}
		out = append(out, b[pos:s]...)
		holes = append(holes, [2]int{len(out), len(out) + len(Placeholder)})
		out = append(out, Placeholder...)
		pos = e
	}
	return append(out, b[pos:]...), holes
}

func allForms(secrets ...string) []string {
	var fs []string
	for _, s := range secrets {
		fs = append(fs, Forms(s)...)
	}
	return fs
}

func TestAddRejectsShortSecretWithoutEchoingIt(t *testing.T) {
	t.Parallel()
	s := NewSet()
	const short = "hunter2"
	err := s.Add(short)
	if !errors.Is(err, ErrTooShort) {
		t.Fatalf("Add(%q) = %v, want ErrTooShort", short, err)
	}
	if strings.Contains(err.Error(), short) {
		t.Errorf("Add(short).Error() = %q, contains the secret", err)
	}
	if s.Len() != 0 {
		t.Errorf("Len() = %d after rejected Add, want 0", s.Len())
	}
}

func TestFormsAreFoundInContext(t *testing.T) {
	t.Parallel()
	const sec = "s3cr3t/Tok+en\"é~x" // needs escaping in URLs, JSON; non-ASCII; base64 +/
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	jsonOf := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	tests := []struct {
		name, text string
	}{
		{"raw", "token is " + sec + " ok"},
		{"base64 std", "x=" + b64(sec)},
		{"base64 url", "x=" + base64.URLEncoding.EncodeToString([]byte(sec))},
		{"base64 raw url", "x=" + base64.RawURLEncoding.EncodeToString([]byte(sec)) + "."},
		{"base64 align 0", b64(sec + "-and-more-bytes")},
		{"base64 align 1", b64("a" + sec + "-and-more-bytes")},
		{"base64 align 2", b64("ab" + sec + "-and-more-bytes")},
		{"basic auth header", "Authorization: Basic " + b64("svc-user:"+sec)},
		{"base64 of JSON document", b64(jsonOf(map[string]string{"user": "u", "password": sec}))},
		{"url query", "https://h/?t=" + url.QueryEscape(sec)},
		{"url path", "https://h/" + url.PathEscape(sec) + "/x"},
		{"hex lower", "dump: " + hex.EncodeToString([]byte(sec))},
		{"hex upper", "DUMP: " + strings.ToUpper(hex.EncodeToString([]byte(sec)))},
		{"json go", jsonOf(map[string]string{"echo": sec})},
		{"json python ascii", `{"echo": "s3cr3t/Tok+en\"\u00e9~x"}`},
		{"json php", `{"echo":"s3cr3t\/Tok+en\"\u00e9~x"}`},
		{"json escaped slash", `{"echo":"s3cr3t\/Tok+en\"é~x"}`},
		// The forms of issue 12 item 6, found on main at f1bee04 by a hostile upstream.
		{"url lower-case hex", "https://h/?t=s3cr3t%2fTok%2ben%22%c3%a9~x"},
		{"json \\u escape lower", `{"echo":"s3cr3t\u002fTok+en\"\u00e9~x"}`},
		{"json \\u escape upper", `{"echo":"s3cr3t\u002FTok\u002Ben\u0022\u00E9\u007Ex"}`},
		{"json every character", `"` + jsonEscape(sec, jsonStyle{all: true}) + `"`},
		{"json base64 with \\/", `{"b":"` + strings.ReplaceAll(b64("ab"+sec+"!"), "/", `\/`) + `"}`},
		{"url of base64", "x=" + url.QueryEscape(b64(sec))},
		{"json of hex", `"` + jsonEscape(hex.EncodeToString([]byte(sec)), jsonStyle{all: true, upper: true}) + `"`},
		{"url of json", "q=" + lowerHexEscapes(url.QueryEscape(jsonOf(sec)))},
	}
	s := mustSet(t, sec)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if !s.Contains([]byte(tt.text)) {
				t.Fatalf("Contains(%q) = false, want true", tt.text)
			}
			got := s.RedactString(tt.text)
			if !strings.Contains(got, Placeholder) {
				t.Errorf("RedactString(%q) = %q, want a placeholder", tt.text, got)
			}
			if s.Contains([]byte(got)) {
				t.Errorf("RedactString(%q) = %q, still contains a form", tt.text, got)
			}
			want, _ := reference(s, Forms(sec), []byte(tt.text))
			if got != string(want) {
				t.Errorf("RedactString(%q) = %q, want %q", tt.text, got, want)
			}
		})
	}
}

func TestFormsList(t *testing.T) {
	t.Parallel()
	const sec = "abcdefgh12345678"
	fs := Forms(sec)
	if fs[0] != sec {
		t.Errorf("Forms(%q)[0] = %q, want the raw secret", sec, fs[0])
	}
	for _, want := range []string{
		base64.StdEncoding.EncodeToString([]byte(sec)),
		base64.RawStdEncoding.EncodeToString([]byte(sec)),
		hex.EncodeToString([]byte(sec)),
		strings.ToUpper(hex.EncodeToString([]byte(sec))),
	} {
		if !slices.Contains(fs, want) {
			t.Errorf("Forms(%q) = %q, missing %q", sec, fs, want)
		}
	}
	seen := map[string]bool{}
	for _, f := range fs {
		if seen[f] {
			t.Errorf("Forms(%q) lists %q twice", sec, f)
		}
		if len(f) < MinSecretLen {
			t.Errorf("Forms(%q) lists %q, shorter than MinSecretLen", sec, f)
		}
		seen[f] = true
	}
	// A raw secret of letters and digits has no escaped forms but the every-character JSON
	// escaping, so every percent-encoding style collapses into the raw form.
	for _, f := range fs {
		if strings.Contains(f, "%") {
			t.Errorf("Forms(%q) lists %q: percent-encoding of letters and digits", sec, f)
		}
	}
}

func TestBase64CoreAtEveryAlignment(t *testing.T) {
	t.Parallel()
	for _, sec := range []string{"12345678", "123456789", "1234567890", "a much longer secret value!"} {
		s := mustSet(t, sec)
		for pre := range 6 {
			for post := range 6 {
				plain := strings.Repeat("P", pre) + sec + strings.Repeat("Q", post)
				for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding} {
					text := enc.EncodeToString([]byte(plain))
					if !s.Contains([]byte(text)) {
						t.Errorf("Contains(base64(%q)) = false, want true", plain)
					}
				}
			}
		}
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	const a, b = "AAAAaaaa1111", "aaaa1111BBBB" // b overlaps a's tail
	tests := []struct {
		name     string
		secrets  []string
		in, want string
	}{
		{"no match", []string{a}, "nothing to see here", "nothing to see here"},
		{"whole input", []string{a}, a, Placeholder},
		{"start and end", []string{a}, a + " mid " + a, Placeholder + " mid " + Placeholder},
		{"adjacent", []string{a}, a + a, Placeholder + Placeholder},
		{"overlapping same secret", []string{"abababab"}, "ababababab", Placeholder},
		{"self-overlap run", []string{"abababab"}, "xxabababababababababxx", "xx" + Placeholder + "xx"},
		{"overlap two secrets merged", []string{a, b}, "AAAAaaaa1111BBBB!", Placeholder + "!"},
		{"longest wins", []string{"secret-value", "secret-value-longer"}, "=secret-value-longer=", "=" + Placeholder + "="},
		{"prefix only", []string{a}, a[:len(a)-1], a[:len(a)-1]},
		{"placeholder-like secret", []string{"[REDACTED]x"}, "[REDACTED]x[REDACTED]", Placeholder + "[REDACTED]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := mustSet(t, tt.secrets...)
			if got := s.RedactString(tt.in); got != tt.want {
				t.Errorf("RedactString(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if got := string(s.Redact([]byte(tt.in))); got != tt.want {
				t.Errorf("Redact(%q) = %q, want %q", tt.in, got, tt.want)
			}
			ref, _ := reference(s, allForms(tt.secrets...), []byte(tt.in))
			if string(ref) != tt.want {
				t.Errorf("reference(%q) = %q, want %q (test table is wrong)", tt.in, ref, tt.want)
			}
			if got, want := s.Contains([]byte(tt.in)), tt.in != tt.want; got != want {
				t.Errorf("Contains(%q) = %v, want %v", tt.in, got, want)
			}
		})
	}
}

func TestRedactReturnsInputWhenNothingMatches(t *testing.T) {
	t.Parallel()
	s := mustSet(t, "correct horse battery")
	in := []byte("a perfectly ordinary response body")
	if out := s.Redact(in); &out[0] != &in[0] || len(out) != len(in) {
		t.Errorf("Redact(no match) returned a copy, want the input slice itself")
	}
	in2 := []byte("x correct horse battery y")
	orig := string(in2)
	s.Redact(in2)
	if string(in2) != orig {
		t.Errorf("Redact modified its input: %q, want %q", in2, orig)
	}
	if got := NewSet().Redact(in); &got[0] != &in[0] {
		t.Errorf("empty Set: Redact returned a copy, want the input")
	}
}

func TestLen(t *testing.T) {
	t.Parallel()
	s := mustSet(t, "first secret", "second secret", "first secret")
	if s.Len() != 2 {
		t.Errorf("Len() = %d, want 2", s.Len())
	}
}

// TestAddWhileRedacting is a hammer test for -race: redaction runs lock-free against the
// matcher snapshot while Add swaps it.
func TestAddWhileRedacting(t *testing.T) {
	t.Parallel()
	s := mustSet(t, "initial-secret-0")
	text := []byte(strings.Repeat("some text initial-secret-0 and secret-number-07 ", 200))
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 200 {
				out := s.Redact(text)
				if bytes.Contains(out, []byte("initial-secret-0")) {
					t.Error("Redact let a secret added before the goroutine started through")
					return
				}
				r := s.NewReader(bytes.NewReader(text))
				var buf bytes.Buffer
				if _, err := buf.ReadFrom(r); err != nil {
					t.Errorf("ReadFrom(redacting reader) = %v", err)
					return
				}
			}
		})
	}
	for i := range 20 {
		if err := s.Add(fmt.Sprintf("secret-number-%02d", i)); err != nil {
			t.Fatalf("Add = %v", err)
		}
	}
	wg.Wait()
	if bytes.Contains(s.Redact(text), []byte("secret-number-07")) {
		t.Errorf("Redact after Add still shows secret-number-07")
	}
	if s.Len() != 21 {
		t.Errorf("Len() = %d, want 21", s.Len())
	}
}

func TestRedactStringShortInputs(t *testing.T) {
	t.Parallel()
	s := mustSet(t, "secret-value")
	for _, in := range []string{"", "x", "1234567"} {
		if got := s.RedactString(in); got != in {
			t.Errorf("RedactString(%q) = %q, want it unchanged", in, got)
		}
		if got := s.Redact([]byte(in)); string(got) != in {
			t.Errorf("Redact(%q) = %q, want it unchanged", in, got)
		}
	}
}

package audit_test

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/audit"
	"github.com/castellan-dev/castellan/egress"
	"github.com/castellan-dev/castellan/redact"
)

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	return priv
}

// workload appends a realistic mix of n jobs' records.
func workload(t *testing.T, l *audit.Log, jobs int) {
	t.Helper()
	for i := range jobs {
		id := fmt.Sprintf("job_%04d", i)
		evs := []audit.Event{
			audit.JobReceived{Job: id, Task: "echo", TaskVersion: "1.0.0", Pool: "default", Attempt: 1},
			audit.ApprovalVerified{Job: id, Task: "echo", Attempt: 1},
			audit.JobStarted{Job: id, Task: "echo", Attempt: 1},
			audit.HTTPCall{Job: id, Task: "echo", Endpoint: "crm", Method: "GET", Path: "/contacts/42",
				Status: 200, ResponseBytes: 120, Duration: 3 * time.Millisecond, Decision: "allow"},
			audit.JobFinished{Job: id, Task: "echo", Attempt: 1, Outcome: "ok", Output: []byte(`{"n":1}`), Duration: 5 * time.Millisecond},
		}
		for _, ev := range evs {
			if err := l.Append(ev); err != nil {
				t.Fatalf("Append(%T) = %v", ev, err)
			}
		}
	}
}

func writeLog(t *testing.T, opts audit.Options, jobs int) (dir string, files []string) {
	t.Helper()
	dir = t.TempDir()
	opts.Path = filepath.Join(dir, "audit.jsonl")
	l, err := audit.Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	workload(t, l, jobs)
	if err := l.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	files, _ = filepath.Glob(filepath.Join(dir, "audit.jsonl*"))
	return dir, files
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	for _, tt := range []struct {
		name      string
		maxBytes  int64
		wantFiles int
	}{
		{"one file", -1, 1},
		{"rotated", 2000, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, files := writeLog(t, audit.Options{Key: key, CheckpointEvery: 7, MaxBytes: tt.maxBytes}, 20)
			if tt.wantFiles > 0 && len(files) != tt.wantFiles || tt.wantFiles == 0 && len(files) < 3 {
				t.Fatalf("files = %d, want %d (0: at least 3)", len(files), tt.wantFiles)
			}
			rep, err := audit.VerifyFiles(files, key.Public().(ed25519.PublicKey))
			if err != nil {
				t.Fatalf("VerifyFiles = %v, want nil", err)
			}
			if rep.Records < 100 || rep.Unsealed != 0 || !rep.Trusted || len(rep.Signers) != 1 || rep.Checkpoints == 0 {
				t.Errorf("VerifyFiles = %+v, want ≥100 records, sealed, one trusted signer", rep)
			}
		})
	}
}

func TestReopenContinuesChain(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	for range 3 {
		l, err := audit.Open(audit.Options{Path: path, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		workload(t, l, 2)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := audit.VerifyFiles([]string{path}, key.Public().(ed25519.PublicKey))
	if err != nil || rep.Records != 1+3*(10+1) {
		t.Fatalf("VerifyFiles = %d records, %v; want 34 records (the first checkpoint, three runs of 10 and their closing checkpoints), nil", rep.Records, err)
	}
}

// lines reads a file's lines; put writes them back.
func lines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

func put(t *testing.T, path string, ls [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, append(bytes.Join(ls, []byte("\n")), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestTamperDetected(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	pub := key.Public().(ed25519.PublicKey)
	other := newKey(t)
	tests := []struct {
		name     string
		tamper   func(t *testing.T, files []string) []string // returns the files to verify
		trusted  []ed25519.PublicKey
		wantLine int // in the active (newest) file unless wantFile is set
		wantFile string
		wantWhat string
	}{
		{"one byte changed", func(t *testing.T, f []string) []string {
			ls := lines(t, f[0])
			ls[4] = bytes.Replace(ls[4], []byte("/contacts/42"), []byte("/contacts/43"), 1)
			put(t, f[0], ls)
			return f
		}, nil, 5, "", "altered"},
		{"status edited in a later job", func(t *testing.T, f []string) []string {
			ls := lines(t, f[0])
			ls[10] = bytes.Replace(ls[10], []byte(`"status":200`), []byte(`"status":500`), 1)
			put(t, f[0], ls)
			return f
		}, nil, 11, "", "altered"},
		{"line deleted", func(t *testing.T, f []string) []string {
			ls := lines(t, f[0])
			put(t, f[0], append(ls[:3:3], ls[4:]...))
			return f
		}, nil, 4, "", "deleted"},
		{"line inserted", func(t *testing.T, f []string) []string {
			ls := lines(t, f[0])
			dup := append([][]byte{}, ls[:6]...)
			dup = append(dup, ls[2])
			put(t, f[0], append(dup, ls[6:]...))
			return f
		}, nil, 7, "", "inserted"},
		{"forged line inserted", func(t *testing.T, f []string) []string {
			ls := lines(t, f[0])
			out := append([][]byte{}, ls[:6]...)
			out = append(out, []byte(`{"seq":7,"time":"2026-01-01T00:00:00Z","prev":"00","type":"job_started","job":"x"}`))
			put(t, f[0], append(out, ls[6:]...))
			return f
		}, nil, 6, "", "altered"}, // the link between line 6 and the forged line 7 is what breaks
		{"two lines swapped", func(t *testing.T, f []string) []string {
			ls := lines(t, f[0])
			ls[7], ls[8] = ls[8], ls[7]
			put(t, f[0], ls)
			return f
		}, nil, 8, "", "reordered"},
		{"first line deleted", func(t *testing.T, f []string) []string {
			put(t, f[0], lines(t, f[0])[1:])
			return f
		}, nil, 1, "", "missing"},
		{"checkpoint signature forged", func(t *testing.T, f []string) []string {
			ls := lines(t, f[0])
			last := ls[len(ls)-1]
			i := bytes.Index(last, []byte(`"sig":"`)) + 7
			last[i] ^= 1 // hex digit to another ASCII byte: still decodable or not, never valid
			if last[i] < '0' || last[i] > 'f' {
				last[i] = '0'
			}
			put(t, f[0], ls)
			return f
		}, nil, -1, "", "checkpoint"},
		{"signed by another key", func(t *testing.T, f []string) []string { return f },
			[]ed25519.PublicKey{other.Public().(ed25519.PublicKey)}, -2, "", "not trusted"},
		{"truncated mid-line", func(t *testing.T, f []string) []string {
			b, _ := os.ReadFile(f[0])
			os.WriteFile(f[0], b[:len(b)-10], 0o600)
			return f
		}, nil, -1, "", "incomplete"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, files := writeLog(t, audit.Options{Key: key, CheckpointEvery: 6, MaxBytes: -1}, 5)
			n := len(lines(t, files[0]))
			verify := tt.tamper(t, files)
			trusted := tt.trusted
			if trusted == nil {
				trusted = []ed25519.PublicKey{pub}
			}
			_, err := audit.VerifyFiles(verify, trusted...)
			var p *audit.Problem
			if !errors.As(err, &p) {
				t.Fatalf("VerifyFiles = %v, want a *Problem", err)
			}
			want := tt.wantLine
			switch want {
			case -1:
				want = n
			case -2:
				want = 1 // the first checkpoint: a new log starts with one
			}
			if p.File != files[0] || p.Line != want || !strings.Contains(p.What, tt.wantWhat) {
				t.Errorf("VerifyFiles = %v, want %s:%d naming %q", err, files[0], want, tt.wantWhat)
			}
		})
	}
}

func TestRotatedFileMissing(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	pub := key.Public().(ed25519.PublicKey)
	_, files := writeLog(t, audit.Options{Key: key, CheckpointEvery: 5, MaxBytes: 1500}, 15)
	if len(files) < 4 {
		t.Fatalf("files = %v, want at least 4 after rotation", files)
	}
	// Glob sorts the active file first; VerifyFiles orders them by chain.
	active, rotated := files[0], files[1:]
	tests := []struct {
		name     string
		drop     string
		wantFile string
		wantWhat string
	}{
		{"middle file", rotated[1], rotated[2], "missing"},
		{"oldest file", rotated[0], rotated[1], "was not given"},
		{"newest rotated file", rotated[len(rotated)-1], active, "missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var keep []string
			for _, f := range files {
				if f != tt.drop {
					keep = append(keep, f)
				}
			}
			_, err := audit.VerifyFiles(keep, pub)
			var p *audit.Problem
			if !errors.As(err, &p) || p.File != tt.wantFile || p.Line != 1 || !strings.Contains(p.What, tt.wantWhat) {
				t.Errorf("VerifyFiles(without %s) = %v, want %s:1 naming %q", filepath.Base(tt.drop), err, tt.wantFile, tt.wantWhat)
			}
		})
	}
	t.Run("renamed into place", func(t *testing.T) {
		// A rotated file replaced by a copy of another breaks the rotated_from link.
		t.Parallel()
		_, err := audit.VerifyFiles([]string{rotated[0], rotated[0], active}, pub)
		if err == nil {
			t.Errorf("VerifyFiles(duplicated file) = nil, want a problem")
		}
	})
}

func TestConcurrentAppends(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := audit.Open(audit.Options{Path: path, Key: key, CheckpointEvery: 13, MaxBytes: 20000})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				if err := l.Append(audit.JobStarted{Job: fmt.Sprintf("job_%d_%d", g, i), Task: "t", Attempt: 1}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(path + "*")
	rep, err := audit.VerifyFiles(files, key.Public().(ed25519.PublicKey))
	if err != nil || rep.Records-rep.Checkpoints-len(files)+1 != 800 {
		t.Fatalf("VerifyFiles = %d records (%d checkpoints, %d files), %v; want 800 job records", rep.Records, rep.Checkpoints, len(files), err)
	}
}

func TestScrubAndNoBodies(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-t0ken-value-for-audit"
	set := redact.NewSet()
	if err := set.Add(secret); err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, err := audit.Open(audit.Options{Path: path, Key: key, Scrub: set})
	if err != nil {
		t.Fatal(err)
	}
	// A path that a careless task built from a credential, and an output holding one.
	ev := egress.Event{Job: "j", Task: "t", Endpoint: "crm", Method: "GET", Path: "/x/" + secret, Decision: "deny", Reason: "no rule"}
	for _, e := range []audit.Event{audit.HTTPCall(ev), audit.JobFinished{Job: "j", Output: []byte(secret)}} {
		if err := l.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if set.Contains(b) {
		t.Errorf("audit file holds the secret:\n%s", b)
	}
	if _, err := audit.VerifyFiles([]string{path}, key.Public().(ed25519.PublicKey)); err != nil {
		t.Errorf("VerifyFiles(scrubbed log) = %v, want nil", err)
	}
}

func TestUnsealedTailReported(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	_, files := writeLog(t, audit.Options{Key: key, CheckpointEvery: 4, MaxBytes: -1}, 2)
	ls := lines(t, files[0])
	put(t, files[0], ls[:len(ls)-1]) // the closing checkpoint cut off
	rep, err := audit.VerifyFiles(files, key.Public().(ed25519.PublicKey))
	if err != nil || rep.Unsealed == 0 {
		t.Fatalf("VerifyFiles = unsealed %d, %v; want the cut tail reported as unsealed", rep.Unsealed, err)
	}
}

func TestActionTypeChecked(t *testing.T) {
	t.Parallel()
	l, err := audit.Open(audit.Options{Path: filepath.Join(t.TempDir(), "a.jsonl"), Key: newKey(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Append(audit.Action{Type: audit.TypeCheckpoint}); err == nil {
		t.Errorf("Append(Action{Type: checkpoint}) = nil, want an error")
	}
	var nilLog *audit.Log
	if err := nilLog.Append(audit.JobStarted{}); err != nil {
		t.Errorf("nil Log Append = %v, want nil", err)
	}
}

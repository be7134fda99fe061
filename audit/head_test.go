package audit_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/audit"
)

func hashLine(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// rechain renumbers records and recomputes every prev, as someone without the key who
// removed or added records would: the chain is consistent again, only signatures are not.
func rechain(t *testing.T, recs []audit.Record) [][]byte {
	t.Helper()
	var out [][]byte
	prev := ""
	for i, r := range recs {
		r.Seq, r.Prev = uint64(i+1), prev
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
		prev = hashLine(b)
	}
	return out
}

func records(t *testing.T, ls [][]byte) []audit.Record {
	t.Helper()
	out := make([]audit.Record, len(ls))
	for i, l := range ls {
		if err := json.Unmarshal(l, &out[i]); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// chainFiles returns the log's files in chain order: rotated ones by name, the active last.
func chainFiles(dir string) []string {
	rotated, _ := filepath.Glob(filepath.Join(dir, "audit.jsonl.*"))
	sort.Strings(rotated)
	return append(rotated, filepath.Join(dir, "audit.jsonl"))
}

func wantProblem(t *testing.T, err error, what ...string) *audit.Problem {
	t.Helper()
	var p *audit.Problem
	if !errors.As(err, &p) {
		t.Fatalf("Verify = %v, want a *Problem naming %q", err, what)
	}
	for _, w := range what {
		if !strings.Contains(p.Error(), w) {
			t.Fatalf("Verify = %v, want it to name %q", err, w)
		}
	}
	return p
}

// TestHeadDetectsEveryCut cuts the log after every record (at checkpoints, mid-way, at a
// rotation, whole files dropped) and checks it against the head the writer reported last.
func TestHeadDetectsEveryCut(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	pub := key.Public().(ed25519.PublicKey)
	for _, tt := range []struct {
		name     string
		maxBytes int64
	}{{"one file", -1}, {"rotated", 1500}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			l, err := audit.Open(audit.Options{Path: filepath.Join(dir, "audit.jsonl"), Key: key, CheckpointEvery: 5, MaxBytes: tt.maxBytes})
			if err != nil {
				t.Fatal(err)
			}
			workload(t, l, 8)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			head := l.Head()
			files := chainFiles(dir)
			var all [][][]byte
			total := 0
			for _, f := range files {
				ls := lines(t, f)
				all = append(all, ls)
				total += len(ls)
			}
			if tt.maxBytes > 0 && len(files) < 3 {
				t.Fatalf("files = %d, want a rotated log", len(files))
			}
			if head.Seq != uint64(total) {
				t.Fatalf("Head() = %v after Close, want the closing checkpoint, seq %d", head, total)
			}
			opts := audit.VerifyOptions{Trusted: []ed25519.PublicKey{pub}, Head: head}
			if _, err := audit.Verify(files, opts); err != nil {
				t.Fatalf("Verify(whole log, its head) = %v, want nil", err)
			}
			cutAt := 0
			for keep := 0; keep < total; keep++ {
				cut := t.TempDir()
				var paths []string
				left := keep
				for i, ls := range all {
					if left == 0 && i > 0 {
						break // later files deleted
					}
					n := min(left, len(ls))
					p := filepath.Join(cut, filepath.Base(files[i]))
					if n == 0 {
						os.WriteFile(p, nil, 0o600)
					} else {
						put(t, p, ls[:n])
					}
					paths = append(paths, p)
					left -= n
				}
				_, err := audit.Verify(paths, opts)
				var p *audit.Problem
				if !errors.As(err, &p) {
					t.Errorf("Verify(cut after %d of %d records, head %v) = %v, want a *Problem", keep, total, head, err)
					continue
				}
				cutAt++
			}
			if cutAt != total {
				t.Errorf("%d of %d cuts detected", cutAt, total)
			}
		})
	}
}

func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	fs, _ := filepath.Glob(filepath.Join(from, "audit.jsonl*"))
	for _, f := range fs {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, filepath.Base(f)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// TestHeadDetectsRollback restores each older copy of the log, as is and after the writer
// went on writing from it past the reported head.
func TestHeadDetectsRollback(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	pub := key.Public().(ed25519.PublicKey)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	var snaps []string
	var head audit.Head
	for range 4 {
		l, err := audit.Open(audit.Options{Path: path, Key: key, CheckpointEvery: 7, MaxBytes: 2500})
		if err != nil {
			t.Fatal(err)
		}
		workload(t, l, 3)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		head = l.Head()
		snaps = append(snaps, copyDir(t, dir))
	}
	trusted := []ed25519.PublicKey{pub}
	for i, snap := range snaps {
		rep, err := audit.Verify(chainFiles(snap), audit.VerifyOptions{Trusted: trusted})
		if err != nil || rep.Unsealed != 0 {
			t.Fatalf("snapshot %d alone: %+v, %v; want intact and sealed (--key cannot tell a rollback)", i, rep, err)
		}
		_, err = audit.Verify(chainFiles(snap), audit.VerifyOptions{Trusted: trusted, Head: head})
		if i == len(snaps)-1 {
			if err != nil {
				t.Fatalf("newest snapshot against its head: %v", err)
			}
			continue
		}
		wantProblem(t, err, fmt.Sprint(head.Seq), "rolled back")

		// The worker restarted on the restored copy and wrote past the old head's seq.
		l, err := audit.Open(audit.Options{Path: filepath.Join(snap, "audit.jsonl"), Key: key, CheckpointEvery: 7, MaxBytes: 2500})
		if err != nil {
			t.Fatal(err)
		}
		workload(t, l, 12)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if l.Seq() <= head.Seq {
			t.Fatalf("continued log ends at %d, want past the head %d", l.Seq(), head.Seq)
		}
		_, err = audit.Verify(chainFiles(snap), audit.VerifyOptions{Trusted: trusted, Head: head})
		wantProblem(t, err, fmt.Sprintf("record seq %d", head.Seq), "head")
	}
}

// TestKeyRefusesUnsignedLogs: with a trusted key, a log must carry that key's signature
// over its chain, and no more records after its last checkpoint than the writer leaves.
func TestKeyRefusesUnsignedLogs(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	pub := key.Public().(ed25519.PublicKey)
	other := newKey(t)
	tests := []struct {
		name  string
		make  func(t *testing.T, path string)
		wants []string
	}{
		{"empty", func(t *testing.T, path string) { os.WriteFile(path, nil, 0o600) }, []string{"empty"}},
		{"invented", func(t *testing.T, path string) {
			var recs []audit.Record
			for i := range 30 {
				recs = append(recs, audit.Record{Time: time.Unix(1e9, 0).UTC(), Type: audit.TypeJobStarted, Job: fmt.Sprint("j", i), Task: "t", Attempt: 1})
			}
			put(t, path, rechain(t, recs))
		}, []string{"no checkpoint"}},
		{"invented, signed with another key", func(t *testing.T, path string) {
			l, err := audit.Open(audit.Options{Path: path, Key: other, CheckpointEvery: 5, MaxBytes: -1})
			if err != nil {
				t.Fatal(err)
			}
			workload(t, l, 3)
			l.Close()
		}, []string{"not trusted"}},
		{"checkpoints stripped", func(t *testing.T, path string) {
			writeAt(t, path, key, 6)
			var keep []audit.Record
			for _, r := range records(t, lines(t, path)) {
				if r.Type != audit.TypeCheckpoint {
					keep = append(keep, r)
				}
			}
			put(t, path, rechain(t, keep))
		}, []string{"no checkpoint"}},
		{"all checkpoints but the first stripped", func(t *testing.T, path string) {
			writeAt(t, path, key, 6)
			var keep []audit.Record
			for i, r := range records(t, lines(t, path)) {
				if r.Type != audit.TypeCheckpoint || i == 0 {
					keep = append(keep, r)
				}
			}
			put(t, path, rechain(t, keep))
		}, []string{"follow the last checkpoint"}},
		{"records appended after the last checkpoint", func(t *testing.T, path string) {
			writeAt(t, path, key, 2)
			recs := records(t, lines(t, path))
			for i := range 6 {
				recs = append(recs, audit.Record{Time: time.Unix(1e9, 0).UTC(), Type: audit.TypeJobStarted, Job: fmt.Sprint("x", i), Task: "t", Attempt: 1})
			}
			// The signed prefix stays byte-identical; the forged records chain to it.
			orig := lines(t, path)
			put(t, path, append(orig, rechain(t, recs)[len(orig):]...))
		}, []string{"follow the last checkpoint"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			tt.make(t, path)
			_, err := audit.VerifyFiles([]string{path}, pub)
			wantProblem(t, err, tt.wants...)
		})
	}
}

// writeAt writes a closed log of jobs jobs with a checkpoint every 5 records.
func writeAt(t *testing.T, path string, key ed25519.PrivateKey, jobs int) {
	t.Helper()
	l, err := audit.Open(audit.Options{Path: path, Key: key, CheckpointEvery: 5, MaxBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	workload(t, l, jobs)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestWriterTailBound: whatever point a writer is stopped at (crash: no Close), and however
// often it restarts, the log verifies with the key; the unsealed tail never exceeds the
// checkpoint interval. A writer that crashed before its first interval is covered too.
func TestWriterTailBound(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	pub := key.Public().(ed25519.PublicKey)
	const every = 5
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var open []*audit.Log
	defer func() {
		for _, l := range open {
			l.Close()
		}
	}()
	n := 0
	for restart := range 4 {
		l, err := audit.Open(audit.Options{Path: path, Key: key, CheckpointEvery: every, MaxBytes: -1})
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, l) // never closed before the next Open: a crash
		for i := range every - 1 + restart {
			if err := l.Append(audit.JobStarted{Job: fmt.Sprint("j", n), Task: "t", Attempt: 1}); err != nil {
				t.Fatal(err)
			}
			n++
			rep, err := audit.VerifyFiles([]string{path}, pub)
			if err != nil || rep.Unsealed > every {
				t.Fatalf("restart %d record %d: Verify = unsealed %d, %v; want intact, at most %d unsealed", restart, i, rep.Unsealed, err, every)
			}
		}
	}
}

func TestCloseAlwaysSeals(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	for i := range 3 {
		l, err := audit.Open(audit.Options{Path: path, Key: key})
		if err != nil {
			t.Fatal(err)
		}
		workload(t, l, i) // 0 jobs: an idle run is sealed too
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		ls := lines(t, path)
		last := records(t, ls[len(ls)-1:])[0]
		if last.Type != audit.TypeCheckpoint || l.Head() != (audit.Head{Seq: last.Seq, Hash: hashLine(ls[len(ls)-1])}) {
			t.Fatalf("run %d: last record %s seq %d, Head() = %v; want the closing checkpoint as the head", i, last.Type, last.Seq, l.Head())
		}
	}
}

// TestHeadAfterReopen: a reopened log reports the last checkpoint it finds, also when that
// checkpoint sealed the previous, rotated file.
func TestHeadAfterReopen(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	l, err := audit.Open(audit.Options{Path: path, Key: key, CheckpointEvery: 1000, MaxBytes: 1500})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if err := l.Append(audit.JobStarted{Job: fmt.Sprint("j", i), Task: "t", Attempt: 1}); err != nil {
			t.Fatal(err)
		}
		if fs, _ := filepath.Glob(path + ".*"); len(fs) == 1 {
			break
		}
	}
	want := l.Head() // the checkpoint that sealed the rotated file
	l2, err := audit.Open(audit.Options{Path: path, Key: key, CheckpointEvery: 1000, MaxBytes: 1500})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	defer l.Close()
	if got := l2.Head(); got != want || got.Seq == 0 {
		t.Fatalf("Head() after reopen = %v, want %v", got, want)
	}
}

// TestEmptiedFileNamed (13.11): an emptied file is named as the problem, with its name.
func TestEmptiedFileNamed(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	pub := key.Public().(ed25519.PublicKey)
	dir, _ := writeLog(t, audit.Options{Key: key, CheckpointEvery: 5, MaxBytes: 1500}, 10)
	files := chainFiles(dir)
	if len(files) < 3 {
		t.Fatalf("files = %v, want a rotated log", files)
	}
	for _, victim := range []string{files[len(files)-1], files[1], files[0]} {
		d := copyDir(t, dir)
		v := filepath.Join(d, filepath.Base(victim))
		if err := os.WriteFile(v, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, trusted := range [][]ed25519.PublicKey{nil, {pub}} {
			_, err := audit.VerifyFiles(chainFiles(d), trusted...)
			p := wantProblem(t, err, "empty", filepath.Base(victim))
			if p.File != v || strings.Contains(p.What, "  ") || strings.Contains(p.What, " , ") || strings.Contains(p.What, "following  ") {
				t.Errorf("emptied %s: Verify = %v (file %s), want the emptied file named", filepath.Base(victim), err, p.File)
			}
		}
	}
}

// TestReopenAfterCrashInRotation: a crash after the rotated file was renamed but before the
// new file's first record leaves an empty active file; the next Open continues the chain.
func TestReopenAfterCrashInRotation(t *testing.T) {
	t.Parallel()
	key := newKey(t)
	pub := key.Public().(ed25519.PublicKey)
	dir, _ := writeLog(t, audit.Options{Key: key, CheckpointEvery: 5, MaxBytes: 1500}, 10)
	files := chainFiles(dir)
	active := files[len(files)-1]
	// Undo the last rotation's new file: the newest rotated file ends with its sealing
	// checkpoint; the active file is created empty.
	if err := os.Remove(active); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(active, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(audit.Options{Path: active, Key: key, CheckpointEvery: 5, MaxBytes: 1500})
	if err != nil {
		t.Fatal(err)
	}
	workload(t, l, 1)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.VerifyFiles(chainFiles(dir), pub); err != nil {
		t.Fatalf("Verify after the restart = %v, want the chain continued", err)
	}
}

func TestParseHead(t *testing.T) {
	t.Parallel()
	h := strings.Repeat("ab", 32)
	for _, tt := range []struct {
		in   string
		want audit.Head
		ok   bool
	}{
		{"12:" + h, audit.Head{Seq: 12, Hash: h}, true},
		{" 12:" + h + "\n", audit.Head{Seq: 12, Hash: h}, true},
		{"12:" + strings.ToUpper(h), audit.Head{}, false},
		{"0:" + h, audit.Head{}, false},
		{"-1:" + h, audit.Head{}, false},
		{"12" + h, audit.Head{}, false},
		{"12:" + h[:62], audit.Head{}, false},
		{"12:" + h + "00", audit.Head{}, false},
		{"x:" + h, audit.Head{}, false},
		{"", audit.Head{}, false},
	} {
		got, err := audit.ParseHead(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseHead(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
		if tt.ok && got.String() != strings.TrimSpace(tt.in) {
			t.Errorf("Head.String() = %q, want %q", got.String(), strings.TrimSpace(tt.in))
		}
	}
}

// FuzzVerifyAgainstHead: any change to a log sealed at its head (bytes replaced, inserted or
// cut anywhere) fails Verify with the key and the head; only the log itself passes.
func FuzzVerifyAgainstHead(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(nil)
	dir := f.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	l, err := audit.Open(audit.Options{Path: path, Key: key, CheckpointEvery: 3, MaxBytes: -1})
	if err != nil {
		f.Fatal(err)
	}
	for i := range 8 {
		if err := l.Append(audit.JobStarted{Job: fmt.Sprint("j", i), Task: "t", Attempt: 1}); err != nil {
			f.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		f.Fatal(err)
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	opts := audit.VerifyOptions{Trusted: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, Head: l.Head()}
	f.Add(uint16(0), uint16(0), []byte{})
	f.Add(uint16(len(orig)/2), uint16(len(orig)), []byte{})      // cut
	f.Add(uint16(10), uint16(1), []byte("1"))                    // one byte
	f.Add(uint16(len(orig)), uint16(0), []byte("{\"seq\":1}\n")) // appended
	f.Fuzz(func(t *testing.T, at, cut uint16, insert []byte) {
		i := min(int(at), len(orig))
		j := min(i+int(cut), len(orig))
		mutated := append(append(append([]byte{}, orig[:i]...), insert...), orig[j:]...)
		p := filepath.Join(t.TempDir(), "audit.jsonl")
		if err := os.WriteFile(p, mutated, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := audit.Verify([]string{p}, opts)
		if bytes.Equal(mutated, orig) != (err == nil) {
			t.Fatalf("Verify(log with [%d:%d] replaced by %q) = %v", i, j, insert, err)
		}
	})
}

package audit

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Scrubber removes credential values from bytes; *redact.Set implements it.
type Scrubber interface {
	Redact([]byte) []byte
}

// Options configure Open.
type Options struct {
	// Path is the active log file. Rotated files are renamed beside it to
	// Path + "." + the 20-digit sequence number of their last record, so they sort in order.
	Path string
	// Key signs checkpoints. Required: an unsigned chain can be recomputed by anyone.
	Key ed25519.PrivateKey
	// CheckpointEvery is how many records may follow a checkpoint before the next one.
	// Optional; default DefaultCheckpointEvery. It is the longest unsealed tail the writer
	// ever leaves (after a crash), so a verifier with the key refuses a longer one.
	CheckpointEvery int
	// MaxBytes rotates the active file once it reaches this size. Optional; default 64 MiB;
	// negative never rotates.
	MaxBytes int64
	// SyncEvery fsyncs after every record instead of only at checkpoints. Optional.
	SyncEvery bool
	// Scrub redacts each line before it is hashed and written. Optional.
	Scrub Scrubber
	// Now is the clock. Optional; default time.Now.
	Now func() time.Time
}

// DefaultCheckpointEvery is Options.CheckpointEvery's default.
const DefaultCheckpointEvery = 100

// Log is an open audit log. It is safe for concurrent use; a nil *Log records nothing, so
// callers can hold an optional one without checks.
type Log struct {
	opts Options

	mu        sync.Mutex
	f         *os.File
	size      int64
	seq       uint64
	prev      string // hex SHA-256 of the last line written
	sinceSeal int    // records since the last checkpoint
	head      Head   // the last checkpoint written or found at Open
	err       error  // sticky write error: a log with a hole in it must not go on
}

// Open opens or creates the log at opts.Path and continues its chain.
func Open(opts Options) (*Log, error) {
	if opts.Path == "" {
		return nil, errors.New("audit: Options.Path is empty: set the audit log file (e.g. /var/lib/castellan/audit.jsonl)")
	}
	if len(opts.Key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("audit: Options.Key is %d bytes, want an Ed25519 private key (%d bytes)", len(opts.Key), ed25519.PrivateKeySize)
	}
	if opts.CheckpointEvery <= 0 {
		opts.CheckpointEvery = DefaultCheckpointEvery
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = 64 << 20
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	l := &Log{opts: opts}
	if err := l.openActive(); err != nil {
		return nil, err
	}
	return l, nil
}

// openActive opens opts.Path for appending and reads the chain position from its lines.
// A new log starts with a checkpoint, so every log this writer leaves is signed from its
// first record: a log without any checkpoint was not written by it.
func (l *Log) openActive() error {
	f, err := os.OpenFile(l.opts.Path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: open %s: %w", l.opts.Path, err)
	}
	st, err := scan(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("audit: %s: %w; run `castellan audit verify` on it and move it aside", l.opts.Path, err)
	}
	l.f, l.size = f, st.size
	if st.size == 0 {
		return l.start()
	}
	l.seq, l.prev, l.sinceSeal, l.head = st.seq, st.hash, st.sinceSeal, st.checkpoint
	if l.head.Seq == 0 && st.rotatedFrom != "" {
		// Sealed in the previous file: rotation checkpoints before it renames.
		if prev, err := scanFile(filepath.Join(filepath.Dir(l.opts.Path), st.rotatedFrom)); err == nil {
			l.head = prev.checkpoint
		}
	}
	if l.sinceSeal > 0 && st.every > 0 && st.every < l.opts.CheckpointEvery {
		// The tail was left under a shorter interval, which its checkpoint names: seal it
		// before the longer interval lets it grow past that.
		return l.checkpoint()
	}
	return nil
}

// start begins an empty active file: the first checkpoint of a new log, or, when rotated
// files lie beside it (a crash between the rename and the new file's first record), the
// rotated record that continues their chain.
func (l *Log) start() error {
	newest := ""
	base := filepath.Base(l.opts.Path) + "."
	if entries, err := os.ReadDir(filepath.Dir(l.opts.Path)); err == nil {
		for _, e := range entries {
			suf, ok := strings.CutPrefix(e.Name(), base)
			if ok && len(suf) == 20 && strings.Trim(suf, "0123456789") == "" && e.Name() > newest {
				newest = e.Name()
			}
		}
	}
	if newest != "" {
		newest = filepath.Join(filepath.Dir(l.opts.Path), newest)
	}
	if newest == "" {
		return l.checkpoint()
	}
	st, err := scanFile(newest)
	if err != nil {
		l.f.Close()
		return fmt.Errorf("audit: %s is empty and its newest rotated file %s cannot be read: %w", l.opts.Path, filepath.Base(newest), err)
	}
	if st.size == 0 {
		l.f.Close()
		return fmt.Errorf("audit: %s is empty and so is its newest rotated file %s; run `castellan audit verify` on the log and move it aside", l.opts.Path, filepath.Base(newest))
	}
	l.seq, l.prev, l.sinceSeal, l.head = st.seq, st.hash, st.sinceSeal, st.checkpoint
	if err := l.write(Record{Type: TypeRotated, RotatedFrom: filepath.Base(newest)}); err != nil {
		return err
	}
	l.sinceSeal++
	return nil
}

// fileState is what scan reads from a log file.
type fileState struct {
	size        int64
	seq         uint64 // of the last record
	hash        string // of the last line
	sinceSeal   int    // records after the last checkpoint (all of them without one)
	checkpoint  Head   // the last checkpoint; zero without one
	every       int    // its interval
	rotatedFrom string // the first record's, when it is a rotated record
}

func scanFile(path string) (fileState, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileState{}, err
	}
	defer f.Close()
	return scan(f)
}

var checkpointMark = []byte(`"type":"` + TypeCheckpoint + `"`)

// scan reads f from the start: the position of its last line and of its last checkpoint.
func scan(f *os.File) (st fileState, err error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return st, err
	}
	r := bufio.NewReader(f)
	var last []byte
	line := 0
	for {
		b, err := r.ReadBytes('\n')
		st.size += int64(len(b))
		if err == io.EOF {
			if len(b) > 0 {
				return st, fmt.Errorf("line %d is an incomplete record (no newline)", line+1)
			}
			break
		}
		if err != nil {
			return st, err
		}
		line++
		last = bytes.TrimSuffix(b, []byte("\n"))
		st.sinceSeal++
		// A string value cannot hold the mark unescaped, so only checkpoints are decoded.
		if line == 1 || bytes.Contains(last, checkpointMark) {
			var rec Record
			if err := json.Unmarshal(last, &rec); err != nil {
				return st, fmt.Errorf("line %d is not a JSON record: %v", line, err)
			}
			if line == 1 && rec.Type == TypeRotated {
				st.rotatedFrom = rec.RotatedFrom
			}
			if rec.Type == TypeCheckpoint {
				st.checkpoint, st.every, st.sinceSeal = Head{Seq: rec.Seq, Hash: lineHash(last)}, rec.Every, 0
			}
		}
	}
	if last == nil {
		return st, nil
	}
	var rec struct {
		Seq uint64 `json:"seq"`
	}
	if err := json.Unmarshal(last, &rec); err != nil {
		return st, fmt.Errorf("line %d is not a JSON record: %v", line, err)
	}
	st.seq, st.hash = rec.Seq, lineHash(last)
	return st, nil
}

func lineHash(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}

// checkpointMessage is what a checkpoint signs: a domain tag and the checkpoint's own line
// encoded with an empty sig, which holds its sequence number, time, signing key and prev (the
// hash of the chain head it seals).
func checkpointMessage(rec Record) ([]byte, error) {
	rec.Sig = ""
	line, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	return append([]byte("castellan-audit-checkpoint-v1\x00"), line...), nil
}

var actionTypes = map[string]bool{ActionSubmitted: true, ActionApproved: true, ActionLeased: true,
	ActionCompleted: true, ActionCancelled: true, ActionLeaseExpiry: true}

// Append writes one event. It returns an error if the record could not be written; after a
// write error every later Append fails too, because a chain with a hole cannot be verified.
func (l *Log) Append(ev Event) error {
	if l == nil {
		return nil
	}
	rec := ev.record()
	if a, ok := ev.(Action); ok && !actionTypes[a.Type] {
		return fmt.Errorf("audit: Action.Type %q is not one of the Action* constants", a.Type)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil && l.sinceSeal >= l.opts.CheckpointEvery {
		// Only after a restart on a tail a crash left: seal it before it grows further.
		if err := l.checkpoint(); err != nil {
			return err
		}
	}
	if err := l.write(rec); err != nil {
		return err
	}
	l.sinceSeal++
	if l.sinceSeal >= l.opts.CheckpointEvery {
		if err := l.checkpoint(); err != nil {
			return err
		}
	}
	if l.opts.MaxBytes > 0 && l.size >= l.opts.MaxBytes {
		return l.rotate()
	}
	return nil
}

// Checkpoint signs the chain head now (a daemon may call it on a timer so that a quiet log
// is sealed too). It does nothing when no record followed the last checkpoint.
func (l *Log) Checkpoint() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sinceSeal == 0 {
		return nil
	}
	return l.checkpoint()
}

// Close seals the chain with a checkpoint and closes the file.
func (l *Log) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return l.err
	}
	var err error
	if l.sinceSeal > 0 || l.seq == 0 || l.head.Seq != l.seq {
		err = l.checkpoint()
	}
	if cerr := l.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("audit: close %s: %w", l.opts.Path, cerr)
	}
	l.f = nil
	if l.err == nil {
		l.err = errors.New("audit: log is closed")
	}
	return err
}

// Head returns the last checkpoint: its seq and the hash of its line. It is what the worker
// reports to the control plane, so that a copy of the log can be checked against it from
// outside the host (VerifyOptions.Head). A checkpoint is fsynced before Head names it, so
// a machine crash never loses a head that was reported. Zero before the first checkpoint.
func (l *Log) Head() Head {
	if l == nil {
		return Head{}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.head
}

// Seq returns the sequence number of the last record written.
func (l *Log) Seq() uint64 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

func (l *Log) write(rec Record) error {
	if l.err != nil {
		return l.err
	}
	rec.Seq = l.seq + 1
	rec.Time = l.opts.Now().UTC()
	rec.Prev = l.prev
	if rec.Type == TypeCheckpoint {
		msg, err := checkpointMessage(rec)
		if err != nil {
			return fmt.Errorf("audit: encode checkpoint: %w", err)
		}
		rec.Sig = hex.EncodeToString(ed25519.Sign(l.opts.Key, msg))
	}
	line, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("audit: encode %s record: %w", rec.Type, err)
	}
	if l.opts.Scrub != nil && rec.Type != TypeCheckpoint {
		line = l.opts.Scrub.Redact(line)
	}
	buf := make([]byte, 0, len(line)+1)
	buf = append(append(buf, line...), '\n')
	if _, err := l.f.Write(buf); err != nil {
		l.err = fmt.Errorf("audit: write %s: %w (the log is stopped: fix the disk, then restart)", l.opts.Path, err)
		return l.err
	}
	if l.opts.SyncEvery {
		if err := l.f.Sync(); err != nil {
			l.err = fmt.Errorf("audit: fsync %s: %w", l.opts.Path, err)
			return l.err
		}
	}
	l.seq, l.prev, l.size = rec.Seq, lineHash(line), l.size+int64(len(buf))
	return nil
}

func (l *Log) checkpoint() error {
	pub := l.opts.Key.Public().(ed25519.PublicKey)
	rec := Record{Type: TypeCheckpoint, Every: l.opts.CheckpointEvery, Key: hex.EncodeToString(pub)}
	if err := l.write(rec); err != nil {
		return err
	}
	l.sinceSeal = 0
	if err := l.f.Sync(); err != nil {
		l.err = fmt.Errorf("audit: fsync %s: %w", l.opts.Path, err)
		return l.err
	}
	l.head = Head{Seq: l.seq, Hash: l.prev}
	return nil
}

// rotate seals the active file, renames it aside and starts a new one whose first record
// links to the old file's last line and names it.
func (l *Log) rotate() error {
	if l.sinceSeal > 0 {
		if err := l.checkpoint(); err != nil {
			return err
		}
	}
	old := fmt.Sprintf("%s.%020d", l.opts.Path, l.seq)
	if err := l.f.Close(); err != nil {
		l.err = fmt.Errorf("audit: close %s for rotation: %w", l.opts.Path, err)
		return l.err
	}
	if err := os.Rename(l.opts.Path, old); err != nil {
		l.err = fmt.Errorf("audit: rotate %s to %s: %w", l.opts.Path, old, err)
		return l.err
	}
	f, err := os.OpenFile(l.opts.Path, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		l.err = fmt.Errorf("audit: create %s after rotation: %w", l.opts.Path, err)
		return l.err
	}
	l.f, l.size = f, 0
	if err := l.write(Record{Type: TypeRotated, RotatedFrom: filepath.Base(old)}); err != nil {
		return err
	}
	l.sinceSeal++
	return nil
}

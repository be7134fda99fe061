package audit

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Problem locates the first record that breaks the chain. VerifyFiles returns it as its
// error; errors.As finds it.
type Problem struct {
	File string
	Line int    // 1-based line in File
	Seq  uint64 // the record's seq, 0 when it could not be read
	What string
}

func (p *Problem) Error() string {
	if p.Line == 0 {
		return fmt.Sprintf("%s: %s", p.File, p.What)
	}
	if p.Seq == 0 {
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.What)
	}
	return fmt.Sprintf("%s:%d: record seq %d: %s", p.File, p.Line, p.Seq, p.What)
}

// FileReport summarises one verified file.
type FileReport struct {
	Path              string
	Records           int
	FirstSeq, LastSeq uint64
}

// Report is what VerifyFiles checked.
type Report struct {
	Files       []FileReport // in chain order
	Records     int
	Checkpoints int
	LastSeq     uint64
	Head        string   // hex SHA-256 of the last line
	Signers     []string // hex public keys whose checkpoints verified
	// Trusted is true when checkpoints were checked against keys the caller gave; false
	// when no key was given and each checkpoint was checked against the key it names
	// (which proves consistency, not authorship).
	Trusted bool
	// Unsealed counts the records after the last checkpoint: they are chained but not
	// signed, so records cut from the end of the newest file would go unnoticed. A log
	// closed cleanly has none; a crashed writer leaves some.
	Unsealed int
}

// Head names one record of a chain: its sequence number and the hex SHA-256 of its line.
// The worker reports its latest checkpoint as a Head with each result, and the control
// plane keeps the newest; a log that does not contain it was cut or rolled back.
type Head struct {
	Seq  uint64
	Hash string
}

// String is the SEQ:HASH form that ParseHead reads.
func (h Head) String() string { return fmt.Sprintf("%d:%s", h.Seq, h.Hash) }

// ParseHead reads SEQ:HASH, a decimal sequence number from 1 and 64 lowercase hex digits.
func ParseHead(s string) (Head, error) {
	s = strings.TrimSpace(s)
	seq, hash, ok := strings.Cut(s, ":")
	n, err := strconv.ParseUint(seq, 10, 64)
	if !ok || err != nil || n == 0 || len(hash) != 64 || strings.Trim(hash, "0123456789abcdef") != "" {
		return Head{}, fmt.Errorf("audit: head %q is not SEQ:HASH (a sequence number from 1, a colon, 64 lowercase hex digits)", s)
	}
	return Head{Seq: n, Hash: hash}, nil
}

// VerifyOptions configure Verify.
type VerifyOptions struct {
	// Trusted are the writer's public keys. With them, every checkpoint must be signed by
	// one, the log must have at least one checkpoint, and no more records may follow the
	// last one than the writer's checkpoint interval (named in that checkpoint). Without
	// them, checkpoints are checked against the key each names: consistency, not authorship.
	Trusted []ed25519.PublicKey
	// Head, when set, is a head the writer reported off the host (the control plane keeps
	// the newest per worker): the chain must contain that record with that hash. This is
	// what detects a log cut at a checkpoint or an older copy restored, which the key
	// alone cannot tell from a log closed there.
	Head Head
}

type fileLines struct {
	path  string
	lines [][]byte
	first uint64
}

// VerifyFiles checks the chain running through the given files (the active file and any
// rotated ones, in any order: they are ordered by their first record) and every checkpoint
// signature. With trusted keys, each checkpoint must be signed by one of them. It returns
// the first broken record as a *Problem: an edited byte, a deleted, inserted or reordered
// line, a missing rotated file, a bad or untrusted signature. Other errors (an unreadable
// file) are returned as they are.
func VerifyFiles(paths []string, trusted ...ed25519.PublicKey) (Report, error) {
	return Verify(paths, VerifyOptions{Trusted: trusted})
}

// Verify is VerifyFiles with a head to check against (see VerifyOptions).
func Verify(paths []string, opts VerifyOptions) (Report, error) {
	trusted := opts.Trusted
	var rep Report
	if len(paths) == 0 {
		return rep, fmt.Errorf("audit verify: no files given")
	}
	files := make([]fileLines, 0, len(paths))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return rep, fmt.Errorf("audit verify: %w", err)
		}
		fl := fileLines{path: p}
		if len(data) == 0 {
			// The writer never leaves a file empty: a new log starts with a checkpoint, a
			// rotated file with its rotated record (a crash between the rename and that
			// record is repaired at the next Open).
			return rep, &Problem{File: p, What: "the file is empty: its records were removed (the writer never leaves a log file empty)"}
		}
		if len(data) > 0 {
			if data[len(data)-1] != '\n' {
				n := bytes.Count(data, []byte("\n")) + 1
				return rep, &Problem{File: p, Line: n, What: "incomplete last line (no newline): the write was cut or the file was truncated"}
			}
			fl.lines = bytes.Split(data[:len(data)-1], []byte("\n"))
			var r Record
			if json.Unmarshal(fl.lines[0], &r) == nil {
				fl.first = r.Seq
			}
		}
		files = append(files, fl)
	}
	sort.SliceStable(files, func(i, j int) bool { return files[i].first < files[j].first })

	trustedHex := make(map[string]bool, len(trusted))
	for _, k := range trusted {
		trustedHex[hex.EncodeToString(k)] = true
	}
	rep.Trusted = len(trusted) > 0
	var (
		prevHash string
		prevSeq  uint64
		prevFile string
		started  bool
		every    = DefaultCheckpointEvery // the last checkpoint's interval
		headSeen bool
	)
	for fi, fl := range files {
		fr := FileReport{Path: fl.path}
		for li, line := range fl.lines {
			bad := func(seq uint64, format string, args ...any) error {
				return &Problem{File: fl.path, Line: li + 1, Seq: seq, What: fmt.Sprintf(format, args...)}
			}
			var r Record
			dec := json.NewDecoder(bytes.NewReader(line))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&r); err != nil || r.Seq == 0 || r.Type == "" {
				return rep, bad(0, "not an audit record (edited or inserted line)")
			}
			switch {
			case !started && r.Seq == 1:
				if r.Prev != "" {
					return rep, bad(r.Seq, "the first record of the chain has a prev hash")
				}
			case !started && r.Type == TypeRotated && li == 0:
				return rep, bad(r.Seq, "the chain starts mid-way: this file was rotated from %s, which was not given (or is missing)", r.RotatedFrom)
			case !started:
				return rep, bad(r.Seq, "the chain starts at seq %d: the records before it are missing", r.Seq)
			case r.Seq != prevSeq+1:
				if r.Seq <= prevSeq {
					return rep, bad(r.Seq, "seq %d follows seq %d: a record was inserted or the records were reordered", r.Seq, prevSeq)
				}
				if li == 0 {
					return rep, bad(r.Seq, "seq %d follows seq %d at the end of %s: records (or a rotated file) are missing", r.Seq, prevSeq, prevFile)
				}
				if laterSeq(fl.lines[li+1:], prevSeq+1) {
					return rep, bad(r.Seq, "seq %d follows seq %d, and seq %d comes later: the records were reordered", r.Seq, prevSeq, prevSeq+1)
				}
				return rep, bad(r.Seq, "seq %d follows seq %d: records %d..%d were deleted", r.Seq, prevSeq, prevSeq+1, r.Seq-1)
			case r.Prev != prevHash:
				if li == 0 {
					return rep, &Problem{File: prevFile, Line: len(files[fi-1].lines), Seq: prevSeq,
						What: fmt.Sprintf("this line's SHA-256 does not match prev of the first record of %s: this line (or that prev) was altered", fl.path)}
				}
				return rep, &Problem{File: fl.path, Line: li, Seq: prevSeq,
					What: fmt.Sprintf("this line's SHA-256 does not match prev of record seq %d on the next line: this line (or that prev) was altered", r.Seq)}
			}
			if li == 0 && fi > 0 {
				if r.Type != TypeRotated {
					return rep, bad(r.Seq, "the first record of a file following %s is %s, want rotated: a rotated file is missing or was replaced", prevFile, r.Type)
				}
				if r.RotatedFrom != filepath.Base(prevFile) {
					return rep, bad(r.Seq, "rotated from %s, but the file before it in the chain is %s: a rotated file is missing", r.RotatedFrom, filepath.Base(prevFile))
				}
			} else if r.Type == TypeRotated && started {
				return rep, bad(r.Seq, "a rotated record in the middle of a file")
			}
			if r.Type == TypeCheckpoint {
				if err := checkCheckpoint(r, line, trustedHex); err != "" {
					return rep, bad(r.Seq, "%s", err)
				}
				rep.Checkpoints++
				if !slices.Contains(rep.Signers, r.Key) {
					rep.Signers = append(rep.Signers, r.Key)
				}
				rep.Unsealed = 0
				every = DefaultCheckpointEvery
				if r.Every > 0 {
					every = r.Every
				}
			} else {
				rep.Unsealed++
				if rep.Trusted && rep.Checkpoints > 0 && rep.Unsealed > every {
					return rep, bad(r.Seq, "%d records follow the last checkpoint, more than the writer ever leaves (it seals every %d): records were appended or its checkpoints removed", rep.Unsealed, every)
				}
			}
			if opts.Head.Seq == r.Seq {
				if h := lineHash(line); h != opts.Head.Hash {
					return rep, bad(r.Seq, "this line's SHA-256 %s… is not the head %s… that the writer reported for seq %d: the log was rewritten or rolled back to an older copy and continued", h[:16], opts.Head.Hash[:min(16, len(opts.Head.Hash))], r.Seq)
				}
				headSeen = true
			}
			started = true
			prevSeq, prevHash, prevFile = r.Seq, lineHash(line), fl.path
			rep.Records++
			if fr.Records == 0 {
				fr.FirstSeq = r.Seq
			}
			fr.Records++
			fr.LastSeq = r.Seq
		}
		rep.Files = append(rep.Files, fr)
	}
	rep.LastSeq, rep.Head = prevSeq, prevHash
	last := files[len(files)-1]
	if rep.Trusted && rep.Checkpoints == 0 {
		return rep, &Problem{File: last.path, Line: len(last.lines), Seq: prevSeq,
			What: "no checkpoint in the log: nothing in it is signed, so it was invented or its checkpoints were removed (the writer starts every log with one)"}
	}
	if opts.Head.Seq != 0 && !headSeen {
		return rep, &Problem{File: last.path, Line: len(last.lines), Seq: prevSeq,
			What: fmt.Sprintf("the log ends at seq %d, before the head seq %d that the writer reported: records %d..%d were cut, or an older copy was restored (rolled back)", prevSeq, opts.Head.Seq, prevSeq+1, opts.Head.Seq)}
	}
	return rep, nil
}

// laterSeq reports whether a record with seq appears in lines.
func laterSeq(lines [][]byte, seq uint64) bool {
	for _, l := range lines {
		var r struct {
			Seq uint64 `json:"seq"`
		}
		if json.Unmarshal(l, &r) == nil && r.Seq == seq {
			return true
		}
	}
	return false
}

// checkCheckpoint returns what is wrong with a checkpoint record, or "".
func checkCheckpoint(r Record, line []byte, trusted map[string]bool) string {
	// Byte-exact: the signature covers the decoded fields, so the line must be their one
	// encoding, or an equivalent re-spelling could slip past.
	if canon, err := json.Marshal(r); err != nil || !bytes.Equal(canon, line) {
		return "the checkpoint line is not in its canonical form: it was edited"
	}
	key, err := hex.DecodeString(r.Key)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return "the checkpoint's key is not a hex Ed25519 public key"
	}
	sig, err := hex.DecodeString(r.Sig)
	if err != nil {
		return "the checkpoint's signature is not hex"
	}
	if len(trusted) > 0 && !trusted[r.Key] {
		return fmt.Sprintf("the checkpoint is signed by key %s…, which is not trusted", r.Key[:16])
	}
	msg, err := checkpointMessage(r)
	if err != nil || !ed25519.Verify(key, msg, sig) {
		return "the checkpoint signature does not verify: the chain head or the checkpoint was forged"
	}
	return ""
}

// ParsePublicKey reads a hex-encoded Ed25519 public key, as Report.Signers and the checkpoint
// records print it.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("audit: %q is not a hex Ed25519 public key (64 hex digits)", s)
	}
	return ed25519.PublicKey(b), nil
}

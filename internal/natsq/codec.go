package natsq

// Hand-written JSON for the three messages on the job's hot path: the envelope (dispatcher →
// worker), the result (worker → dispatcher) and the job record (written at dispatch and at
// each completion). Reflection-based encoding/json cost about 40 µs of CPU per job on these.
//
// The contract is encoding/json's behaviour, not an approximation of it. The encoders write
// the bytes json.Marshal writes (HTML escaping included) and fail where it fails; the decoders
// accept and produce what the code they replace accepted and produced, apart from the
// deliberate refusals listed at decodeEnvelope and decodeResult. codec_test.go proves this
// differentially against encoding/json, by tables and by fuzzing. A field added to Envelope,
// Result, Record, Completion or api.Job must be added here as well; TestCodecCoversEveryField
// fails until it is.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// maxDepth is encoding/json's limit on nested arrays and objects: it refuses deeper input,
// when decoding and when marshalling a json.RawMessage, so these must too.
const maxDepth = 10000

const hexDigits = "0123456789abcdef"

// htmlSafe[c] reports whether byte c goes into a JSON string unescaped. encoding/json also
// escapes <, > and & (for JSON embedded in HTML); doing the same keeps the bytes identical.
var htmlSafe = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// stringPlain[c] reports whether byte c can appear in a JSON string as it is: neither its
// end, nor an escape, nor a control character (which JSON forbids), nor part of a multi-byte
// sequence (which must be checked as UTF-8).
var stringPlain = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// ---- Encoding ----

func (e *Envelope) appendJSON(b []byte) ([]byte, error) {
	n0 := len(b)
	b = slices.Grow(b, 96+len(e.JobID)+len(e.Task)+len(e.TaskVersion)+len(e.Pool)+len(e.Input)+len(e.Approval))
	b = append(b, `{"job_id":`...)
	b = appendString(b, e.JobID)
	b = append(b, `,"task":`...)
	b = appendString(b, e.Task)
	b = append(b, `,"task_version":`...)
	b = appendString(b, e.TaskVersion)
	b = append(b, `,"pool":`...)
	b = appendString(b, e.Pool)
	b = append(b, `,"input":`...)
	b, err := appendRaw(b, e.Input)
	if err != nil {
		return b[:n0], fmt.Errorf("natsq: encode envelope: input: %w", err)
	}
	b = append(b, `,"approval":`...)
	b = appendString(b, e.Approval)
	b = append(b, `,"max_attempts":`...)
	b = strconv.AppendInt(b, int64(e.MaxAttempts), 10)
	return append(b, '}'), nil
}

func (r *Result) appendJSON(b []byte) ([]byte, error) {
	n0 := len(b)
	b = slices.Grow(b, 160+len(r.JobID)+len(r.Task)+len(r.WorkerID)+len(r.Outcome)+len(r.Output)+
		len(r.ErrorMessage)+len(r.ModuleDigest))
	b = append(b, `{"job_id":`...)
	b = appendString(b, r.JobID)
	b = append(b, `,"task":`...)
	b = appendString(b, r.Task)
	b = append(b, `,"attempt":`...)
	b = strconv.AppendInt(b, int64(r.Attempt), 10)
	b = append(b, `,"worker_id":`...)
	b = appendString(b, r.WorkerID)
	b = append(b, `,"outcome":`...)
	b = appendString(b, r.Outcome)
	if len(r.Output) > 0 {
		b = append(b, `,"output":`...)
		var err error
		if b, err = appendRaw(b, r.Output); err != nil {
			return b[:n0], fmt.Errorf("natsq: encode result: output: %w", err)
		}
	}
	if r.ErrorMessage != "" {
		b = append(b, `,"error_message":`...)
		b = appendString(b, r.ErrorMessage)
	}
	b = append(b, `,"duration_ms":`...)
	b = strconv.AppendInt(b, r.DurationMS, 10)
	if r.ModuleDigest != "" {
		b = append(b, `,"module_digest":`...)
		b = appendString(b, r.ModuleDigest)
	}
	if r.Retryable != nil {
		b = append(b, `,"retryable":`...)
		b = strconv.AppendBool(b, *r.Retryable)
	}
	return append(b, '}'), nil
}

func (r *Record) appendJSON(b []byte) ([]byte, error) {
	n0 := len(b)
	j := &r.Job
	b = slices.Grow(b, 512+len(r.Approval)+len(j.Input)+len(j.Output)+len(j.ErrorMessage)+64*len(r.Completions))
	b = append(b, `{"job":`...)
	b, err := appendJob(b, j)
	if err != nil {
		return b[:n0], fmt.Errorf("natsq: encode record of job %q: job.%w", j.ID, err)
	}
	b = append(b, `,"approval":`...)
	b = appendString(b, r.Approval)
	if r.JobsSeq != 0 {
		b = append(b, `,"jobs_seq":`...)
		b = strconv.AppendUint(b, r.JobsSeq, 10)
	}
	if len(r.Completions) > 0 {
		b = append(b, `,"completions":[`...)
		for i := range r.Completions {
			c := &r.Completions[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"attempt":`...)
			b = strconv.AppendInt(b, int64(c.Attempt), 10)
			b = append(b, `,"outcome":`...)
			b = appendString(b, c.Outcome)
			if c.WorkerID != "" {
				b = append(b, `,"worker_id":`...)
				b = appendString(b, c.WorkerID)
			}
			b = append(b, `,"at":`...)
			if b, err = appendTime(b, c.At); err != nil {
				return b[:n0], fmt.Errorf("natsq: encode record of job %q: completions[%d].at: %w", j.ID, i, err)
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	return append(b, '}'), nil
}

// appendJob appends j as json.Marshal does. An error starts with the field's name, so that
// the caller can prefix the path to it.
func appendJob(b []byte, j *api.Job) ([]byte, error) {
	var err error
	b = append(b, `{"id":`...)
	b = appendString(b, j.ID)
	b = append(b, `,"task":`...)
	b = appendString(b, j.Task)
	b = append(b, `,"task_version":`...)
	b = appendString(b, j.TaskVersion)
	b = append(b, `,"pool":`...)
	b = appendString(b, j.Pool)
	b = append(b, `,"state":`...)
	b = appendString(b, string(j.State))
	if len(j.Input) > 0 {
		b = append(b, `,"input":`...)
		if b, err = appendRaw(b, j.Input); err != nil {
			return b, fmt.Errorf("input: %w", err)
		}
	}
	b = append(b, `,"has_approval":`...)
	b = strconv.AppendBool(b, j.HasApproval)
	b = append(b, `,"attempt":`...)
	b = strconv.AppendInt(b, int64(j.Attempt), 10)
	b = append(b, `,"max_attempts":`...)
	b = strconv.AppendInt(b, int64(j.MaxAttempts), 10)
	if j.NotBefore != nil {
		b = append(b, `,"not_before":`...)
		if b, err = appendTime(b, *j.NotBefore); err != nil {
			return b, fmt.Errorf("not_before: %w", err)
		}
	}
	if j.Outcome != "" {
		b = append(b, `,"outcome":`...)
		b = appendString(b, j.Outcome)
	}
	if len(j.Output) > 0 {
		b = append(b, `,"output":`...)
		if b, err = appendRaw(b, j.Output); err != nil {
			return b, fmt.Errorf("output: %w", err)
		}
	}
	if j.ErrorMessage != "" {
		b = append(b, `,"error_message":`...)
		b = appendString(b, j.ErrorMessage)
	}
	if j.DurationMS != 0 {
		b = append(b, `,"duration_ms":`...)
		b = strconv.AppendInt(b, j.DurationMS, 10)
	}
	if j.ModuleDigest != "" {
		b = append(b, `,"module_digest":`...)
		b = appendString(b, j.ModuleDigest)
	}
	if j.IdempotencyKey != "" {
		b = append(b, `,"idempotency_key":`...)
		b = appendString(b, j.IdempotencyKey)
	}
	b = append(b, `,"submitted_by":`...)
	b = appendString(b, j.SubmittedBy)
	b = append(b, `,"created_at":`...)
	if b, err = appendTime(b, j.CreatedAt); err != nil {
		return b, fmt.Errorf("created_at: %w", err)
	}
	b = append(b, `,"updated_at":`...)
	if b, err = appendTime(b, j.UpdatedAt); err != nil {
		return b, fmt.Errorf("updated_at: %w", err)
	}
	if j.FinishedAt != nil {
		b = append(b, `,"finished_at":`...)
		if b, err = appendTime(b, *j.FinishedAt); err != nil {
			return b, fmt.Errorf("finished_at: %w", err)
		}
	}
	return append(b, '}'), nil
}

// appendString appends s as a JSON string, escaped exactly as encoding/json escapes it.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	i := 0
	for ; i+8 <= len(s) && !needsEscape(load64(s[i:i+8])); i += 8 {
	}
	for i < len(s) && htmlSafe[s[i]] {
		i++
	}
	if i == len(s) {
		b = append(b, s...)
		return append(b, '"')
	}
	return appendEscaped(b, s, i)
}

// Eight bytes at a time: long strings (an approval is some 400 bytes) rarely hold a byte that
// needs attention, and testing a word for one costs about what testing a byte does. The tests
// are the "has a zero byte" and "has a byte less than n" bit tricks; they may misplace the
// byte that matched, never miss one, and only whether there is one is used.
const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

func load64[S string | []byte](s S) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

func hasZero(x uint64) uint64 { return (x - lsb) &^ x }

// needsEscape reports whether any byte of x is not htmlSafe.
func needsEscape(x uint64) bool {
	m := x | (x-lsb*0x20)&^x | hasZero(x^(lsb*'"')) | hasZero(x^(lsb*'\\')) |
		hasZero(x^(lsb*'<')) | hasZero(x^(lsb*'>')) | hasZero(x^(lsb*'&'))
	return m&msb != 0
}

// endsPlain reports whether any byte of x is not stringPlain.
func endsPlain(x uint64) bool {
	m := x | (x-lsb*0x20)&^x | hasZero(x^(lsb*'"')) | hasZero(x^(lsb*'\\'))
	return m&msb != 0
}

// appendEscaped finishes appendString from s[i], the first byte that is not htmlSafe. It is
// encoding/json's appendString, step for step: invalid UTF-8 becomes \ufffd byte by byte, and
// U+2028 and U+2029 are escaped for JSONP.
func appendEscaped(b []byte, s string, i int) []byte {
	start := 0
	for i < len(s) {
		c := s[i]
		if c < utf8.RuneSelf {
			if htmlSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendRaw appends raw as json.Marshal writes a json.RawMessage: nil as null, anything else
// validated and compacted, with <, >, &, U+2028 and U+2029 escaped (json.Compact alone does
// not escape, so it would not give json.Marshal's bytes). An empty, non-nil raw is an error,
// as it is for json.Marshal.
func appendRaw(b, raw []byte) ([]byte, error) {
	if raw == nil {
		return append(b, "null"...), nil
	}
	i := skipSpace(raw, 0)
	end, err := skipValue(raw, i, 0)
	if err != nil {
		return b, err
	}
	if i := skipSpace(raw, end); i < len(raw) {
		return b, syntaxError(raw, i, "after the JSON value")
	}
	start := 0
	inString := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !inString {
			switch c {
			case ' ', '\t', '\n', '\r':
				b = append(b, raw[start:i]...)
				start = i + 1
			case '"':
				inString = true
			}
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			i++ // an escaped byte is never one to rewrite
		case '<', '>', '&':
			b = append(b, raw[start:i]...)
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			start = i + 1
		case 0xE2: // U+2028 and U+2029 are E2 80 A8 and E2 80 A9
			if i+2 < len(raw) && raw[i+1] == 0x80 && raw[i+2]&^1 == 0xA8 {
				b = append(b, raw[start:i]...)
				b = append(b, '\\', 'u', '2', '0', '2', hexDigits[raw[i+2]&0xF])
				i += 2
				start = i + 1
			}
		}
	}
	return append(b, raw[start:]...), nil
}

// appendTime appends t quoted, as time.Time.MarshalJSON writes it, and fails where it fails:
// on what RFC 3339 cannot express.
func appendTime(b []byte, t time.Time) ([]byte, error) {
	b = append(b, '"')
	n0 := len(b)
	b = t.AppendFormat(b, time.RFC3339Nano)
	s := b[n0:]
	switch {
	case s[len("9999")] != '-':
		return b[:n0-1], fmt.Errorf("%s: year outside of range [0,9999]", s)
	case s[len(s)-1] != 'Z':
		zone := s[len(s)-len("07:00"):]
		hour := 10*int(zone[0]-'0') + int(zone[1]-'0')
		if c := s[len(s)-len("Z07:00")]; '0' <= c && c <= '9' || hour >= 24 {
			return b[:n0-1], fmt.Errorf("%s: timezone hour outside of range [0,23]", s)
		}
	}
	return append(b, '"'), nil
}

// ---- Decoding ----

// Member names are matched exactly. encoding/json also takes a member whose name equals a
// field's under Unicode case folding ("JOB_ID", and "taſk" with a long s, are its task and
// job_id); these decoders refuse such a member, naming the field it resembles, rather than
// give two spellings one meaning. No encoder of these messages writes such names.

var (
	envelopeNames = [...]string{"job_id", "task", "task_version", "pool", "input", "approval", "max_attempts"}
	resultNames   = [...]string{"job_id", "task", "attempt", "worker_id", "outcome", "output", "error_message",
		"duration_ms", "module_digest", "retryable"}
)

// decodeEnvelope decodes one job envelope: one JSON object, or null for the zero Envelope as
// encoding/json gives, and nothing after it but whitespace. It accepts what encoding/json
// (a Decoder with DisallowUnknownFields, and no more data after the value) accepts, with the
// same result, except that it refuses on purpose:
//   - a member that appears twice (encoding/json keeps the last), which would let two
//     readers of one message disagree on the job;
//   - a member named like a field in another case (see above);
//   - a ']' or '}' after the object, which Decoder.More does not report as more data.
//
// An unknown member is an error, as with DisallowUnknownFields.
func decodeEnvelope(data []byte) (Envelope, error) {
	var e Envelope
	d := decoder{data: data}
	if obj, err := d.begin(); err != nil || !obj {
		return Envelope{}, err
	}
	var seen uint
	for {
		name, ok, err := d.member()
		if err != nil {
			return Envelope{}, err
		}
		if !ok {
			break
		}
		k := fieldIndex(name, envelopeNames[:])
		if k < 0 {
			if err := caseVariant(name, envelopeNames[:]); err != nil {
				return Envelope{}, err
			}
			return Envelope{}, fmt.Errorf("unknown member %s", quoteName(name))
		}
		if seen&(1<<k) != 0 {
			return Envelope{}, fmt.Errorf("duplicate member %q", envelopeNames[k])
		}
		seen |= 1 << k
		var n int64
		var set bool
		switch field := envelopeNames[k]; field {
		case "job_id":
			err = d.str(&e.JobID, field)
		case "task":
			err = d.str(&e.Task, field)
		case "task_version":
			err = d.str(&e.TaskVersion, field)
		case "pool":
			err = d.str(&e.Pool, field)
		case "input":
			e.Input, err = d.raw()
		case "approval":
			err = d.str(&e.Approval, field)
		case "max_attempts":
			if n, set, err = d.integer(field, strconv.IntSize); set {
				e.MaxAttempts = int(n)
			}
		}
		if err != nil {
			return Envelope{}, err
		}
	}
	if err := d.end(); err != nil {
		return Envelope{}, err
	}
	return e, nil
}

// decodeResult decodes one result as json.Unmarshal does: one JSON object (or null), unknown
// members validated and ignored, a repeated member's last value kept. It refuses on purpose
// only a member named like a field in another case (see above).
func decodeResult(data []byte) (Result, error) {
	var r Result
	d := decoder{data: data}
	if obj, err := d.begin(); err != nil || !obj {
		return Result{}, err
	}
	for {
		name, ok, err := d.member()
		if err != nil {
			return Result{}, err
		}
		if !ok {
			break
		}
		k := fieldIndex(name, resultNames[:])
		if k < 0 {
			if err := caseVariant(name, resultNames[:]); err != nil {
				return Result{}, err
			}
			if err := d.skip(); err != nil {
				return Result{}, err
			}
			continue
		}
		var n int64
		var set bool
		switch field := resultNames[k]; field {
		case "job_id":
			err = d.str(&r.JobID, field)
		case "task":
			err = d.str(&r.Task, field)
		case "attempt":
			if n, set, err = d.integer(field, strconv.IntSize); set {
				r.Attempt = int(n)
			}
		case "worker_id":
			err = d.str(&r.WorkerID, field)
		case "outcome":
			err = d.str(&r.Outcome, field)
		case "output":
			r.Output, err = d.raw()
		case "error_message":
			err = d.str(&r.ErrorMessage, field)
		case "duration_ms":
			if n, set, err = d.integer(field, 64); set {
				r.DurationMS = n
			}
		case "module_digest":
			err = d.str(&r.ModuleDigest, field)
		case "retryable":
			err = d.boolPtr(&r.Retryable, field)
		}
		if err != nil {
			return Result{}, err
		}
	}
	if err := d.end(); err != nil {
		return Result{}, err
	}
	return r, nil
}

func fieldIndex(name []byte, names []string) int {
	for k, n := range names {
		if string(name) == n {
			return k
		}
	}
	return -1
}

func caseVariant(name []byte, names []string) error {
	for _, n := range names {
		if bytes.EqualFold(name, []byte(n)) {
			return fmt.Errorf("member %s: member names are case-sensitive; the field is %q", quoteName(name), n)
		}
	}
	return nil
}

// quoteName quotes a member name for an error, cut short: it comes from the message, and an
// error should not carry a megabyte of it.
func quoteName(name []byte) string {
	const maxLen = 64
	if len(name) > maxLen {
		return strconv.Quote(string(name[:maxLen])) + "…"
	}
	return strconv.Quote(string(name))
}

// decoder reads the members of one top-level JSON object in order, as a pull parser: member
// returns the next name and leaves the value to one of the typed readers, which know the
// field. name may point into scratch, so it is valid only until the next call.
type decoder struct {
	data    []byte
	i       int // next byte to read
	members int
	scratch [64]byte
}

// begin reads up to the first member. It reports false for a top-level null, which leaves the
// value zero in encoding/json (and is then checked to be all there is).
func (d *decoder) begin() (bool, error) {
	i := skipSpace(d.data, 0)
	if i == len(d.data) {
		return false, errors.New("no JSON value: the data is empty or all whitespace")
	}
	switch d.data[i] {
	case '{':
		d.i = i + 1
		return true, nil
	case 'n':
		end, err := skipLiteral(d.data, i, "null")
		if err != nil {
			return false, err
		}
		d.i = end
		return false, d.end()
	}
	return false, wantError(d.data, i, "the message", "an object")
}

// member reads the next member's name and the ':' after it. ok is false after the object's
// closing brace.
func (d *decoder) member() (name []byte, ok bool, err error) {
	data := d.data
	i := skipSpace(data, d.i)
	if i < len(data) && data[i] == '}' {
		d.i = i + 1
		return nil, false, nil
	}
	if d.members > 0 {
		if i >= len(data) || data[i] != ',' {
			return nil, false, syntaxError(data, i, "after an object member")
		}
		i = skipSpace(data, i+1)
	}
	if i >= len(data) || data[i] != '"' {
		return nil, false, syntaxError(data, i, "looking for a member name")
	}
	name, end, err := readString(data, i, d.scratch[:0])
	if err != nil {
		return nil, false, err
	}
	i = skipSpace(data, end)
	if i >= len(data) || data[i] != ':' {
		return nil, false, syntaxError(data, i, "after a member name")
	}
	d.i = skipSpace(data, i+1)
	d.members++
	return name, true, nil
}

// end checks that nothing but whitespace follows the value.
func (d *decoder) end() error {
	if i := skipSpace(d.data, d.i); i < len(d.data) {
		return fmt.Errorf("data after the JSON value at offset %d", i)
	}
	return nil
}

func (d *decoder) peek() byte {
	if d.i < len(d.data) {
		return d.data[d.i]
	}
	return 0
}

// str reads a string member into dst; null leaves dst as it is, as in encoding/json.
func (d *decoder) str(dst *string, field string) error {
	switch d.peek() {
	case '"':
		var buf [128]byte // for a string with escapes: decoded here, then copied once
		s, end, err := readString(d.data, d.i, buf[:0])
		if err != nil {
			return err
		}
		*dst = string(s)
		d.i = end
		return nil
	case 'n':
		return d.null()
	}
	return wantError(d.data, d.i, fmt.Sprintf("member %q", field), "a string")
}

// integer reads an integer member of the given size in bits, and reports false for null,
// which leaves the field as it is. Like encoding/json, it refuses a fraction or an exponent
// even where the value is whole (1.0, 1e2).
func (d *decoder) integer(field string, bits int) (int64, bool, error) {
	switch c := d.peek(); {
	case c == '-' || '0' <= c && c <= '9':
		end, err := skipNumber(d.data, d.i)
		if err != nil {
			return 0, false, err
		}
		num := d.data[d.i:end]
		if bytes.ContainsAny(num, ".eE") {
			return 0, false, fmt.Errorf("member %q: %s is not an integer", field, excerpt(num))
		}
		n, err := strconv.ParseInt(string(num), 10, bits)
		if err != nil {
			return 0, false, fmt.Errorf("member %q: %s is out of range", field, excerpt(num))
		}
		d.i = end
		return n, true, nil
	case c == 'n':
		return 0, false, d.null()
	}
	return 0, false, wantError(d.data, d.i, fmt.Sprintf("member %q", field), "an integer")
}

// raw reads any value and returns a copy of its bytes, as json.RawMessage.UnmarshalJSON
// keeps them (null included, as the four bytes null).
func (d *decoder) raw() (json.RawMessage, error) {
	end, err := skipValue(d.data, d.i, 1)
	if err != nil {
		return nil, err
	}
	v := json.RawMessage(bytes.Clone(d.data[d.i:end]))
	d.i = end
	return v, nil
}

// boolPtr reads a boolean member into a new *bool; null sets dst to nil, as in encoding/json.
func (d *decoder) boolPtr(dst **bool, field string) error {
	var v bool
	switch d.peek() {
	case 't':
		v = true
		end, err := skipLiteral(d.data, d.i, "true")
		if err != nil {
			return err
		}
		d.i = end
	case 'f':
		end, err := skipLiteral(d.data, d.i, "false")
		if err != nil {
			return err
		}
		d.i = end
	case 'n':
		if err := d.null(); err != nil {
			return err
		}
		*dst = nil
		return nil
	default:
		return wantError(d.data, d.i, fmt.Sprintf("member %q", field), "a boolean")
	}
	*dst = &v
	return nil
}

func (d *decoder) null() error {
	end, err := skipLiteral(d.data, d.i, "null")
	d.i = end
	return err
}

// skip validates and passes over a value the caller does not keep.
func (d *decoder) skip() error {
	end, err := skipValue(d.data, d.i, 1)
	d.i = end
	return err
}

// readString reads the JSON string starting at data[i] (a '"') and returns its value and the
// index after it. The value is data's own bytes when nothing in it needs decoding; otherwise
// it is decoded into buf.
func readString(data []byte, i int, buf []byte) (s []byte, end int, err error) {
	j := i + 1
	for ; j+8 <= len(data) && !endsPlain(load64(data[j:j+8])); j += 8 {
	}
	for j < len(data) {
		c := data[j]
		if stringPlain[c] {
			j++
			continue
		}
		if c == '"' {
			return data[i+1 : j], j + 1, nil
		}
		if c < utf8.RuneSelf {
			break // an escape or a control character
		}
		r, size := utf8.DecodeRune(data[j:])
		if r == utf8.RuneError && size == 1 {
			break
		}
		j += size
	}
	return unquote(data, i+1, j, buf)
}

// unquote decodes the JSON string whose contents start at data[start], of which
// data[start:r] is known to need no decoding. It decodes as encoding/json does: every
// invalid UTF-8 byte and every lone or misordered surrogate becomes U+FFFD.
func unquote(data []byte, start, r int, buf []byte) ([]byte, int, error) {
	buf = append(buf, data[start:r]...)
	for r < len(data) {
		c := data[r]
		switch {
		case c == '"':
			return buf, r + 1, nil
		case c == '\\':
			if r+1 >= len(data) {
				return nil, r, syntaxError(data, r+1, "in a string escape")
			}
			switch e := data[r+1]; e {
			case '"', '\\', '/':
				buf = append(buf, e)
			case 'b':
				buf = append(buf, '\b')
			case 'f':
				buf = append(buf, '\f')
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			case 'u':
				rr, err := hex4(data, r+2)
				if err != nil {
					return nil, r, err
				}
				r += 6
				if utf16.IsSurrogate(rr) {
					// A pair only if the very next escape completes it; if not, that escape
					// is decoded on its own.
					rr1 := rune(-1)
					if r+1 < len(data) && data[r] == '\\' && data[r+1] == 'u' {
						if v, err := hex4(data, r+2); err == nil {
							rr1 = v
						}
					}
					if dec := utf16.DecodeRune(rr, rr1); dec != unicode.ReplacementChar {
						buf = utf8.AppendRune(buf, dec)
						r += 6
						continue
					}
					rr = unicode.ReplacementChar
				}
				buf = utf8.AppendRune(buf, rr)
				continue
			default:
				return nil, r, syntaxError(data, r+1, "in a string escape")
			}
			r += 2
		case c < 0x20:
			return nil, r, syntaxError(data, r, "in a string (control characters must be escaped)")
		case c < utf8.RuneSelf:
			buf = append(buf, c)
			r++
		default:
			rr, size := utf8.DecodeRune(data[r:])
			buf = utf8.AppendRune(buf, rr) // U+FFFD for an invalid byte
			r += size
		}
	}
	return nil, r, syntaxError(data, r, "in a string")
}

func hex4(data []byte, i int) (rune, error) {
	if i+4 > len(data) {
		for j := i; j < len(data); j++ {
			if unhex(data[j]) < 0 {
				return 0, syntaxError(data, j, "in a \\u escape")
			}
		}
		return 0, syntaxError(data, len(data), "in a \\u escape")
	}
	var r rune
	for j := i; j < i+4; j++ {
		v := unhex(data[j])
		if v < 0 {
			return 0, syntaxError(data, j, "in a \\u escape")
		}
		r = r<<4 | v
	}
	return r, nil
}

func unhex(c byte) rune {
	switch {
	case '0' <= c && c <= '9':
		return rune(c - '0')
	case 'a' <= c && c <= 'f':
		return rune(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}

func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// skipValue validates the JSON value starting at data[i] (whitespace already skipped) and
// returns the index after it. depth is the number of arrays and objects around the value.
// It is iterative, so that nesting costs a byte of stack per level and not a call frame.
func skipValue(data []byte, i, depth int) (int, error) {
	var stackArr [64]byte
	open := stackArr[:0] // the closing byte of each array and object still open
	for {
		// A value starts at data[i].
		if i >= len(data) {
			return i, syntaxError(data, i, "looking for the beginning of a value")
		}
		var err error
		switch c := data[i]; c {
		case '{', '[':
			if depth+len(open) >= maxDepth {
				return i, fmt.Errorf("nesting deeper than %d arrays and objects at offset %d", maxDepth, i)
			}
			i = skipSpace(data, i+1)
			if c == '[' {
				if i < len(data) && data[i] == ']' {
					i++
					break
				}
				open = append(open, ']')
				continue
			}
			if i < len(data) && data[i] == '}' {
				i++
				break
			}
			open = append(open, '}')
			if i, err = skipMemberName(data, i); err != nil {
				return i, err
			}
			continue
		case '"':
			i, err = skipString(data, i)
		case 't':
			i, err = skipLiteral(data, i, "true")
		case 'f':
			i, err = skipLiteral(data, i, "false")
		case 'n':
			i, err = skipLiteral(data, i, "null")
		default:
			if c == '-' || '0' <= c && c <= '9' {
				i, err = skipNumber(data, i)
			} else {
				err = syntaxError(data, i, "looking for the beginning of a value")
			}
		}
		if err != nil {
			return i, err
		}
		// A value ended before data[i]: close what it ends, or go on to the next element.
	closing:
		for len(open) > 0 {
			i = skipSpace(data, i)
			if i >= len(data) {
				return i, syntaxError(data, i, "in an array or object")
			}
			switch c, want := data[i], open[len(open)-1]; {
			case c == want:
				open = open[:len(open)-1]
				i++
			case c == ',':
				i = skipSpace(data, i+1)
				if want == '}' {
					if i, err = skipMemberName(data, i); err != nil {
						return i, err
					}
				}
				break closing
			default:
				return i, syntaxError(data, i, "after an array element or object member")
			}
		}
		if len(open) == 0 {
			return i, nil
		}
	}
}

// skipMemberName passes over a member name, the ':' after it and the whitespace after that.
func skipMemberName(data []byte, i int) (int, error) {
	if i >= len(data) || data[i] != '"' {
		return i, syntaxError(data, i, "looking for a member name")
	}
	i, err := skipString(data, i)
	if err != nil {
		return i, err
	}
	i = skipSpace(data, i)
	if i >= len(data) || data[i] != ':' {
		return i, syntaxError(data, i, "after a member name")
	}
	return skipSpace(data, i+1), nil
}

// skipString validates the JSON string starting at data[i]. Like encoding/json's scanner, it
// takes any byte that is not a control character, valid UTF-8 or not.
func skipString(data []byte, i int) (int, error) {
	for i++; i < len(data); {
		switch c := data[i]; {
		case c == '"':
			return i + 1, nil
		case c == '\\':
			if i+1 >= len(data) {
				return i + 1, syntaxError(data, i+1, "in a string escape")
			}
			switch data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if _, err := hex4(data, i+2); err != nil {
					return i, err
				}
				i += 6
			default:
				return i + 1, syntaxError(data, i+1, "in a string escape")
			}
		case c < 0x20:
			return i, syntaxError(data, i, "in a string (control characters must be escaped)")
		default:
			i++
		}
	}
	return i, syntaxError(data, i, "in a string")
}

func skipLiteral(data []byte, i int, lit string) (int, error) {
	for k := 0; k < len(lit); k++ {
		if i+k >= len(data) || data[i+k] != lit[k] {
			return i + k, syntaxError(data, i+k, "in the literal "+lit)
		}
	}
	return i + len(lit), nil
}

// skipNumber validates the JSON number starting at data[i]:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func skipNumber(data []byte, i int) (int, error) {
	digits := func(i int) (int, error) {
		if i >= len(data) || data[i] < '0' || data[i] > '9' {
			return i, syntaxError(data, i, "in a number")
		}
		for i < len(data) && '0' <= data[i] && data[i] <= '9' {
			i++
		}
		return i, nil
	}
	if data[i] == '-' {
		i++
	}
	var err error
	if i < len(data) && data[i] == '0' {
		i++
	} else if i, err = digits(i); err != nil {
		return i, err
	}
	if i < len(data) && data[i] == '.' {
		if i, err = digits(i + 1); err != nil {
			return i, err
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		i++
		if i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if i, err = digits(i); err != nil {
			return i, err
		}
	}
	return i, nil
}

func syntaxError(data []byte, i int, context string) error {
	if i >= len(data) {
		return fmt.Errorf("unexpected end of JSON input %s (offset %d)", context, i)
	}
	return fmt.Errorf("invalid character %q %s at offset %d", data[i:i+1], context, i)
}

// wantError reports that the value at data[i] is of the wrong type, or not JSON at all.
func wantError(data []byte, i int, what, want string) error {
	if i >= len(data) {
		return syntaxError(data, i, "looking for the beginning of a value")
	}
	var got string
	switch c := data[i]; {
	case c == '{':
		got = "an object"
	case c == '[':
		got = "an array"
	case c == '"':
		got = "a string"
	case c == 't' || c == 'f':
		got = "a boolean"
	case c == 'n':
		got = "null"
	case c == '-' || '0' <= c && c <= '9':
		got = "a number"
	default:
		return syntaxError(data, i, "looking for the beginning of a value")
	}
	return fmt.Errorf("%s: want %s, got %s", what, want, got)
}

// excerpt quotes the start of b for an error message.
func excerpt(b []byte) string {
	const maxLen = 32
	if len(b) > maxLen {
		return string(b[:maxLen]) + "…"
	}
	return string(b)
}

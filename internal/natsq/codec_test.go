package natsq

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// The codecs are checked against encoding/json itself, never against expectations written
// by hand: the encoders must write json.Marshal's bytes, and the decoders must agree with the
// code they replaced on every input, apart from the deliberate refusals of decodeEnvelope and
// decodeResult. The tables name the inputs that matter; the fuzz targets look for the rest.
// Seeds: testdata/fuzz/FuzzEnvelopeDecode, FuzzResultDecode and FuzzCodecRoundTrip.

// ---- References: the code the codecs replaced ----

func referenceEnvelope(data []byte) (Envelope, error) {
	var env Envelope
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&env); err != nil {
		return env, err
	}
	if dec.More() {
		return env, errors.New("more data after the value")
	}
	return env, nil
}

func referenceResult(data []byte) (Result, error) {
	var r Result
	err := json.Unmarshal(data, &r)
	return r, err
}

// ---- Differential checks, shared by the tables and the fuzz targets ----

type verdict int

const (
	accepted verdict = iota
	rejected         // by both
	refused          // by the codec only, on purpose
)

func (v verdict) String() string { return [...]string{"accepted", "rejected", "refused on purpose"}[v] }

// deliberate reports which of the codecs' deliberate refusals data gives reason for: a field
// named twice, a member named like a field in another case, and a ']' or '}' after the
// object. It reads data with encoding/json's tokenizer, independently of the codec.
func deliberate(data []byte, names []string) (dup, folded, trailer bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var v json.RawMessage
	if err := dec.Decode(&v); err != nil {
		return
	}
	rest := bytes.TrimLeft(data[dec.InputOffset():], " \t\r\n")
	trailer = len(rest) > 0 && (rest[0] == ']' || rest[0] == '}')
	dec = json.NewDecoder(bytes.NewReader(v))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return
		}
		name, _ := tok.(string)
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return
		}
		switch {
		case slices.Contains(names, name):
			dup = dup || seen[name]
			seen[name] = true
		case slices.ContainsFunc(names, func(n string) bool { return strings.EqualFold(n, name) }):
			folded = true
		}
	}
	return
}

// onPurpose reports whether err is a refusal decodeEnvelope or decodeResult makes on purpose
// and data gives reason for it. allowDup and allowTrailer say which refusals the decoder
// makes (decodeResult keeps the last of duplicates, as json.Unmarshal does).
func onPurpose(err error, data []byte, names []string, allowDup, allowTrailer bool) bool {
	dup, folded, trailer := deliberate(data, names)
	msg := err.Error()
	return allowDup && dup && strings.HasPrefix(msg, "duplicate member ") ||
		folded && strings.Contains(msg, "member names are case-sensitive") ||
		allowTrailer && trailer && strings.HasPrefix(msg, "data after the JSON value")
}

func diffEnvelope(t testing.TB, data []byte) verdict {
	t.Helper()
	got, err := decodeEnvelope(data)
	want, werr := referenceEnvelope(data)
	switch {
	case err != nil && werr != nil:
		return rejected
	case werr != nil:
		t.Fatalf("decodeEnvelope(%q) = %+v, nil; encoding/json refuses it: %v", data, got, werr)
	case err != nil:
		if onPurpose(err, data, envelopeNames[:], true, true) {
			return refused
		}
		t.Fatalf("decodeEnvelope(%q) = %v; encoding/json accepts it as %+v", data, err, want)
	case !reflect.DeepEqual(got, want):
		t.Fatalf("decodeEnvelope(%q) = %+v (input %q), want %+v (input %q)", data, got, got.Input, want, want.Input)
	}
	return accepted
}

func diffResult(t testing.TB, data []byte) verdict {
	t.Helper()
	got, err := decodeResult(data)
	want, werr := referenceResult(data)
	switch {
	case err != nil && werr != nil:
		return rejected
	case werr != nil:
		t.Fatalf("decodeResult(%q) = %+v, nil; json.Unmarshal refuses it: %v", data, got, werr)
	case err != nil:
		if onPurpose(err, data, resultNames[:], false, false) {
			return refused
		}
		t.Fatalf("decodeResult(%q) = %v; json.Unmarshal accepts it as %+v", data, err, want)
	case !reflect.DeepEqual(got, want):
		t.Fatalf("decodeResult(%q) = %s, want %s", data, showResult(got), showResult(want))
	}
	return accepted
}

func showResult(r Result) string {
	retryable := "nil"
	if r.Retryable != nil {
		retryable = strconv.FormatBool(*r.Retryable)
	}
	return fmt.Sprintf("%+v (retryable %s, output %q)", r, retryable, r.Output)
}

// sameEncoding checks that an encoder wrote what json.Marshal writes for v, or failed
// where it fails.
func sameEncoding(t testing.TB, name string, got []byte, err error, v any) {
	t.Helper()
	want, werr := json.Marshal(v)
	switch {
	case err != nil && werr != nil:
	case err != nil:
		t.Fatalf("%s.appendJSON = %v; json.Marshal writes %s", name, err, want)
	case werr != nil:
		t.Fatalf("%s.appendJSON = %s; json.Marshal fails: %v", name, got, werr)
	case !bytes.Equal(got, want):
		t.Fatalf("%s.appendJSON =\n%s\nwant (json.Marshal)\n%s", name, got, want)
	}
}

// ---- Values ----

// A realistic approval: a compact JWS of about 400 base64url characters.
var benchApproval = "eyJhbGciOiJFZERTQSIsImtpZCI6ImFwcHJvdmVyLTIwMjYtMDEifQ." +
	strings.Repeat("eyJqb2JfaWQiOiIwMUpHWjNGN1ZQUjhLMlFYOFk0TjVNN1dCMyIsInRhc2siOiJyZXNpemUtaW1hZ2Ui", 4) +
	".3q2-7w_R1xbG7nKpZ0uD8sVfA6mYtL4cHjE9iWkN2oXrMe5PlQ1TBaJvUdSgI0yC_hFzO-mnb7qWe3rTy8uI9oP"

func sampleEnvelope() Envelope {
	return Envelope{JobID: "01JGZ3F7VPR8K2QX8Y4N5M7WB3", Task: "resize-image", TaskVersion: "1.4.2", Pool: "default",
		Input: json.RawMessage(`{"n":1}`), Approval: benchApproval, MaxAttempts: 3}
}

func sampleResult() Result {
	no := false
	return Result{JobID: "01JGZ3F7VPR8K2QX8Y4N5M7WB3", Task: "resize-image", Attempt: 1, WorkerID: "w-3f9a2c1d",
		Outcome: "ok", Output: json.RawMessage(`{"width":640,"height":480}`), DurationMS: 37,
		ModuleDigest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", Retryable: &no}
}

func sampleRecord() Record {
	created := time.Date(2026, 3, 14, 9, 26, 53, 589793238, time.UTC)
	finished := created.Add(1500 * time.Millisecond)
	return Record{Approval: benchApproval, JobsSeq: 48213, Job: api.Job{
		ID: "01JGZ3F7VPR8K2QX8Y4N5M7WB3", Task: "resize-image", TaskVersion: "1.4.2", Pool: "default",
		State: api.StateSucceeded, Input: json.RawMessage(`{"n":1}`), HasApproval: true, Attempt: 1, MaxAttempts: 3,
		Outcome: "ok", Output: json.RawMessage(`{"width":640,"height":480}`), DurationMS: 37,
		ModuleDigest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		SubmittedBy:  "tok_client_1", CreatedAt: created, UpdatedAt: finished, FinishedAt: &finished,
	}, Completions: []Completion{{Attempt: 1, Outcome: "ok", WorkerID: "w-3f9a2c1d", At: finished}}}
}

// ---- Encoding ----

// TestCodecCoversEveryField fills every field of the three types (and of api.Job and
// Completion) by reflection, so that a field added to a struct and not to the codec fails
// here rather than vanishing from the wire.
func TestCodecCoversEveryField(t *testing.T) {
	t.Parallel()
	var env Envelope
	var res Result
	var rec Record
	for _, v := range []any{&env, &res, &rec} {
		fill(t, reflect.ValueOf(v).Elem())
	}
	b, err := env.appendJSON(nil)
	sameEncoding(t, "Envelope", b, err, &env)
	if got, err := decodeEnvelope(b); err != nil || !reflect.DeepEqual(got, env) {
		t.Fatalf("decodeEnvelope(%s) = %+v, %v, want %+v", b, got, err, env)
	}
	b, err = res.appendJSON(nil)
	sameEncoding(t, "Result", b, err, &res)
	if got, err := decodeResult(b); err != nil || !reflect.DeepEqual(got, res) {
		t.Fatalf("decodeResult(%s) = %+v, %v, want %+v", b, got, err, res)
	}
	b, err = rec.appendJSON(nil)
	sameEncoding(t, "Record", b, err, &rec)
	// The filled values are all non-zero, so json.Marshal omits nothing: every field must
	// be in the output.
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if n, want := len(back["job"].(map[string]any)), reflect.TypeFor[api.Job]().NumField(); n != want {
		t.Fatalf("Record.appendJSON wrote %d job fields, want %d: %s", n, want, b)
	}
}

// fill sets every field reachable from v to a distinct non-zero value.
func fill(t *testing.T, v reflect.Value) {
	n := 0
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		n++
		switch v.Type() {
		case reflect.TypeFor[json.RawMessage]():
			v.SetBytes([]byte(`{"n":` + string(rune('0'+n%10)) + `}`))
			return
		case reflect.TypeFor[time.Time]():
			v.Set(reflect.ValueOf(time.Date(2026, 1, 2, 3, 4, 5, 6000*n, time.UTC)))
			return
		}
		switch v.Kind() {
		case reflect.String:
			v.SetString("s" + strings.Repeat("x", n))
		case reflect.Int, reflect.Int64:
			v.SetInt(int64(n))
		case reflect.Uint64:
			v.SetUint(uint64(n))
		case reflect.Bool:
			v.SetBool(true)
		case reflect.Pointer:
			v.Set(reflect.New(v.Type().Elem()))
			walk(v.Elem())
		case reflect.Slice:
			v.Set(reflect.MakeSlice(v.Type(), 2, 2))
			walk(v.Index(0))
			walk(v.Index(1))
		case reflect.Struct:
			for i := range v.NumField() {
				walk(v.Field(i))
			}
		default:
			t.Fatalf("fill: no value for a %s; teach fill (and the codec) about it", v.Type())
		}
	}
	walk(v)
}

// exotic strings: escapes, HTML, JSONP separators, invalid UTF-8 and surrogates.
var exotic = []string{
	"",
	"plain",
	"héllo 世界 😀",
	"<script>alert('x')</script> & more",
	"\x00\x01\x07\b\t\n\v\f\r\x1b\x1f\x7f",
	`quote " backslash \ slash /`,
	"sep\u2028ara\u2029tors",
	"bad \xff utf8 \xc3( and \xe2\x82 cut",
	"encoded surrogate \xed\xa0\x80 and replacement \ufffd",
	"\xf4\x90\x80\x80 above U+10FFFF",
	strings.Repeat("long&", 200),
}

var exoticRaw = []json.RawMessage{
	nil,
	{},
	json.RawMessage(`null`),
	json.RawMessage(`{"n":1}`),
	json.RawMessage(" \t\r\n{ \"a\" : [ 1 , -2.5e+3 , true , false , null ] , \"b\" : { } } \n"),
	json.RawMessage(`"<&>\u003c \" \\ ` + "\u2028\u2029 \xff" + `"`),
	json.RawMessage(`[{"<tag>":"a&b"}]`),
	json.RawMessage(`{"n":1`),
	json.RawMessage(`{"n":1} {}`),
	json.RawMessage(`   `),
	json.RawMessage(`[01]`),
	json.RawMessage("\"tab\tinside\""),
	json.RawMessage(strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth)),
	json.RawMessage(strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1)),
}

func TestEnvelopeEncodeMatchesJSON(t *testing.T) {
	t.Parallel()
	cases := []Envelope{{}, sampleEnvelope(), {MaxAttempts: -1 << 63}, {MaxAttempts: 1<<63 - 1}}
	for _, s := range exotic {
		e := sampleEnvelope()
		e.JobID, e.Task, e.TaskVersion, e.Pool, e.Approval = s, s+"t", "v"+s, s+s, s
		cases = append(cases, e)
	}
	for _, raw := range exoticRaw {
		e := sampleEnvelope()
		e.Input = raw
		cases = append(cases, e)
	}
	for _, e := range cases {
		b, err := e.appendJSON(nil)
		sameEncoding(t, "Envelope", b, err, &e)
		// Appending to a buffer that holds something keeps it.
		b, err = e.appendJSON([]byte("prefix"))
		if want, werr := json.Marshal(&e); werr == nil && (err != nil || string(b) != "prefix"+string(want)) {
			t.Fatalf("Envelope.appendJSON(prefix) = %q, %v, want prefix%s", b, err, want)
		} else if werr != nil && string(b) != "prefix" {
			t.Fatalf("Envelope.appendJSON(prefix) = %q on error, want the buffer as it was", b)
		}
	}
}

func TestResultEncodeMatchesJSON(t *testing.T) {
	t.Parallel()
	yes, no := true, false
	cases := []Result{{}, sampleResult(), {Retryable: &yes}, {Retryable: &no, DurationMS: -1, Attempt: -7}}
	for _, s := range exotic {
		r := sampleResult()
		r.JobID, r.Task, r.WorkerID, r.Outcome, r.ErrorMessage, r.ModuleDigest = s, s, s, s, s, s
		cases = append(cases, r)
	}
	for _, raw := range exoticRaw {
		r := sampleResult()
		r.Output = raw
		cases = append(cases, r)
	}
	for _, r := range cases {
		b, err := r.appendJSON(nil)
		sameEncoding(t, "Result", b, err, &r)
	}
}

func TestRecordEncodeMatchesJSON(t *testing.T) {
	t.Parallel()
	ist := time.FixedZone("IST", 5*3600+30*60)
	pst := time.FixedZone("PST", -8*3600)
	at := func(y int, loc *time.Location, ns int) time.Time { return time.Date(y, 7, 1, 23, 59, 59, ns, loc) }
	ptr := func(t time.Time) *time.Time { return &t }
	times := []time.Time{
		{},
		at(2026, time.UTC, 0),
		at(2026, time.UTC, 1),
		at(2026, time.UTC, 120_000_000),
		at(2026, ist, 999_999_999),
		at(2026, pst, 5000),
		at(0, time.UTC, 0),
		at(9999, pst, 0),
		at(2026, time.FixedZone("", 3600+30), 0),    // seconds in the offset are not written
		at(2026, time.FixedZone("", -(23*3600)), 0), // the largest offset RFC 3339 allows
		time.Now(),                                  // with a monotonic reading
		// json.Marshal fails on these:
		at(10000, time.UTC, 0),
		at(-1, time.UTC, 0),
		at(2026, time.FixedZone("", 24*3600), 0),
		at(2026, time.FixedZone("", -100*3600), 0),
	}
	base := sampleRecord()
	cases := []Record{{}, base, {Job: api.Job{State: "a state of its own"}}}
	minimal := base
	minimal.Job = api.Job{ID: "x", State: api.StateQueued, CreatedAt: times[1], UpdatedAt: times[1]}
	minimal.Completions, minimal.JobsSeq = nil, 0
	cases = append(cases, minimal)
	empty := base
	empty.Completions = []Completion{}
	cases = append(cases, empty)
	many := base
	many.Completions = []Completion{{Attempt: 1, Outcome: "error"}, {Attempt: 2, Outcome: "ok", WorkerID: "w"}, {}}
	cases = append(cases, many)
	for _, tm := range times {
		r := base
		r.Job.CreatedAt, r.Job.UpdatedAt, r.Job.NotBefore, r.Job.FinishedAt = tm, tm, ptr(tm), nil
		cases = append(cases, r)
		r = base
		r.Job.UpdatedAt = tm
		cases = append(cases, r)
		r = base
		r.Job.FinishedAt = ptr(tm)
		cases = append(cases, r)
		r = base
		r.Completions = []Completion{{Attempt: 2, Outcome: "ok", At: tm}}
		cases = append(cases, r)
	}
	for _, s := range exotic {
		r := base
		j := &r.Job
		j.ID, j.Task, j.TaskVersion, j.Pool, j.State, j.Outcome, j.ErrorMessage = s, s, s, s, api.State(s), s, s
		j.ModuleDigest, j.IdempotencyKey, j.SubmittedBy, r.Approval = s, s, s, s
		r.Completions = []Completion{{Attempt: 1, Outcome: s, WorkerID: s}}
		cases = append(cases, r)
	}
	for _, raw := range exoticRaw {
		r := base
		r.Job.Input = raw
		cases = append(cases, r)
		r = base
		r.Job.Output = raw
		cases = append(cases, r)
	}
	for _, r := range cases {
		b, err := r.appendJSON(nil)
		sameEncoding(t, "Record", b, err, &r)
	}
}

// TestEncodeErrors: an encoding error names the field and what is wrong with it.
func TestEncodeErrors(t *testing.T) {
	t.Parallel()
	env := sampleEnvelope()
	env.Input = json.RawMessage{}
	res := sampleResult()
	res.Output = json.RawMessage(`{"n":}`)
	rec := sampleRecord()
	rec.Job.UpdatedAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	rec2 := sampleRecord()
	rec2.Completions[0].At = time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 25*3600))
	for _, c := range []struct {
		enc  func([]byte) ([]byte, error)
		want string
	}{
		{env.appendJSON, `natsq: encode envelope: input: unexpected end of JSON input looking for the beginning of a value (offset 0)`},
		{res.appendJSON, `natsq: encode result: output: invalid character "}" looking for the beginning of a value at offset 5`},
		{rec.appendJSON, `natsq: encode record of job "01JGZ3F7VPR8K2QX8Y4N5M7WB3": job.updated_at: 10000-01-01T00:00:00Z: year outside of range [0,9999]`},
		{rec2.appendJSON, `natsq: encode record of job "01JGZ3F7VPR8K2QX8Y4N5M7WB3": completions[0].at: 2026-01-01T00:00:00+25:00: timezone hour outside of range [0,23]`},
	} {
		b, err := c.enc([]byte("keep"))
		if err == nil || err.Error() != c.want || string(b) != "keep" {
			t.Errorf("appendJSON = %q, %v, want \"keep\", %s", b, err, c.want)
		}
	}
}

// ---- Decoding ----

const validEnvelope = `{"job_id":"j1","task":"t","task_version":"1.0.0","pool":"p","input":{"n":1},"approval":"tok","max_attempts":3}`

// replace returns validEnvelope (or validResult) with one member's value replaced.
func replace(doc, member, value string) string {
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(doc), &m); err != nil {
		panic(err)
	}
	i := strings.Index(doc, `"`+member+`":`)
	if i < 0 {
		panic(member)
	}
	j := i + len(member) + 3 + len(m[member])
	return doc[:i+len(member)+3] + value + doc[j:]
}

type decodeCase struct {
	name string
	data string
	want verdict
}

func envelopeCases() []decodeCase {
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	cases := []decodeCase{
		{"valid", validEnvelope, accepted},
		{"whitespace everywhere", " \t\r\n{ \"job_id\" : \"j1\" ,\n\"input\" : { \"n\" : [ 1 , 2 ] } , \"max_attempts\" : 3 }\n\t ", accepted},
		{"members in another order", `{"max_attempts":1,"input":[],"job_id":"x"}`, accepted},
		{"empty object", `{}`, accepted},
		{"top-level null", ` null `, accepted},
		{"null members", `{"job_id":null,"task":null,"task_version":null,"pool":null,"input":null,"approval":null,"max_attempts":null}`, accepted},
		{"input string", replace(validEnvelope, "input", `"a \"b\" \u00e9 <&>"`), accepted},
		{"input number", replace(validEnvelope, "input", `-12.5e-3`), accepted},
		{"input literals", replace(validEnvelope, "input", `[true,false,null,{}]`), accepted},
		{"input invalid UTF-8 kept", replace(validEnvelope, "input", "\"\xff\xfe\""), accepted},
		{"input nested to the limit", replace(validEnvelope, "input", deep(maxDepth-1)), accepted},
		{"input nested too deep", replace(validEnvelope, "input", deep(maxDepth)), rejected},
		{"escapes", replace(validEnvelope, "job_id", `"\" \\ \/ \b \f \n \r \t \u0000 \u00e9 \u20AC \ud83d\ude00"`), accepted},
		{"lone high surrogate", replace(validEnvelope, "job_id", `"a\ud800b"`), accepted},
		{"lone low surrogate", replace(validEnvelope, "job_id", `"a\udc00b"`), accepted},
		{"surrogates reversed", replace(validEnvelope, "job_id", `"\udc00\ud800"`), accepted},
		{"high surrogate then a letter", replace(validEnvelope, "job_id", `"\ud800\u0041"`), accepted},
		{"high surrogate then a pair", replace(validEnvelope, "job_id", `"\ud800\ud83d\ude00"`), accepted},
		{"high surrogate then a plain escape", replace(validEnvelope, "job_id", `"\ud800\n"`), accepted},
		{"invalid UTF-8", replace(validEnvelope, "job_id", "\"\xff a \xc3( \xed\xa0\x80 \xf4\x90\x80\x80\""), accepted},
		{"raw non-ASCII", replace(validEnvelope, "task", `"tâche 世界 😀 `+"\u2028"+`"`), accepted},
		{"DEL unescaped", replace(validEnvelope, "task", "\"a\x7fb\""), accepted},
		{"escaped member name", `{"job\u005fid":"x"}`, accepted},
		{"max_attempts minus zero", replace(validEnvelope, "max_attempts", `-0`), accepted},
		{"max_attempts largest", replace(validEnvelope, "max_attempts", `9223372036854775807`), accepted},
		{"max_attempts smallest", replace(validEnvelope, "max_attempts", `-9223372036854775808`), accepted},

		{"duplicate member", `{"job_id":"a","job_id":"b"}`, refused},
		{"duplicate null member", `{"input":null,"input":null}`, refused},
		{"upper case", `{"JOB_ID":"a"}`, refused},
		{"mixed case", `{"Max_Attempts":3}`, refused},
		{"long s folds to s", `{"taſk":"t"}`, refused},
		{"Kelvin sign folds to k", "{\"tas\u212a\":\"t\"}", refused},
		{"case variant and exact", `{"job_id":"a","Job_Id":"b"}`, refused},
		{"bracket after", validEnvelope + ` ]`, refused},
		{"brace after", validEnvelope + `}`, refused},
		{"brace and garbage after", validEnvelope + `}garbage`, refused},
		{"null then bracket", `null]`, refused},

		{"unknown member", replace(validEnvelope, "pool", `"p","extra":1`), rejected},
		{"unknown member, fold of nothing", `{"jobid":"x"}`, rejected},
		{"unknown member with invalid value", `{"extra":[1,}`, rejected},
		{"job_id number", replace(validEnvelope, "job_id", `1`), rejected},
		{"task array", replace(validEnvelope, "task", `["t"]`), rejected},
		{"pool object", replace(validEnvelope, "pool", `{}`), rejected},
		{"approval boolean", replace(validEnvelope, "approval", `true`), rejected},
		{"max_attempts string", replace(validEnvelope, "max_attempts", `"3"`), rejected},
		{"max_attempts fraction", replace(validEnvelope, "max_attempts", `1.5`), rejected},
		{"max_attempts whole fraction", replace(validEnvelope, "max_attempts", `1.0`), rejected},
		{"max_attempts exponent", replace(validEnvelope, "max_attempts", `1e2`), rejected},
		{"max_attempts too large", replace(validEnvelope, "max_attempts", `9223372036854775808`), rejected},
		{"max_attempts too small", replace(validEnvelope, "max_attempts", `-9223372036854775809`), rejected},
		{"max_attempts leading zero", replace(validEnvelope, "max_attempts", `03`), rejected},
		{"max_attempts plus", replace(validEnvelope, "max_attempts", `+3`), rejected},
		{"max_attempts bare minus", replace(validEnvelope, "max_attempts", `-`), rejected},
		{"max_attempts boolean", replace(validEnvelope, "max_attempts", `false`), rejected},
		{"trailing value", validEnvelope + ` {}`, rejected},
		{"trailing garbage", validEnvelope + ` x`, rejected},
		{"trailing NUL", validEnvelope + "\x00", rejected},
		{"two nulls", `null null`, rejected},
		{"null then letter", `nullx`, rejected},
		{"empty", ``, rejected},
		{"whitespace only", " \n\t", rejected},
		{"byte order mark", "\ufeff" + validEnvelope, rejected},
		{"array", `[]`, rejected},
		{"string", `"x"`, rejected},
		{"number", `1`, rejected},
		{"boolean", `true`, rejected},
		{"not json", `this is not json`, rejected},
		{"misspelt null", `nul`, rejected},
		{"trailing comma", `{"job_id":"a",}`, rejected},
		{"leading comma", `{,"job_id":"a"}`, rejected},
		{"missing colon", `{"job_id" "a"}`, rejected},
		{"missing comma", `{"job_id":"a" "task":"b"}`, rejected},
		{"missing value", `{"job_id":}`, rejected},
		{"unquoted name", `{job_id:"a"}`, rejected},
		{"single quotes", `{'job_id':'a'}`, rejected},
		{"control character in string", "{\"job_id\":\"a\x01b\"}", rejected},
		{"newline in string", "{\"job_id\":\"a\nb\"}", rejected},
		{"control character in name", "{\"job\x01id\":\"a\"}", rejected},
		{"bad escape", `{"job_id":"\q"}`, rejected},
		{"bad single-quote escape", `{"job_id":"\'"}`, rejected},
		{"short unicode escape", `{"job_id":"\u12"}`, rejected},
		{"bad hex in escape", `{"job_id":"\u12G4"}`, rejected},
		{"bad hex after a high surrogate", `{"job_id":"\ud800\uZZZZ"}`, rejected},
		{"input array trailing comma", replace(validEnvelope, "input", `[1,]`), rejected},
		{"input object without value", replace(validEnvelope, "input", `{"a"}`), rejected},
		{"input bad literal", replace(validEnvelope, "input", `tru`), rejected},
		{"input leading zero", replace(validEnvelope, "input", `01`), rejected},
		{"input bare fraction", replace(validEnvelope, "input", `1.`), rejected},
		{"input bare exponent", replace(validEnvelope, "input", `1e`), rejected},
		{"input control character", replace(validEnvelope, "input", "\"\x1f\""), rejected},
		{"input mismatched brackets", replace(validEnvelope, "input", `[}`), rejected},
		{"input unclosed", `{"input":[1,2`, rejected},
		{"input NaN", replace(validEnvelope, "input", `NaN`), rejected},
		{"input bad escape", replace(validEnvelope, "input", `"\q"`), rejected},
		{"input short unicode escape", replace(validEnvelope, "input", `"\u12"`), rejected},
		{"input ends in an escape", `{"input":"\`, rejected},
		{"input ends in a unicode escape", `{"input":"\u12`, rejected},
		{"input ends in a bad unicode escape", `{"input":"\u1x`, rejected},
		{"input number after a comma in an object", replace(validEnvelope, "input", `{"a":1,2}`), rejected},
		{"job_id not a value", replace(validEnvelope, "job_id", `x`), rejected},
		{"member name ends in an escape", `{"job_\`, rejected},
		{"max_attempts of 40 digits", replace(validEnvelope, "max_attempts", strings.Repeat("9", 40)), rejected},
	}
	// Every proper prefix of a valid envelope is truncated, and rejected.
	for i := range len(validEnvelope) {
		cases = append(cases, decodeCase{"truncated at " + validEnvelope[i:min(i+3, len(validEnvelope))], validEnvelope[:i], rejected})
	}
	return cases
}

func TestDecodeEnvelope(t *testing.T) {
	t.Parallel()
	for _, c := range envelopeCases() {
		if got := diffEnvelope(t, []byte(c.data)); got != c.want {
			t.Errorf("%s: decodeEnvelope(%q) was %v, want %v", c.name, c.data, got, c.want)
		}
	}
}

// TestDecodeEnvelopeErrors: the error says what is wrong and where; it ends up in the poison
// reason of a dead-lettered message.
func TestDecodeEnvelopeErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ data, want string }{
		{`{"extra":1}`, `unknown member "extra"`},
		{`{"job_id":"a","job_id":"b"}`, `duplicate member "job_id"`},
		{`{"JOB_ID":"a"}`, `member "JOB_ID": member names are case-sensitive; the field is "job_id"`},
		{replace(validEnvelope, "max_attempts", `1.5`), `member "max_attempts": 1.5 is not an integer`},
		{replace(validEnvelope, "max_attempts", `"3"`), `member "max_attempts": want an integer, got a string`},
		{replace(validEnvelope, "task", `7`), `member "task": want a string, got a number`},
		{replace(validEnvelope, "max_attempts", `99999999999999999999`), `member "max_attempts": 99999999999999999999 is out of range`},
		{validEnvelope + `]`, fmt.Sprintf("data after the JSON value at offset %d", len(validEnvelope))},
		{`[]`, `the message: want an object, got an array`},
		{``, `no JSON value: the data is empty or all whitespace`},
		{`{"job_id":"a"`, `unexpected end of JSON input after an object member (offset 13)`},
		{`{"job_id":"a\qb"}`, `invalid character "q" in a string escape at offset 13`},
		{`{"` + strings.Repeat("x", 100) + `":1}`, `unknown member "` + strings.Repeat("x", 64) + `"…`},
	} {
		_, err := decodeEnvelope([]byte(c.data))
		if err == nil || err.Error() != c.want {
			t.Errorf("decodeEnvelope(%q) = %v, want %s", c.data, err, c.want)
		}
	}
}

const validResult = `{"job_id":"j1","task":"t","attempt":2,"worker_id":"w","outcome":"error","output":{"n":1},"error_message":"boom","duration_ms":12,"module_digest":"sha256:ab","retryable":true}`

func resultCases() []decodeCase {
	cases := []decodeCase{
		{"valid", validResult, accepted},
		{"minimal", `{"job_id":"j1","attempt":1,"outcome":"ok"}`, accepted},
		{"top-level null", `null`, accepted},
		{"unknown members ignored", `{"extra":{"deep":[1,{"x":null}]},"job_id":"j","more":"\ud800"}`, accepted},
		{"duplicate: last wins", `{"job_id":"a","job_id":"b"}`, accepted},
		{"duplicate: null keeps", `{"job_id":"a","job_id":null,"attempt":3,"attempt":null}`, accepted},
		{"duplicate retryable: null clears", `{"retryable":true,"retryable":null}`, accepted},
		{"duplicate retryable: false", `{"retryable":true,"retryable":false}`, accepted},
		{"duplicate output: null is kept", `{"output":[1],"output":null}`, accepted},
		{"output with whitespace kept", `{"output": [ 1 ,  2 ] }`, accepted},
		{"duration largest", replace(validResult, "duration_ms", `9223372036854775807`), accepted},
		{"escapes in error_message", replace(validResult, "error_message", `"line\nnext \"q\" \ud83d\ude00 \udc00"`), accepted},
		{"unknown member nested to the limit", `{"x":` + strings.Repeat("[", maxDepth-1) + strings.Repeat("]", maxDepth-1) + `}`, accepted},

		{"case variant", `{"Job_ID":"a"}`, refused},
		{"case variant of retryable", `{"RETRYABLE":true}`, refused},
		{"long s", `{"module_digeſt":"x"}`, refused},

		{"unknown member nested too deep", `{"x":` + strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth) + `}`, rejected},
		{"unknown member invalid", `{"x":[1,}`, rejected},
		{"unknown member bad string", "{\"x\":\"\x02\"}", rejected},
		{"retryable string", replace(validResult, "retryable", `"true"`), rejected},
		{"retryable number", replace(validResult, "retryable", `1`), rejected},
		{"retryable object", replace(validResult, "retryable", `{}`), rejected},
		{"attempt fraction", replace(validResult, "attempt", `2.5`), rejected},
		{"attempt exponent", replace(validResult, "attempt", `2E0`), rejected},
		{"duration too large", replace(validResult, "duration_ms", `9223372036854775808`), rejected},
		{"outcome number", replace(validResult, "outcome", `0`), rejected},
		{"trailing bracket", validResult + `]`, rejected},
		{"trailing value", validResult + `{}`, rejected},
		{"array", `[{"job_id":"a"}]`, rejected},
		{"retryable misspelt true", `{"retryable":tru}`, rejected},
		{"retryable misspelt false", `{"retryable":fals}`, rejected},
		{"retryable misspelt null", `{"retryable":nul}`, rejected},
		{"empty", ``, rejected},
	}
	for i := range len(validResult) {
		cases = append(cases, decodeCase{"truncated", validResult[:i], rejected})
	}
	return cases
}

func TestDecodeResult(t *testing.T) {
	t.Parallel()
	for _, c := range resultCases() {
		if got := diffResult(t, []byte(c.data)); got != c.want {
			t.Errorf("%s: decodeResult(%q) was %v, want %v", c.name, c.data, got, c.want)
		}
	}
}

// ---- Fuzzing ----

// maxSeed leaves the deeply nested table inputs out of the fuzz seeds: mutating and
// minimising 20 kB inputs stalls the fuzzer, and the tables test the depth limit exactly.
const maxSeed = 4096

func FuzzEnvelopeDecode(f *testing.F) {
	for _, c := range envelopeCases() {
		if len(c.data) <= maxSeed {
			f.Add([]byte(c.data))
		}
	}
	e := sampleEnvelope()
	b, _ := e.appendJSON(nil)
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		if diffEnvelope(t, data) != accepted {
			return
		}
		// What was decoded encodes as json.Marshal encodes it.
		e, _ := decodeEnvelope(data)
		b, err := e.appendJSON(nil)
		sameEncoding(t, "Envelope", b, err, &e)
	})
}

func FuzzResultDecode(f *testing.F) {
	for _, c := range resultCases() {
		if len(c.data) <= maxSeed {
			f.Add([]byte(c.data))
		}
	}
	r := sampleResult()
	b, _ := r.appendJSON(nil)
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		if diffResult(t, data) != accepted {
			return
		}
		r, _ := decodeResult(data)
		b, err := r.appendJSON(nil)
		sameEncoding(t, "Result", b, err, &r)
	})
}

// FuzzCodecRoundTrip builds the three types from fuzzed strings, raw JSON, numbers and times:
// the encoders must write json.Marshal's bytes (or fail where it fails), encoding/json must
// read back what went in, and the decoders must agree with encoding/json on it.
func FuzzCodecRoundTrip(f *testing.F) {
	f.Add("01JGZ3F7VPR8K2QX8Y4N5M7WB3", "resize-image", benchApproval, []byte(`{"n":1}`), int64(3), int64(1773480413), int64(589793238), int32(0), uint8(0))
	f.Add("<&>\u2028\u2029", "\x00\x1f\"\\", "\xff\xed\xa0\x80", []byte(" [ 1 , \"<\u2028>\" ] "), int64(-1), int64(-62135596800), int64(0), int32(19800), uint8(0xff))
	f.Add("a", "b", "c", []byte(`{"a":`), int64(1<<62), int64(253402300800), int64(1), int32(-86400), uint8(0x55))
	f.Add("é", "世界", "😀", []byte{}, int64(0), int64(0), int64(999999999), int32(-28800), uint8(0xaa))
	f.Fuzz(func(t *testing.T, a, b, c string, raw []byte, n, sec, nsec int64, zone int32, flags uint8) {
		flag := func(i uint) bool { return flags&(1<<i) != 0 }
		rawOr := func(i uint) json.RawMessage {
			if flag(i) {
				return nil
			}
			return raw
		}
		at := time.Unix(sec, nsec).In(time.FixedZone("z", int(zone)))

		env := Envelope{JobID: a, Task: b, TaskVersion: c, Pool: a + c, Input: rawOr(0), Approval: c + b, MaxAttempts: int(n)}
		got, err := env.appendJSON(nil)
		sameEncoding(t, "Envelope", got, err, &env)
		if err == nil {
			roundTrip(t, got, env, Envelope{}, func(e *Envelope) {
				e.JobID, e.Task, e.TaskVersion, e.Pool, e.Approval = fixUTF8(e.JobID), fixUTF8(e.Task),
					fixUTF8(e.TaskVersion), fixUTF8(e.Pool), fixUTF8(e.Approval)
				if e.Input == nil {
					e.Input = json.RawMessage("null") // not omitted
				}
				e.Input = canonicalJSON(t, e.Input)
			})
			if diffEnvelope(t, got) != accepted {
				t.Fatalf("decodeEnvelope(%q) refused an encoded envelope", got)
			}
		}

		var retryable *bool
		if flag(1) {
			v := flag(2)
			retryable = &v
		}
		res := Result{JobID: a, Task: b, Attempt: int(n), WorkerID: c, Outcome: b + a, Output: rawOr(3),
			ErrorMessage: c, DurationMS: sec, ModuleDigest: a, Retryable: retryable}
		got, err = res.appendJSON(nil)
		sameEncoding(t, "Result", got, err, &res)
		if err == nil {
			roundTrip(t, got, res, Result{}, func(r *Result) {
				r.JobID, r.Task, r.WorkerID, r.Outcome, r.ErrorMessage, r.ModuleDigest = fixUTF8(r.JobID),
					fixUTF8(r.Task), fixUTF8(r.WorkerID), fixUTF8(r.Outcome), fixUTF8(r.ErrorMessage), fixUTF8(r.ModuleDigest)
				r.Output = canonicalJSON(t, r.Output) // empty, it was omitted
			})
			if diffResult(t, got) != accepted {
				t.Fatalf("decodeResult(%q) refused an encoded result", got)
			}
		}

		rec := Record{Approval: c, JobsSeq: uint64(n), Job: api.Job{ID: a, Task: b, TaskVersion: c, Pool: a,
			State: api.State(b), Input: rawOr(4), HasApproval: flag(2), Attempt: int(n), MaxAttempts: int(n >> 3),
			Outcome: c, ErrorMessage: a, DurationMS: n, ModuleDigest: b, IdempotencyKey: c, SubmittedBy: a,
			CreatedAt: at, UpdatedAt: at.Add(time.Duration(n))}}
		if flag(5) {
			rec.Job.Output, rec.Job.NotBefore, rec.Job.FinishedAt = raw, &at, &at
		}
		if flag(6) {
			rec.Completions = []Completion{{Attempt: int(n), Outcome: a, WorkerID: b, At: at}, {At: at.Add(time.Duration(nsec))}}
		}
		got, err = rec.appendJSON(nil)
		sameEncoding(t, "Record", got, err, &rec)
		if err == nil && !json.Valid(got) {
			t.Fatalf("Record.appendJSON = %q, not valid JSON", got)
		}
	})
}

// roundTrip checks that encoding/json reads encoded back as want, once want's strings and
// raw JSON are normalised by fix as encoding/json normalises them.
func roundTrip[T any](t *testing.T, encoded []byte, want, back T, fix func(*T)) {
	t.Helper()
	if err := json.Unmarshal(encoded, &back); err != nil {
		t.Fatalf("json.Unmarshal(%q) = %v", encoded, err)
	}
	fix(&want)
	fix(&back)
	if !reflect.DeepEqual(back, want) {
		t.Fatalf("json.Unmarshal(%q) = %+v, want %+v", encoded, back, want)
	}
}

// fixUTF8 replaces each invalid byte with U+FFFD, as encoding/json does.
func fixUTF8(s string) string { return string([]rune(s)) }

// canonicalJSON re-encodes raw JSON with encoding/json itself (numbers kept as written), so
// that two spellings of one value compare equal.
func canonicalJSON(t *testing.T, raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("canonicalJSON(%q): %v", raw, err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ---- Benchmarks ----

// BenchmarkCodec compares encoding/json with the codecs on the values of a typical job.
// Run it short: go test -run '^$' -bench BenchmarkCodec -benchtime 2000x ./internal/natsq/
func BenchmarkCodec(b *testing.B) {
	env, res, rec := sampleEnvelope(), sampleResult(), sampleRecord()
	envData, _ := json.Marshal(&env)
	resData, _ := json.Marshal(&res)
	encode := func(name string, std func() ([]byte, error), codec func() ([]byte, error)) {
		b.Run(name+"/encode/json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := std(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/encode/codec", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := codec(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	encode("envelope", func() ([]byte, error) { return json.Marshal(&env) }, func() ([]byte, error) { return env.appendJSON(nil) })
	encode("result", func() ([]byte, error) { return json.Marshal(&res) }, func() ([]byte, error) { return res.appendJSON(nil) })
	encode("record", func() ([]byte, error) { return json.Marshal(&rec) }, func() ([]byte, error) { return rec.appendJSON(nil) })

	decode := func(name string, std func() error, codec func() error) {
		b.Run(name+"/decode/json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := std(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/decode/codec", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := codec(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	decode("envelope",
		func() error { _, err := referenceEnvelope(envData); return err },
		func() error { _, err := decodeEnvelope(envData); return err })
	decode("result",
		func() error { _, err := referenceResult(resData); return err },
		func() error { _, err := decodeResult(resData); return err })
}

package natsq

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/castellan-dev/castellan/internal/server/api"
)

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

// TestMessagesRoundTrip: what the encoder writes the decoder reads back unchanged, and
// encoding/json (the API's encoder, and any other reader of the bucket) reads the same.
func TestMessagesRoundTrip(t *testing.T) {
	t.Parallel()
	env, res, rec := sampleEnvelope(), sampleResult(), sampleRecord()
	check := func(name string, encode func() ([]byte, error), decode func([]byte) (any, error), want any) {
		t.Helper()
		data, err := encode()
		if err != nil {
			t.Fatalf("%s: encode = %v", name, err)
		}
		got, err := decode(data)
		if err != nil {
			t.Fatalf("%s: decode(%s) = %v", name, data, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: round trip = %+v, want %+v", name, got, want)
		}
		v1 := reflect.New(reflect.TypeOf(want))
		if err := json.Unmarshal(data, v1.Interface()); err != nil || !reflect.DeepEqual(v1.Elem().Interface(), want) {
			t.Fatalf("%s: encoding/json reads %+v, %v; want %+v", name, v1.Elem().Interface(), err, want)
		}
	}
	check("envelope", func() ([]byte, error) { return env.appendJSON(nil) },
		func(b []byte) (any, error) { return decodeEnvelope(b) }, env)
	check("result", func() ([]byte, error) { return res.appendJSON(nil) },
		func(b []byte) (any, error) { return decodeResult(b) }, res)
	check("record", func() ([]byte, error) { return rec.appendJSON(nil) },
		func(b []byte) (any, error) { return decodeRecord(b) }, rec)
}

// TestDecodeRefusals: the inputs on which encoding/json v1 and a second reader could
// disagree about a message (a repeated member, a name in another case or with a long s,
// invalid UTF-8, data after the value) are refused, or for a name variant never read as the
// field it resembles.
func TestDecodeRefusals(t *testing.T) {
	t.Parallel()
	envData, _ := json.Marshal(sampleEnvelope())
	resData, _ := json.Marshal(sampleResult())
	recData, _ := json.Marshal(sampleRecord())
	env := string(envData)
	res := string(resData)
	rec := string(recData)
	decoders := map[string]func([]byte) error{
		"envelope": func(b []byte) error { _, err := decodeEnvelope(b); return err },
		"result":   func(b []byte) error { _, err := decodeResult(b); return err },
		"record":   func(b []byte) error { _, err := decodeRecord(b); return err },
	}
	keyField := map[string]func([]byte) string{
		"result": func(b []byte) string { r, _ := decodeResult(b); return r.Task },
		"record": func(b []byte) string {
			r, _ := decodeRecord(b)
			if r.JobsSeq == 0 {
				return ""
			}
			return "set"
		},
	}
	// key is a top-level member of each message whose name holds an "s" (for the long-s
	// variant, which Unicode case folding equates with "s").
	docs := map[string]struct{ doc, key string }{
		"envelope": {env, "task"}, "result": {res, "task"}, "record": {rec, "jobs_seq"},
	}
	mutate := map[string]func(doc, key string) string{
		"duplicate member": func(doc, key string) string {
			return `{"` + key + `":"other",` + doc[1:]
		},
		"member in another case": func(doc, key string) string {
			return strings.Replace(doc, `"`+key+`"`, `"`+strings.ToUpper(key)+`"`, 1)
		},
		"member with a long s": func(doc, key string) string {
			return strings.Replace(doc, `"`+key+`"`, `"`+strings.Replace(key, "s", `\u017f`, 1)+`"`, 1)
		},
		"data after the value":  func(doc, _ string) string { return doc + `{}` },
		"closing bracket after": func(doc, _ string) string { return doc + `]` },
		"invalid UTF-8":         func(doc, _ string) string { return strings.Replace(doc, `"resize-image"`, "\"resize-\xffimage\"", 1) },
		"lone surrogate":        func(doc, _ string) string { return strings.Replace(doc, `"resize-image"`, `"resize-\ud800image"`, 1) },
		"not an object":         func(string, string) string { return `["job_id"]` },
		"truncated":             func(doc, _ string) string { return doc[:len(doc)/2] },
	}
	for kind, d := range docs {
		for name, m := range mutate {
			in := m(d.doc, d.key)
			if in == d.doc {
				t.Fatalf("%s/%s: the mutation did not apply", kind, name)
			}
			err := decoders[kind]([]byte(in))
			if strings.HasPrefix(name, "member ") && kind != "envelope" {
				// Results and records ignore unknown members: a variant name must then be
				// unknown, never taken for the field it resembles.
				if err != nil || keyField[kind]([]byte(in)) != "" {
					t.Errorf("%s/%s: decode(%s) = %v, field %q; want the variant ignored", kind, name, in, err, keyField[kind]([]byte(in)))
				}
				continue
			}
			if err == nil {
				t.Errorf("%s/%s: decode(%s) = nil error, want a refusal", kind, name, in)
			}
		}
		if err := decoders[kind]([]byte(d.doc)); err != nil {
			t.Errorf("%s: decode(original) = %v", kind, err)
		}
	}
	// An envelope is exactly what the control plane wrote: an unknown member is refused.
	if _, err := decodeEnvelope([]byte(`{"extra":1,` + env[1:])); err == nil {
		t.Error("decodeEnvelope accepted an unknown member")
	}
	// A result from a newer worker is still read.
	if r, err := decodeResult([]byte(`{"extra":1,` + res[1:])); err != nil || r.JobID != sampleResult().JobID {
		t.Errorf("decodeResult(unknown member) = %+v, %v; want the result", r, err)
	}
}

// BenchmarkCodec measures the messages' encoding and decoding as the transport does them.
// Run it short: go test -run '^$' -bench BenchmarkCodec -benchtime 2000x ./internal/natsq/
func BenchmarkCodec(b *testing.B) {
	env, res, rec := sampleEnvelope(), sampleResult(), sampleRecord()
	envData, _ := jsonv2.Marshal(&env)
	resData, _ := jsonv2.Marshal(&res)
	run := func(name string, f func() error) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := f(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	run("envelope/encode", func() error { _, err := env.appendJSON(nil); return err })
	run("result/encode", func() error { _, err := res.appendJSON(nil); return err })
	run("record/encode", func() error { _, err := rec.appendJSON(nil); return err })
	run("envelope/decode", func() error { _, err := decodeEnvelope(envData); return err })
	run("result/decode", func() error { _, err := decodeResult(resData); return err })
}

package natsq

import (
	"github.com/go-json-experiment/json"
)

// The messages on the job's path (the envelope, the result, the job record) are encoded and
// decoded by github.com/go-json-experiment/json (the proposed encoding/json/v2). Its defaults
// are the two properties these messages need and encoding/json v1 lacks: a member that
// appears twice is refused (v1 keeps the last, so two readers of one message could disagree
// on the job), and member names match exactly (v1 also takes "JOB_ID" or "taſk" for job_id
// and task). It also refuses invalid UTF-8 and data after the value.

// decodeEnvelope decodes one job envelope. An unknown member is refused too: an envelope is
// exactly what the control plane wrote, and a member this worker does not know could be a
// condition it would silently ignore.
func decodeEnvelope(data []byte) (Envelope, error) {
	var e Envelope
	err := json.Unmarshal(data, &e, json.RejectUnknownMembers(true))
	return e, err
}

// decodeResult decodes one result. Unknown members are ignored, so that a newer worker's
// result is still recorded by an older dispatcher during a rolling upgrade.
func decodeResult(data []byte) (Result, error) {
	var r Result
	err := json.Unmarshal(data, &r)
	return r, err
}

// decodeRecord decodes a job record from the JobsBucket; unknown members are ignored, as
// for results, so that replicas of two versions can share the bucket.
func decodeRecord(data []byte) (Record, error) {
	var r Record
	err := json.Unmarshal(data, &r)
	return r, err
}

// decodeClaim and decodeClaimReply read the claim exchange between a worker and a
// dispatcher; unknown members are ignored, as for results.
func decodeClaim(data []byte) (ClaimRequest, error) {
	var c ClaimRequest
	err := json.Unmarshal(data, &c)
	return c, err
}

func decodeClaimReply(data []byte) (ClaimReply, error) {
	var c ClaimReply
	err := json.Unmarshal(data, &c)
	return c, err
}

func (e *Envelope) appendJSON(b []byte) ([]byte, error) { return appendJSON(b, e) }
func (r *Result) appendJSON(b []byte) ([]byte, error)   { return appendJSON(b, r) }
func (r *Record) appendJSON(b []byte) ([]byte, error)   { return appendJSON(b, r) }

func marshal(v any) ([]byte, error) { return json.Marshal(v) }

func appendJSON(b []byte, v any) ([]byte, error) {
	out, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, out...), nil
}

// decodeCatalogPublish reads a worker's catalog publication; unknown members are ignored,
// as for results.
func decodeCatalogPublish(data []byte, r *CatalogPublish) error {
	return json.Unmarshal(data, r)
}

package secrets

// This file is a FAKE AWS Secrets Manager: an httptest server speaking only the subset of
// the service the Store uses, because AWS cannot be reached from the machines this project
// is built on. It follows the documented protocol (AWS JSON 1.1) and shapes:
//
//	POST /   X-Amz-Target: secretsmanager.GetSecretValue
//	         Content-Type: application/x-amz-json-1.1
//	         {"SecretId": "...", "VersionStage": "..."}
//	200      {"ARN","Name","VersionId","SecretString" or "SecretBinary","VersionStages","CreatedDate"}
//	4xx/5xx  {"__type": "ResourceNotFoundException", "Message": "..."} and X-Amzn-ErrorType
//
// Every request must carry a valid Signature Version 4 signature: the fake recomputes it
// with the SDK's own signer (aws/signer/v4) over the headers the request lists as signed,
// from the secret key it knows for the access key, and refuses a mismatch as AWS does
// (400 InvalidSignatureException; an unknown access key is 400 UnrecognizedClientException).
// Unlike the real service, its error messages deliberately echo the secret id, the access
// key and a secret marker, so that a Store that copied AWS's messages into its errors or
// logs would be caught. TestRealAWS runs the Store against the real service when AWS
// credentials are in the environment.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

const (
	fakeAccessKey = "AKIAFAKEACCESSKEY0001"
	fakeSecretKey = "fake-secret-access-key-" + marker
	fakeRegion    = "eu-central-1"
	fakeAccount   = "123456789012"
)

// fakeVersion is one version of a secret; exactly one of str and bin is set.
type fakeVersion struct {
	id  string
	str *string
	bin []byte
}

type fakeAWS struct {
	srv    *httptest.Server
	region string

	mu       sync.Mutex
	keys     map[string]string                 // access key id -> secret access key
	secrets  map[string]map[string]fakeVersion // secret id -> staging label -> version
	failCode string                            // when set, GetSecretValue answers this error...
	failHTTP int                               // ...with this status
	failN    int                               // ...this many times (0: always)
	requests int                               // GetSecretValue requests that passed the signature check
	refused  int                               // requests refused for their signature or key
	block    chan struct{}                     // when set, reads wait for it (or the client to go away)
	seen     chan struct{}                     // receives (non-blocking) when a read arrives
}

func newFakeAWS(t *testing.T) *fakeAWS {
	t.Helper()
	f := &fakeAWS{
		region:  fakeRegion,
		keys:    map[string]string{fakeAccessKey: fakeSecretKey},
		secrets: map[string]map[string]fakeVersion{},
		seen:    make(chan struct{}, 100),
	}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// put makes value the AWSCURRENT version of id (a new version, as PutSecretValue does),
// moving the previous AWSCURRENT to AWSPREVIOUS, as rotation does.
func (f *fakeAWS) put(id, value string) { f.putVersion(id, fakeVersion{str: &value}) }

func (f *fakeAWS) putBinary(id string, b []byte) { f.putVersion(id, fakeVersion{bin: b}) }

func (f *fakeAWS) putVersion(id string, v fakeVersion) {
	f.mu.Lock()
	defer f.mu.Unlock()
	stages := f.secrets[id]
	if stages == nil {
		stages = map[string]fakeVersion{}
		f.secrets[id] = stages
	}
	v.id = fmt.Sprintf("version-%d", len(stages)+1)
	if cur, ok := stages["AWSCURRENT"]; ok {
		stages["AWSPREVIOUS"] = cur
	}
	stages["AWSCURRENT"] = v
}

func (f *fakeAWS) remove(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.secrets, id)
}

// failWith makes the next n reads (0: every read) answer an AWS error.
func (f *fakeAWS) failWith(status int, code string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failHTTP, f.failCode, f.failN = status, code, n
}

func (f *fakeAWS) setBlock(ch chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.block = ch
}

func (f *fakeAWS) counts() (requests, refused int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests, f.refused
}

// awsError writes an error in the JSON 1.1 shape. The message echoes request details, as
// AWS's own messages do (they name the caller's ARN and the secret), and a secret marker.
func awsError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Errortype", code+":")
	w.Header().Set("X-Amzn-Requestid", "4c1f0a6e-1b2c-4d5e-8f90-0123456789ab")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"__type": code, "Message": message + " [" + marker + "]"})
}

func (f *fakeAWS) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	if code, msg := f.verify(r, body); code != "" {
		f.mu.Lock()
		f.refused++
		f.mu.Unlock()
		awsError(w, http.StatusBadRequest, code, msg)
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		awsError(w, http.StatusNotFound, "UnknownOperationException", "no route "+r.Method+" "+r.URL.Path)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-amz-json-1.1" {
		awsError(w, http.StatusBadRequest, "SerializationException", "content type "+ct)
		return
	}
	if target := r.Header.Get("X-Amz-Target"); target != "secretsmanager.GetSecretValue" {
		awsError(w, http.StatusBadRequest, "UnknownOperationException", "operation "+target)
		return
	}
	var in struct {
		SecretId     string
		VersionStage string
		VersionId    string
	}
	if err := json.Unmarshal(body, &in); err != nil || in.SecretId == "" {
		awsError(w, http.StatusBadRequest, "InvalidParameterException", "bad body "+string(body))
		return
	}
	if in.VersionStage == "" && in.VersionId == "" {
		in.VersionStage = "AWSCURRENT"
	}
	select {
	case f.seen <- struct{}{}:
	default:
	}
	f.mu.Lock()
	f.requests++
	block := f.block
	failCode, failHTTP := f.failCode, f.failHTTP
	if failCode != "" && f.failN > 0 {
		f.failN--
		if f.failN == 0 {
			f.failCode = ""
		}
	}
	v, ok := f.secrets[in.SecretId][in.VersionStage]
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-r.Context().Done():
			return
		}
	}
	if failCode != "" {
		awsError(w, failHTTP, failCode, "failing on purpose for "+in.SecretId+" as "+r.Header.Get("Authorization"))
		return
	}
	if !ok {
		awsError(w, http.StatusBadRequest, "ResourceNotFoundException", "Secrets Manager can't find the specified secret "+in.SecretId)
		return
	}
	name := in.SecretId
	if i := strings.LastIndex(name, ":secret:"); i >= 0 {
		name = name[i+len(":secret:"):]
	}
	out := map[string]any{
		"ARN":           fmt.Sprintf("arn:aws:secretsmanager:%s:%s:secret:%s-AbCdEf", f.region, fakeAccount, name),
		"Name":          name,
		"VersionId":     v.id,
		"VersionStages": []string{in.VersionStage},
		"CreatedDate":   float64(time.Now().Unix()),
	}
	if v.str != nil {
		out["SecretString"] = *v.str
	} else {
		out["SecretBinary"] = v.bin // encoding/json writes []byte as base64, as AWS does
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-Requestid", "0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b")
	json.NewEncoder(w).Encode(out)
}

// verify checks r's Signature Version 4 signature and returns an AWS error code and message
// when it is wrong. It re-signs a copy of the request holding only the headers r lists as
// signed, with the SDK's signer, the secret key known for r's access key and r's own signing
// time, and compares the two Authorization headers.
func (f *fakeAWS) verify(r *http.Request, body []byte) (code, msg string) {
	auth := r.Header.Get("Authorization")
	const algo = "AWS4-HMAC-SHA256 "
	if !strings.HasPrefix(auth, algo) {
		return "MissingAuthenticationTokenException", "Request is missing Authentication Token"
	}
	parts := map[string]string{}
	for _, p := range strings.Split(strings.TrimPrefix(auth, algo), ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
		parts[k] = v
	}
	scope := strings.Split(parts["Credential"], "/") // AKID/date/region/service/aws4_request
	if len(scope) != 5 || scope[4] != "aws4_request" || parts["SignedHeaders"] == "" || parts["Signature"] == "" {
		return "IncompleteSignatureException", "Authorization header requires Credential, SignedHeaders and Signature: " + auth
	}
	f.mu.Lock()
	secret, known := f.keys[scope[0]]
	f.mu.Unlock()
	if !known {
		return "UnrecognizedClientException", "The security token included in the request is invalid: " + scope[0]
	}
	if scope[2] != f.region || scope[3] != "secretsmanager" {
		return "InvalidSignatureException", "Credential should be scoped to a valid region and service: " + parts["Credential"]
	}
	when, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil || scope[1] != when.Format("20060102") {
		return "IncompleteSignatureException", "bad or missing X-Amz-Date"
	}
	if d := time.Since(when); d > 15*time.Minute || d < -15*time.Minute {
		return "InvalidSignatureException", "Signature expired: " + when.String()
	}
	signed := strings.Split(parts["SignedHeaders"], ";")
	if !contains(signed, "host") || !contains(signed, "x-amz-date") {
		return "InvalidSignatureException", "host and x-amz-date must be signed"
	}
	req, err := http.NewRequestWithContext(context.Background(), r.Method, "http://"+r.Host+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return "InvalidSignatureException", "bad request line"
	}
	req.ContentLength = r.ContentLength
	for _, h := range signed {
		if h == "host" || h == "content-length" {
			continue
		}
		req.Header[http.CanonicalHeaderKey(h)] = r.Header.Values(h)
	}
	sum := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: scope[0], SecretAccessKey: secret, SessionToken: r.Header.Get("X-Amz-Security-Token")}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hex.EncodeToString(sum[:]), scope[3], scope[2], when); err != nil {
		return "InvalidSignatureException", "cannot sign: " + err.Error()
	}
	if req.Header.Get("Authorization") != auth {
		return "InvalidSignatureException", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. " + auth
	}
	return "", ""
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// awsEnviron are the variables of the standard AWS chain the tests control; every one is
// unset first so that the machine's own AWS setup (files, profiles, instance role) cannot
// change a test.
var awsEnviron = []string{
	"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
	"AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETS_MANAGER",
	"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
	"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CA_BUNDLE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
	"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
}

// setAWSEnv points the standard AWS chain at endpoint with static credentials from the
// environment, through t.Setenv (so the test cannot be parallel). vars override or add
// variables; an empty value unsets one. Retries are off (AWS_MAX_ATTEMPTS=1) unless vars
// say otherwise, so that failures are answered at once.
func setAWSEnv(t *testing.T, endpoint string, vars map[string]string) {
	t.Helper()
	for _, k := range awsEnviron {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	dir := t.TempDir()
	env := map[string]string{
		"AWS_ACCESS_KEY_ID":                fakeAccessKey,
		"AWS_SECRET_ACCESS_KEY":            fakeSecretKey,
		"AWS_REGION":                       fakeRegion,
		"AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
		"AWS_CONFIG_FILE":                  filepath.Join(dir, "no-config"),
		"AWS_SHARED_CREDENTIALS_FILE":      filepath.Join(dir, "no-credentials"),
		"AWS_EC2_METADATA_DISABLED":        "true",
		"AWS_MAX_ATTEMPTS":                 "1",
	}
	for k, v := range vars {
		env[k] = v
	}
	for k, v := range env {
		t.Setenv(k, v)
		if v == "" {
			os.Unsetenv(k)
		}
	}
}

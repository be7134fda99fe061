package secrets

// The AWS tests set the standard AWS environment variables with t.Setenv, to exercise the
// chain operators use, so none of them runs in parallel.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/castellan-dev/castellan/redact"
)

const (
	awsSecretName = "castellan/ticketing"
	awsValue      = "aws-api-key-value-0123456789"
)

// awsStore returns a Store over specs (default: credential "c" = the whole SecretString of
// castellan/ticketing), with a fake cache clock and an observed logger checked for secrets.
func awsStore(t *testing.T, specs map[string]Spec, vc *VaultConfig) (*Store, *fakeClock, *observer.ObservedLogs) {
	t.Helper()
	if specs == nil {
		specs = map[string]Spec{"c": {AWS: &AWSRef{SecretID: awsSecretName}}}
	}
	core, logs := observer.New(zap.DebugLevel)
	s, err := NewStore(specs, vc, redact.NewSet(), zap.New(core))
	if err != nil {
		t.Fatalf("NewStore = %v", err)
	}
	t.Cleanup(func() { s.Close() })
	clock := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	s.now = clock.Now
	t.Cleanup(func() {
		checkLogs(t, logs)
		for _, e := range logs.All() {
			if line := fmt.Sprint(e.Message, e.ContextMap()); strings.Contains(line, awsValue) || strings.Contains(line, fakeSecretKey) {
				t.Errorf("log line %q contains a secret", line)
			}
		}
	})
	return s, clock, logs
}

func TestAWSSecretString(t *testing.T) {
	f := newFakeAWS(t)
	setAWSEnv(t, f.srv.URL, nil)
	f.put(awsSecretName, awsValue)
	f.put("castellan/erp", `{"username":"svc-erp-user","password":"erp-password-value-42","port":5432}`)
	arn := "arn:aws:secretsmanager:" + fakeRegion + ":" + fakeAccount + ":secret:castellan/arn-named-AbCdEf"
	f.put(arn, "value-of-the-arn-named-secret")
	s, _, _ := awsStore(t, map[string]Spec{
		"c":        {AWS: &AWSRef{SecretID: awsSecretName}},
		"password": {AWS: &AWSRef{SecretID: "castellan/erp", Field: "password"}},
		"username": {AWS: &AWSRef{SecretID: "castellan/erp", Field: "username"}},
		"by_arn":   {AWS: &AWSRef{SecretID: arn}},
	}, nil)
	mustCredential(t, s, "c", awsValue)
	mustCredential(t, s, "password", "erp-password-value-42")
	mustCredential(t, s, "username", "svc-erp-user") // same secret: served from the cache
	mustCredential(t, s, "by_arn", "value-of-the-arn-named-secret")
	if !s.red.Contains([]byte(awsValue)) || !s.red.Contains([]byte("erp-password-value-42")) {
		t.Errorf("redact set lacks a value read from Secrets Manager")
	}
	if req, refused := f.counts(); req != 3 || refused != 0 {
		t.Errorf("requests = %d (refused %d), want 3 signed requests (one per secret) and none refused", req, refused)
	}
}

// TestAWSSessionToken: temporary credentials (a role's) add X-Amz-Security-Token, which
// must be signed too.
func TestAWSSessionToken(t *testing.T) {
	f := newFakeAWS(t)
	setAWSEnv(t, f.srv.URL, map[string]string{"AWS_SESSION_TOKEN": "session-token-" + marker})
	f.put(awsSecretName, awsValue)
	s, _, _ := awsStore(t, nil, nil)
	mustCredential(t, s, "c", awsValue)
}

// TestAWSRotation follows Secrets Manager's rotation: a new version becomes AWSCURRENT and
// the old one AWSPREVIOUS. Within the cache TTL the old value is still served; after it the
// new one; both stay in the redaction set, because jobs that started before the switch may
// still echo the old one.
func TestAWSRotation(t *testing.T) {
	f := newFakeAWS(t)
	setAWSEnv(t, f.srv.URL, nil)
	f.put(awsSecretName, awsValue)
	s, clock, _ := awsStore(t, map[string]Spec{
		"c":        {AWS: &AWSRef{SecretID: awsSecretName}},
		"previous": {AWS: &AWSRef{SecretID: awsSecretName, VersionStage: "AWSPREVIOUS"}},
	}, &VaultConfig{CacheTTL: time.Minute})
	mustCredential(t, s, "c", awsValue)
	f.put(awsSecretName, "rotated-aws-value-9876543210")
	clock.Advance(59 * time.Second)
	mustCredential(t, s, "c", awsValue)
	if req, _ := f.counts(); req != 1 {
		t.Errorf("requests within the TTL = %d, want 1", req)
	}
	clock.Advance(2 * time.Second)
	mustCredential(t, s, "c", "rotated-aws-value-9876543210")
	mustCredential(t, s, "previous", awsValue)
	for _, v := range []string{awsValue, "rotated-aws-value-9876543210"} {
		if !s.red.Contains([]byte(v)) {
			t.Errorf("redact set lacks %q after rotation", v)
		}
	}
}

func TestAWSConcurrentCallsShareOneRequest(t *testing.T) {
	f := newFakeAWS(t)
	setAWSEnv(t, f.srv.URL, nil)
	f.put(awsSecretName, awsValue)
	release := make(chan struct{})
	f.setBlock(release)
	s, _, _ := awsStore(t, nil, nil)
	const callers = 8
	concurrentCredential(t, s, callers, f.seen, release, awsValue)
	if req, _ := f.counts(); req != 1 {
		t.Errorf("requests for %d concurrent callers = %d, want 1", callers, req)
	}
}

// TestAWSRetriesThrottling: the SDK's retryer takes throttling and 5xx answers; with the
// default attempts a transient throttle is invisible.
func TestAWSRetriesThrottling(t *testing.T) {
	f := newFakeAWS(t)
	setAWSEnv(t, f.srv.URL, map[string]string{"AWS_MAX_ATTEMPTS": ""})
	f.put(awsSecretName, awsValue)
	f.failWith(http.StatusBadRequest, "ThrottlingException", 1)
	s, _, _ := awsStore(t, nil, nil)
	mustCredential(t, s, "c", awsValue)
	if req, _ := f.counts(); req != 2 {
		t.Errorf("requests = %d, want 2 (one throttled, one retried)", req)
	}
}

// TestAWSErrors covers each failure; for all of them the error says only that the
// credential is unavailable, the detail names the secret and the reason, and no secret
// (value, secret key, the marker AWS's fake messages carry) is in the error or the log.
func TestAWSErrors(t *testing.T) {
	const where = `credential "c": aws: secret castellan/ticketing (stage AWSCURRENT, region eu-central-1): `
	tests := []struct {
		name  string
		env   map[string]string
		spec  *AWSRef
		setup func(f *fakeAWS)
		want  []string
		is    error
	}{
		{name: "not found", want: []string{where + "not found", "ResourceNotFoundException, HTTP 400", "request id 4c1f0a6e-"}},
		{name: "no such stage", spec: &AWSRef{SecretID: awsSecretName, VersionStage: "AWSPENDING"},
			setup: func(f *fakeAWS) { f.put(awsSecretName, awsValue) }, want: []string{"stage AWSPENDING", "ResourceNotFoundException"}},
		{name: "access denied", setup: func(f *fakeAWS) { f.failWith(400, "AccessDeniedException", 0) }, want: []string{where + "permission denied", "AccessDeniedException"}},
		{name: "decryption failure", setup: func(f *fakeAWS) { f.failWith(400, "DecryptionFailure", 0) }, want: []string{"KMS key", "DecryptionFailure"}},
		{name: "throttled", setup: func(f *fakeAWS) { f.failWith(400, "ThrottlingException", 0) }, want: []string{"rate limited (ThrottlingException, HTTP 400"}},
		{name: "server error", setup: func(f *fakeAWS) { f.failWith(500, "InternalServiceError", 0) }, want: []string{"server error (InternalServiceError, HTTP 500"}},
		{name: "scheduled for deletion", setup: func(f *fakeAWS) { f.failWith(400, "InvalidRequestException", 0) }, want: []string{"scheduled for deletion"}},
		{name: "wrong secret key", env: map[string]string{"AWS_SECRET_ACCESS_KEY": "another-secret-key-" + marker},
			setup: func(f *fakeAWS) { f.put(awsSecretName, awsValue) }, want: []string{"credentials are refused (InvalidSignatureException, HTTP 400"}},
		{name: "unknown access key", env: map[string]string{"AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY000000"},
			setup: func(f *fakeAWS) { f.put(awsSecretName, awsValue) }, want: []string{"credentials are refused (UnrecognizedClientException"}},
		{name: "wrong region", env: map[string]string{"AWS_REGION": "us-east-1"},
			setup: func(f *fakeAWS) { f.put(awsSecretName, awsValue) }, want: []string{"region us-east-1", "InvalidSignatureException"}},
		{name: "no credentials", env: map[string]string{"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
			want: []string{where + "no usable AWS credentials from the standard chain"}},
		{name: "network down", setup: func(f *fakeAWS) { f.srv.Close() }, want: []string{where + "Secrets Manager unreachable (connection refused)"}},
		{name: "field missing", spec: &AWSRef{SecretID: awsSecretName, Field: "api_key"},
			setup: func(f *fakeAWS) { f.put(awsSecretName, `{"user":"svc-user-name"}`) }, want: []string{where + `field "api_key" not found in secret`}, is: ErrFieldNotFound},
		{name: "field not a string", spec: &AWSRef{SecretID: awsSecretName, Field: "api_key"},
			setup: func(f *fakeAWS) { f.put(awsSecretName, `{"api_key":{"nested":"`+awsValue+`"}}`) }, want: []string{`field "api_key" is not a string`}, is: ErrFieldNotString},
		{name: "field of a non-JSON string", spec: &AWSRef{SecretID: awsSecretName, Field: "api_key"},
			setup: func(f *fakeAWS) { f.put(awsSecretName, awsValue) }, want: []string{`field "api_key": the secret string is not a JSON object`}, is: ErrNotJSONObject},
		{name: "field of a JSON array", spec: &AWSRef{SecretID: awsSecretName, Field: "api_key"},
			setup: func(f *fakeAWS) { f.put(awsSecretName, `["`+awsValue+`"]`) }, is: ErrNotJSONObject},
		{name: "binary secret", setup: func(f *fakeAWS) { f.putBinary(awsSecretName, []byte(awsValue)) }, want: []string{"SecretBinary"}, is: ErrBinarySecret},
		{name: "short value", setup: func(f *fakeAWS) { f.put(awsSecretName, "tiny") }, want: []string{"value shorter than 8 bytes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeAWS(t)
			setAWSEnv(t, f.srv.URL, tt.env)
			if tt.setup != nil {
				tt.setup(f)
			}
			spec := tt.spec
			if spec == nil {
				spec = &AWSRef{SecretID: awsSecretName}
			}
			s, _, logs := awsStore(t, map[string]Spec{"c": {AWS: spec}}, nil)
			_, err := s.Credential(t.Context(), "c")
			checkErr(t, "Credential(c)", err, tt.want...)
			checkNoSecrets(t, err)
			for _, text := range []string{fmt.Sprintf("%+v", err), Detail(err)} {
				for _, bad := range []string{awsValue, fakeSecretKey, "another-secret-key", "svc-user-name", "Signature="} {
					if strings.Contains(text, bad) {
						t.Errorf("error %q contains %q", text, bad)
					}
				}
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false, want true", err, tt.is)
			}
			if logs.FilterMessage("credential unavailable").Len() != 1 {
				t.Errorf("logs = %v, want one \"credential unavailable\" line with the detail", logs.All())
			}
		})
	}
}

// TestAWSSignatureIsChecked proves the fake refuses what AWS refuses, so that the tests
// above would catch a client that stopped signing correctly: an unsigned request, and a
// signed request whose body was changed after signing.
func TestAWSSignatureIsChecked(t *testing.T) {
	f := newFakeAWS(t)
	f.put(awsSecretName, awsValue)
	post := func(auth, body string) (int, string) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, f.srv.URL+"/", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-amz-json-1.1")
		req.Header.Set("X-Amz-Target", "secretsmanager.GetSecretValue")
		req.Header.Set("X-Amz-Date", time.Now().UTC().Format("20060102T150405Z"))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Amzn-Errortype")
	}
	if code, typ := post("", `{"SecretId":"castellan/ticketing"}`); code != 400 || typ != "MissingAuthenticationTokenException:" {
		t.Errorf("unsigned request = %d %q, want 400 MissingAuthenticationTokenException", code, typ)
	}
	forged := "AWS4-HMAC-SHA256 Credential=" + fakeAccessKey + "/" + time.Now().UTC().Format("20060102") + "/" + fakeRegion +
		"/secretsmanager/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + strings.Repeat("0", 64)
	if code, typ := post(forged, `{"SecretId":"castellan/ticketing"}`); code != 400 || typ != "InvalidSignatureException:" {
		t.Errorf("forged signature = %d %q, want 400 InvalidSignatureException", code, typ)
	}
	if req, refused := f.counts(); req != 0 || refused != 2 {
		t.Errorf("requests served = %d, refused = %d, want 0 and 2", req, refused)
	}
}

func TestAWSContextCancelled(t *testing.T) {
	f := newFakeAWS(t)
	setAWSEnv(t, f.srv.URL, nil)
	f.put(awsSecretName, awsValue)
	f.setBlock(make(chan struct{})) // never released: only cancellation ends the request
	s, _, _ := awsStore(t, nil, nil)
	ctx, cancel := context.WithCancel(t.Context())
	go func() {
		<-f.seen
		cancel()
	}()
	_, err := s.Credential(ctx, "c")
	checkErr(t, "Credential(cancelled)", err, "cancelled")
	if !errors.Is(err, context.Canceled) {
		t.Errorf("errors.Is(%v, context.Canceled) = false, want true", err)
	}
	f.setBlock(nil)
	mustCredential(t, s, "c", awsValue) // failures are not cached
}

func TestAWSConfigErrors(t *testing.T) {
	f := newFakeAWS(t)
	setAWSEnv(t, f.srv.URL, map[string]string{"AWS_REGION": ""})
	_, err := NewStore(map[string]Spec{"c": {AWS: &AWSRef{SecretID: awsSecretName}}}, nil, redact.NewSet(), nil)
	if err == nil || !strings.Contains(err.Error(), "no region") {
		t.Errorf("NewStore(no region) = %v, want a \"no region\" error", err)
	}
	// An ARN names its region: no default region is needed.
	arn := "arn:aws:secretsmanager:" + fakeRegion + ":" + fakeAccount + ":secret:castellan/x-AbCdEf"
	f.put(arn, awsValue)
	s, _, _ := awsStore(t, map[string]Spec{"c": {AWS: &AWSRef{SecretID: arn}}}, nil)
	mustCredential(t, s, "c", awsValue)

	for name, sp := range map[string]Spec{
		"empty id":      {AWS: &AWSRef{}},
		"control chars": {AWS: &AWSRef{SecretID: "a\nb"}},
		"two sources":   {Env: "X", AWS: &AWSRef{SecretID: "a"}},
	} {
		if _, err := NewStore(map[string]Spec{"c": sp}, nil, redact.NewSet(), nil); err == nil {
			t.Errorf("NewStore(%s) = nil error, want one", name)
		}
	}
}

// TestAWSHammer runs many callers while the cache keeps expiring, for -race.
func TestAWSHammer(t *testing.T) {
	f := newFakeAWS(t)
	setAWSEnv(t, f.srv.URL, nil)
	f.put(awsSecretName, `{"a":"`+awsValue+`","b":"second-field-value"}`)
	s, clock, _ := awsStore(t, map[string]Spec{
		"a": {AWS: &AWSRef{SecretID: awsSecretName, Field: "a"}},
		"b": {AWS: &AWSRef{SecretID: awsSecretName, Field: "b"}},
	}, nil)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			name, want := "a", awsValue
			if i%2 == 1 {
				name, want = "b", "second-field-value"
			}
			for range 30 {
				if v, err := s.Credential(t.Context(), name); err != nil || v != want {
					t.Errorf("Credential(%s) = %q, %v, want %q", name, v, err, want)
					return
				}
				clock.Advance(defaultCacheTTL / 10)
			}
		})
	}
	wg.Wait()
	if req, _ := f.counts(); req < 2 || req > 240 {
		t.Errorf("requests = %d, want between 2 and 240", req)
	}
}

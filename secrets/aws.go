package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	"go.uber.org/zap"
)

const (
	// DefaultAWSVersionStage is the staging label read when a credential names none: the
	// version Secrets Manager's rotation marks as current.
	DefaultAWSVersionStage = "AWSCURRENT"
	// defaultAWSAttempts mirrors the Vault client's retries (one try and two retries), with
	// a short backoff: a failed job is retried by the queue anyway.
	defaultAWSAttempts = 3
	maxAWSBackoff      = time.Second
)

// Causes of an *Error when a secret was read but holds no usable value; errors.Is finds them.
var (
	ErrFieldNotFound  = errors.New("the secret has no such field")
	ErrFieldNotString = errors.New("the field of the secret is not a string")
	ErrNotJSONObject  = errors.New("the secret string is not a JSON object, so no field can be selected")
	ErrBinarySecret   = errors.New("the secret holds SecretBinary, not SecretString")
)

// awsClient reads secrets from AWS Secrets Manager with the region and credentials of the
// standard AWS chain (environment, shared config and credentials files, web identity,
// container and instance roles), as the AWS CLI finds them.
type awsClient struct {
	sm      *secretsmanager.Client
	creds   aws.CredentialsProvider
	region  string
	timeout time.Duration
	log     *zap.Logger
}

// newAWSClient loads the standard AWS configuration. It reads the environment and the shared
// files but contacts no one: credentials are fetched (and cached by the SDK) on the first read.
// needRegion is false when every secret id is an ARN, which names its own region.
func newAWSClient(needRegion bool, log *zap.Logger) (*awsClient, error) {
	cfg, err := config.LoadDefaultConfig(context.Background())
	if err != nil {
		return nil, fmt.Errorf("secrets: aws: loading the AWS configuration (AWS_* environment, shared config files): %w", err)
	}
	if needRegion && cfg.Region == "" {
		return nil, errors.New("secrets: aws: no region: set AWS_REGION (or region in the AWS config file), or name secrets by their ARN")
	}
	attempts := defaultAWSAttempts
	if cfg.RetryMaxAttempts > 0 { // AWS_MAX_ATTEMPTS or max_attempts in the config file
		attempts = cfg.RetryMaxAttempts
	}
	sm := secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) {
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = attempts
			so.MaxBackoff = maxAWSBackoff
		})
		// Request and response logging would write secret values to the log: never.
		o.Logger = logging.Nop{}
		o.ClientLogMode = 0
	})
	return &awsClient{sm: sm, creds: cfg.Credentials, region: cfg.Region, timeout: defaultRequestTimeout, log: log}, nil
}

// awsSecret is what the cache keeps of one secret version.
type awsSecret struct {
	str    string
	binary bool // the version holds SecretBinary (and no SecretString)
}

// awsKey is the cache key of ref; the NUL bytes keep it apart from any Vault path.
func awsKey(ref AWSRef) string { return "aws\x00" + ref.SecretID + "\x00" + ref.VersionStage }

// regionOf returns the region of an ARN secret id (the secret lives there, whatever the
// default region), or "".
func regionOf(secretID string) string {
	if a, err := arn.Parse(secretID); err == nil {
		return a.Region
	}
	return ""
}

// where names the secret for the worker's log.
func (c *awsClient) where(ref AWSRef) string {
	region := regionOf(ref.SecretID)
	if region == "" {
		region = c.region
	}
	return fmt.Sprintf("aws: secret %s (stage %s, region %s)", ref.SecretID, ref.VersionStage, region)
}

// get reads the version of ref's secret that carries ref's staging label.
func (c *awsClient) get(ctx context.Context, ref AWSRef) (*awsSecret, error) {
	where := c.where(ref)
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if c.creds == nil {
		return nil, fail(nil, "%s: no AWS credentials found by the standard chain (environment, shared files, web identity, container or instance role)", where)
	}
	// Resolved here, not inside the call, so that a missing credential is told apart from
	// an answer of Secrets Manager without reading error strings. The SDK caches them.
	if _, err := c.creds.Retrieve(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, c.failure(ctx, where, err)
		}
		return nil, fail(errors.New("no aws credentials"), "%s: no usable AWS credentials from the standard chain (environment, shared files, web identity, container or instance role)", where)
	}
	var opts []func(*secretsmanager.Options)
	if r := regionOf(ref.SecretID); r != "" {
		opts = append(opts, func(o *secretsmanager.Options) { o.Region = r })
	}
	out, err := c.sm.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{
		SecretId:     aws.String(ref.SecretID),
		VersionStage: aws.String(ref.VersionStage),
	}, opts...)
	if err != nil {
		return nil, c.failure(ctx, where, err)
	}
	switch {
	case out.SecretString != nil:
		return &awsSecret{str: *out.SecretString}, nil
	case out.SecretBinary != nil:
		return &awsSecret{binary: true}, nil // the bytes are not kept: they are never used
	}
	return nil, fail(nil, "%s: the answer holds neither SecretString nor SecretBinary", where)
}

// awsValue returns the value of an AWS credential: the whole SecretString, or one string
// field of it when ref.Field is set.
func (s *Store) awsValue(ctx context.Context, ref AWSRef) (string, error) {
	where := s.aws.where(ref)
	v, err := s.cached(ctx, awsKey(ref), "aws: secret "+ref.SecretID, func(ctx context.Context) (any, error) {
		return s.aws.get(ctx, ref)
	})
	if err != nil {
		return "", err
	}
	sec := v.(*awsSecret)
	if sec.binary {
		return "", fail(ErrBinarySecret, "%s: %v; store the credential as a secret string", where, ErrBinarySecret)
	}
	if ref.Field == "" {
		return sec.str, nil
	}
	// The decoder's errors quote the input; only our sentinel is kept.
	var obj map[string]any
	if json.Unmarshal([]byte(sec.str), &obj) != nil || obj == nil {
		return "", fail(ErrNotJSONObject, "%s: field %q: %v", where, ref.Field, ErrNotJSONObject)
	}
	return stringField(obj, ref.Field, where)
}

// awsAPIError is an error code and HTTP status from AWS, without AWS's message (which names
// the caller's identity and the secret) so that it is safe to keep as an error's cause.
type awsAPIError struct {
	code   string
	status int
}

func (e *awsAPIError) Error() string { return fmt.Sprintf("aws answered %d %s", e.status, e.code) }

// awsCodeRE is the shape of an AWS error code; anything else is not repeated.
var awsCodeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9.]{0,63}$`)

// failure turns an SDK error into a detail for the worker's log, built from our own words,
// the error code and the HTTP status: never AWS's message, which can name the caller and
// the secret, nor the SDK's text, which can quote the response.
func (c *awsClient) failure(ctx context.Context, where string, err error) error {
	var f *failure
	if errors.As(err, &f) {
		return err
	}
	status := 0
	var re *awshttp.ResponseError
	reqID := ""
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
		reqID = re.ServiceRequestID()
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		code := api.ErrorCode()
		if !awsCodeRE.MatchString(code) {
			code = "unrecognised error code"
		}
		msg := fmt.Sprintf("%s: %s (%s, HTTP %d", where, awsText(code, status), code, status)
		if reqID != "" {
			msg += ", request id " + reqIDText(reqID)
		}
		return fail(&awsAPIError{code: code, status: status}, "%s)", msg)
	}
	if status != 0 { // an HTTP error without an AWS error code (e.g. a proxy's page)
		return fail(&awsAPIError{status: status}, "%s: unexpected answer (HTTP %d)", where, status)
	}
	return transportFailure(ctx, err, where, "Secrets Manager", c.timeout, "set AWS_CA_BUNDLE?")
}

// reqIDText keeps a request id only when it looks like one (AWS request ids are UUIDs).
func reqIDText(id string) string {
	if len(id) > 64 {
		return "(unrecognised)"
	}
	for _, r := range id {
		if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return "(unrecognised)"
		}
	}
	return id
}

// awsText explains the error codes GetSecretValue documents, and a few every AWS API answers.
func awsText(code string, status int) string {
	switch code {
	case "ResourceNotFoundException":
		return "not found (no such secret, or no version with this stage)"
	case "AccessDeniedException":
		return "permission denied (the identity may not call secretsmanager:GetSecretValue on it, or may not decrypt it)"
	case "DecryptionFailure":
		return "cannot be decrypted with its KMS key"
	case "InvalidRequestException":
		return "invalid request (is the secret scheduled for deletion?)"
	case "InvalidParameterException":
		return "invalid parameter"
	case "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded":
		return "rate limited"
	case "UnrecognizedClientException", "InvalidSignatureException", "SignatureDoesNotMatch",
		"ExpiredTokenException", "InvalidClientTokenId", "IncompleteSignature":
		return "the AWS credentials are refused"
	case "InternalServiceError", "InternalFailure", "ServiceUnavailable":
		return "Secrets Manager server error"
	}
	if status >= 500 {
		return "Secrets Manager server error"
	}
	return "refused"
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

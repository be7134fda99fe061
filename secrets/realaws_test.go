package secrets

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/castellan-dev/castellan/redact"
)

// TestRealAWS runs the Store against the real AWS Secrets Manager: the fake in
// fakeaws_test.go only speaks the subset of the service we believe we use, and this test
// checks that belief. AWS cannot be reached from the machines this project is built on, so
// it runs only where an operator provides, through the standard AWS environment:
//
//	AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN for temporary ones)
//	AWS_REGION, unless the secret id is an ARN
//	CASTELLAN_TEST_AWS_SECRET_ID   an existing secret the identity may read (its
//	                               SecretString must be at least 8 bytes long)
//	CASTELLAN_TEST_AWS_FIELD       optional: a string field of that JSON SecretString
func TestRealAWS(t *testing.T) {
	id := os.Getenv("CASTELLAN_TEST_AWS_SECRET_ID")
	if id == "" || os.Getenv("AWS_ACCESS_KEY_ID") == "" || os.Getenv("AWS_SECRET_ACCESS_KEY") == "" {
		t.Skip("CASTELLAN_TEST_AWS_SECRET_ID, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not all set: no real AWS to test against (the fake-server tests cover the same code)")
	}
	field := os.Getenv("CASTELLAN_TEST_AWS_FIELD")
	red := redact.NewSet()
	s, err := NewStore(map[string]Spec{
		"real":    {AWS: &AWSRef{SecretID: id, Field: field}},
		"missing": {AWS: &AWSRef{SecretID: id + "-castellan-test-missing"}},
		"stage":   {AWS: &AWSRef{SecretID: id, VersionStage: "CASTELLAN_TEST_NO_SUCH_STAGE"}},
	}, nil, red, nil)
	if err != nil {
		t.Fatalf("NewStore = %v", err)
	}
	defer s.Close()
	v, err := s.Credential(t.Context(), "real")
	if err != nil {
		t.Fatalf("Credential(real) = %v (%s)", err, Detail(err))
	}
	if !red.Contains([]byte(v)) {
		t.Errorf("redact set does not contain the value read from Secrets Manager")
	}
	// A missing secret is ResourceNotFoundException, or AccessDeniedException when the
	// identity's policy names only the secrets it may read; a missing stage is not found.
	for name, want := range map[string][]string{
		"missing": {"ResourceNotFoundException", "AccessDeniedException"},
		"stage":   {"ResourceNotFoundException"},
	} {
		_, err := s.Credential(t.Context(), name)
		checkErr(t, "Credential("+name+")", err)
		d := Detail(err)
		found := false
		for _, w := range want {
			found = found || strings.Contains(d, w)
		}
		if !found {
			t.Errorf("Detail(Credential(%s)) = %q, want one of %q", name, d, want)
		}
		if text := fmt.Sprintf("%+v %s", err, d); strings.Contains(text, os.Getenv("AWS_SECRET_ACCESS_KEY")) || strings.Contains(text, v) {
			t.Errorf("Credential(%s) error %q contains the secret access key or the value", name, text)
		}
	}
}

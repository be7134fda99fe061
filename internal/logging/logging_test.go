package logging

import (
	"bytes"
	"encoding/base64"
	"errors"
	stdlog "log"
	"net/url"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/castellan-dev/castellan/redact"
)

// TestNoCredentialReachesTheSink logs a credential through every path a component might use
// (message, string field, error, byte string, nested object) in both encodings, and checks
// that no form of it reaches the writer.
func TestNoCredentialReachesTheSink(t *testing.T) {
	t.Parallel()
	const secret = "tok-7f3a9c2e51d04b8a"
	red := redact.NewSet()
	if err := red.Add(secret); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"console", "json"} {
		var out bytes.Buffer
		log, err := New(&out, Options{Level: "debug", Format: format, Scrub: red})
		if err != nil {
			t.Fatal(err)
		}
		log.Info("upstream said "+secret,
			zap.String("header", "Bearer "+secret),
			zap.Error(errors.New("401 for token "+secret)),
			zap.ByteString("body", []byte(`{"echo":"`+base64.StdEncoding.EncodeToString([]byte(secret))+`"}`)),
			zap.Any("nested", map[string]string{"q": "api_key=" + url.QueryEscape(secret)}),
		)
		log.Debug("hex", zap.String("v", strings.ToUpper(bytesToHex(secret))))
		if err := log.Sync(); err != nil {
			t.Fatal(err)
		}
		got := out.String()
		if !strings.Contains(got, redact.Placeholder) {
			t.Fatalf("%s: no %s in the output; was anything logged?\n%s", format, redact.Placeholder, got)
		}
		for _, f := range redact.Forms(secret) {
			if strings.Contains(got, f) {
				t.Errorf("%s: credential form %q reached the log:\n%s", format, f, got)
			}
		}
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{{Level: "loud"}, {Format: "xml"}} {
		if _, err := New(&bytes.Buffer{}, o); err == nil {
			t.Errorf("New(%+v) = nil error, want one", o)
		}
	}
}

func bytesToHex(s string) string {
	const digits = "0123456789abcdef"
	b := make([]byte, 0, 2*len(s))
	for i := 0; i < len(s); i++ {
		b = append(b, digits[s[i]>>4], digits[s[i]&15])
	}
	return string(b)
}

// TestStdlibLogIsScrubbed: what net/http prints on the standard logger (an upstream's stray
// bytes) reaches the sink only through the scrubbing logger. Not parallel: the standard logger
// is process-wide.
func TestStdlibLogIsScrubbed(t *testing.T) {
	const secret = "tok-0b8d4e6f2a1c9e37"
	red := redact.NewSet()
	if err := red.Add(secret); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	log, err := New(&out, Options{Format: "json", Scrub: red})
	if err != nil {
		t.Fatal(err)
	}
	restore := CaptureStdlib(log)
	stdlog.Printf("Unsolicited response received on idle HTTP channel starting with %q; err=%v", "HTTP/1.1 200 OK\r\n\r\n"+secret, nil)
	restore()
	got := out.String()
	if !strings.Contains(got, `"logger":"stdlib"`) || !strings.Contains(got, "Unsolicited response") {
		t.Fatalf("CaptureStdlib: the standard logger's line did not reach the sink as JSON: %q", got)
	}
	if strings.Contains(got, secret) {
		t.Fatalf("CaptureStdlib: the credential reached the sink: %q", got)
	}
}

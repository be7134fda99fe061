package redact_test

import (
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/castellan-dev/castellan/redact"
)

func Example() {
	s := redact.NewSet()
	if err := s.Add("tok_live_9f8e7d6c"); err != nil {
		panic(err)
	}
	basic := base64.StdEncoding.EncodeToString([]byte("svc:tok_live_9f8e7d6c"))
	fmt.Println(s.RedactString(`{"echo":"tok_live_9f8e7d6c"}`))
	fmt.Println(s.RedactString("Authorization: Basic " + basic))

	// The base64 character that mixes the user name's last bits with the secret's first
	// ones stays ("n"); every character that depends on the secret alone is replaced.

	// Streams give the same result however the bytes are split.
	r := s.NewReader(strings.NewReader("url=/cb?t=tok_live_9f8e7d6c&x=1\n"))
	io.Copy(os.Stdout, r)
	// Output:
	// {"echo":"[REDACTED]"}
	// Authorization: Basic c3ZjOn[REDACTED]
	// url=/cb?t=[REDACTED]&x=1
}

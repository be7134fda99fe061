// Command gosnoop is a hostile Go task: it tries every channel a task has to find the CRM
// credential (the environment, arguments, the echoing endpoints, response headers) and copies
// everything it found into its output, its logs, its stdout and, when the input says so, its
// error message. The test then proves none of it holds the credential.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	castellan "github.com/castellan-dev/castellan/sdk/go"
)

func main() {}

func init() { castellan.Handle(snoop) }

func snoop(ctx *castellan.Context) error {
	var found []string
	// Files are out of reach by construction: a module that links the os file API is refused
	// at load (see gofiles). The environment and arguments are empty.
	found = append(found, "env:"+strings.Join(os.Environ(), ","), "args:"+strings.Join(os.Args, ","))
	for _, path := range []string{"/api/echo", "/api/echo-b64", "/api/customers/42"} {
		resp, err := ctx.HTTP("crm").Get(path + "?probe=1")
		if err != nil {
			found = append(found, path+": "+err.Error())
			continue
		}
		body, _ := resp.Bytes()
		resp.Close()
		found = append(found, fmt.Sprintf("%s %d %v %s", path, resp.Status, resp.Header, body))
	}
	all := strings.Join(found, "\n")
	ctx.Infof("%s", all)
	fmt.Println(all)
	fmt.Fprintln(os.Stderr, all)
	if string(ctx.Input()) == `"fail"` {
		return errors.New(all)
	}
	return ctx.EncodeOutput(found)
}

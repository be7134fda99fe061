package cli

import (
	"context"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/castellan-dev/castellan/internal/server/api"
)

// demoRules is the demo approver's rules file: short customer numbers are read-only
// lookups a rule may approve; anything else is left for a person in the console.
const demoRules = `rules:
  - name: read-only-lookups
    when: 'task == "crm-lookup" && size(input.customer_id) <= 2'
    approve: { ttl: 10m, max_attempts: 2 }
`

var csrfField = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// demoApprover runs `castellan approver` (a child process, with the console on loopback):
// a rule approves one crm-lookup job, and the console approves another as a browser would,
// with the session cookie from the printed URL and the page's CSRF token.
func demoApprover(ctx context.Context, self, dir, privPath string, approverCfg, clientCfg JobConfig,
	step, info func(string, ...any)) error {
	rulesPath := filepath.Join(dir, "approver", "rules.yaml")
	if err := os.WriteFile(rulesPath, []byte(demoRules), 0o600); err != nil {
		return err
	}
	var log syncBuffer
	step("castellan approver --rules rules.yaml --key %s --pool %s --ui 127.0.0.1:0   (rules first, a person for the rest)", filepath.Base(privPath), demoPool)
	apr, err := startChild(ctx, self, &log, "approver", "--server", approverCfg.Server, "--token-file", approverCfg.TokenFile,
		"--key", privPath, "--rules", rulesPath, "--pool", demoPool, "--ui", "127.0.0.1:0", "--as", "demo-person", "--log-level", "info")
	if err != nil {
		return err
	}
	defer apr.stop()
	consoleLine, err := apr.line("console: open ", 15*time.Second)
	if err != nil {
		return fmt.Errorf("the approver did not start: %v\n%s", err, indentString(log.String()))
	}
	sessionURL, _, _ := strings.Cut(consoleLine, " ")
	info("rule read-only-lookups: crm-lookup with a customer number of at most 2 digits is approved for 10m, 2 attempts")
	fail := func(err error) error { return fmt.Errorf("%v\napprover log:\n%s", err, indentString(log.String())) }

	byRule, err := JobSubmit(ctx, SubmitConfig{JobConfig: clientCfg, Task: "crm-lookup", Pool: demoPool, Input: `{"customer_id":"42"}`}, io.Discard)
	if err != nil {
		return err
	}
	step("castellan job submit --task crm-lookup --input '{\"customer_id\":\"42\"}': job %s", byRule.ID)
	done, err := mustClient(clientCfg).Wait(ctx, byRule.ID)
	if err != nil || done.State != api.StateSucceeded {
		return fail(fmt.Errorf("the rule-approved job ended %s (%v): %s", done.State, err, done.ErrorMessage))
	}
	info("approved by rule read-only-lookups, signed by the approver process; the worker ran it: %s", done.Output)

	long, err := JobSubmit(ctx, SubmitConfig{JobConfig: clientCfg, Task: "crm-lookup", Pool: demoPool, Input: `{"customer_id":"1001"}`}, io.Discard)
	if err != nil {
		return err
	}
	step("castellan job submit --task crm-lookup --input '{\"customer_id\":\"1001\"}': job %s; no rule matches, so it waits for a person", long.ID)

	jar, err := cookiejar.New(nil)
	if err != nil {
		return err
	}
	hc := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	u, err := url.Parse(sessionURL)
	if err != nil {
		return fail(fmt.Errorf("console URL %q: %v", sessionURL, err))
	}
	base := u.Scheme + "://" + u.Host
	info("the console is at %s (the session secret in the printed URL becomes an HttpOnly cookie)", base)
	page, err := demoGet(hc, sessionURL)
	if err != nil {
		return fail(err)
	}
	m := csrfField.FindStringSubmatch(page)
	deadline := time.Now().Add(15 * time.Second)
	for m == nil || !strings.Contains(page, "job-"+long.ID) {
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("job %s never showed in the console", long.ID))
		}
		time.Sleep(50 * time.Millisecond) // the approver is asking about the job
		if page, err = demoGet(hc, base+"/"); err != nil {
			return fail(err)
		}
		m = csrfField.FindStringSubmatch(page)
	}
	info("the console shows job %s: task crm-lookup 1.0.0, pool %s, input customer_id 1001 laid out against its schema, asked by default (no rule matched)", long.ID, demoPool)
	step("a person clicks Approve in the console (POST /jobs/%s/approve with the CSRF token; signed in the approver process)", long.ID)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/jobs/"+long.ID+"/approve",
		strings.NewReader(url.Values{"csrf": {html.UnescapeString(m[1])}}.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	resp, err := hc.Do(req)
	if err != nil {
		return fail(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Query().Get("done") != "approved" {
		return fail(fmt.Errorf("console approve answered %d at %s", resp.StatusCode, resp.Request.URL))
	}
	done, err = mustClient(clientCfg).Wait(ctx, long.ID)
	if err != nil || done.State != api.StateSucceeded {
		return fail(fmt.Errorf("the console-approved job ended %s (%v): %s", done.State, err, done.ErrorMessage))
	}
	info("approved by person demo-person in the console; the worker ran it: %s", done.Output)
	if code := apr.terminate(15 * time.Second); code != 0 {
		return fail(fmt.Errorf("the approver exited %d after SIGTERM, want 0", code))
	}
	for _, secret := range []string{"1001", "\"42\""} {
		if strings.Contains(log.String(), secret) {
			return fail(fmt.Errorf("the approver's log quotes a job input (%s)", secret))
		}
	}
	info("the approver's log names jobs, tasks and rules, never an input; stopped with SIGTERM")
	return nil
}

func demoGet(hc *http.Client, u string) (string, error) {
	resp, err := hc.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET console %s: %d %s", resp.Request.URL.Path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

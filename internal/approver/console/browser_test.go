package console

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/castellan-dev/castellan/internal/approver/approvertest"
	"github.com/castellan-dev/castellan/internal/server/api"
	"github.com/castellan-dev/castellan/internal/testenv"
)

// chromiumPath finds Debian's chromium. Without it the test skips, or fails where tools are
// required (CI: testenv); CASTELLAN_SKIP_BROWSER=1 skips it on purpose.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if os.Getenv("CASTELLAN_SKIP_BROWSER") == "1" {
		t.Skip("CASTELLAN_SKIP_BROWSER=1: the console's browser test is skipped on request")
	}
	return testenv.LookPath(t, "apt-get install -y chromium", "chromium", "chromium-browser")
}

// browser is one headless Chromium tab for a test, and helpers that fail the test with the
// page's HTML when a step does not complete.
type browser struct {
	t   *testing.T
	ctx context.Context
}

func newBrowser(t *testing.T, exe string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.WindowSize(900, 760), chromedp.Flag("disable-gpu", true))
	actx, cancelA := chromedp.NewExecAllocator(t.Context(), opts...)
	t.Cleanup(cancelA)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(cancelB)
	ctx, cancelT := context.WithTimeout(ctx, 30*time.Second)
	t.Cleanup(cancelT)
	// Start the browser on the test-long context: the first action's context owns the tab,
	// and each step below runs with its own deadline.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &browser{t: t, ctx: ctx}
}

func (b *browser) step(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	sctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, steps...); err != nil {
		html, _ := chromedp.Run(b.ctx, chromedp.OuterHTML(chromedp.CSS("body")))
		u, _ := chromedp.Run(b.ctx, chromedp.Location())
		b.t.Fatalf("%s: %v; the page at %s:\n%s", what, err, u, html)
	}
}

func (b *browser) value(what string, a chromedp.Action[string]) string {
	b.t.Helper()
	sctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(sctx, a)
	if err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	return v
}

func (b *browser) shot(what string) []byte {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", what, err)
	}
	if len(png) < 1000 {
		b.t.Fatalf("screenshot %s of %d bytes, want a real image", what, len(png))
	}
	return png
}

// waitLocation waits until the page's URL holds part: a form's redirect has landed (the
// page before it stays in place until then).
func (b *browser) waitLocation(part string) {
	b.t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		u := b.value("location", chromedp.Location())
		if strings.Contains(u, part) {
			return
		}
		if time.Now().After(deadline) {
			html, _ := chromedp.Run(b.ctx, chromedp.OuterHTML(chromedp.CSS("body")))
			b.t.Fatalf("the page never reached a URL with %q; it is at %s:\n%s", part, u, html)
		}
		time.Sleep(10 * time.Millisecond) // polling the page's location
	}
}

// writeScreenshots rewrites docs/images/NAME when CASTELLAN_SCREENSHOTS=1.
func writeScreenshots(t *testing.T, shots map[string][]byte) {
	t.Helper()
	if os.Getenv("CASTELLAN_SCREENSHOTS") != "1" {
		return
	}
	dir := filepath.Join("..", "..", "..", "docs", "images")
	for name, b := range shots {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBrowserApproveDeny: in headless Chromium, a person opens the session URL, sees the
// queue, clicks Approve on one job and denies another with a reason; the control plane's API
// then shows the first queued with a worker-verifiable approval by that person and the second
// denied with the reason. A job arriving while the page is open shows up without a reload.
//
// CASTELLAN_SCREENSHOTS=1 also writes the two screenshots of docs/approvals.md to
// docs/images/.
func TestBrowserApproveDeny(t *testing.T) {
	exe := chromiumPath(t)
	f := newFixture(t)
	lookup := f.e.Submit(f.e.Client, "crm-lookup", approvertest.Pool, `{"customer_id":"c-1042","note":"renewal call <b>today</b>"}`)
	refund := f.e.Submit(f.e.Client, "refund", approvertest.Pool, `{"amount":1250,"reason":"duplicate charge"}`)
	f.poll(t)

	b := newBrowser(t, exe)
	step, value, shot := b.step, b.value, b.shot
	sel := func(id, rest string) chromedp.CSS { return chromedp.CSS("#job-" + id + " " + rest) }

	step("open the console", chromedp.Navigate(f.c.SessionURL()),
		chromedp.WaitVisible(sel(lookup.ID, "button.approve")),
		chromedp.WaitVisible(sel(refund.ID, "details.deny summary")))
	if u := value("location", chromedp.Location()); strings.Contains(u, "session=") {
		t.Fatalf("after login the address bar shows %q, want the secret gone", u)
	}
	queuePNG := shot("the queue")

	// A job submitted while the page is open appears without a reload.
	late := f.e.Submit(f.e.Client, "crm-lookup", approvertest.Pool, `{"customer_id":"c-7"}`)
	f.poll(t)
	step("the late job appears on the open page", chromedp.WaitVisible(sel(late.ID, "button.approve")))

	step("click Approve", chromedp.Click(sel(lookup.ID, "button.approve")), chromedp.WaitVisible(chromedp.CSS(".notice")))
	if n := value("notice", chromedp.Text(chromedp.CSS(".notice"))); !strings.Contains(n, "Approved") {
		t.Fatalf("after Approve the notice says %q", n)
	}
	step("open the deny form", chromedp.Click(sel(refund.ID, "details.deny summary")),
		chromedp.WaitVisible(sel(refund.ID, "input[name=reason]")),
		chromedp.SendKeys(sel(refund.ID, "input[name=reason]"), "needs finance sign-off"))
	denyPNG := shot("the deny form")
	step("confirm the deny", chromedp.Click(sel(refund.ID, "button.deny-confirm")))
	// The page that shows the Approve notice is still there until the deny's redirect lands.
	b.waitLocation("done=denied")
	step("the deny's page", chromedp.WaitVisible(chromedp.CSS(".notice")))
	if n := value("notice", chromedp.Text(chromedp.CSS(".notice"))); !strings.Contains(n, "Denied") {
		t.Fatalf("after Deny the notice says %q", n)
	}

	got := f.e.Get(refund.ID)
	if got.State != api.StateDenied || got.ErrorMessage != "needs finance sign-off" || got.HasApproval {
		t.Fatalf("denied job through the API: %+v, want denied with the reason typed", got)
	}
	if got := f.e.Get(lookup.ID); got.State != api.StateQueued || !got.HasApproval {
		t.Fatalf("approved job through the API: %s (approval %v), want queued with an approval", got.State, got.HasApproval)
	}
	c, err := f.e.Verify(f.e.Lease(approvertest.Pool, lookup.ID))
	if err != nil || c.ApprovedBy == nil || c.ApprovedBy.Person != "alice@example.com" {
		t.Fatalf("worker Verify(the console's approval) = %+v, %v; want approved by person alice@example.com", c.ApprovedBy, err)
	}
	if got := f.e.Get(late.ID); got.State != api.StatePendingApproval {
		t.Fatalf("the job nobody clicked is %s, want pending_approval", got.State)
	}

	writeScreenshots(t, map[string][]byte{"console-queue.png": queuePNG, "console-deny.png": denyPNG})
}

// TestBrowserPlan: in headless Chromium, a pending plan is one row with its steps in order;
// Approve plan on one plan signs one plan approval under which the control plane runs its
// steps one after the other (each leased only once the one before succeeded, each verified
// as a worker does), and Deny with a reason on another plan denies every step of it.
//
// CASTELLAN_SCREENSHOTS=1 also writes docs/images/console-plan.png.
func TestBrowserPlan(t *testing.T) {
	exe := chromiumPath(t)
	f := newFixture(t)
	submit := func(steps ...api.PlanStepRequest) api.Plan {
		t.Helper()
		pl, err := f.e.Client.SubmitPlan(t.Context(), api.PlanRequest{Steps: steps})
		if err != nil {
			t.Fatalf("SubmitPlan() = %v", err)
		}
		return pl
	}
	// The plan denied is submitted first, so it is the first row: an Approve posting the
	// first row's id, whichever row it sits in, approves the wrong plan.
	no := submit(
		api.PlanStepRequest{Task: "refund", Pool: approvertest.Pool, Input: json.RawMessage(`{"amount":4800,"reason":"goodwill"}`)},
		api.PlanStepRequest{Task: "crm-lookup", Pool: approvertest.Pool, Input: json.RawMessage(`{"customer_id":"c-77"}`)},
	)
	ok := submit(
		api.PlanStepRequest{Task: "crm-lookup", Pool: approvertest.Pool, Input: json.RawMessage(`{"customer_id":"c-2001","note":"check the open order"}`)},
		api.PlanStepRequest{Task: "refund", Pool: approvertest.Pool, Input: json.RawMessage(`{"amount":40,"reason":"late delivery"}`)},
	)
	f.poll(t)

	b := newBrowser(t, exe)
	sel := func(id, rest string) chromedp.CSS { return chromedp.CSS("#plan-" + id + " " + rest) }
	b.step("open the console", chromedp.Navigate(f.c.SessionURL()),
		chromedp.WaitVisible(sel(ok.ID, "button.approve")),
		chromedp.WaitVisible(sel(no.ID, "details.deny summary")))
	for _, pl := range []api.Plan{no, ok} {
		var want []string
		for _, st := range pl.Steps {
			want = append(want, st.ID)
		}
		got := b.value("the row's steps", chromedp.Evaluate[string](fmt.Sprintf(
			`Array.from(document.querySelectorAll("#plan-%s li.step"), (li) => li.dataset.job).join(",")`, pl.ID)))
		if got != strings.Join(want, ",") {
			t.Fatalf("plan %s's row shows the steps %q, want %q in this order", pl.ID, got, strings.Join(want, ","))
		}
	}
	if n := b.value("job rows", chromedp.Evaluate[string](`String(document.querySelectorAll("article.job").length)`)); n != "0" {
		t.Fatalf("the page shows %s single-job rows, want none: plan steps are shown only in their plan's row", n)
	}
	planPNG := b.shot("the plan rows")

	b.step("click Approve plan", chromedp.Click(sel(ok.ID, "button.approve")))
	b.waitLocation("done=plan-approved")
	b.step("the approve's page", chromedp.WaitVisible(chromedp.CSS(".notice")))
	if n := b.value("notice", chromedp.Text(chromedp.CSS(".notice"))); !strings.Contains(n, "Plan approved") {
		t.Fatalf("after Approve plan the notice says %q", n)
	}
	if got := f.e.Get(ok.Steps[0].ID); got.State != api.StateQueued || !got.HasApproval {
		t.Fatalf("after Approve plan on plan %s its first step is %s (approval %v), want queued with the plan approval", ok.ID, got.State, got.HasApproval)
	}
	if got := f.e.Get(no.Steps[0].ID); got.State != api.StatePendingApproval || got.HasApproval {
		t.Fatalf("after Approve plan on plan %s, plan %s's first step is %s (approval %v), want untouched", ok.ID, no.ID, got.State, got.HasApproval)
	}

	b.step("open the plan's deny form", chromedp.Click(sel(no.ID, "details.deny summary")),
		chromedp.WaitVisible(sel(no.ID, "input[name=reason]")),
		chromedp.SendKeys(sel(no.ID, "input[name=reason]"), "refunds over 1000 need finance"))
	b.step("confirm the plan's deny", chromedp.Click(sel(no.ID, "button.deny-confirm")))
	b.waitLocation("done=plan-denied")
	b.step("the deny's page", chromedp.WaitVisible(chromedp.CSS(".notice")))
	if n := b.value("notice", chromedp.Text(chromedp.CSS(".notice"))); !strings.Contains(n, "Plan denied") {
		t.Fatalf("after Deny plan the notice says %q", n)
	}

	// The approved plan's steps run in order under its one approval: step 2 waits, without
	// an approval, while step 1 runs, and is leased only once step 1 succeeded.
	for i, st := range ok.Steps {
		lj := f.e.Lease(approvertest.Pool, st.ID)
		c, err := f.e.Verify(lj)
		if err != nil || c.Plan != ok.ID || len(c.Steps) != len(ok.Steps) || c.ApprovedBy == nil || c.ApprovedBy.Person != "alice@example.com" {
			t.Fatalf("worker Verify(step %d) = %+v, %v; want plan %s's approval by person alice@example.com", i+1, c, err, ok.ID)
		}
		for _, later := range ok.Steps[i+1:] {
			if got := f.e.Get(later.ID); got.State != api.StatePendingApproval || got.HasApproval {
				t.Fatalf("while step %d runs, later step %s is %s (approval %v), want pending_approval without one", i+1, later.ID, got.State, got.HasApproval)
			}
		}
		f.e.Succeed(lj)
	}
	done := f.e.WaitPlan(ok.ID, api.PlanSucceeded)
	for i, st := range done.Steps {
		if st.ID != ok.Steps[i].ID || st.State != api.StateSucceeded {
			t.Fatalf("approved plan's step %d = %s %s, want %s succeeded", i+1, st.ID, st.State, ok.Steps[i].ID)
		}
	}

	denied := f.e.WaitPlan(no.ID, api.PlanDenied)
	for i, st := range denied.Steps {
		if st.State != api.StateDenied || st.ErrorMessage != "refunds over 1000 need finance" || st.HasApproval {
			t.Fatalf("denied plan's step %d = %s %q (approval %v), want denied with the reason typed", i+1, st.State, st.ErrorMessage, st.HasApproval)
		}
	}

	writeScreenshots(t, map[string][]byte{"console-plan.png": planPNG})
}

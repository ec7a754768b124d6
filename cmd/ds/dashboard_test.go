package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/chromedp"

	"github.com/sandstorm-dev/sandstorm/api"
	"github.com/sandstorm-dev/sandstorm/modelserver"
	"github.com/sandstorm-dev/sandstorm/testenv"
)

// ScreenshotEnv, if set, names where TestDashboard saves a screenshot of a
// finished run's page (the README's).
const ScreenshotEnv = "SANDSTORM_SCREENSHOT"

// chromium is Debian's, which scripts/host-setup.sh installs.
func chromium(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("SANDSTORM_REQUIRE_RUNTIMES") != "" {
			t.Fatalf("no chromium for the browser test: %v (scripts/host-setup.sh installs it)", err)
		}
		t.Skipf("no chromium: %v", err)
	}
	return path
}

// TestDashboard drives the dashboard in a real (headless) chromium against
// a real ds serve with API keys and the scripted model: the page asks for
// the key, starts a run, shows its events as they arrive (before the run
// has ended), lists and downloads the file it made, cancels a second run,
// and lists both with their outcomes. On failure a screenshot is saved
// under build/.
func TestDashboard(t *testing.T) {
	const backend = "containerd"
	exe := chromium(t)
	agentBackend(t, backend)
	key := strings.Repeat("d", 40)
	t.Setenv("SANDSTORM_API_KEY", key)
	sc := modelserver.Scenario{Name: "dashboard", Turns: []modelserver.Turn{
		{Text: "Writing the report.", ToolUse: &modelserver.ToolUse{Name: "Write", Input: api.Marshal(map[string]string{"file_path": "/home/user/report.md", "content": "# report\n\nall good\n"})}},
		{DelayMS: 2500, Text: "Checking it.", ToolUse: &modelserver.ToolUse{Name: "Bash", Input: api.Marshal(map[string]string{"command": "wc -c report.md"})}},
		{DelayMS: 1000, Text: "The report is written."},
		// The second run waits on its model until it is cancelled.
		{DelayMS: 600000, Text: "never"},
	}}
	dir := t.TempDir()
	srv := serve(t, dir, backend, "--scripted-model", testenv.ScenarioFile(t, sc))

	downloads := t.TempDir()
	ctx, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1200, 900))...)
	defer cancel()
	ctx, cancel = chromedp.NewContext(ctx)
	defer cancel()
	shot := func(path string) {
		c, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if png, err := chromedp.Run(c, chromedp.FullScreenshot(100)); err == nil {
			os.MkdirAll(filepath.Dir(path), 0o755)
			os.WriteFile(path, png, 0o644)
		}
	}
	defer func() {
		if t.Failed() {
			c, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if html, err := chromedp.Run(c, chromedp.Evaluate[string](`document.body.innerHTML`)); err == nil {
				t.Logf("the page:\n%s", html)
			}
			shot("../../build/dashboard-failure.png")
			t.Log("screenshot: build/dashboard-failure.png")
		}
	}()
	do := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		step, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := chromedp.Do(step, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	eval := func(expr string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	// waitJS waits until expr (JavaScript) is true.
	waitJS := func(what, expr string) {
		t.Helper()
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr)); err == nil && ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: never true: %s", what, expr)
			}
		}
	}

	// The browser and its tab start with the test's context: a step's
	// (which ends with the step) would take them with it.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.CallBrowser(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
		Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: downloads}); err != nil {
		t.Fatal(err)
	}
	do("open the dashboard", chromedp.Navigate(srv.url+"/"), chromedp.WaitVisible(chromedp.ID("key")))
	do("give the key", chromedp.SendKeys(chromedp.ID("key"), key), chromedp.Click(chromedp.CSS("#login-form button")),
		chromedp.WaitVisible(chromedp.ID("prompt")))
	waitJS("the host's state", `document.querySelector('#host').textContent.includes('containerd')`)

	do("start a run", chromedp.SendKeys(chromedp.ID("prompt"), "write the report"), chromedp.Click(chromedp.ID("start")),
		chromedp.WaitVisible(chromedp.ID("events")))
	first := strings.TrimPrefix(eval(`location.hash`), "#/runs/")
	if !strings.HasPrefix(first, "run-") {
		t.Fatalf("after starting a run the page is %q", first)
	}
	// Live: the agent's first words are on the page while the run still runs.
	waitJS("live events", `[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('Writing the report.'))`)
	// The summary is polled; it may still say queued, but not yet an end.
	if status := eval(`document.querySelector('#run-summary').dataset.status`); status != "running" && status != "queued" {
		t.Errorf("the first words arrived with the run %q, want it still going", status)
	}
	waitJS("the run's end", `document.querySelector('#run-summary').dataset.status === 'succeeded'`)
	events := eval(`document.querySelector('#events').innerText`)
	for _, want := range []string{"● agent started", "→ Write /home/user/report.md", "→ Bash wc -c report.md", "← ", "↓ report.md", "── success"} {
		if !strings.Contains(events, want) {
			t.Errorf("the events lack %q:\n%s", want, events)
		}
	}
	if path := os.Getenv(ScreenshotEnv); path != "" {
		shot(path)
	}

	do("download the file", chromedp.Click(chromedp.CSS("#files a")))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		data, err := os.ReadFile(filepath.Join(downloads, "report.md"))
		if err == nil && string(data) == "# report\n\nall good\n" {
			break
		}
		if time.Now().After(deadline) {
			entries, _ := os.ReadDir(downloads)
			t.Fatalf("downloaded report.md: %q %v (downloads: %v)", data, err, entries)
		}
	}

	do("back to the list", chromedp.Navigate(srv.url+"/ui/#/"), chromedp.WaitVisible(chromedp.ID("prompt")))
	do("start another", chromedp.SendKeys(chromedp.ID("prompt"), "wait for the model"), chromedp.Click(chromedp.ID("start")),
		chromedp.WaitVisible(chromedp.ID("events")))
	waitJS("it runs", `document.querySelector('#run-summary').dataset.status === 'running' && !document.querySelector('#cancel').disabled`)
	do("cancel it", chromedp.Click(chromedp.ID("cancel")))
	waitJS("it is cancelled", `document.querySelector('#run-summary').dataset.status === 'cancelled'`)
	second := strings.TrimPrefix(eval(`location.hash`), "#/runs/")

	do("the list", chromedp.Navigate(srv.url+"/ui/#/"), chromedp.WaitVisible(chromedp.ID("runs")))
	waitJS("both listed", `document.querySelectorAll('#runs tbody tr').length === 2`)
	var rows []map[string]string
	json.Unmarshal([]byte(eval(`JSON.stringify([...document.querySelectorAll('#runs tbody tr')].map(tr => ({id: tr.dataset.id, status: tr.dataset.status, text: tr.textContent})))`)), &rows)
	want := map[string]string{first: "succeeded", second: "cancelled"}
	if len(rows) != 2 {
		t.Errorf("rows %v", rows)
	}
	for _, r := range rows {
		if want[r["id"]] != r["status"] || !strings.Contains(r["text"], "containerd") {
			t.Errorf("row %v, want %v", r, want)
		}
	}
	// The key stayed in the tab: nothing in localStorage or cookies.
	if stored := eval(`JSON.stringify({local: localStorage.length, cookie: document.cookie})`); stored != `{"local":0,"cookie":""}` {
		t.Errorf("the key left the session: %s", stored)
	}
}

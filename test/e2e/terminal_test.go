package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"

	"github.com/hearth-project/hearth/api"
)

// bufferText is the terminal page's screen and scrollback as text, read
// from xterm.js's buffer.
const bufferText = `(() => {
	const t = window.hearthTerminal;
	if (!t) { return ""; }
	const b = t.buffer.active, lines = [];
	for (let i = 0; i < b.length; i++) { lines.push(b.getLine(i).translateToString(true)); }
	return lines.join("\n");
})()`

// TestTerminalInChromium is the user's path to a shell: a minimal VM, a
// terminal link from the API, Debian's Chromium opening it, xterm.js
// connected through hearth's bridge to a login shell on a PTY in the
// guest. What is typed runs there and its output shows in the page;
// resizing the window resizes the guest's terminal (stty size); a reload
// brings the same shell and its screen back; `hearth vm shell` runs a
// command on a PTY and exits with its code. The terminal's screenshot is
// saved under out/artifacts.
func TestTerminalInChromium(t *testing.T) {
	needRoot(t)
	browserBin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("Debian's chromium is needed (scripts/host-deps.sh installs it): %v", err)
	}
	d := newDaemon(t)
	ctx := ctxT(t, 15*time.Minute)
	v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	if v, err = d.alice.WaitVM(ctx, v.ID, "ready", 5*time.Minute); err != nil {
		t.Fatalf("vm not ready: %v", err)
	}
	fwd := forward(t, d)
	link, err := d.alice.CreateTerminal(ctx, v.ID, api.CreateTerminal{Cols: 120, Rows: 40})
	if err != nil {
		t.Fatal(err)
	}
	if link.ProcessID == "" || !strings.Contains(link.URL, "#token=") {
		t.Fatalf("terminal link %+v", link)
	}
	page, err := url.Parse(link.URL)
	if err != nil {
		t.Fatal(err)
	}
	page.Host = fwd

	bctx := newChromium(t, browserBin)
	bctx, cancel := context.WithTimeout(bctx, 10*time.Minute)
	defer cancel()
	state := func() string {
		s, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`(document.documentElement.dataset.terminalState || "") + " | " + (document.querySelector("#status")||{}).textContent`))
		return s
	}
	screen := func() string {
		s, _ := chromedp.Run(bctx, chromedp.Evaluate[string](bufferText))
		return s
	}
	connected := func() {
		t.Helper()
		if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.documentElement.dataset.terminalState === "connected"`, chromedp.WithPollingTimeout(90*time.Second))); err != nil {
			t.Fatalf("the terminal page did not connect: %v; page state: %s", err, state())
		}
	}
	// waitFor waits until the page's buffer matches pattern (a regular
	// expression both Go and JavaScript read alike, multi-line) and
	// returns the match.
	waitFor := func(pattern string) string {
		t.Helper()
		js, _ := json.Marshal(pattern)
		test := `new RegExp(` + string(js) + `, "m").test(` + bufferText + `)`
		if _, err := chromedp.Run(bctx, chromedp.Poll[bool](test, chromedp.WithPollingTimeout(60*time.Second))); err != nil {
			t.Fatalf("%s never showed in the terminal: %v; page state: %s; screen:\n%s", pattern, err, state(), screen())
		}
		return regexp.MustCompile("(?m)" + pattern).FindString(screen())
	}
	// typeLine types s and Enter into the terminal. The text goes in as
	// the browser inserts typed text (chromedp's SendKeys adds a char
	// event to each key down, which xterm.js takes as a second key), and
	// Enter as the key xterm.js reads it from.
	typeLine := func(s string) {
		t.Helper()
		if err := chromedp.Do(bctx, chromedp.Focus(".xterm-helper-textarea")); err != nil {
			t.Fatalf("focus the terminal: %v", err)
		}
		if _, err := chromedp.Call(bctx, input.InsertText, input.InsertTextParams{Text: s}); err != nil {
			t.Fatalf("type %q: %v", s, err)
		}
		for _, typ := range []input.DispatchKeyEventType{input.DispatchKeyEventTypeRawKeyDown, input.DispatchKeyEventTypeKeyUp} {
			if _, err := chromedp.Call(bctx, input.DispatchKeyEvent, input.DispatchKeyEventParams{Type: typ, Key: "Enter", Code: "Enter",
				WindowsVirtualKeyCode: 13, NativeVirtualKeyCode: 13}); err != nil {
				t.Fatalf("press Enter: %v", err)
			}
		}
	}

	if err := chromedp.Do(bctx, chromedp.Navigate(page.String())); err != nil {
		t.Fatal(err)
	}
	connected()
	typeLine(`echo hello-$RANDOM`)
	word := waitFor(`^hello-[0-9]+`)
	t.Logf("the guest answered %s", word)

	// A smaller window: the page fits the terminal to it and the guest's
	// PTY follows.
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(700, 450)); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`window.hearthTerminal.cols < 100`, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		t.Fatalf("the terminal was not fitted to the smaller window: %v", err)
	}
	size, err := chromedp.Run(bctx, chromedp.Evaluate[string](`window.hearthTerminal.rows + " " + window.hearthTerminal.cols`))
	if err != nil {
		t.Fatal(err)
	}
	typeLine(`echo size-$(stty size | tr ' ' x)`)
	waitFor(`^size-` + strings.Replace(size, " ", "x", 1) + `$`)

	shot, err := chromedp.Run(bctx, chromedp.Screenshot(chromedp.CSS(".xterm")))
	if err != nil {
		t.Fatal(err)
	}
	path := saveArtifact(t, "terminal.png", shot)
	if err := notBlank(shot); err != nil {
		t.Fatalf("terminal screenshot %s: %v", path, err)
	}
	t.Logf("terminal screenshot: %s", path)

	// A reload is a reconnect: the same shell, its screen replayed.
	if err := chromedp.Do(bctx, chromedp.Reload()); err != nil {
		t.Fatal(err)
	}
	connected()
	waitFor(regexp.QuoteMeta(word))
	again, err := d.alice.CreateTerminal(ctx, v.ID, api.CreateTerminal{})
	if err != nil {
		t.Fatal(err)
	}
	if again.ProcessID != link.ProcessID {
		t.Fatalf("a second terminal link started shell %s, want the running %s", again.ProcessID, link.ProcessID)
	}

	// The CLI: a command on a PTY, its exit code the CLI's.
	out, err := hearthCmd(d, "vm", "shell", v.ID, "--addr", fwd, "--key", d.alice.Key, "--", "sh", "-c", "tty && exit 3")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 || !strings.Contains(out, "/dev/pts/") {
		t.Fatalf("hearth vm shell -- sh -c 'tty && exit 3': %v\n%s", err, out)
	}
	t.Logf("hearth vm shell exited 3 on %s", strings.TrimSpace(out))
}

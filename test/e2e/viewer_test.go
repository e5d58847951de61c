package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/png"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/test/testrun"
)

// TestViewerInChromium is the user's path: a browser VM under QEMU, a
// viewer link from the API, Debian's Chromium opening it, noVNC connected
// through hearth's bridge to the guest's x11vnc, and a screen that shows
// what the guest draws. Revoking the VM's viewers with the CLI closes the
// page with the reason and a new link connects again; deleting the VM
// closes the viewer with the reason on the page. The canvas screenshot is
// saved under out/artifacts.
func TestViewerInChromium(t *testing.T) {
	needRoot(t)
	browserBin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("Debian's chromium is needed (scripts/host-deps.sh installs it): %v", err)
	}
	d := newDaemon(t)
	start := time.Now()
	out := d.hearth("image", "build", "--local", "--profile", "browser", "--agent", filepath.Join(binDir, "hearth-agent"))
	t.Logf("browser image in %s: %s", time.Since(start).Round(time.Second), lastLine(out))

	ctx := ctxT(t, 20*time.Minute)
	v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "browser", VCPUs: 2, MemoryMiB: 1024, BootTimeoutSeconds: 300})
	if err != nil {
		t.Fatal(err)
	}
	if v, err = d.alice.WaitVM(ctx, v.ID, "ready", 6*time.Minute); err != nil {
		t.Fatalf("browser vm not ready: %v", err)
	}
	// Something to see: Chromium in the guest, on a page with a colour no
	// empty desktop has.
	if code, o := guest(t, d.alice, v.ID, "/usr/local/bin/hearth-browser",
		`data:text/html,<body style="background:%23d35400;color:white"><h1>hearth viewer</h1>`); code != 0 {
		t.Fatalf("start chromium in the guest: %d %s", code, o)
	}

	// The daemon listens inside its namespace; a loopback forwarder in
	// this one lets the host's Chromium reach it.
	fwd := forward(t, d)
	link, err := d.alice.CreateViewer(ctx, v.ID, api.CreateViewer{})
	if err != nil {
		t.Fatal(err)
	}
	page, err := url.Parse(link.URL)
	if err != nil {
		t.Fatal(err)
	}
	page.Host = fwd

	bctx := newChromium(t, browserBin)
	bctx, cancel := context.WithTimeout(bctx, 14*time.Minute)
	defer cancel()
	state := func() string {
		s, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`(document.documentElement.dataset.viewerState || "") + " | " + (document.querySelector("#status")||{}).textContent`))
		return s
	}
	if err := chromedp.Do(bctx, chromedp.Navigate(page.String())); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.documentElement.dataset.viewerState === "connected"`, chromedp.WithPollingTimeout(90*time.Second))); err != nil {
		t.Fatalf("noVNC did not connect: %v (page state: %s)\ndaemon log:\n%s", err, state(), tail(d.log(), 30))
	}
	t.Logf("noVNC connected: %s", state())

	// Wait until the guest's Chromium has painted: a good share of the
	// canvas in the page's colour (TCG makes the guest browser slow, and a
	// loaded host slower: a minute on a quiet machine, over four seen with
	// two CPUs shared by many guests).
	const painted = `(() => {
		const c = document.querySelector("canvas");
		if (!c || c.width < 100 || c.height < 100) return 0;
		const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
		let n = 0, all = 0;
		for (let i = 0; i < d.length; i += 4 * 7) {
			all++;
			if (Math.abs(d[i] - 0xd3) < 24 && Math.abs(d[i+1] - 0x54) < 24 && d[i+2] < 40) n++;
		}
		return n / all;
	})()`
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](painted+` > 0.2`, chromedp.WithPollingTimeout(10*time.Minute), chromedp.WithPollingInterval(time.Second))); err != nil {
		share, _ := chromedp.Run(bctx, chromedp.Evaluate[float64](painted))
		t.Fatalf("the guest's page never showed on the canvas (%.3f of it in the page colour): %v; page state: %s", share, err, state())
	}

	shot, err := chromedp.Run(bctx, chromedp.Screenshot(chromedp.CSS("canvas")))
	if err != nil {
		t.Fatal(err)
	}
	path := saveArtifact(t, "viewer-canvas.png", shot)
	if err := notBlank(shot); err != nil {
		t.Fatalf("canvas screenshot %s: %v", path, err)
	}
	t.Logf("canvas screenshot: %s", path)

	// The open viewer is listed on the VM.
	got, err := d.alice.GetVM(ctx, v.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Viewers) != 1 {
		t.Fatalf("viewers on the vm = %+v, want the page's", got.Viewers)
	}

	// The VM's owner closes its viewers and revokes every link with the
	// CLI: the page shows why and stops; the revoked link buys nothing
	// after a reload; a new link connects again.
	revoked, err := hearthCmd(d, "vm", "viewers", "rm", v.ID, "--addr", fwd, "--key", d.alice.Key)
	if err != nil || !strings.Contains(revoked, "closed 1 viewers") {
		t.Fatalf("hearth vm viewers rm: %v\n%s", err, revoked)
	}
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.documentElement.dataset.closeCode === "4013" && document.documentElement.dataset.viewerState === "disconnected"`, chromedp.WithPollingTimeout(60*time.Second))); err != nil {
		t.Fatalf("page did not learn that its link was revoked: %v; state: %s", err, state())
	}
	if s := state(); !strings.Contains(s, "viewer links revoked") || !strings.Contains(s, "revoked their links") {
		t.Fatalf("page shows %q, want the revocation", s)
	}
	if err := chromedp.Do(bctx, chromedp.Navigate(page.String())); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.documentElement.dataset.viewerState === "disconnected" && /revoked/.test(document.querySelector("#status").textContent)`, chromedp.WithPollingTimeout(60*time.Second))); err != nil {
		t.Fatalf("a reloaded revoked link did not say so: %v; state: %s", err, state())
	}
	link, err = d.alice.CreateViewer(ctx, v.ID, api.CreateViewer{})
	if err != nil {
		t.Fatal(err)
	}
	if page, err = url.Parse(link.URL); err != nil {
		t.Fatal(err)
	}
	page.Host = fwd
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(bctx, chromedp.Navigate(page.String())); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.documentElement.dataset.viewerState === "connected"`, chromedp.WithPollingTimeout(90*time.Second))); err != nil {
		t.Fatalf("a new link did not connect after the revocation: %v (page state: %s)", err, state())
	}

	// Deleting the VM closes the viewer with a reason the page shows.
	if _, err := d.alice.DeleteVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.documentElement.dataset.closeCode === "4000"`, chromedp.WithPollingTimeout(60*time.Second))); err != nil {
		t.Fatalf("page did not learn that the vm was destroyed: %v; state: %s", err, state())
	}
	if s := state(); !strings.Contains(s, "vm destroyed") {
		t.Fatalf("page shows %q, want the reason", s)
	}
}

// newChromium starts headless Debian Chromium with a fresh profile and no
// background traffic, and returns a browser tab's context.
func newChromium(t *testing.T, bin string) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(testrun.MustTempDir(t, "chromium")),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox, // root in CI
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	var logs bytes.Buffer
	var mu sync.Mutex
	bctx, cancelTab := chromedp.NewContext(actx, chromedp.WithLogf(func(f string, a ...any) {
		mu.Lock()
		defer mu.Unlock()
		if logs.Len() < 1<<16 {
			logs.WriteString(strings.TrimSpace(fmt.Sprintf(f, a...)) + "\n")
		}
	}))
	if err := chromedp.Do(bctx); err != nil {
		cancelTab()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		if t.Failed() {
			mu.Lock()
			t.Logf("chromium log:\n%s", logs.String())
			mu.Unlock()
		}
	})
	return bctx
}

// forward listens on loopback here and relays every connection to the
// daemon inside its namespace; it returns host:port.
func forward(t *testing.T, d *daemon) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	dial := nsDialer(d.netns)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				up, err := dial(ctx, "tcp", d.addr)
				cancel()
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, c); closeWrite(up); done <- struct{}{} }()
				go func() { _, _ = io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
				<-done
				<-done
			})
		}
	})
	return ln.Addr().String()
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// saveArtifact writes data under $HEARTH_ARTIFACTS_DIR (default
// out/artifacts in the repository) and returns the path.
func saveArtifact(t *testing.T, name string, data []byte) string {
	t.Helper()
	dir := envOr("HEARTH_ARTIFACTS_DIR", filepath.Join(repoRoot(), "out", "artifacts"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// notBlank decodes a PNG and fails if (nearly) every pixel has one colour.
func notBlank(pngData []byte) error {
	img, err := png.Decode(bytes.NewReader(pngData))
	if err != nil {
		return err
	}
	b := img.Bounds()
	if b.Dx() < 100 || b.Dy() < 100 {
		return errors.New("screenshot smaller than 100x100")
	}
	counts := map[[3]uint32]int{}
	total := 0
	for y := b.Min.Y; y < b.Max.Y; y += 3 {
		for x := b.Min.X; x < b.Max.X; x += 3 {
			r, g, bl, _ := img.At(x, y).RGBA()
			counts[[3]uint32{r >> 8, g >> 8, bl >> 8}]++
			total++
		}
	}
	top := 0
	for _, n := range counts {
		top = max(top, n)
	}
	if len(counts) < 3 || float64(top)/float64(total) > 0.995 {
		return errors.New("blank: one colour covers the canvas")
	}
	return nil
}

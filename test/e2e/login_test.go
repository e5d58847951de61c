package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/test/fakeauth/fakeauth"
	"github.com/hearth-project/hearth/test/loginenv"
)

const (
	loginImage   = "browser-login-e2e"
	fakeAuthPort = loginenv.FakeAuthPort
)

// loginTestSpec writes the browser image's spec with the fake provider
// CLI (loginenv.Spec) to a file.
func loginTestSpec(t *testing.T, fakeCLI string) string {
	t.Helper()
	path, err := loginenv.WriteSpec(t.TempDir(), loginImage, fakeCLI)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// fakeProviderDir holds the fake_cli provider, pointed at the fake
// authorization server outside.
func fakeProviderDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := loginenv.WriteProviders(dir, loginenv.AuthBase(outsideIP)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// loginDaemonEnv is a daemon's environment for provider logins against
// the fakes: the fake_cli provider, the browser image loginTestSpec
// builds, and deadlines for hearth's own work (booting the browser VM,
// bringing the sign-in page up) that allow for two shared CPUs emulating
// guests; the user's time (fake_cli's 2m) starts with the page.
func loginDaemonEnv(t *testing.T) []string {
	t.Helper()
	return []string{"HEARTH_PROVIDERS_DIR=" + fakeProviderDir(t), "HEARTH_LOGIN_BROWSER_IMAGE=" + loginImage,
		"HEARTH_BOOT_TIMEOUT=5m", "HEARTH_LOGIN_SETUP_TIMEOUT=10m"}
}

// buildFakeProvider builds the fake provider CLI (test/fakeprovider),
// static, and returns its path.
func buildFakeProvider(t *testing.T) string {
	t.Helper()
	fakeCLI := filepath.Join(binDir, "fakeprovider")
	build := exec.Command("go", "build", "-o", fakeCLI, "./test/fakeprovider")
	build.Dir, build.Env = repoRoot(), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the fake provider CLI: %v\n%s", err, out)
	}
	return fakeCLI
}

// serveFakeAuth runs the fake authorization server in the outside
// namespace, where guests reach it through NAT.
func serveFakeAuth(t *testing.T, o *outside) *fakeauth.Server {
	t.Helper()
	fa := fakeauth.New(fakeauth.Options{})
	var ln net.Listener
	if err := inNetns(o.ns, func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf("%s:%d", o.addr, fakeAuthPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fa, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return fa
}

// TestLoginEndToEnd is a provider login for real, with a fake CLI and a
// fake authorization server: the browser VM boots, the agent runs the CLI
// on a PTY, the guest's Chromium loads the authorization page (the server
// sees it), the user's approval sends the browser to the CLI's callback on
// the guest's localhost, the CLI exchanges the code and writes its
// credential, which hearth captures, seals, stores and installs into the
// user's running workspace VM (read back through its agent). The browser
// VM is gone afterwards, and no log holds the token.
func TestLoginEndToEnd(t *testing.T) {
	needRoot(t)
	fakeCLI := buildFakeProvider(t)
	d := newDaemon(t, loginDaemonEnv(t)...)
	for _, profile := range []string{loginTestSpec(t, fakeCLI), "workspace"} {
		start := time.Now()
		out := d.hearth("image", "build", "--local", "--profile", profile, "--agent", filepath.Join(binDir, "hearth-agent"))
		t.Logf("image in %s: %s", time.Since(start).Round(time.Second), lastLine(out))
	}
	fa := serveFakeAuth(t, newOutside(t, d))

	ctx := ctxT(t, 20*time.Minute)
	ws, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "workspace", VCPUs: 1, MemoryMiB: 1024, BootTimeoutSeconds: 300})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	l, err := d.alice.StartLogin(ctx, "", "fake_cli")
	if err != nil {
		t.Fatal(err)
	}
	keepBrowserConsole(t, d, l.ID)
	if ws, err = d.alice.WaitVM(ctx, ws.ID, "ready", 8*time.Minute); err != nil {
		t.Fatalf("workspace not ready: %v", err)
	}
	l = waitLogin(t, d, l.ID, 14*time.Minute, func(l api.Login) bool { return l.State == "awaiting_user" })
	if l.Viewer.URL == "" || !strings.Contains(l.Viewer.URL, "/viewer/"+l.BrowserVM+"#token=") {
		t.Fatalf("awaiting login without a viewer link: %+v", l)
	}
	t.Logf("login awaiting the user %s after the request", time.Since(start).Round(time.Second))

	// Awaiting the user means the authorization page is on the guest
	// browser's screen: the server has already answered it, so it holds a
	// pending authorization (its state is the CLI's).
	p := fa.Pending()
	if len(p) == 0 {
		t.Fatalf("the login awaits the user but the guest browser never loaded the authorization page; server saw %+v", fa.Events())
	}
	state := p[0]
	// The user approves: the browser goes to the CLI's callback.
	redirect, err := fa.Approve(state)
	if err != nil {
		t.Fatal(err)
	}
	if code, out := guest(t, d.alice, l.BrowserVM, "/usr/local/bin/hearth-browser", redirect); code != 0 {
		t.Fatalf("send the guest browser to the callback: %d %s", code, out)
	}
	l = waitLogin(t, d, l.ID, 4*time.Minute, func(l api.Login) bool { return client.Terminal(l) })
	if l.State != "completed" {
		t.Fatalf("login ended %s: %s\nserver saw %+v", l.State, l.FailureReason, fa.Events())
	}
	t.Logf("login completed %s after the request", time.Since(start).Round(time.Second))

	// Installed into the workspace: the user's file, mode 0600.
	code, out := guest(t, d.alice, ws.ID, "/bin/sh", "-c", "stat -c '%a %U' /home/hearth/.fake/credentials.json && cat /home/hearth/.fake/credentials.json")
	if code != 0 {
		t.Fatalf("read the credential in the workspace: %d %s", code, out)
	}
	first, body, _ := strings.Cut(out, "\n")
	if first != "600 hearth" {
		t.Fatalf("installed file is %q, want mode 600 owned by hearth", first)
	}
	var cred struct {
		FakeOauth struct{ AccessToken, RefreshToken string } `json:"fakeOauth"`
	}
	if err := json.Unmarshal([]byte(body), &cred); err != nil || cred.FakeOauth.AccessToken == "" {
		t.Fatalf("installed credential is not the CLI's: %v", err)
	}
	creds, err := d.alice.ListCredentials(ctx, "")
	if err != nil || len(creds) != 1 || creds[0].Provider != "fake_cli" || !creds[0].Valid || creds[0].ExpiresAt.IsZero() {
		t.Fatalf("credential metadata %+v %v", creds, err)
	}
	if _, err := d.alice.WaitVM(ctx, l.BrowserVM, "destroyed", 2*time.Minute); err != nil {
		t.Fatalf("browser vm not destroyed: %v", err)
	}

	// Nothing hearth wrote outside the guests' disks holds the tokens.
	for _, secret := range []string{cred.FakeOauth.AccessToken, cred.FakeOauth.RefreshToken} {
		if where := grepStateDir(t, d.stateDir, secret); where != "" {
			t.Fatalf("credential plaintext found in %s", where)
		}
	}
}

// keepBrowserConsole follows the console of the login's browser VM (its
// agent's and the guest's messages) into an artifact, and prints its tail
// if the test fails: the VM is gone by then.
func keepBrowserConsole(t *testing.T, d *daemon, loginID string) {
	t.Helper()
	var mu sync.Mutex
	var buf bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		vmID := ""
		for vmID == "" {
			l, err := d.alice.GetLogin(ctx, loginID)
			if err != nil || client.Terminal(l) {
				return
			}
			vmID = l.BrowserVM
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
		}
		rc, err := d.alice.Console(ctx, vmID, 0, true)
		if err != nil {
			return
		}
		defer rc.Close()
		b := make([]byte, 32<<10)
		for {
			n, err := rc.Read(b)
			mu.Lock()
			if buf.Len() < 16<<20 {
				buf.Write(b[:n])
			}
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		path := saveArtifact(t, "login-browser-vm-console.log", buf.Bytes())
		if t.Failed() {
			t.Logf("browser vm console (%s), tail:\n%s", path, tail(buf.String(), 6000))
		}
	})
}

// waitLogin polls a login until done says so.
func waitLogin(t *testing.T, d *daemon, id string, within time.Duration, done func(api.Login) bool) api.Login {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		l, err := d.alice.GetLogin(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if done(l) {
			return l
		}
		if client.Terminal(l) || time.Now().After(deadline) {
			t.Fatalf("login is %s (%s)\ndaemon log (but its request lines):\n%s", l.State, l.FailureReason, tail(withoutRequests(d.log()), 8000))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// grepStateDir returns a file under dir (the daemon's log, database,
// console logs, …; not guest disks) that contains s, or "".
func grepStateDir(t *testing.T, dir, s string) string {
	t.Helper()
	found := ""
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() || found != "" {
			return err
		}
		switch filepath.Ext(p) {
		case ".qcow2", ".ext4", ".img", ".sock":
			return nil
		}
		if !e.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		if strings.Contains(string(b), s) {
			found = p
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return found
}

//go:build linux

package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

// fakeCLI is a login CLI for tests: it asks which method to use, prints an
// authorization URL (coloured, like real CLIs) and also hands it to
// $BROWSER, waits until the "browser" approved, then writes its credential
// file in two parts (a reader in between sees incomplete JSON) and exits.
const fakeCLI = `#!/bin/sh
printf 'Welcome!\n\033[1mChoose a login method:\033[0m\n  1) Browser\n  2) API key\n> '
read choice
[ "$choice" = 1 ] || { echo "bad choice: $choice"; exit 3; }
url="${AUTH_URL:-https://auth.invalid/authorize?client_id=fake&state=s123}"
[ -z "$NO_PRINT" ] && printf 'Open this URL to log in:\n\033[4m%s\033[0m\n' "$url"
if [ -n "$USE_XDG" ]; then xdg-open "$url"; else "$BROWSER" "$url"; fi
while [ ! -e "$APPROVED" ]; do sleep 0.05; done
mkdir -p "$(dirname "$CRED")"
printf '{"tokens": {"access_token": "at-secret", ' > "$CRED"
sleep 0.3
printf '"refresh_token": "rt-secret"}}\n' >> "$CRED"
echo "Login successful"
`

type loginFixture struct {
	dir, cli, cred, approved, browserLog string
	sess                                 *agentapi.Session
}

func newLoginFixture(t *testing.T) *loginFixture {
	t.Helper()
	dir := t.TempDir()
	f := &loginFixture{dir: dir, cli: filepath.Join(dir, "fake-cli"), cred: filepath.Join(dir, "home", ".fake", "auth.json"),
		approved: filepath.Join(dir, "approved"), browserLog: filepath.Join(dir, "browser.log")}
	if err := os.WriteFile(f.cli, []byte(fakeCLI), 0o755); err != nil {
		t.Fatal(err)
	}
	// The guest browser: records the URL; the test approves later.
	browser := filepath.Join(dir, "browser")
	if err := os.WriteFile(browser, []byte("#!/bin/sh\nprintf '%s\\n' \"$1\" >> "+shellQuote(f.browserLog)+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	f.sess = execSession(t, agentapi.Config{HeartbeatInterval: time.Hour})
	return f
}

func (f *loginFixture) request(t *testing.T) agentapi.LoginRequest {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return agentapi.LoginRequest{
		User: u.Username, Argv: []string{f.cli},
		Env:        []string{"CRED=" + f.cred, "APPROVED=" + f.approved},
		Steps:      []agentapi.LoginStep{{Expect: `Choose a login method`, Send: "1\n", Timeout: 10 * time.Second}},
		URLPattern: `https://auth\.invalid/authorize\?\S+`,
		Browser:    []string{filepath.Join(f.dir, "browser")},
		Credentials: []agentapi.CredentialFile{{Path: f.cred, Format: "json",
			Required: []string{"tokens.access_token", "tokens.refresh_token"}}},
		Timeout: time.Minute,
	}
}

type progressLog struct {
	mu sync.Mutex
	ps []agentapi.LoginProgress
	ch chan agentapi.LoginProgress
}

func newProgressLog() *progressLog { return &progressLog{ch: make(chan agentapi.LoginProgress, 16)} }

func (p *progressLog) add(x agentapi.LoginProgress) {
	p.mu.Lock()
	p.ps = append(p.ps, x)
	p.mu.Unlock()
	p.ch <- x
}

func (p *progressLog) waitPhase(t *testing.T, phase string) agentapi.LoginProgress {
	t.Helper()
	for {
		select {
		case x := <-p.ch:
			if x.Phase == phase {
				return x
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no %s progress", phase)
		}
	}
}

// The whole login: the prompt answered, the URL found (once, though the
// CLI both prints it and hands it to $BROWSER) and opened in the
// "browser", the credential file captured only once complete.
func TestLoginCapturesCompleteCredentials(t *testing.T) {
	f := newLoginFixture(t)
	progress := newProgressLog()
	type outcome struct {
		res agentapi.LoginResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := f.sess.Login(t.Context(), f.request(t), progress.add)
		done <- outcome{res, err}
	}()
	progress.waitPhase(t, agentapi.LoginStarted)
	if p := progress.waitPhase(t, agentapi.LoginPrompt); p.Step != 0 {
		t.Fatalf("prompt progress %+v", p)
	}
	p := progress.waitPhase(t, agentapi.LoginURL)
	if p.URL != "https://auth.invalid/authorize?client_id=fake&state=s123" {
		t.Fatalf("url %q", p.URL)
	}
	opened, err := os.ReadFile(f.browserLog)
	if err != nil || strings.Count(string(opened), "https://") != 1 {
		t.Fatalf("browser opened %q (%v), want the URL once", opened, err)
	}
	if err := os.WriteFile(f.approved, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var o outcome
	select {
	case o = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("login did not finish")
	}
	if o.err != nil {
		t.Fatal(o.err)
	}
	if len(o.res.Files) != 1 || !strings.Contains(string(o.res.Files[0].Content), `"refresh_token": "rt-secret"`) {
		t.Fatalf("captured %q", o.res.Files)
	}
	if o.res.ExitCode != 0 {
		t.Fatalf("exit code %d", o.res.ExitCode)
	}
}

// A CLI that only hands the URL to xdg-open (as node's "open" does) still
// gets it opened: the agent's helper comes first in PATH.
func TestLoginURLFromXDGOpen(t *testing.T) {
	f := newLoginFixture(t)
	req := f.request(t)
	req.Env = append(req.Env, "NO_PRINT=1", "USE_XDG=1", "BROWSER=/nonexistent/browser", "PATH="+f.dir+":/usr/bin:/bin")
	req.Argv = []string{"fake-cli"} // found in the request's PATH
	progress := newProgressLog()
	done := make(chan error, 1)
	go func() {
		_, err := f.sess.Login(t.Context(), req, progress.add)
		done <- err
	}()
	if p := progress.waitPhase(t, agentapi.LoginURL); !strings.HasPrefix(p.URL, "https://auth.invalid/authorize?") {
		t.Fatalf("url %q", p.URL)
	}
	if err := os.WriteFile(f.approved, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A CLI that gives up is a failure that says what happened and shows no
// credential content; cancelling stops the CLI.
func TestLoginFailuresAndCancel(t *testing.T) {
	f := newLoginFixture(t)

	t.Run("cli exits first", func(t *testing.T) {
		req := f.request(t)
		req.Steps[0].Send = "2\n" // the fake CLI refuses this choice
		_, err := f.sess.Login(t.Context(), req, nil)
		var re *agentapi.RemoteError
		if !errors.As(err, &re) || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "bad choice: 2") ||
			!strings.Contains(err.Error(), "not written") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("prompt never shows", func(t *testing.T) {
		req := f.request(t)
		req.Steps[0] = agentapi.LoginStep{Expect: "no such prompt", Send: "x\n", Timeout: 500 * time.Millisecond}
		_, err := f.sess.Login(t.Context(), req, nil)
		if err == nil || !strings.Contains(err.Error(), "never showed the prompt of step 0") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("user never finishes", func(t *testing.T) {
		req := f.request(t)
		req.Timeout = 2 * time.Second
		_, err := f.sess.Login(t.Context(), req, nil)
		if err == nil || !strings.Contains(err.Error(), "waiting for the user to finish in the browser") {
			t.Fatalf("err = %v", err)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Fatalf("error shows credential content: %v", err)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		progress := newProgressLog()
		done := make(chan error, 1)
		go func() {
			_, err := f.sess.Login(ctx, f.request(t), progress.add)
			done <- err
		}()
		progress.waitPhase(t, agentapi.LoginURL)
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
		// The CLI is gone: nothing of it remains in the process table.
		deadline := time.Now().Add(10 * time.Second)
		for cliRunning(f.cli) {
			if time.Now().After(deadline) {
				t.Fatal("the CLI still runs after cancel")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// cliRunning reports whether a process runs the script at path.
func cliRunning(path string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), path) {
			return true
		}
	}
	return false
}

func TestCredentialComplete(t *testing.T) {
	c := agentapi.CredentialFile{Format: "json", Required: []string{"a.b", "c"}}
	for in, want := range map[string]string{
		``:                          "empty",
		`{"a": {"b": "x"}, "c": 1`:  "not complete JSON",
		`{"a": {"b": ""}, "c": 1}`:  "no a.b",
		`{"a": {"b": "x"}}`:         "no c",
		`{"a": {"b": "x"}, "c": 1}`: "",
		`{"a": "b", "c": 1}`:        "no a.b",
	} {
		ok, why := credentialComplete(c, []byte(in))
		if ok != (want == "") || why != want {
			t.Errorf("%q: %v %q, want %q", in, ok, why, want)
		}
	}
	if got := plainText([]byte("\x1b[1mbold\x1b[0m \x1b]8;;https://x\x07link\x1b]8;;\x07\r\n")); got != "bold link\n" {
		t.Errorf("plainText = %q", got)
	}
}

// write_file lands atomically with mode 0600 in a directory it makes, and
// replaces an older file.
func TestWriteFile(t *testing.T) {
	s := execSession(t, agentapi.Config{HeartbeatInterval: time.Hour})
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "new", "dir", "creds.json")
	for _, content := range []string{`{"v": 1}`, `{"v": 2}`} {
		if err := s.WriteFile(t.Context(), agentapi.WriteFileRequest{User: u.Username, Path: path, Content: []byte(content)}); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Fatalf("file = %q, %v; want %q", got, err, content)
		}
	}
	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != want {
			t.Fatalf("%s: %v %v, want %v", p, st.Mode().Perm(), err, want)
		}
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*hearth-*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	// merge: json keeps what the file had.
	settings := filepath.Join(filepath.Dir(path), "settings.json")
	if err := os.WriteFile(settings, []byte(`{"theme": "dark", "security": {"other": 1}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteFile(t.Context(), agentapi.WriteFileRequest{User: u.Username, Path: settings, Merge: "json",
		Content: []byte(`{"security": {"auth": {"selectedType": "oauth-personal"}}}`)}); err != nil {
		t.Fatal(err)
	}
	var merged map[string]any
	if b, err := os.ReadFile(settings); err != nil || json.Unmarshal(b, &merged) != nil {
		t.Fatalf("merged file %q %v", b, err)
	}
	sec, _ := merged["security"].(map[string]any)
	auth, _ := sec["auth"].(map[string]any)
	if merged["theme"] != "dark" || sec["other"] != float64(1) || auth["selectedType"] != "oauth-personal" {
		t.Fatalf("merged = %v", merged)
	}
	fresh := filepath.Join(filepath.Dir(path), "fresh.json")
	if err := s.WriteFile(t.Context(), agentapi.WriteFileRequest{User: u.Username, Path: fresh, Merge: "json", Content: []byte(`{"a": true}`)}); err != nil {
		t.Fatalf("merge into a missing file: %v", err)
	}
	err = s.WriteFile(t.Context(), agentapi.WriteFileRequest{User: "no-such-user-here", Path: path, Content: []byte("secret-value")})
	if err == nil || strings.Contains(err.Error(), "secret-value") || !strings.Contains(err.Error(), "no-such-user-here") {
		t.Fatalf("unknown user: %v", err)
	}
}

// The user's time runs only once the sign-in page is on the guest
// browser's screen: a real Chromium loads a page whose server takes longer
// than the whole user timeout to answer, and the login still succeeds; the
// agent says "opening" first and "url" (awaiting the user) only once the
// document is there.
func TestLoginUserTimeStartsWithThePageOnScreen(t *testing.T) {
	bin := chromiumBin(t)
	const hold = 3 * time.Second
	var served atomic.Int64 // unix nanos of the answer
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(hold)
		served.Store(time.Now().UnixNano())
		fmt.Fprint(w, "<!doctype html><title>Sign in</title><p>Sign in")
	}))
	defer srv.Close()
	port := itoa(freePort(t))
	devtools := net.JoinHostPort("127.0.0.1", port)

	f := newLoginFixture(t)
	profile := chromiumProfile(t)
	browser := filepath.Join(f.dir, "chromium-browser")
	cmdline := "setsid " + shellQuote(bin)
	for _, a := range chromiumArgs(profile, port) {
		cmdline += " " + shellQuote(a)
	}
	script := "#!/bin/sh\n" + cmdline + ` "$1" >/dev/null 2>&1 </dev/null &` + "\necho $! > " +
		shellQuote(filepath.Join(f.dir, "chromium.pid")) + "\n"
	if err := os.WriteFile(browser, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if b, err := os.ReadFile(filepath.Join(f.dir, "chromium.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
			}
		}
	})
	req := f.request(t)
	req.Env = append(req.Env, "AUTH_URL="+srv.URL+"/authorize?client_id=fake")
	req.URLPattern = `http://127\.0\.0\.1:\d+/authorize\?\S+`
	req.Browser = []string{browser}
	req.Timeout = time.Second // the user's part: shorter than the page takes
	req.SetupTimeout = 2 * time.Minute
	req.PageCheck = devtools

	progress := newProgressLog()
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := f.sess.Login(t.Context(), req, progress.add)
		done <- err
	}()
	progress.waitPhase(t, agentapi.LoginOpening)
	var shown time.Time
	select {
	case p := <-waitPhaseAsync(progress, agentapi.LoginURL):
		shown = time.Now()
		if !strings.HasPrefix(p.URL, srv.URL+"/authorize") {
			t.Fatalf("url %q", p.URL)
		}
	case err := <-done:
		t.Fatalf("login ended before the page was on screen: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the page never counted as on screen")
	}
	if at := served.Load(); at == 0 || shown.Before(time.Unix(0, at)) {
		t.Fatalf("awaiting the user before the sign-in page was served")
	}
	if err := os.WriteFile(f.approved, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("login failed %s after its start: %v", time.Since(start).Round(time.Millisecond), err)
		}
	case <-time.After(time.Minute):
		t.Fatal("login did not finish")
	}
	// The login succeeded though bringing the page up alone took longer
	// than the user's time: that time did not run meanwhile. (The user
	// here approves at once, so the whole login may take less than hold
	// plus the user's time.)
	if took := time.Since(start); took < hold || hold <= req.Timeout {
		t.Fatalf("login took %s: the page was held %s, so the test proves nothing", took, hold)
	}
}

// The page never comes up: the setup's deadline ends the login with a
// reason that says so, not the user's.
func TestLoginSetupTimeoutNamesThePage(t *testing.T) {
	f := newLoginFixture(t)
	req := f.request(t)
	req.Timeout = time.Minute
	req.SetupTimeout = 2 * time.Second
	req.PageCheck = freeAddr(t) // no browser answers: the page is never on screen
	_, err := f.sess.Login(t.Context(), req, nil)
	if err == nil || !strings.Contains(err.Error(), "not on the guest browser's screen within 2s") ||
		!strings.Contains(err.Error(), "waiting for the guest browser to show the sign-in page") {
		t.Fatalf("err = %v", err)
	}
}

// waitPhaseAsync delivers the first progress of phase.
func waitPhaseAsync(p *progressLog, phase string) <-chan agentapi.LoginProgress {
	ch := make(chan agentapi.LoginProgress, 1)
	go func() {
		for x := range p.ch {
			if x.Phase == phase {
				ch <- x
				return
			}
		}
	}()
	return ch
}

// Credential files that are complete and each within the per-file limit
// but too large together for one result fail the login at once with a
// reason that says so, not with a bare "result too large" or a timeout.
func TestLoginCredentialsTooLargeTogether(t *testing.T) {
	f := newLoginFixture(t)
	cli := filepath.Join(f.dir, "copy-cli")
	script := "#!/bin/sh\n" +
		"url='https://auth.invalid/authorize?client_id=fake&state=big'\n" +
		"printf 'Open this URL to log in:\\n%s\\n' \"$url\"\n" +
		"\"$BROWSER\" \"$url\"\n" +
		"for d in \"$CRED1\" \"$CRED2\" \"$CRED3\" \"$CRED4\"; do cp \"$SRC\" \"$d.tmp\" && mv \"$d.tmp\" \"$d\"; done\n" +
		"echo 'Login successful'\n"
	if err := os.WriteFile(cli, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// 200 KiB of JSON each: within the per-file limit, 800 KiB together
	// (1.07 MiB in base64, more than a message line holds).
	src := filepath.Join(f.dir, "big.json")
	if err := os.WriteFile(src, []byte(`{"token": "`+strings.Repeat("x", 200<<10)+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	req := f.request(t)
	req.Argv, req.Steps = []string{cli}, nil
	req.Env = []string{"SRC=" + src}
	req.Credentials = nil
	for i := 1; i <= 4; i++ {
		p := filepath.Join(f.dir, fmt.Sprintf("cred%d.json", i))
		req.Env = append(req.Env, fmt.Sprintf("CRED%d=%s", i, p))
		req.Credentials = append(req.Credentials, agentapi.CredentialFile{Path: p, Format: "json", Required: []string{"token"}})
	}
	req.Timeout = 2 * time.Minute
	started := time.Now()
	_, err := f.sess.Login(t.Context(), req, nil)
	var re *agentapi.RemoteError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "credential files hold") || !strings.Contains(err.Error(), "together") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(started); d > time.Minute {
		t.Fatalf("the login failed only after %s", d)
	}
}

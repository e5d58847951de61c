package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/provider"
	"github.com/hearth-project/hearth/test/fakeauth/fakeauth"
)

// binary is the fake CLI, built once (static, as the e2e test installs it).
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fakeprovider-test-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "fakeprovider")
	cmd := exec.Command("go", "build", "-trimpath", "-o", binary, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// noRedirect is a client that shows redirects instead of following them.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// lineWatcher collects a stream and lets the test wait for a line.
type lineWatcher struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	lines chan string
}

func watch(r io.Reader) *lineWatcher {
	w := &lineWatcher{lines: make(chan string, 100)}
	go func() {
		br := bufio.NewReader(r)
		for {
			s, err := br.ReadString('\n')
			w.mu.Lock()
			w.buf.WriteString(s)
			w.mu.Unlock()
			if s != "" {
				w.lines <- s
			}
			if err != nil {
				close(w.lines)
				return
			}
		}
	}()
	return w
}

func (w *lineWatcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// waitFor returns the first line containing s.
func (w *lineWatcher) waitFor(t *testing.T, s string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-w.lines:
			if !ok {
				t.Fatalf("output ended without %q:\n%s", s, w.String())
			}
			if strings.Contains(l, s) {
				return l
			}
		case <-deadline:
			t.Fatalf("no %q within %s:\n%s", s, timeout, w.String())
		}
	}
}

// fakeCLI returns the fake_cli provider.
func fakeCLI(t *testing.T) provider.Provider {
	t.Helper()
	r, err := provider.LoadWithTestProviders()
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.Get("fake_cli")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// browserScript writes a $BROWSER that records its argument into file.
func browserScript(t *testing.T, dir, file string) string {
	t.Helper()
	p := filepath.Join(dir, "browser")
	script := "#!/bin/sh\nprintf '%s\\n' \"$1\" > '" + file + ".tmp' && mv '" + file + ".tmp' '" + file + "'\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitFile waits until path exists and is not empty and returns its content.
func waitFile(t *testing.T, path string, timeout time.Duration) []byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within %s", path, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The whole flow against the fake authorization server: first prompt,
// $BROWSER gets the URL, approval through the API, the browser's redirect
// to the CLI's callback, the credential file seen incomplete between its
// two chunks, then complete and valid for the fake_cli provider.
func TestLoginFlow(t *testing.T) {
	p := fakeCLI(t)
	auth := fakeauth.New(fakeauth.Options{TokenLifetime: 30 * time.Minute})
	ts := httptest.NewServer(auth)
	defer ts.Close()

	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	urlFile := filepath.Join(dir, "browser-url")
	// The provider's own argv (-prompt -split-write 300ms), with a longer
	// pause so the test sees the file between its chunks for sure.
	args := append(append([]string(nil), p.Login.Argv[1:]...), "-split-write", "1s")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "HOME="+home, "BROWSER="+browserScript(t, dir, urlFile),
		"FAKE_AUTHORIZE_URL="+ts.URL+"/authorize", "FAKE_TOKEN_URL="+ts.URL+"/token")
	for _, kv := range p.Login.Env {
		cmd.Env = append(cmd.Env, kv)
	}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := watch(stdout)

	// The provider's step answers the prompt.
	step := p.Login.Steps[0]
	prompt := out.waitFor(t, "Choose login method", 10*time.Second)
	if !step.ExpectRegexp().MatchString(prompt) {
		t.Fatalf("step %q does not match the prompt %q", step.Expect, prompt)
	}
	io.WriteString(stdin, step.Send)

	// The printed URL matches the provider's pattern and is what $BROWSER got.
	line := out.waitFor(t, "Open this URL to log in: ", 10*time.Second)
	printed, ok := p.Login.URL([]byte(line))
	if !ok {
		t.Fatalf("url_pattern does not match %q", line)
	}
	opened := strings.TrimSpace(string(waitFile(t, urlFile, 10*time.Second)))
	if opened != printed {
		t.Fatalf("$BROWSER got %q, printed %q", opened, printed)
	}
	au, _ := url.Parse(printed)
	q := au.Query()
	if q.Get("client_id") != "fake" || q.Get("code_challenge_method") != "S256" || !strings.HasPrefix(q.Get("redirect_uri"), "http://127.0.0.1:") {
		t.Fatalf("authorization URL %s", printed)
	}

	// The guest browser would now load the page; here the test does, then
	// approves through the API and follows the redirect to the callback.
	resp, err := http.Get(printed)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("authorize page: %v %v", resp, err)
	}
	resp.Body.Close()
	redirect, err := auth.Approve(q.Get("state"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(redirect, q.Get("redirect_uri")+"?") {
		t.Fatalf("redirect %q is not the CLI's callback", redirect)
	}
	type result struct {
		status int
		body   string
		err    error
	}
	cb := make(chan result, 1)
	go func() {
		resp, err := noRedirect.Get(redirect)
		if err != nil {
			cb <- result{err: err}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cb <- result{status: resp.StatusCode, body: string(b)}
	}()

	// Between the two chunks the file is there, 0600, and incomplete.
	credPath := filepath.Join(home, ".fake", "credentials.json")
	partial := waitFile(t, credPath, 10*time.Second)
	if _, err := p.Check(credPath, partial, time.Now()); !errors.Is(err, provider.ErrIncomplete) {
		t.Fatalf("first chunk (%d bytes): err = %v, want incomplete", len(partial), err)
	}
	if fi, err := os.Stat(credPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential file mode: %v %v", fi.Mode(), err)
	}

	r := <-cb
	if r.err != nil || r.status != 200 || !strings.Contains(r.body, "Login complete") {
		t.Fatalf("callback: %d %q %v", r.status, r.body, r.err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("fakeprovider: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), stderr.String())
	}
	out.waitFor(t, "Login successful", 5*time.Second)
	if !strings.Contains(stderr.String(), "the rest in 1s") {
		t.Errorf("stderr lacks the split-write note:\n%s", stderr.String())
	}

	content, err := os.ReadFile(credPath)
	if err != nil {
		t.Fatal(err)
	}
	info, err := p.Check(credPath, content, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if info.Expired || time.Until(info.ExpiresAt) < 29*time.Minute || time.Until(info.ExpiresAt) > 31*time.Minute {
		t.Errorf("info %+v, want an expiry in 30 minutes", info)
	}

	var kinds []string
	for _, e := range auth.Events() {
		kinds = append(kinds, e.Kind)
	}
	if got := strings.Join(kinds, ","); got != "authorize,approve,token" {
		t.Errorf("authorization server saw %s", got)
	}
}

// A callback with the wrong state is refused and the CLI goes on waiting;
// a denial ends the login with an error.
func TestWrongStateThenDenied(t *testing.T) {
	auth := fakeauth.New(fakeauth.Options{})
	ts := httptest.NewServer(auth)
	defer ts.Close()
	home := t.TempDir()
	cmd := exec.Command(binary, "-authorize-url", ts.URL+"/authorize", "-token-url", ts.URL+"/token")
	cmd.Env = append(os.Environ(), "HOME="+home, "BROWSER=")
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	out := watch(stdout)
	line := out.waitFor(t, "Open this URL to log in: ", 10*time.Second)
	au, _ := url.Parse(strings.TrimSpace(strings.TrimPrefix(line, "Open this URL to log in: ")))
	cbURL := au.Query().Get("redirect_uri")

	resp, err := noRedirect.Get(cbURL + "?code=x&state=wrong")
	if err != nil || resp.StatusCode != 400 {
		t.Fatalf("wrong state: %v %v", resp, err)
	}
	resp.Body.Close()
	// Still waiting: deny through the page's form.
	resp, err = http.Get(au.String())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = noRedirect.PostForm(ts.URL+"/authorize/decide", url.Values{"state": {au.Query().Get("state")}, "decision": {"deny"}})
	if err != nil || resp.StatusCode != http.StatusFound {
		t.Fatalf("deny: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, err = noRedirect.Get(resp.Header.Get("Location"))
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("denied callback: %v %v", resp, err)
	}
	resp.Body.Close()
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), "login denied") {
		t.Fatalf("exit %v, stderr %q", err, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(home, ".fake", "credentials.json")); !os.IsNotExist(err) {
		t.Errorf("a denied login wrote credentials (%v)", err)
	}
}

func TestTimeout(t *testing.T) {
	cmd := exec.Command(binary, "-authorize-url", "http://127.0.0.1:9/authorize", "-token-url", "http://127.0.0.1:9/token", "-timeout", "300ms")
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "BROWSER=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), "login timed out after 300ms") {
		t.Fatalf("exit %v, stderr %q", err, stderr.String())
	}
}

// The prompt insists on 1 and gives up when its input closes.
func TestPrompt(t *testing.T) {
	cmd := exec.Command(binary, "-prompt", "-authorize-url", "http://127.0.0.1:9/authorize", "-token-url", "http://127.0.0.1:9/token")
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "BROWSER=")
	cmd.Stdin = strings.NewReader("2\nx\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), "no answer") {
		t.Fatalf("exit %v, stderr %q", err, stderr.String())
	}
	if n := strings.Count(stdout.String(), "Choose login method: 1) browser 2) api key"); n != 3 || strings.Contains(stdout.String(), "Open this URL") {
		t.Errorf("stdout %q", stdout.String())
	}
}

func TestMissingEndpoints(t *testing.T) {
	cmd := exec.Command(binary)
	cmd.Env = append(os.Environ(), "FAKE_AUTHORIZE_URL=", "FAKE_TOKEN_URL=")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "endpoints are required") {
		t.Fatalf("exit %v, output %q", err, out)
	}
}

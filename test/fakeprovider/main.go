// Command fakeprovider is a fake AI coding CLI login for hearth's tests. It
// behaves like the real CLIs' browser logins (see docs/providers.md): an
// optional first prompt, an OAuth callback server on 127.0.0.1, the
// authorization URL printed and handed to $BROWSER, the code exchanged at
// the token endpoint, a credential file written with mode 0600 (in two
// chunks with a pause between them if asked, so that readers can see it
// incomplete), then "Login successful" and exit 0. The provider
// definition providers/testdata/fake_cli.yaml describes it.
//
//	fakeprovider [-prompt] [-port 0] [-authorize-url URL] [-token-url URL]
//	             [-client-id fake] [-out ~/.fake/credentials.json]
//	             [-split-write 0] [-timeout 5m]
//
// The URLs default to $FAKE_AUTHORIZE_URL and $FAKE_TOKEN_URL. Exit codes:
// 0 logged in, 1 failed (denied, token exchange, no answer to the prompt,
// bad flags), 2 timed out.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// config is the command line.
type config struct {
	prompt       bool
	port         int
	authorizeURL string
	tokenURL     string
	clientID     string
	out          string
	splitWrite   time.Duration
	timeout      time.Duration
}

func main() {
	var c config
	flag.BoolVar(&c.prompt, "prompt", false, `ask "Choose login method: 1) browser 2) api key" first and wait for 1`)
	flag.IntVar(&c.port, "port", 0, "callback port on 127.0.0.1 (0 = a free one)")
	flag.StringVar(&c.authorizeURL, "authorize-url", os.Getenv("FAKE_AUTHORIZE_URL"), "authorization endpoint (default $FAKE_AUTHORIZE_URL)")
	flag.StringVar(&c.tokenURL, "token-url", os.Getenv("FAKE_TOKEN_URL"), "token endpoint (default $FAKE_TOKEN_URL)")
	flag.StringVar(&c.clientID, "client-id", "fake", "OAuth client_id")
	flag.StringVar(&c.out, "out", "~/.fake/credentials.json", "credential file to write")
	flag.DurationVar(&c.splitWrite, "split-write", 0, "write the credential file in two chunks this far apart (0 = one write)")
	flag.DurationVar(&c.timeout, "timeout", 5*time.Minute, "give up after this long")
	flag.Parse()
	os.Exit(run(c, os.Stdin, os.Stdout, os.Stderr))
}

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1
	exitTimeout = 2
)

func run(c config, stdin io.Reader, stdout, stderr io.Writer) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(stderr, "fakeprovider: "+format+"\n", args...)
		return exitFailed
	}
	if c.authorizeURL == "" || c.tokenURL == "" {
		return fail("the authorization and token endpoints are required (-authorize-url/-token-url or $FAKE_AUTHORIZE_URL/$FAKE_TOKEN_URL)")
	}
	out, err := expandHome(c.out)
	if err != nil {
		return fail("%v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()

	if c.prompt {
		if err := askMethod(ctx, stdin, stdout); err != nil {
			if ctx.Err() != nil {
				fmt.Fprintf(stderr, "fakeprovider: login timed out after %s (no answer to the prompt)\n", c.timeout)
				return exitTimeout
			}
			return fail("%v", err)
		}
	}

	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", c.port))
	if err != nil {
		return fail("start the callback server: %v", err)
	}
	l := &login{cfg: c, out: out, stderr: stderr, done: make(chan error, 1),
		state: randomString(24), verifier: randomString(32),
		redirectURI: fmt.Sprintf("http://%s/callback", ln.Addr())}
	authURL, err := l.authURL()
	if err != nil {
		ln.Close()
		return fail("%v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(l.callback), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer scancel()
		_ = srv.Shutdown(sctx)
	}()

	fmt.Fprintf(stdout, "Open this URL to log in: %s\n", authURL)
	if b := os.Getenv("BROWSER"); b != "" {
		go openBrowser(ctx, b, authURL, stderr)
	}

	select {
	case err := <-l.done:
		if err != nil {
			return fail("%v", err)
		}
		fmt.Fprintln(stdout, "Login successful")
		return exitOK
	case <-ctx.Done():
		fmt.Fprintf(stderr, "fakeprovider: login timed out after %s\n", c.timeout)
		return exitTimeout
	}
}

// askMethod asks for the login method until the answer is 1.
func askMethod(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	lines := make(chan string)
	errc := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
		errc <- errors.New("no answer to the login method prompt (input closed)")
	}()
	for {
		fmt.Fprint(stdout, "Choose login method: 1) browser 2) api key\n> ")
		select {
		case line := <-lines:
			switch strings.TrimSpace(line) {
			case "1":
				return nil
			case "2":
				fmt.Fprintln(stdout, "API key login is not available here; choose 1.")
			default:
				fmt.Fprintln(stdout, "Please type 1 or 2.")
			}
		case err := <-errc:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// openBrowser runs $BROWSER URL as the real CLIs do (no shell).
func openBrowser(ctx context.Context, browser, u string, stderr io.Writer) {
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(bctx, browser, u).CombinedOutput(); err != nil {
		fmt.Fprintf(stderr, "fakeprovider: could not open the browser (%s): %v %s\n", browser, err, strings.TrimSpace(string(out)))
	}
}

// login is one login in progress.
type login struct {
	cfg         config
	out         string
	stderr      io.Writer
	state       string
	verifier    string
	redirectURI string

	once sync.Once
	mu   sync.Mutex // serializes callbacks
	done chan error // the outcome, once
}

func (l *login) authURL() (string, error) {
	u, err := url.Parse(l.cfg.authorizeURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return "", fmt.Errorf("bad authorization endpoint %q", l.cfg.authorizeURL)
	}
	sum := sha256.Sum256([]byte(l.verifier))
	q := u.Query()
	q.Set("client_id", l.cfg.clientID)
	q.Set("redirect_uri", l.redirectURI)
	q.Set("state", l.state)
	q.Set("code_challenge", base64.RawURLEncoding.EncodeToString(sum[:]))
	q.Set("code_challenge_method", "S256")
	q.Set("response_type", "code")
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func (l *login) finish(err error) { l.once.Do(func() { l.done <- err }) }

// callback handles the browser's redirect back from the authorization
// server. A wrong state or a missing code is refused and the login goes on
// waiting (as codex does); a denial or a failed exchange ends it.
func (l *login) callback(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/callback" {
		http.NotFound(w, r)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	q := r.URL.Query()
	switch {
	case q.Get("state") != l.state:
		http.Error(w, "State mismatch", http.StatusBadRequest)
		return
	case q.Get("error") != "":
		http.Error(w, "Login denied", http.StatusForbidden)
		l.finish(fmt.Errorf("login denied by the authorization server (%s)", q.Get("error")))
		return
	case q.Get("code") == "":
		http.Error(w, "Missing authorization code", http.StatusBadRequest)
		return
	}
	tok, err := l.exchange(r.Context(), q.Get("code"))
	if err != nil {
		http.Error(w, "Token exchange failed", http.StatusBadGateway)
		l.finish(err)
		return
	}
	if err := l.writeCredentials(tok); err != nil {
		http.Error(w, "Could not save the credentials", http.StatusInternalServerError)
		l.finish(err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprint(w, "<!doctype html><title>Signed in</title><h1 id=\"done\">Login complete</h1><p>You can close this tab.</p>\n")
	l.finish(nil)
}

// tokenResponse is the token endpoint's answer.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresIn    int64  `json:"expires_in"`
	TokenType    string `json:"token_type"`
}

// exchange trades the code for tokens. Its errors never hold a token.
func (l *login) exchange(ctx context.Context, code string) (tokenResponse, error) {
	form := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"redirect_uri":  {l.redirectURI},
		"client_id":     {l.cfg.clientID},
		"code_verifier": {l.verifier},
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.cfg.tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return tokenResponse{}, fmt.Errorf("token exchange: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return tokenResponse{}, fmt.Errorf("token exchange: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
			Desc  string `json:"error_description"`
		}
		_ = json.Unmarshal(body, &e)
		return tokenResponse{}, fmt.Errorf("token exchange: %s: %s %s", resp.Status, e.Error, e.Desc)
	}
	var tok tokenResponse
	if err := json.Unmarshal(body, &tok); err != nil || tok.AccessToken == "" || tok.RefreshToken == "" {
		return tokenResponse{}, errors.New("token exchange: the answer lacks access_token or refresh_token")
	}
	return tok, nil
}

// writeCredentials writes the credential file, mode 0600, in one write or
// in two chunks -split-write apart.
func (l *login) writeCredentials(tok tokenResponse) error {
	if tok.ExpiresIn <= 0 {
		tok.ExpiresIn = 3600
	}
	data, err := json.MarshalIndent(map[string]any{
		"fakeOauth": map[string]any{
			"accessToken":  tok.AccessToken,
			"refreshToken": tok.RefreshToken,
			"expiresAt":    time.Now().Add(time.Duration(tok.ExpiresIn) * time.Second).UnixMilli(),
			"tokenType":    tok.TokenType,
			"scopes":       []string{"fake:all"},
		},
	}, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if err := os.MkdirAll(filepath.Dir(l.out), 0o700); err != nil {
		return fmt.Errorf("save credentials: %w", err)
	}
	f, err := os.OpenFile(l.out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("save credentials: %w", err)
	}
	defer f.Close()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("save credentials: %w", err)
	}
	first := data
	if l.cfg.splitWrite > 0 {
		first = data[:len(data)/2]
	}
	if _, err := f.Write(first); err != nil {
		return fmt.Errorf("save credentials: %w", err)
	}
	if l.cfg.splitWrite > 0 {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("save credentials: %w", err)
		}
		fmt.Fprintf(l.stderr, "fakeprovider: wrote %d of %d bytes of %s; the rest in %s\n", len(first), len(data), l.out, l.cfg.splitWrite)
		time.Sleep(l.cfg.splitWrite)
		if _, err := f.Write(data[len(first):]); err != nil {
			return fmt.Errorf("save credentials: %w", err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save credentials: %w", err)
	}
	return nil
}

// expandHome resolves a leading "~/".
func expandHome(p string) (string, error) {
	rest, ok := strings.CutPrefix(p, "~/")
	if !ok {
		return p, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", p, err)
	}
	return filepath.Join(home, rest), nil
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

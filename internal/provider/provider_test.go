package provider

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/providers"
)

func TestShippedProvidersParse(t *testing.T) {
	r, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"claude_code", "codex", "gemini_cli"}
	if got := r.Names(); !slices.Equal(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	for _, name := range want {
		p, err := r.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		if p.DisplayName == "" || len(p.Login.Argv) == 0 || p.Login.URLRegexp() == nil || len(p.Credentials) == 0 {
			t.Errorf("%s: incomplete provider %+v", name, p)
		}
		if p.Login.Timeout.D() <= 0 {
			t.Errorf("%s: no login timeout", name)
		}
		for i, s := range p.Login.Steps {
			if s.ExpectRegexp() == nil || s.Timeout.D() <= 0 {
				t.Errorf("%s: step %d not compiled or without timeout", name, i)
			}
		}
		if p.Source != "providers/"+name+".yaml" {
			t.Errorf("%s: Source = %q", name, p.Source)
		}
	}
	if _, err := r.Get("fake_cli"); err == nil {
		t.Error("the shipped registry offers the test-only fake_cli")
	}
}

func TestLoadWithTestProviders(t *testing.T) {
	r, err := LoadWithTestProviders()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Names(), []string{"claude_code", "codex", "fake_cli", "gemini_cli"}; !slices.Equal(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
	p, err := r.Get("fake_cli")
	if err != nil {
		t.Fatal(err)
	}
	if p.Source != "providers/testdata/fake_cli.yaml" {
		t.Errorf("Source = %q", p.Source)
	}
}

func TestGetUnknownListsNames(t *testing.T) {
	r, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Get("copilot")
	if err == nil || !strings.Contains(err.Error(), `unknown provider "copilot" (known: claude_code, codex, gemini_cli)`) {
		t.Fatalf("err = %v", err)
	}
}

// The URL patterns pick the loopback authorization URL out of what each
// CLI prints, as captured from the real CLIs (dummy state and challenge
// values), and never claude's manual sign-in link.
func TestURLPatterns(t *testing.T) {
	r, err := LoadWithTestProviders()
	if err != nil {
		t.Fatal(err)
	}
	claudeLoopback := "https://claude.com/cai/oauth/authorize?code=true&client_id=9d1c250a-e61b-44d9-88ed-5944d1962f5e&response_type=code&redirect_uri=http%3A%2F%2Flocalhost%3A38801%2Fcallback&scope=user%3Aprofile+user%3Ainference&code_challenge=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&code_challenge_method=S256&state=BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
	codexURL := "https://auth.openai.com/oauth/authorize?response_type=code&client_id=app_EMoamEEZ73f0CkXaXp7hrann&redirect_uri=http%3A%2F%2F127.0.0.1%3A1455%2Fauth%2Fcallback&code_challenge=CCCC&code_challenge_method=S256&state=DDDD&originator=codex_cli_rs"
	geminiURL := "https://accounts.google.com/o/oauth2/v2/auth?redirect_uri=http%3A%2F%2F127.0.0.1%3A46501%2Foauth2callback&access_type=offline&scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcloud-platform&state=eeee&response_type=code&client_id=681255809395-x.apps.googleusercontent.com"
	fakeURL := "http://127.0.0.1:40000/authorize?client_id=fake&redirect_uri=http%3A%2F%2F127.0.0.1%3A41000%2Fcallback&state=ffff&code_challenge=gggg&code_challenge_method=S256&response_type=code"
	tests := []struct {
		provider, output, want string
	}{
		{"claude_code",
			// The manual link claude prints (an OSC 8 hyperlink) must not
			// match; a loopback URL after it (as a CLI that printed it would
			// show it) must.
			"Opening browser to sign in\u2026\r\nIf the browser didn't open, visit:\r\n\x1b]8;;https://claude.ai/oauth/authorize?z-AAAA\x07\x1b[94mhttps://claude.ai/oauth/authorize?z-AAAA\x1b[39m\x1b]8;;\x07\r\nPaste code here if prompted > " + claudeLoopback + "\r\n",
			claudeLoopback},
		{"codex", "Starting local login server on http://localhost:1455.\r\nIf your browser did not open, navigate to this URL to authenticate:\r\n\r\n" + codexURL + "\r\n\r\nOn a remote or headless machine?", codexURL},
		{"gemini_cli", "\r\nOpening authentication page in your browser. Do you want to continue? [Y/n]: y\r\r\n" + geminiURL + "\r\n", geminiURL},
		{"fake_cli", "Choose login method: 1) browser 2) api key\r\n1\r\nOpen this URL to log in: " + fakeURL + "\r\n", fakeURL},
	}
	for _, tt := range tests {
		p, err := r.Get(tt.provider)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := p.Login.URL([]byte(tt.output))
		if !ok || got != tt.want {
			t.Errorf("%s: URL = %q, %v; want %q", tt.provider, got, ok, tt.want)
		}
	}
	p, _ := r.Get("claude_code")
	if got, ok := p.Login.URL([]byte("If the browser didn't open, visit:\r\nhttps://claude.ai/oauth/authorize?z-AAAA\r\n")); ok {
		t.Errorf("claude_code matched the manual sign-in link %q", got)
	}
}

func TestSteps(t *testing.T) {
	r, err := LoadWithTestProviders()
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ provider, output, send string }{
		{"gemini_cli", "\r\nOpening authentication page in your browser. Do you want to continue? [Y/n]: ", "y\r"},
		{"fake_cli", "Choose login method: 1) browser 2) api key\n> ", "1\n"},
	} {
		p, _ := r.Get(tt.provider)
		if len(p.Login.Steps) != 1 {
			t.Fatalf("%s: %d steps", tt.provider, len(p.Login.Steps))
		}
		s := p.Login.Steps[0]
		if !s.ExpectRegexp().MatchString(tt.output) || s.Send != tt.send {
			t.Errorf("%s: step %+v does not answer %q with %q", tt.provider, s, tt.output, tt.send)
		}
	}
}

func TestCredentialMatches(t *testing.T) {
	c := Credential{Path: "~/.codex/auth.json"}
	for p, want := range map[string]bool{
		"~/.codex/auth.json":             true,
		"/home/hearth/.codex/auth.json":  true,
		"/root/.codex/auth.json":         true,
		"/home/hearth/x.codex/auth.json": false,
		".codex/auth.json":               false,
		"/home/hearth/.codex/auth.jsonx": false,
	} {
		if got := c.Matches(p); got != want {
			t.Errorf("Matches(%q) = %v, want %v", p, got, want)
		}
	}
	abs := Credential{Path: "/etc/x.json"}
	if !abs.Matches("/etc/x.json") || abs.Matches("/home/etc/x.json") {
		t.Error("absolute credential path matched wrongly")
	}
}

func TestDefaults(t *testing.T) {
	p, err := Parse([]byte(`name: x
display_name: X
login:
  argv: [x, login]
  steps:
    - expect: "go\\?"
      send: "y\r"
  url_pattern: 'https://\S+'
credentials:
  - path: ~/.x/c.json
    format: json
    required: [a]
install:
  - path: ~/.x/settings.json
    content: "{}"
`), "x.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if p.Login.Timeout.D() != DefaultLoginTimeout || p.Login.Steps[0].Timeout.D() != DefaultStepTimeout {
		t.Errorf("timeouts %v %v", p.Login.Timeout.D(), p.Login.Steps[0].Timeout.D())
	}
	if p.Install[0].Mode != 0o600 {
		t.Errorf("install mode %o, want 600", p.Install[0].Mode)
	}
	if p.Login.Steps[0].Send != "y\r" {
		t.Errorf("send %q", p.Login.Steps[0].Send)
	}
}

func TestCheckUnknownPath(t *testing.T) {
	r, _ := Load()
	p, _ := r.Get("codex")
	_, err := p.Check("/home/hearth/.codex/config.toml", []byte("{}"), time.Now())
	if !errors.Is(err, ErrUnknownCredential) || !strings.Contains(err.Error(), "known: ~/.codex/auth.json") {
		t.Fatalf("err = %v", err)
	}
}

// Every shipped provider makes a login request the guest agent accepts.
func TestLoginRequestsValidate(t *testing.T) {
	r, err := LoadWithTestProviders()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range r.Names() {
		p, _ := r.Get(name)
		req := p.LoginRequest("hearth", []string{"/usr/local/bin/hearth-browser"})
		if err := req.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if len(req.Credentials) != len(p.Credentials) || len(req.Steps) != len(p.Login.Steps) || req.Timeout != p.Login.Timeout.D() {
			t.Errorf("%s: request %+v", name, req)
		}
	}
}

func TestAddDir(t *testing.T) {
	r, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	src, err := providers.TestFS.ReadFile("testdata/fake_cli.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "fake_cli.yaml"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.AddDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get("fake_cli"); err != nil {
		t.Fatal(err)
	}
	if err := r.AddDir(dir); err == nil || !strings.Contains(err.Error(), "also defined") {
		t.Fatalf("adding a known name again: %v", err)
	}
}

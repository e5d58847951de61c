// Package provider describes, as data, how hearth logs a user in to an AI
// coding CLI (Claude Code, Codex, Gemini CLI): the login command the guest
// agent runs on a PTY in a browser VM, the prompts it answers, the pattern
// that finds the authorization URL in the output, and the credential files
// it captures. It also checks a captured credential file (complete JSON,
// required fields, expiry) without ever putting a secret into an error,
// and describes how a prompt runs through the CLI non-interactively in a
// workspace VM: the command, how the prompt is passed, which options a
// request may set and the flags they become, and the output format
// (internal/prompt builds the command and parses the output).
//
// The definitions are the YAML files of the providers package
// (providers/*.yaml), parsed strictly: an unknown key, a value of the
// wrong shape or a bad value fails with "<file>:<line>: <field>: <problem>".
// docs/providers.md documents the format and where each fact comes from.
package provider

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/providers"
)

// Credential file formats.
const (
	// FormatJSON is a JSON object.
	FormatJSON = "json"
)

// Expiry units: how a credential's expiry field is written.
const (
	UnitMilliseconds = "ms"      // a number: milliseconds since the Unix epoch
	UnitSeconds      = "s"       // a number: seconds since the Unix epoch
	UnitRFC3339      = "rfc3339" // a string such as 2026-01-02T15:04:05Z
	UnitJWTExp       = "jwt_exp" // a string holding a JWT; its exp claim (seconds)
)

// Install merge modes.
const (
	// MergeNone writes the file with the given content.
	MergeNone = ""
	// MergeJSON merges the content's top-level keys into the JSON object
	// already in the file (creating it if absent).
	MergeJSON = "json"
)

// Defaults for durations a provider leaves out.
const (
	DefaultLoginTimeout = 10 * time.Minute
	DefaultStepTimeout  = time.Minute
)

// Provider is one AI coding CLI that hearth can log a user in to.
type Provider struct {
	// Name identifies the provider (claude_code, codex, gemini_cli); it is
	// the file's base name.
	Name string `yaml:"name"`
	// DisplayName is what a person is shown.
	DisplayName string `yaml:"display_name"`
	// Login is how the guest agent runs the login.
	Login Login `yaml:"login"`
	// Credentials are the files the login writes, which hearth captures,
	// checks and installs into the user's workspace VM.
	Credentials []Credential `yaml:"credentials"`
	// Install lists extra files the workspace needs so that the CLI uses
	// the credential without prompting (may be empty).
	Install []InstallFile `yaml:"install"`
	// Prompt is how a prompt runs through the CLI in a workspace VM (nil
	// if the provider does not say).
	Prompt *Prompt `yaml:"prompt"`

	// Source is the file the provider was parsed from.
	Source string `yaml:"-"`
}

// Login is the request the guest agent runs: argv on a PTY with env added
// to the login user's environment; each step waits for Expect to match the
// output and types Send; the first match of URLPattern in the output is the
// authorization URL the agent opens in the guest browser; the credential
// paths are watched until the whole login has taken Timeout.
type Login struct {
	Argv  []string `yaml:"argv"`
	Env   []string `yaml:"env"` // KEY=VALUE; an empty VALUE sets the variable to ""
	Steps []Step   `yaml:"steps"`
	// URLPattern is an RE2 regular expression with no capturing groups:
	// its whole first match is the URL.
	URLPattern string   `yaml:"url_pattern"`
	Timeout    Duration `yaml:"timeout"`

	urlRE *regexp.Regexp
}

// Step is one prompt of the login and the answer to type.
type Step struct {
	Expect  string   `yaml:"expect"` // RE2 regular expression on the PTY output
	Send    string   `yaml:"send"`   // text to type (include "\r" or "\n" to press Enter)
	Timeout Duration `yaml:"timeout"`

	expectRE *regexp.Regexp
}

// Credential is a file the login writes and how to check it.
type Credential struct {
	// Path is absolute or "~/..." (under the login user's home).
	Path   string `yaml:"path"`
	Format string `yaml:"format"`
	// Required are dotted paths of fields that must be present and
	// non-empty, e.g. "claudeAiOauth.accessToken".
	Required []string `yaml:"required"`
	// ExpiresAt says where the credential's expiry is (optional).
	ExpiresAt *Expiry `yaml:"expires_at"`
}

// Expiry locates a credential's expiry time.
type Expiry struct {
	Field string `yaml:"field"` // dotted path
	Unit  string `yaml:"unit"`  // ms | s | rfc3339 | jwt_exp
}

// InstallFile is a file written into the workspace next to the credential.
type InstallFile struct {
	Path    string   `yaml:"path"` // absolute or "~/..."
	Mode    FileMode `yaml:"mode"` // octal, default 0600
	Merge   string   `yaml:"merge"`
	Content string   `yaml:"content"`
}

// Duration is a time.Duration written as Go writes it ("30s", "10m").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// FileMode is a file's permission bits, octal in YAML ("0600").
type FileMode uint32

// URL returns the authorization URL in output: the first match of the
// provider's URL pattern, or false if there is none yet.
func (l Login) URL(output []byte) (string, bool) {
	if l.urlRE == nil {
		return "", false
	}
	m := l.urlRE.Find(output)
	if m == nil {
		return "", false
	}
	return string(m), true
}

// URLRegexp returns the compiled URL pattern.
func (l Login) URLRegexp() *regexp.Regexp { return l.urlRE }

// ExpectRegexp returns the compiled expect pattern.
func (s Step) ExpectRegexp() *regexp.Regexp { return s.expectRE }

// Credential returns the provider's credential whose path is path: either
// the path as written in the provider ("~/.codex/auth.json") or one that
// ends in it once "~" is a home directory ("/home/hearth/.codex/auth.json").
func (p Provider) Credential(path string) (Credential, bool) {
	for _, c := range p.Credentials {
		if c.Matches(path) {
			return c, true
		}
	}
	return Credential{}, false
}

// Matches says whether path names this credential file (see
// Provider.Credential).
func (c Credential) Matches(p string) bool {
	if p == c.Path {
		return true
	}
	rest, ok := strings.CutPrefix(c.Path, "~/")
	if !ok {
		return false
	}
	p = path.Clean(p)
	return strings.HasPrefix(p, "/") && strings.HasSuffix(p, "/"+rest)
}

// Registry holds parsed providers by name.
type Registry struct {
	byName map[string]Provider
}

// Load parses the shipped providers (providers/*.yaml).
func Load() (*Registry, error) {
	r := &Registry{byName: map[string]Provider{}}
	if err := r.addFS(providers.FS, ".", "providers"); err != nil {
		return nil, err
	}
	return r, nil
}

// LoadWithTestProviders parses the shipped providers and the test-only
// ones (providers/testdata/*.yaml, e.g. fake_cli). Only tests use it.
func LoadWithTestProviders() (*Registry, error) {
	r, err := Load()
	if err != nil {
		return nil, err
	}
	if err := r.addFS(providers.TestFS, "testdata", "providers/testdata"); err != nil {
		return nil, err
	}
	return r, nil
}

// AddDir adds the providers defined in dir (*.yaml, one per file, named
// after the file), e.g. an operator's own. A name already known is an
// error.
func (r *Registry) AddDir(dir string) error {
	return r.addFS(os.DirFS(dir), ".", dir)
}

// addFS parses every *.yaml in dir of fsys; display is the directory's
// name in errors.
func (r *Registry) addFS(fsys fs.FS, dir, display string) error {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", display, err)
	}
	for _, e := range entries {
		base, ok := strings.CutSuffix(e.Name(), ".yaml")
		if e.IsDir() || !ok {
			continue
		}
		data, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return fmt.Errorf("read %s/%s: %w", display, e.Name(), err)
		}
		file := display + "/" + e.Name()
		p, err := Parse(data, file)
		if err != nil {
			return err
		}
		if p.Name != base {
			return fmt.Errorf("%s: name: %q does not match the file name (want %q)", file, p.Name, base)
		}
		if prev, dup := r.byName[p.Name]; dup {
			return fmt.Errorf("%s: name: provider %q is also defined in %s", file, p.Name, prev.Source)
		}
		r.byName[p.Name] = *p
	}
	return nil
}

// Get returns the named provider.
func (r *Registry) Get(name string) (Provider, error) {
	p, ok := r.byName[name]
	if !ok {
		return Provider{}, fmt.Errorf("unknown provider %q (known: %s)", name, strings.Join(r.Names(), ", "))
	}
	return p, nil
}

// Names lists the providers, sorted.
func (r *Registry) Names() []string {
	names := make([]string, 0, len(r.byName))
	for n := range r.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// LoginRequest is the guest agent's request for this provider's login, run
// as user, with browser the command that opens a URL in the guest browser.
func (p Provider) LoginRequest(user string, browser []string) agentapi.LoginRequest {
	req := agentapi.LoginRequest{
		User:       user,
		Argv:       slices.Clone(p.Login.Argv),
		Env:        slices.Clone(p.Login.Env),
		URLPattern: p.Login.URLPattern,
		Browser:    slices.Clone(browser),
		Timeout:    p.Login.Timeout.D(),
	}
	for _, s := range p.Login.Steps {
		req.Steps = append(req.Steps, agentapi.LoginStep{Expect: s.Expect, Send: s.Send, Timeout: s.Timeout.D()})
	}
	for _, c := range p.Credentials {
		req.Credentials = append(req.Credentials, agentapi.CredentialFile{Path: c.Path, Format: c.Format, Required: slices.Clone(c.Required)})
	}
	return req
}

package agentapi

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/hearth-project/hearth/internal/safetext"
)

// Message types of provider logins.
const (
	// TypeLogin is a request: run a CLI's login on a PTY in the guest,
	// open its authorization URL in the guest's browser, and answer with
	// the credential files once the CLI wrote them.
	TypeLogin = "login"
	// TypeLoginProgress is an unsolicited guest message carrying the id
	// of the login request it is about.
	TypeLoginProgress = "login_progress"
	// TypeCancel is a request: cancel the request with the given id (a
	// login the user abandoned). Answered with an empty result.
	TypeCancel = "cancel"
)

// Limits on logins.
const (
	// MaxLoginTimeout bounds LoginRequest.Timeout.
	MaxLoginTimeout = time.Hour
	// MaxLoginSteps bounds LoginRequest.Steps.
	MaxLoginSteps = 32
	// MaxCredentialFiles bounds LoginRequest.Credentials.
	MaxCredentialFiles = 8
	// MaxCredentialSize bounds one captured credential file.
	MaxCredentialSize = 256 << 10
	// MaxCredentialTotal bounds a login's credential files together: their
	// result, base64 and all, must fit one MaxLineSize line (8 files of
	// MaxCredentialSize would need 2.7 MiB).
	MaxCredentialTotal = 512 << 10
	// MaxCredentialPath bounds a credential file's path.
	MaxCredentialPath = 1024
	// MaxLoginURL bounds the authorization URL the guest reports.
	MaxLoginURL = 8 << 10
	// maxPattern bounds a regular expression in a request.
	maxPattern = 1024
)

// LoginStep answers one prompt of a CLI's login: when Expect (a regular
// expression) matches the PTY output seen since the previous step, Send is
// typed. A step not matched within Timeout fails the login.
type LoginStep struct {
	Expect  string        `json:"expect"`
	Send    string        `json:"send"`
	Timeout time.Duration `json:"timeout_ns"`
}

// CredentialFile is a file the login must produce. Path is absolute or
// starts with "~/" (the login user's home). The file counts as written once
// it is complete: for Format "json", it parses and every dotted path in
// Required (e.g. "tokens.refresh_token") is present and not empty.
type CredentialFile struct {
	Path     string   `json:"path"`
	Format   string   `json:"format"`
	Required []string `json:"required,omitempty"`
}

// LoginRequest runs a login (host → guest, request "login").
type LoginRequest struct {
	// User runs the CLI (with that user's HOME); it must exist in the
	// guest. The credential files are that user's.
	User string `json:"user"`
	// Argv, Env and Dir are the CLI's command line, extra environment
	// and working directory ("" = the user's home).
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
	// Steps answer the CLI's prompts, in order.
	Steps []LoginStep `json:"steps,omitempty"`
	// URLPattern matches the authorization URL in the CLI's output. The
	// CLI may also hand the URL to $BROWSER, which the guest points at
	// its own helper; the first URL seen either way is the one opened.
	URLPattern string `json:"url_pattern"`
	// Browser is the command that opens a URL in the guest's browser (the
	// URL is appended as the last argument).
	Browser []string `json:"browser"`
	// Credentials are the files the CLI writes when the login succeeds.
	Credentials []CredentialFile `json:"credentials"`
	// Timeout bounds the user's part of the login: from the sign-in page
	// on screen to complete credentials. Without SetupTimeout it bounds
	// the whole login.
	Timeout time.Duration `json:"timeout_ns"`
	// SetupTimeout, if set, bounds what comes before the user's part: the
	// CLI's start and prompts, the URL, and the guest browser bringing the
	// sign-in page up. The user's time does not run while the guest is
	// still slow to show the page.
	SetupTimeout time.Duration `json:"setup_timeout_ns,omitempty"`
	// PageCheck, if set, is the HOST:PORT of the guest browser's DevTools
	// HTTP endpoint on the guest's loopback: the page counts as on screen
	// only once the browser shows an http(s) page there. Without it, the
	// page counts as on screen when the browser command has run.
	PageCheck string `json:"page_check,omitempty"`
}

// Login phases reported in LoginProgress.
const (
	LoginStarted     = "started"     // the CLI runs on its PTY
	LoginPrompt      = "prompt"      // a step's prompt was answered (Step is its index)
	LoginOpening     = "opening"     // the authorization URL was found; the guest browser is loading it
	LoginURL         = "url"         // the authorization page is on the guest browser's screen
	LoginCredentials = "credentials" // every credential file is complete; the CLI is finishing
)

// LoginProgress reports how far a login got (guest → host, message
// "login_progress", its envelope id the login request's).
type LoginProgress struct {
	Phase string `json:"phase"`
	Step  int    `json:"step,omitempty"`
	URL   string `json:"url,omitempty"`
}

// CapturedFile is one credential file as the CLI wrote it.
type CapturedFile struct {
	Path    string `json:"path"` // as in the request
	Content []byte `json:"content_b64"`
}

// LoginResult is the result of a login: the credential files, complete.
// A login that failed (CLI exited first, timeout, a step never matched) is
// answered with an error instead, which never contains file contents.
type LoginResult struct {
	Files    []CapturedFile `json:"files"`
	ExitCode int            `json:"exit_code"` // the CLI's, -1 if it was still running and was stopped
	Duration time.Duration  `json:"duration_ns"`
}

// Cancel asks the guest to cancel a request it is answering.
type Cancel struct {
	RequestID uint64 `json:"request_id"`
}

// Validate checks a login request against the limits above.
func (r LoginRequest) Validate() error {
	if r.User == "" || strings.ContainsAny(r.User, "/:\x00") || len(r.User) > 64 {
		return fmt.Errorf("login user %q is not a user name", clipForError(r.User))
	}
	if err := checkArgv(r.Argv); err != nil {
		return fmt.Errorf("login: %w", err)
	}
	if err := checkEnv(r.Env); err != nil {
		return fmt.Errorf("login: %w", err)
	}
	if r.Dir != "" && !strings.HasPrefix(r.Dir, "/") {
		return fmt.Errorf("login dir %q is not absolute", clipForError(r.Dir))
	}
	if len(r.Steps) > MaxLoginSteps {
		return fmt.Errorf("login has %d steps, at most %d allowed", len(r.Steps), MaxLoginSteps)
	}
	for i, st := range r.Steps {
		if err := checkPattern(fmt.Sprintf("step %d expect", i), st.Expect); err != nil {
			return err
		}
		if st.Timeout <= 0 || st.Timeout > MaxLoginTimeout {
			return fmt.Errorf("login step %d timeout %v outside (0, %v]", i, st.Timeout, MaxLoginTimeout)
		}
		if !utf8.ValidString(st.Send) || len(st.Send) > 4096 {
			return fmt.Errorf("login step %d send is not valid UTF-8 of at most 4096 bytes", i)
		}
	}
	if err := checkPattern("url_pattern", r.URLPattern); err != nil {
		return err
	}
	if len(r.Browser) == 0 {
		return errors.New("login browser command is empty")
	}
	if err := checkArgv(r.Browser); err != nil {
		return fmt.Errorf("login browser: %w", err)
	}
	if len(r.Credentials) == 0 || len(r.Credentials) > MaxCredentialFiles {
		return fmt.Errorf("login needs 1-%d credential files, got %d", MaxCredentialFiles, len(r.Credentials))
	}
	for _, c := range r.Credentials {
		if len(c.Path) > MaxCredentialPath {
			return fmt.Errorf("credential path %q is longer than %d bytes", clipForError(c.Path), MaxCredentialPath)
		}
		if !strings.HasPrefix(c.Path, "/") && !strings.HasPrefix(c.Path, "~/") {
			return fmt.Errorf("credential path %q is neither absolute nor under ~/", clipForError(c.Path))
		}
		if strings.Contains(c.Path, "/../") || strings.HasSuffix(c.Path, "/..") || strings.HasSuffix(c.Path, "/") {
			return fmt.Errorf("credential path %q is not a plain file path", clipForError(c.Path))
		}
		if c.Format != "json" {
			return fmt.Errorf("credential %s: format %q unknown (json)", clipForError(c.Path), clipForError(c.Format))
		}
		for _, f := range c.Required {
			if f == "" || strings.HasPrefix(f, ".") || strings.HasSuffix(f, ".") || strings.Contains(f, "..") {
				return fmt.Errorf("credential %s: required field %q is not a dotted path", clipForError(c.Path), clipForError(f))
			}
		}
	}
	if r.Timeout <= 0 || r.Timeout > MaxLoginTimeout {
		return fmt.Errorf("login timeout %v outside (0, %v]", r.Timeout, MaxLoginTimeout)
	}
	if r.SetupTimeout < 0 || r.SetupTimeout > MaxLoginTimeout {
		return fmt.Errorf("login setup timeout %v outside [0, %v]", r.SetupTimeout, MaxLoginTimeout)
	}
	if r.PageCheck != "" && !LoopbackAddrPort(r.PageCheck) {
		return fmt.Errorf("login page check %q is not a loopback HOST:PORT", clipForError(r.PageCheck))
	}
	return nil
}

func checkPattern(field, p string) error {
	if p == "" || len(p) > maxPattern {
		return fmt.Errorf("login %s must be a regular expression of 1-%d bytes", field, maxPattern)
	}
	if _, err := regexp.Compile(p); err != nil {
		return fmt.Errorf("login %s: %v", field, err)
	}
	return nil
}

// Validate checks progress received from the guest.
func (p LoginProgress) Validate() error {
	switch p.Phase {
	case LoginStarted, LoginCredentials:
	case LoginPrompt:
		if p.Step < 0 || p.Step >= MaxLoginSteps {
			return fmt.Errorf("%w: login step %d out of range", ErrProtocol, p.Step)
		}
	case LoginOpening, LoginURL:
		if p.URL == "" || len(p.URL) > MaxLoginURL || !utf8.ValidString(p.URL) {
			return fmt.Errorf("%w: bad login url", ErrProtocol)
		}
	default:
		return fmt.Errorf("%w: unknown login phase %q", ErrProtocol, clipForError(p.Phase))
	}
	return nil
}

// Validate checks a login result against the request it answers.
func (r LoginResult) Validate(req LoginRequest) error {
	if len(r.Files) != len(req.Credentials) {
		return fmt.Errorf("%w: login returned %d files for %d credentials", ErrProtocol, len(r.Files), len(req.Credentials))
	}
	for i, f := range r.Files {
		if f.Path != req.Credentials[i].Path {
			return fmt.Errorf("%w: login file %d is %q, want %q", ErrProtocol, i, clipForError(f.Path), clipForError(req.Credentials[i].Path))
		}
		if len(f.Content) == 0 || len(f.Content) > MaxCredentialSize {
			return fmt.Errorf("%w: login file %d is %d bytes", ErrProtocol, i, len(f.Content))
		}
	}
	if err := CheckCredentialTotal(r.Files); err != nil {
		return fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if r.ExitCode < -1 || r.ExitCode > 255 {
		return fmt.Errorf("%w: exit code %d out of range", ErrProtocol, r.ExitCode)
	}
	return nil
}

// CheckCredentialTotal refuses credential files that hold more than
// MaxCredentialTotal bytes together.
func CheckCredentialTotal(files []CapturedFile) error {
	total := 0
	for _, f := range files {
		total += len(f.Content)
	}
	if total > MaxCredentialTotal {
		return fmt.Errorf("the %d credential files hold %d bytes together, more than the %d a login can carry", len(files), total, MaxCredentialTotal)
	}
	return nil
}

// Login runs req in the guest and returns the credential files once the
// CLI wrote them. progress, if not nil, is called (on the session's reader:
// it must not block) for every LoginProgress. Cancelling ctx cancels the
// login in the guest (best effort) and returns at once.
func (s *Session) Login(ctx context.Context, req LoginRequest, progress func(LoginProgress)) (LoginResult, error) {
	if err := req.Validate(); err != nil {
		return LoginResult{}, fmt.Errorf("agentapi: %s: %w", TypeLogin, err)
	}
	id, replies, err := s.register()
	if err != nil {
		return LoginResult{}, fmt.Errorf("agentapi: %s: %w", TypeLogin, err)
	}
	defer s.unregister(id)
	s.onProgress(id, progress)
	defer s.onProgress(id, nil)

	msg, err := NewMessage(TypeLogin, id, req)
	if err != nil {
		return LoginResult{}, err
	}
	if err := s.send(ctx, msg); err != nil {
		return LoginResult{}, fmt.Errorf("agentapi: %s: %w", TypeLogin, err)
	}
	select {
	case res, ok := <-replies:
		if !ok {
			return LoginResult{}, fmt.Errorf("agentapi: %s: %w", TypeLogin, s.Err())
		}
		if res.Error != "" {
			return LoginResult{}, &RemoteError{Request: TypeLogin, Message: safetext.Line(res.Error, MaxErrorText)}
		}
		var out LoginResult
		if err := res.DecodeBody(&out); err != nil {
			return LoginResult{}, fmt.Errorf("agentapi: %s: %w", TypeLogin, err)
		}
		if err := out.Validate(req); err != nil {
			return LoginResult{}, fmt.Errorf("agentapi: %s: %w", TypeLogin, err)
		}
		return out, nil
	case <-ctx.Done():
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.call(cctx, TypeCancel, Cancel{RequestID: id}, &struct{}{})
		return LoginResult{}, fmt.Errorf("agentapi: %s: %w", TypeLogin, ctx.Err())
	}
}

// onProgress sets (or, with nil, removes) the progress callback of
// request id.
func (s *Session) onProgress(id uint64, fn func(LoginProgress)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fn == nil {
		delete(s.progress, id)
		return
	}
	if s.progress == nil {
		s.progress = map[uint64]func(LoginProgress){}
	}
	s.progress[id] = fn
}

// onLoginProgress hands progress to the login waiting for it; progress
// for no login in flight is dropped (it may be late).
func (s *Session) onLoginProgress(env Envelope) error {
	var p LoginProgress
	if err := env.DecodeBody(&p); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	fn := s.progress[env.ID]
	s.mu.Unlock()
	if fn != nil {
		fn(p)
	}
	return nil
}

// TypeWriteFile is a request: write a file atomically as a guest user
// (credentials installed into a workspace). Answered with an empty result.
const TypeWriteFile = "write_file"

// WriteFileRequest writes Content to Path (absolute, or "~/" under User's
// home) as User: missing directories are made (0700), the file is written
// beside its target, flushed and renamed over it, mode 0600.
type WriteFileRequest struct {
	User    string `json:"user"`
	Path    string `json:"path"`
	Content []byte `json:"content_b64"`
	// Merge "json" merges Content (a JSON object) into the file's current
	// JSON object instead of replacing it: nested objects are merged, other
	// values set. A missing file counts as {}.
	Merge string `json:"merge,omitempty"`
}

// Validate checks a write_file request.
func (r WriteFileRequest) Validate() error {
	if r.User == "" || strings.ContainsAny(r.User, "/:\x00") || len(r.User) > 64 {
		return fmt.Errorf("write_file user %q is not a user name", clipForError(r.User))
	}
	if !strings.HasPrefix(r.Path, "/") && !strings.HasPrefix(r.Path, "~/") {
		return fmt.Errorf("write_file path %q is neither absolute nor under ~/", clipForError(r.Path))
	}
	if strings.Contains(r.Path, "/../") || strings.HasSuffix(r.Path, "/..") || strings.HasSuffix(r.Path, "/") ||
		strings.ContainsRune(r.Path, 0) || !utf8.ValidString(r.Path) {
		return fmt.Errorf("write_file path %q is not a plain file path", clipForError(r.Path))
	}
	if len(r.Content) > MaxCredentialSize {
		return fmt.Errorf("write_file content is %d bytes, at most %d allowed", len(r.Content), MaxCredentialSize)
	}
	if r.Merge != "" && r.Merge != "json" {
		return fmt.Errorf("write_file merge %q unknown (json)", clipForError(r.Merge))
	}
	return nil
}

// WriteFile writes a file in the guest as a user (see WriteFileRequest).
func (s *Session) WriteFile(ctx context.Context, req WriteFileRequest) error {
	if err := req.Validate(); err != nil {
		return fmt.Errorf("agentapi: %s: %w", TypeWriteFile, err)
	}
	return s.call(ctx, TypeWriteFile, req, &struct{}{})
}

// LoopbackAddrPort reports whether s is a loopback IP address and a port
// from 1 to 65535 ("127.0.0.1:9222", "[::1]:9222"): where a guest's page
// check may point.
func LoopbackAddrPort(s string) bool {
	ap, err := netip.ParseAddrPort(s)
	return err == nil && ap.Addr().IsLoopback() && ap.Port() != 0
}

package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/agent/guestuser"
	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/safetext"
)

const (
	// loginExitGrace is how long a CLI may take to exit once its
	// credentials are complete before it is stopped.
	loginExitGrace = 15 * time.Second
	// loginOutputKeep is how much PTY output is kept for matching.
	loginOutputKeep = 64 << 10
	// browserStartTimeout bounds the command that opens the URL.
	browserStartTimeout = 30 * time.Second
)

// loginRun is one login in progress.
type loginRun struct {
	req      agentapi.LoginRequest
	progress func(agentapi.LoginProgress)
	log      *slog.Logger

	uid, gid uint32
	home     string
	paths    []string // credential paths, resolved
	urlFile  string   // where the $BROWSER helper drops the URL

	mu      sync.Mutex
	out     []byte // PTY output since the start (the last loginOutputKeep bytes)
	stepOut []byte // output since the last answered step
	step    int    // the next step to answer
	url     string // the authorization URL once found
	shown   bool   // the sign-in page is on the guest browser's screen
	pageErr error  // why the last look at the guest browser saw no page
}

// runLogin runs req until its credential files are complete, it fails, or
// ctx is done.
func runLogin(ctx context.Context, req agentapi.LoginRequest, progress func(agentapi.LoginProgress), log *slog.Logger) (agentapi.LoginResult, error) {
	start := time.Now()
	r := &loginRun{req: req, progress: progress, log: log}
	if err := r.lookupUser(); err != nil {
		return agentapi.LoginResult{}, err
	}
	for _, c := range req.Credentials {
		r.paths = append(r.paths, expandHome(c.Path, r.home))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// One deadline at a time: with a SetupTimeout, first the setup's (the
	// CLI, its prompts, the URL, the browser bringing the page up), then,
	// from the page on screen, the user's (req.Timeout). Without one,
	// req.Timeout bounds it all.
	deadline := time.NewTimer(req.Timeout)
	if req.SetupTimeout > 0 {
		deadline.Reset(req.SetupTimeout)
	}
	defer deadline.Stop()
	pageShown := func() {
		r.mu.Lock()
		r.shown = true
		r.mu.Unlock()
		if req.SetupTimeout > 0 {
			deadline.Reset(req.Timeout) // no stale expiry since Go 1.23
		}
	}

	// The $BROWSER helper: a script that drops the URL into a private
	// directory the watcher below also watches.
	dir, err := os.MkdirTemp("", "hearth-login-")
	if err != nil {
		return agentapi.LoginResult{}, fmt.Errorf("login: %w", err)
	}
	defer os.RemoveAll(dir) // holds only the helper and the URL: no mounts
	r.urlFile = filepath.Join(dir, "url")
	helper := filepath.Join(dir, "open-url")
	script := "#!/bin/sh\n# hearth: hand the URL to the agent, which opens it in the guest browser\n" +
		"printf '%s\\n' \"$1\" > " + shellQuote(r.urlFile+".tmp") + " && mv -f " + shellQuote(r.urlFile+".tmp") + " " + shellQuote(r.urlFile) + "\n"
	if err := os.WriteFile(helper, []byte(script), 0o700); err != nil {
		return agentapi.LoginResult{}, fmt.Errorf("login: %w", err)
	}
	if err := os.Chown(dir, int(r.uid), int(r.gid)); err != nil {
		return agentapi.LoginResult{}, fmt.Errorf("login: %w", err)
	}
	// CLIs that call a browser opener by name (xdg-open and friends)
	// instead of $BROWSER find the helper first in PATH.
	for _, name := range append([]string{"open-url"}, browserOpeners...) {
		p := filepath.Join(dir, name)
		if name != "open-url" {
			if err := os.Symlink("open-url", p); err != nil {
				return agentapi.LoginResult{}, fmt.Errorf("login: %w", err)
			}
		}
		if err := os.Lchown(p, int(r.uid), int(r.gid)); err != nil {
			return agentapi.LoginResult{}, fmt.Errorf("login: %w", err)
		}
	}

	w, err := newWatcher()
	if err != nil {
		return agentapi.LoginResult{}, fmt.Errorf("login: watch files: %w", err)
	}
	defer w.close()
	w.watchFor(r.urlFile)
	for _, p := range r.paths {
		w.watchFor(p)
	}

	cmd, tty, err := r.start(dir, helper)
	if err != nil {
		return agentapi.LoginResult{}, err
	}
	defer tty.Close()
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	kill := func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	defer func() {
		kill()
		<-exited
	}()
	r.progress(agentapi.LoginProgress{Phase: agentapi.LoginStarted})

	outputs := make(chan struct{}, 1)
	ptyDone := make(chan struct{})
	go func() { r.readPTY(tty, outputs); close(ptyDone) }()

	var stepTimer *time.Timer
	stepDeadline := func() <-chan time.Time {
		if stepTimer == nil {
			return nil
		}
		return stepTimer.C
	}
	armStep := func() {
		if stepTimer != nil {
			stepTimer.Stop()
			stepTimer = nil
		}
		if r.step < len(req.Steps) && r.url == "" {
			stepTimer = time.NewTimer(req.Steps[r.step].Timeout)
		}
	}
	armStep()
	defer func() {
		if stepTimer != nil {
			stepTimer.Stop()
		}
	}()

	// pageReady says when the sign-in page is on screen (PageCheck).
	var pageReady chan error
	// check looks at everything once: prompts, the URL, the files. It
	// returns the captured files when all are complete.
	check := func() ([]agentapi.CapturedFile, error) {
		if answered, err := r.answerPrompt(tty); err != nil {
			return nil, err
		} else if answered {
			armStep()
		}
		if r.url == "" {
			if u := r.findURL(); u != "" {
				if err := r.openURL(ctx, u); err != nil {
					return nil, err
				}
				armStep()
				if req.PageCheck == "" {
					r.progress(agentapi.LoginProgress{Phase: agentapi.LoginURL, URL: u})
					pageShown()
				} else {
					pageReady = make(chan error, 1)
					go r.watchPage(ctx, pageReady)
				}
			}
		}
		return r.captured(), nil
	}

	for {
		files, err := check()
		if err != nil {
			return agentapi.LoginResult{}, err
		}
		if files != nil {
			r.progress(agentapi.LoginProgress{Phase: agentapi.LoginCredentials})
			code := -1
			select {
			case <-exited:
				code = exitCode(cmd)
			case <-time.After(loginExitGrace):
				r.log.Info("login: CLI still running after writing its credentials; stopping it")
			case <-ctx.Done():
			}
			// Read again after the CLI is done: the last write wins.
			if final := r.captured(); final != nil {
				files = final
			}
			return loginResult(files, code, start)
		}
		select {
		case <-outputs:
		case <-w.events:
		case <-stepDeadline():
			return agentapi.LoginResult{}, fmt.Errorf("login: the CLI never showed the prompt of step %d within %s (last output: %q)",
				r.step, req.Steps[r.step].Timeout, r.lastOutput())
		case <-exited:
			// Its last words: the PTY reads until every holder closed it
			// (a child left running may keep it open; it is killed below).
			select {
			case <-ptyDone:
			case <-time.After(2 * time.Second):
			}
			// One last look: the CLI may have written the files and exited
			// at once.
			if files, _ := check(); files != nil {
				return loginResult(files, exitCode(cmd), start)
			}
			return agentapi.LoginResult{}, fmt.Errorf("login: the CLI exited (%s) before its credentials were complete (%s) while waiting for %s; last output: %q",
				describeExit(waitErr), r.missing(), r.waitingFor(), r.lastOutput())
		case err := <-pageReady:
			pageReady = nil
			if err != nil {
				return agentapi.LoginResult{}, fmt.Errorf("login: %w", err)
			}
			r.log.Info("login: the sign-in page is on the guest browser's screen")
			r.progress(agentapi.LoginProgress{Phase: agentapi.LoginURL, URL: r.currentURL()})
			pageShown()
		case <-deadline.C:
			if !r.pageOnScreen() && req.SetupTimeout > 0 {
				return agentapi.LoginResult{}, fmt.Errorf("login: the sign-in page was not on the guest browser's screen within %s (waiting for %s)",
					req.SetupTimeout, r.waitingFor())
			}
			return agentapi.LoginResult{}, fmt.Errorf("login: timed out after %s waiting for %s", req.Timeout, r.waitingFor())
		case <-ctx.Done():
			return agentapi.LoginResult{}, fmt.Errorf("login: %w", ctx.Err())
		}
	}
}

// loginResult is the result of a login whose credential files are
// complete, unless they are more than a result can carry back: then the
// login fails saying so (instead of a bare "result too large").
func loginResult(files []agentapi.CapturedFile, code int, start time.Time) (agentapi.LoginResult, error) {
	if err := agentapi.CheckCredentialTotal(files); err != nil {
		return agentapi.LoginResult{}, fmt.Errorf("login: %w", err)
	}
	return agentapi.LoginResult{Files: files, ExitCode: code, Duration: time.Since(start)}, nil
}

// pagePollMax bounds the pause between two looks at the guest browser.
const pagePollMax = time.Second

// watchPage looks at the guest browser until the sign-in page is on its
// screen (nil on ready) or it shows its error page, or ctx ends.
func (r *loginRun) watchPage(ctx context.Context, ready chan<- error) {
	pause := 100 * time.Millisecond
	for {
		state, err := checkPage(ctx, r.req.PageCheck)
		switch state {
		case pageOnScreen:
			ready <- nil
			return
		case pageError:
			ready <- errPageFailed
			return
		}
		r.mu.Lock()
		r.pageErr = err
		r.mu.Unlock()
		if err != nil {
			r.log.Debug("login: the sign-in page is not on screen yet", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, pagePollMax)
	}
}

func (r *loginRun) pageOnScreen() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.shown
}

func (r *loginRun) currentURL() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.url
}

// browserOpeners are the commands CLIs run to open a URL; in a login they
// all lead to the agent's helper.
var browserOpeners = []string{"xdg-open", "sensible-browser", "x-www-browser", "www-browser", "gnome-open", "kde-open"}

func (r *loginRun) lookupUser() error {
	u, err := user.Lookup(r.req.User)
	if err != nil {
		return fmt.Errorf("login: user %s: %w", r.req.User, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil || u.HomeDir == "" {
		return fmt.Errorf("login: user %s has no usable uid, gid or home", r.req.User)
	}
	r.uid, r.gid, r.home = uint32(uid), uint32(gid), u.HomeDir
	return nil
}

// start runs the CLI on a new PTY, in its own session, as the user.
func (r *loginRun) start(helperDir, helper string) (*exec.Cmd, *os.File, error) {
	base := []string{
		"HOME=" + r.home, "USER=" + r.req.User, "LOGNAME=" + r.req.User,
		"PATH=" + defaultPath, "TERM=xterm-256color", "LANG=C.UTF-8",
	}
	env := commandEnv(base, r.req.Env)
	// The agent's helper opens URLs, whatever the request says: $BROWSER
	// and, first in PATH, the usual openers.
	env = commandEnv(env, []string{"BROWSER=" + helper, "PATH=" + helperDir + ":" + envValue(env, "PATH")})
	path, err := guestuser.LookPath(r.req.Argv[0], envValue(env, "PATH"))
	if err != nil {
		return nil, nil, fmt.Errorf("login: %w", err)
	}
	cmd := exec.Command(path)
	cmd.Args, cmd.Env, cmd.Dir = r.req.Argv, env, r.req.Dir
	if cmd.Dir == "" {
		cmd.Dir = r.home
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if r.uid != uint32(os.Geteuid()) {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: r.uid, Gid: r.gid}
	}
	ptmx, tty, err := pty.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("login: open a pty: %w", err)
	}
	defer tty.Close() // the child has its own copies
	// The terminal is the user's, as after a login; wide, so that CLIs do
	// not wrap the URL across lines.
	if err := errors.Join(os.Chown(tty.Name(), int(r.uid), int(r.gid)),
		pty.Setsize(ptmx, &pty.Winsize{Rows: 50, Cols: 1000})); err != nil {
		ptmx.Close()
		return nil, nil, fmt.Errorf("login: set up the pty: %w", err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	if err := cmd.Start(); err != nil {
		ptmx.Close()
		return nil, nil, fmt.Errorf("login: start %s: %w", r.req.Argv[0], err)
	}
	return cmd, ptmx, nil
}

// readPTY collects output and signals each arrival (coalesced).
func (r *loginRun) readPTY(tty *os.File, outputs chan<- struct{}) {
	buf := make([]byte, 8192)
	for {
		n, err := tty.Read(buf)
		if n > 0 {
			r.mu.Lock()
			r.out = keepTail(append(r.out, buf[:n]...), loginOutputKeep)
			r.stepOut = keepTail(append(r.stepOut, buf[:n]...), loginOutputKeep)
			r.mu.Unlock()
			select {
			case outputs <- struct{}{}:
			default:
			}
		}
		if err != nil {
			return // EIO once the CLI and its children closed the PTY
		}
	}
}

func keepTail(b []byte, n int) []byte {
	if len(b) <= n {
		return b
	}
	return append(b[:0], b[len(b)-n:]...)
}

// answerPrompt types the current step's answer if its prompt showed.
// Steps stop once the URL is known: prompts after it are not the login's.
func (r *loginRun) answerPrompt(tty *os.File) (bool, error) {
	r.mu.Lock()
	if r.step >= len(r.req.Steps) || r.url != "" {
		r.mu.Unlock()
		return false, nil
	}
	st := r.req.Steps[r.step]
	re := regexp.MustCompile(st.Expect) // validated
	if !re.MatchString(plainText(r.stepOut)) {
		r.mu.Unlock()
		return false, nil
	}
	r.stepOut = nil
	i := r.step
	r.step++
	r.mu.Unlock()
	if _, err := tty.Write([]byte(st.Send)); err != nil {
		return false, fmt.Errorf("login: answer step %d: %w", i, err)
	}
	r.progress(agentapi.LoginProgress{Phase: agentapi.LoginPrompt, Step: i})
	return true, nil
}

// findURL returns the authorization URL from the helper's file or the
// output, or "".
func (r *loginRun) findURL() string {
	if b, err := readCapped(r.urlFile, agentapi.MaxLoginURL); err == nil {
		if u := strings.TrimSpace(string(b)); u != "" {
			return u
		}
	}
	r.mu.Lock()
	out := plainText(r.out)
	r.mu.Unlock()
	re := regexp.MustCompile(r.req.URLPattern) // validated
	if m := re.FindString(out); m != "" && len(m) <= agentapi.MaxLoginURL {
		return m
	}
	return ""
}

// openURL opens u in the guest's browser and reports it.
func (r *loginRun) openURL(ctx context.Context, u string) error {
	r.mu.Lock()
	r.url = u
	r.mu.Unlock()
	bctx, cancel := context.WithTimeout(ctx, browserStartTimeout)
	defer cancel()
	argv := append(append([]string(nil), r.req.Browser...), u)
	cmd := exec.CommandContext(bctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "PATH="+defaultPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("login: open the authorization URL in the guest browser: %v: %s", err, safetext.Clip(strings.TrimSpace(string(out)), 300))
	}
	r.log.Info("login: authorization URL handed to the guest browser")
	r.progress(agentapi.LoginProgress{Phase: agentapi.LoginOpening, URL: u})
	return nil
}

// captured returns every credential file if all are complete, else nil.
func (r *loginRun) captured() []agentapi.CapturedFile {
	files := make([]agentapi.CapturedFile, 0, len(r.paths))
	for i, p := range r.paths {
		b, err := readCapped(p, agentapi.MaxCredentialSize)
		if err != nil {
			return nil
		}
		if ok, _ := credentialComplete(r.req.Credentials[i], b); !ok {
			return nil
		}
		files = append(files, agentapi.CapturedFile{Path: r.req.Credentials[i].Path, Content: b})
	}
	return files
}

// missing says which credential files are not complete and why (field
// names only).
func (r *loginRun) missing() string {
	var parts []string
	for i, p := range r.paths {
		b, err := readCapped(p, agentapi.MaxCredentialSize)
		if err != nil {
			parts = append(parts, r.req.Credentials[i].Path+": not written")
			continue
		}
		if ok, why := credentialComplete(r.req.Credentials[i], b); !ok {
			parts = append(parts, r.req.Credentials[i].Path+": "+why)
		}
	}
	return strings.Join(parts, "; ")
}

// waitingFor names what the login was waiting for when it timed out.
func (r *loginRun) waitingFor() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.url != "" && !r.shown && r.pageErr != nil:
		return fmt.Sprintf("the guest browser to show the sign-in page (last look: %s)", safetext.Clip(r.pageErr.Error(), 200))
	case r.url != "" && !r.shown:
		return "the guest browser to show the sign-in page"
	case r.url != "":
		return "the user to finish in the browser (no complete credentials yet)"
	case r.step < len(r.req.Steps):
		return fmt.Sprintf("the prompt of step %d", r.step)
	default:
		return "the authorization URL"
	}
}

func (r *loginRun) lastOutput() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return lastLine(plainText(r.out))
}

func exitCode(cmd *exec.Cmd) int {
	if cmd.ProcessState == nil {
		return -1
	}
	code, _ := exitStatus(cmd.ProcessState)
	return code
}

func describeExit(err error) string {
	if err == nil {
		return "status 0"
	}
	return err.Error()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// watcher reports changes under the directories of the paths it watches
// (inotify), adding deeper directories as they appear, so nothing polls.
type watcher struct {
	fd     int
	file   *os.File
	events chan struct{}
	mu     sync.Mutex
	paths  []string
	done   chan struct{}
}

const watchMask = unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_CLOSE_WRITE | unix.IN_MODIFY | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

func newWatcher() (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, err
	}
	w := &watcher{fd: fd, file: os.NewFile(uintptr(fd), "inotify"), events: make(chan struct{}, 1), done: make(chan struct{})}
	go w.read()
	return w, nil
}

// watchFor watches the deepest existing directory on the way to path.
func (w *watcher) watchFor(path string) {
	w.mu.Lock()
	w.paths = append(w.paths, path)
	w.mu.Unlock()
	w.addWatches()
}

func (w *watcher) addWatches() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range w.paths {
		dir := filepath.Dir(p)
		for {
			if _, err := unix.InotifyAddWatch(w.fd, dir, watchMask); err == nil || dir == "/" {
				break
			}
			dir = filepath.Dir(dir)
		}
	}
}

// read turns inotify events into one coalesced signal, re-adding watches
// first so a directory created meanwhile is watched before anyone looks.
func (w *watcher) read() {
	defer close(w.done)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		_, err := w.file.Read(buf)
		if err != nil {
			return // closed
		}
		w.addWatches()
		select {
		case w.events <- struct{}{}:
		default:
		}
	}
}

func (w *watcher) close() {
	w.file.Close()
	<-w.done
}

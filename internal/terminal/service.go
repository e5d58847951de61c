package terminal

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/viewer"
	"github.com/hearth-project/hearth/internal/workapi"
)

// Tag marks the processes that are terminal sessions.
const Tag = "terminal"

// Defaults for zero Config fields.
const (
	DefaultLinger    = 15 * time.Minute
	DefaultKillGrace = 10 * time.Second
	// DefaultCols and DefaultRows size a session asked for without a size.
	DefaultCols = 80
	DefaultRows = 24
)

// loginShell starts the user's login shell: the agent runs argv as the
// user with their login environment, SHELL included.
var loginShell = []string{"/bin/sh", "-c", `exec "${SHELL:-/bin/sh}" -l`}

// LinkKey derives the key terminal links are signed with from the key
// viewer links are: a viewer token is never a terminal token, and the
// other way round, though both live in one key file.
func LinkKey(viewerKey []byte) []byte {
	m := hmac.New(sha256.New, viewerKey)
	m.Write([]byte("hearth terminal links\x00"))
	return m.Sum(nil)
}

// Works returns a ready VM's work API client, with errdefs errors: not
// found for a VM that is gone, conflict for one that is not ready or has
// no data channel.
type Works func(ctx context.Context, vmID string) (*workapi.Client, error)

// Config tunes a Service.
type Config struct {
	// Linger is how long a session's shell outlives its last socket
	// (DefaultLinger if zero); then it is sent SIGHUP, and SIGKILL
	// KillGrace (DefaultKillGrace) later if it still runs.
	Linger, KillGrace time.Duration
	// Bridge tunes every socket (keepalive, write timeout, control rate).
	Bridge Options
}

// Service runs the VMs' terminal sessions: a login shell on a PTY per VM
// and user, reached by browsers through signed links whose tokens,
// tickets, caps and revocation are the viewer's (Links, a viewer.Service
// of its own signing with LinkKey), and by API clients through Attach.
type Service struct {
	cfg   Config
	links *viewer.Service
	works Works
	log   *slog.Logger

	mu       sync.Mutex
	sessions map[sessionKey]*session
	// starting serialises finding or starting one key's shell.
	starting map[sessionKey]*sync.Mutex
}

type sessionKey struct{ vm, user string }

// session is one shell: how many sockets are attached and, while none,
// the timer that ends it.
type session struct {
	key     sessionKey
	pid     string
	sockets int
	linger  *time.Timer
}

// NewService returns a Service reaching VMs through works and issuing
// links with links.
func NewService(cfg Config, links *viewer.Service, works Works, log *slog.Logger) *Service {
	if cfg.Linger <= 0 {
		cfg.Linger = DefaultLinger
	}
	if cfg.KillGrace <= 0 {
		cfg.KillGrace = DefaultKillGrace
	}
	return &Service{cfg: cfg, links: links, works: works, log: log,
		sessions: map[sessionKey]*session{}, starting: map[sessionKey]*sync.Mutex{}}
}

// Links is the service that signs, checks and counts terminal links.
func (s *Service) Links() *viewer.Service { return s.links }

// Request asks for a VM's terminal session.
type Request struct {
	Cols, Rows int
	// User defaults to workapi.DefaultUser.
	User string
	// Command, if set, runs through the login shell instead of an
	// interactive one, when a new session starts.
	Command string
	// TTL is the link's lifetime.
	TTL time.Duration
}

// Link is a terminal link: the page token (for the URL fragment) and the
// session's shell.
type Link struct {
	PageToken string
	Expires   time.Time
	ProcessID string
	// Created says a new shell was started (else a running one is
	// reused).
	Created bool
}

// Open finds or starts vmID's terminal session for r.User and returns a
// link to it. A running session is reused (and resized); a shell tagged
// Tag for the user that a restarted hearth left running in the guest is
// adopted rather than a second one started.
func (s *Service) Open(ctx context.Context, vmID string, r Request) (Link, error) {
	if r.User == "" {
		r.User = workapi.DefaultUser
	}
	size := workapi.WindowSize{Cols: r.Cols, Rows: r.Rows}
	if size.Cols == 0 {
		size.Cols = DefaultCols
	}
	if size.Rows == 0 {
		size.Rows = DefaultRows
	}
	if err := size.Validate(); err != nil {
		return Link{}, errdefs.Invalidf("%v", err)
	}
	w, err := s.works(ctx, vmID)
	if err != nil {
		return Link{}, err
	}
	key := sessionKey{vmID, r.User}
	s.mu.Lock()
	lock := s.starting[key]
	if lock == nil {
		lock = &sync.Mutex{}
		s.starting[key] = lock
	}
	s.mu.Unlock()
	lock.Lock()
	pid, created, err := s.findOrStart(ctx, w, key, size, r.Command)
	lock.Unlock()
	if err != nil {
		return Link{}, err
	}
	g, err := s.links.Issue(ctx, vmID, viewer.IssueOptions{TTL: r.TTL, Session: pid})
	if err != nil {
		return Link{}, err
	}
	return Link{PageToken: g.PageToken, Expires: g.Expires, ProcessID: pid, Created: created}, nil
}

// findOrStart returns key's running shell, resized, or a new one.
func (s *Service) findOrStart(ctx context.Context, w *workapi.Client, key sessionKey, size workapi.WindowSize, command string) (string, bool, error) {
	s.mu.Lock()
	sess := s.sessions[key]
	s.mu.Unlock()
	pid := ""
	if sess != nil {
		p, err := w.Process(ctx, sess.pid)
		switch {
		case err == nil && p.State == workapi.StateRunning:
			pid = p.ID
		case err == nil || isStatus(err, http.StatusNotFound):
			s.forget(sess)
		default:
			return "", false, workError(key.vm, err)
		}
	}
	if pid == "" {
		// A shell left running by an earlier hearth: adopt the newest.
		ps, err := w.Processes(ctx)
		if err != nil {
			return "", false, workError(key.vm, err)
		}
		slices.SortFunc(ps, func(a, b workapi.Process) int { return b.StartedAt.Compare(a.StartedAt) })
		for _, p := range ps {
			if p.Tag == Tag && p.User == key.user && p.PTY != nil && p.State == workapi.StateRunning {
				pid = p.ID
				s.log.Info("terminal session adopted", "vm", key.vm, "user", key.user, "process", pid)
				break
			}
		}
	}
	if pid != "" {
		if err := w.Resize(ctx, pid, size); err != nil && !isStatus(err, http.StatusNotFound) {
			s.log.Info("terminal resize failed", "vm", key.vm, "process", pid, "err", err)
		}
		s.track(key, pid)
		return pid, false, nil
	}
	spec := workapi.ProcessSpec{Argv: loginShell, User: key.user, PTY: &size, Tag: Tag,
		Env: []string{"TERM=xterm-256color", "COLORTERM=truecolor"}}
	if command != "" {
		spec.Argv, spec.Command = nil, command
	}
	p, err := w.StartProcess(ctx, spec)
	if err != nil {
		return "", false, workError(key.vm, err)
	}
	s.log.Info("terminal session started", "vm", key.vm, "user", key.user, "process", p.ID)
	s.track(key, p.ID)
	return p.ID, true, nil
}

// track makes pid key's session; with no socket yet, its linger starts
// now, so a link never opened does not keep a shell for ever.
func (s *Service) track(key sessionKey, pid string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sess := s.sessions[key]; sess != nil && sess.pid == pid {
		return sess
	}
	if old := s.sessions[key]; old != nil && old.linger != nil {
		old.linger.Stop()
	}
	sess := &session{key: key, pid: pid}
	s.sessions[key] = sess
	s.lingerLocked(sess)
	return sess
}

func (s *Service) lingerLocked(sess *session) {
	sess.linger = time.AfterFunc(s.cfg.Linger, func() { s.expire(sess) })
}

// forget drops sess unless another session replaced it.
func (s *Service) forget(sess *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sessions[sess.key] == sess {
		delete(s.sessions, sess.key)
	}
	if sess.linger != nil {
		sess.linger.Stop()
	}
}

// attach counts a socket on vmID's session of process pid (adopting it
// if hearth does not know it: a link from before a restart) and stops its
// linger; the returned func counts the socket out and, for the last one,
// starts the linger again.
func (s *Service) attach(vmID, user, pid string) func() {
	key := sessionKey{vmID, user}
	s.mu.Lock()
	sess := s.sessions[key]
	if sess == nil || sess.pid != pid {
		if sess != nil && sess.linger != nil {
			sess.linger.Stop()
		}
		sess = &session{key: key, pid: pid}
		s.sessions[key] = sess
	}
	sess.sockets++
	if sess.linger != nil {
		sess.linger.Stop()
		sess.linger = nil
	}
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		sess.sockets--
		if sess.sockets == 0 && s.sessions[key] == sess {
			s.lingerLocked(sess)
		}
	}
}

// expire ends sess's shell once its linger has passed with no socket:
// SIGHUP to its group, as a terminal hanging up does, then SIGKILL after
// the grace if it still runs and no socket came back.
func (s *Service) expire(sess *session) {
	s.mu.Lock()
	live := s.sessions[sess.key] == sess && sess.sockets == 0
	s.mu.Unlock()
	if !live {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.KillGrace+time.Minute)
	defer cancel()
	log := s.log.With("vm", sess.key.vm, "user", sess.key.user, "process", sess.pid)
	w, err := s.works(ctx, sess.key.vm)
	if err != nil {
		s.forget(sess) // the VM is gone or not ready: so is the shell
		return
	}
	log.Info("terminal session idle: hanging up", "linger", s.cfg.Linger)
	if err := w.Signal(ctx, sess.pid, "HUP", true); err != nil {
		if isStatus(err, http.StatusNotFound) || isStatus(err, http.StatusConflict) {
			s.forget(sess)
			return
		}
		log.Info("terminal hangup failed", "err", err)
	}
	t := time.NewTimer(s.cfg.KillGrace)
	defer t.Stop()
	<-t.C
	s.mu.Lock()
	live = s.sessions[sess.key] == sess && sess.sockets == 0
	s.mu.Unlock()
	if !live {
		return
	}
	if p, err := w.Process(ctx, sess.pid); err == nil && p.State == workapi.StateRunning {
		log.Info("terminal session still running after hangup: killing it", "grace", s.cfg.KillGrace)
		if err := w.Signal(ctx, sess.pid, "KILL", true); err != nil {
			log.Info("terminal kill failed", "err", err)
		}
	}
	s.forget(sess)
}

// Sessions lists the running sessions' process ids of vmID (for tests
// and the API).
func (s *Service) Sessions(vmID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var ids []string
	for k, sess := range s.sessions {
		if k.vm == vmID {
			ids = append(ids, sess.pid)
		}
	}
	slices.Sort(ids)
	return ids
}

// ServeSocket upgrades r to the terminal page's WebSocket and bridges it
// to the shell its token names, from the start of the shell's kept
// output. A refused token or terminal is answered with a close frame
// giving the reason, and nothing reaches the guest. originHosts are the
// browser origins allowed besides the request's own Host.
func (s *Service) ServeSocket(w http.ResponseWriter, r *http.Request, vmID, token string, originHosts []string) {
	ws, err := viewer.Accept(w, r, originHosts, workapi.MaxFrameData)
	if err != nil {
		s.log.Info("terminal upgrade refused", "vm", vmID, "remote", r.RemoteAddr, "err", err)
		return
	}
	a, err := s.links.Admit(r.Context(), token, vmID, r.RemoteAddr)
	if err != nil {
		reason := s.links.Refusal(err)
		s.log.Info("terminal refused", "vm", vmID, "remote", r.RemoteAddr, "reason", reason.Text, "err", err)
		_ = ws.Close(reason.Code, reason.Text)
		return
	}
	defer a.Done()
	pid := a.Claims.Session
	log := s.log.With("vm", vmID, "terminal", a.ID, "process", pid, "remote", r.RemoteAddr)
	wc, p, err := s.process(r.Context(), vmID, pid)
	if err != nil {
		reason := refusal(err)
		log.Info("terminal refused", "reason", reason.Text, "err", err)
		_ = ws.Close(reason.Code, reason.Text)
		return
	}
	if p.State == workapi.StateRunning {
		defer s.attach(vmID, p.User, pid)()
	}
	log.Info("terminal opened", "offset", p.HistoryStart)
	opts := s.cfg.Bridge
	opts.Expires, opts.Closer = a.Claims.LinkEnd(), a.Closer
	start := time.Now()
	reason, err := Bridge(a.Context(), ws, wc, pid, p.HistoryStart, opts)
	logClosed(log, reason, err, start)
}

// Attach upgrades r to a WebSocket bridged to process pid of vmID from
// offset (nil: the oldest byte kept), for an API client the caller has
// authenticated and checked may use the VM. Errors before the upgrade
// (errdefs classes) are returned for the caller to answer; afterwards
// every end is a close frame.
func (s *Service) Attach(w http.ResponseWriter, r *http.Request, vmID, pid string, offset *int64) error {
	wc, p, err := s.process(r.Context(), vmID, pid)
	if err != nil {
		return err
	}
	ws, err := viewer.Accept(w, r, nil, workapi.MaxFrameData)
	if err != nil {
		s.log.Info("attach upgrade refused", "vm", vmID, "remote", r.RemoteAddr, "err", err)
		return nil // Accept has answered
	}
	from := p.HistoryStart
	if offset != nil {
		from = *offset
	}
	if p.Tag == Tag && p.State == workapi.StateRunning {
		defer s.attach(vmID, p.User, pid)()
	}
	log := s.log.With("vm", vmID, "process", pid, "remote", r.RemoteAddr)
	a, err := s.links.Join(vmID, r.RemoteAddr)
	if err != nil {
		reason := s.links.Refusal(err)
		log.Info("attach refused", "reason", reason.Text, "err", err)
		_ = ws.Close(reason.Code, reason.Text)
		return nil
	}
	defer a.Done()
	log.Info("process attached", "offset", from)
	start := time.Now()
	opts := s.cfg.Bridge
	opts.Closer = a.Closer
	reason, err := Bridge(a.Context(), ws, wc, pid, from, opts)
	logClosed(log.With("what", "attach"), reason, err, start)
	return nil
}

func logClosed(log *slog.Logger, reason CloseReason, err error, start time.Time) {
	attrs := []any{"code", int(reason.Code), "reason", reason.Text, "duration_ms", time.Since(start).Milliseconds()}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	log.Info("terminal closed", attrs...)
}

// process returns vmID's work API and its process pid.
func (s *Service) process(ctx context.Context, vmID, pid string) (*workapi.Client, workapi.Process, error) {
	w, err := s.works(ctx, vmID)
	if err != nil {
		return nil, workapi.Process{}, err
	}
	p, err := w.Process(ctx, pid)
	if err != nil {
		return nil, workapi.Process{}, workError(vmID, err)
	}
	return w, p, nil
}

// refusal is the close reason for a socket whose process could not be
// reached.
func refusal(err error) CloseReason {
	switch {
	case errors.Is(err, errdefs.ErrNotFound) && errors.Is(err, errNoProcess):
		return ReasonNoProcess
	case errors.Is(err, errdefs.ErrNotFound):
		return viewer.ReasonVMDestroyed
	}
	return ReasonAgent // not ready, or the agent unreachable: worth a retry
}

var errNoProcess = errors.New("no such process")

// workError turns an error of the work API into an errdefs class.
func workError(vmID string, err error) error {
	var we *workapi.Error
	if !errors.As(err, &we) {
		return errdefs.Unavailablef("vm %s: the guest agent is unreachable: %v", vmID, err)
	}
	switch we.Status {
	case http.StatusNotFound:
		return fmt.Errorf("%w: %w", errdefs.NotFoundf("vm %s: %s", vmID, we.Message), errNoProcess)
	case http.StatusBadRequest:
		return errdefs.Invalidf("vm %s: %s", vmID, we.Message)
	case http.StatusForbidden:
		return errdefs.Forbiddenf("vm %s: %s", vmID, we.Message)
	case http.StatusConflict:
		return errdefs.Conflictf("vm %s: %s", vmID, we.Message)
	case http.StatusTooManyRequests:
		return errdefs.RateLimitedf(time.Second, "vm %s: %s", vmID, we.Message)
	}
	return errdefs.Unavailablef("vm %s: the guest agent failed: %s", vmID, we.Message)
}

func isStatus(err error, status int) bool {
	var we *workapi.Error
	return errors.As(err, &we) && we.Status == status
}

// OnTransition closes vmID's terminals as the viewer's are closed when a
// VM leaves service, and forgets its sessions: their shells end with it.
func (s *Service) OnTransition(v store.VM, forgetAfter time.Duration) {
	s.links.OnTransition(v, forgetAfter)
	switch v.State {
	case store.StateStopping, store.StateStopped, store.StateDestroyed, store.StateFailed:
		s.mu.Lock()
		defer s.mu.Unlock()
		for k, sess := range s.sessions {
			if k.vm == v.ID {
				if sess.linger != nil {
					sess.linger.Stop()
				}
				delete(s.sessions, k)
				delete(s.starting, k)
			}
		}
	}
}

// Shutdown closes every terminal with 1001 and waits for them, or for
// ctx. The shells keep running in their guests; a restarted hearth
// adopts them.
func (s *Service) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	for _, sess := range s.sessions {
		if sess.linger != nil {
			sess.linger.Stop()
		}
	}
	s.mu.Unlock()
	return s.links.Shutdown(ctx)
}

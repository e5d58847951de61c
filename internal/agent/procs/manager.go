// Package procs is the agent's process manager and the /processes routes
// of the work API (see internal/workapi): it starts processes as a guest
// user with that user's login environment, each in its own session and
// process group, on pipes or a terminal; keeps each one's output in a
// bounded history that readers follow from any offset; and takes stdin,
// signals and terminal sizes. Processes belong to the guest, not to a
// connection: they run on while the host reconnects.
package procs

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/agent/guestuser"
	"github.com/hearth-project/hearth/internal/workapi"
)

// DefaultOutputGrace is how long a process's output is still read once
// it has exited while something else (a background child) holds it open.
const DefaultOutputGrace = 2 * time.Second

// Config configures a Manager. The zero value is usable.
type Config struct {
	// Users are the guest's account files; zero means guestuser.System.
	Users guestuser.Files
	// Env is added to every process's login environment, before the
	// spec's own entries.
	Env []string
	// MaxRunning, MaxEnded, EndedRetention and StallLimit default to
	// workapi's values; OutputGrace to DefaultOutputGrace.
	MaxRunning     int
	MaxEnded       int
	EndedRetention time.Duration
	StallLimit     time.Duration
	OutputGrace    time.Duration
	// Logger receives a line per process started and ended; nil means
	// none.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Users == (guestuser.Files{}) {
		c.Users = guestuser.System
	}
	if c.MaxRunning <= 0 {
		c.MaxRunning = workapi.MaxRunning
	}
	if c.MaxEnded <= 0 {
		c.MaxEnded = workapi.MaxEnded
	}
	if c.EndedRetention <= 0 {
		c.EndedRetention = workapi.EndedRetention
	}
	if c.StallLimit <= 0 {
		c.StallLimit = workapi.StallLimit
	}
	if c.OutputGrace <= 0 {
		c.OutputGrace = DefaultOutputGrace
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Manager runs and keeps the guest's processes.
type Manager struct {
	cfg Config

	mu      sync.Mutex
	procs   map[string]*process
	running int
	closed  bool
}

// Users are the guest account files the manager looks users up in.
func (m *Manager) Users() guestuser.Files { return m.cfg.Users }

// NewManager returns a manager with no processes.
func NewManager(cfg Config) *Manager {
	return &Manager{cfg: cfg.withDefaults(), procs: map[string]*process{}}
}

// Start validates spec, starts its process and returns it. Errors that
// are the request's (or the guest's state's) are answered with their
// status by the HTTP routes.
func (m *Manager) Start(spec workapi.ProcessSpec) (workapi.Process, error) {
	if err := checkSpec(&spec); err != nil {
		return workapi.Process{}, err
	}
	if spec.User == "" {
		spec.User = workapi.DefaultUser
	}
	l, err := m.prepare(&spec)
	if err != nil {
		return workapi.Process{}, err
	}
	limit := spec.HistoryBytes
	if limit == 0 {
		limit = workapi.DefaultHistoryBytes
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return workapi.Process{}, conflict("the agent is shutting down")
	}
	if m.running >= m.cfg.MaxRunning {
		return workapi.Process{}, &statusError{429, fmt.Sprintf("%d processes running, at most %d at once", m.running, m.cfg.MaxRunning)}
	}
	m.prune(time.Now())
	id, err := newID()
	if err != nil {
		return workapi.Process{}, err
	}
	p, err := start(id, &spec, l, limit, m.cfg.StallLimit)
	if err != nil {
		return workapi.Process{}, err
	}
	m.procs[id] = p
	m.running++
	m.cfg.Logger.Info("process started", "id", id, "pid", p.cmd.Process.Pid, "user", l.user.Name, "tag", spec.Tag)
	p.onEnd = func() {
		m.mu.Lock()
		m.running--
		m.mu.Unlock()
		e := p.info().Exit
		m.cfg.Logger.Info("process ended", "id", id, "code", e.Code, "signal", e.Signal, "reason", e.Reason)
	}
	go p.run(m.cfg.OutputGrace)
	return p.info(), nil
}

// prepare resolves the user, working directory, environment and program
// of spec.
func (m *Manager) prepare(spec *workapi.ProcessSpec) (launch, error) {
	u, err := m.cfg.Users.Lookup(spec.User)
	if err != nil {
		var nu *guestuser.NoUserError
		if errors.As(err, &nu) {
			return launch{}, &statusError{400, err.Error()}
		}
		return launch{}, err
	}
	cwd := spec.Cwd
	if cwd == "" {
		// The home, or the root as login(1) does when the home is
		// missing or closed to the user.
		cwd = u.Home
		if checkDir(cwd, u) != nil {
			cwd = "/"
		}
	}
	if err := checkDir(cwd, u); err != nil {
		return launch{}, err
	}
	env, err := guestuser.LoginEnv(u, append(slices.Clone(m.cfg.Env), spec.Env...), spec.PTY != nil)
	if err != nil {
		return launch{}, &statusError{400, err.Error()}
	}
	argv := spec.Argv
	if spec.Command != "" {
		argv = []string{u.Shell, "-lc", spec.Command}
	}
	path, err := guestuser.LookPath(argv[0], envValue(env, "PATH"))
	if err != nil {
		return launch{}, badRequest("argv[0] %q: not found in %s's PATH", clip(argv[0]), u.Name)
	}
	return launch{user: u, path: path, argv: argv, cwd: cwd, env: env}, nil
}

// checkDir reports a working directory that is missing, not a directory,
// or that u may not enter (searching every directory on its way is
// allowed by its mode bits for u's uid and groups).
func checkDir(dir string, u *guestuser.User) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return badRequest("cwd %s: no such directory", dir)
	case err != nil:
		return badRequest("cwd %s: %v", dir, unwrapPathError(err))
	case !fi.IsDir():
		return badRequest("cwd %s: not a directory", dir)
	}
	if u.UID == 0 {
		return nil
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || !searchable(fi, u) {
			return badRequest("cwd %s: not accessible to user %s", dir, u.Name)
		}
		if d == "/" {
			return nil
		}
	}
}

// searchable says whether u may search directory fi by its mode bits.
func searchable(fi fs.FileInfo, u *guestuser.User) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	perm := fi.Mode().Perm()
	switch {
	case st.Uid == u.UID:
		return perm&0o100 != 0
	case st.Gid == u.GID || slices.Contains(u.Groups, st.Gid):
		return perm&0o010 != 0
	}
	return perm&0o001 != 0
}

// envValue returns the value of key in env, or "".
func envValue(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], key+"="); ok {
			return v
		}
	}
	return ""
}

func newID() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "p-" + hex.EncodeToString(b), nil
}

// get returns the process with id, if it is kept.
func (m *Manager) get(id string) (*process, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prune(time.Now())
	p, ok := m.procs[id]
	return p, ok
}

// List returns the running and the kept ended processes, oldest first.
func (m *Manager) List() []workapi.Process {
	m.mu.Lock()
	m.prune(time.Now())
	ps := make([]*process, 0, len(m.procs))
	for _, p := range m.procs {
		ps = append(ps, p)
	}
	m.mu.Unlock()
	out := make([]workapi.Process, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.info())
	}
	slices.SortFunc(out, func(a, b workapi.Process) int {
		if c := a.StartedAt.Compare(b.StartedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// prune forgets ended processes older than EndedRetention, and the oldest
// ended ones beyond MaxEnded. m.mu is held.
func (m *Manager) prune(now time.Time) {
	type ended struct {
		id string
		at time.Time
	}
	var kept []ended
	for id, p := range m.procs {
		p.mu.Lock()
		e := p.exit
		p.mu.Unlock()
		switch {
		case e == nil:
		case now.Sub(e.EndedAt) > m.cfg.EndedRetention:
			delete(m.procs, id)
		default:
			kept = append(kept, ended{id, e.EndedAt})
		}
	}
	if len(kept) <= m.cfg.MaxEnded {
		return
	}
	slices.SortFunc(kept, func(a, b ended) int { return a.at.Compare(b.at) })
	for _, e := range kept[:len(kept)-m.cfg.MaxEnded] {
		delete(m.procs, e.id)
	}
}

// Close kills every running process group and waits until each has
// ended; the manager starts no more.
func (m *Manager) Close() {
	m.mu.Lock()
	m.closed = true
	var ps []*process
	for _, p := range m.procs {
		ps = append(ps, p)
	}
	m.mu.Unlock()
	for _, p := range ps {
		p.kill("agent stopped")
	}
	for _, p := range ps {
		<-p.ended
	}
}

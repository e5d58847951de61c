package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/net/http2"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vm/vmfake"
	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/workapi"
)

// The guest agent's work API, played in-process for the API's tests: a
// small agent of the tests' own that serves the routes of package workapi
// over each fake VM's data channel (a socket pair, the preamble, HTTP/2,
// as a real guest's), with real processes (os/exec, run as the test's own
// user whatever user is asked for: the users are "hearth" and "root") and
// real files under a directory per VM. It is not the guest's agent; it
// gives the API real answers, good and bad, to carry.

// workAgents is vmfake.Agents whose guests also serve the work API.
type workAgents struct {
	*vmfake.Agents
	t    *testing.T
	root string // each VM's files are under root/VMID

	mu     sync.Mutex
	guests map[string]*workGuest
	conns  []net.Conn // the guests' ends of data channels
	// unreachable makes data channels fail to connect.
	unreachable atomic.Bool
}

// cut closes every data channel and fails new ones: the guests' agents
// can no longer be reached.
func (a *workAgents) cut() {
	a.unreachable.Store(true)
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, c := range a.conns {
		c.Close()
	}
}

var _ vm.DataDialer = (*workAgents)(nil)

func newWorkAgents(t *testing.T, a *vmfake.Agents) *workAgents {
	return &workAgents{Agents: a, t: t, root: t.TempDir(), guests: map[string]*workGuest{}}
}

// guest returns VM id's guest, made on first use.
func (a *workAgents) guest(id string) *workGuest {
	a.mu.Lock()
	defer a.mu.Unlock()
	g := a.guests[id]
	if g == nil {
		g = newWorkGuest(a.t, filepath.Join(a.root, id))
		a.guests[id] = g
	}
	return g
}

// DialData implements vm.DataDialer: a fresh connection to the guest of
// h, served as an agent serves its data channel.
func (a *workAgents) DialData(ctx context.Context, h vmm.Handle) (net.Conn, error) {
	if a.unreachable.Load() {
		return nil, errors.New("connect: no such device")
	}
	dir := filepath.Dir(h.AgentSocket)
	raw, err := os.ReadFile(filepath.Join(dir, "token"))
	if err != nil {
		return nil, err
	}
	token, err := agentapi.ParseToken(string(raw))
	if err != nil {
		return nil, err
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "data channel")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	g := a.guest(filepath.Base(dir))
	a.mu.Lock()
	a.conns = append(a.conns, conns[1])
	a.mu.Unlock()
	go func() {
		conn, err := workapi.GuestPreamble(conns[1], token)
		if err != nil {
			conns[1].Close()
			return
		}
		(&http2.Server{}).ServeConn(conn, &http2.ServeConnOpts{Handler: g.mux})
	}()
	return conns[0], nil
}

// fakeMaxRunning is how many processes a test guest runs at once.
const fakeMaxRunning = 8

// workGuest is one VM's processes and files.
type workGuest struct {
	root string
	mux  *http.ServeMux

	mu       sync.Mutex
	procs    map[string]*fakeProc
	next     int
	watchers map[*fakeWatcher]bool
}

func newWorkGuest(t *testing.T, root string) *workGuest {
	for _, d := range []string{"home/hearth", "root", "etc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	g := &workGuest{root: root, mux: http.NewServeMux(), procs: map[string]*fakeProc{}, watchers: map[*fakeWatcher]bool{}}
	t.Cleanup(g.killAll)
	m := g.mux
	m.HandleFunc("POST /processes", g.start)
	m.HandleFunc("GET /processes", g.list)
	m.HandleFunc("GET /processes/{id}", g.withProc(func(w http.ResponseWriter, r *http.Request, p *fakeProc) {
		writeAgentJSON(w, http.StatusOK, p.snapshot())
	}))
	m.HandleFunc("GET /processes/{id}/output", g.withProc(g.output))
	m.HandleFunc("POST /processes/{id}/stdin", g.withProc(g.stdin))
	m.HandleFunc("POST /processes/{id}/signal", g.withProc(g.signal))
	m.HandleFunc("POST /processes/{id}/resize", g.withProc(g.resize))
	m.HandleFunc("GET /files/content", g.readFile)
	m.HandleFunc("PUT /files/content", g.writeFile)
	m.HandleFunc("GET /files/stat", g.stat)
	m.HandleFunc("GET /files/list", g.listDir)
	m.HandleFunc("POST /files/mkdir", g.mkdir)
	m.HandleFunc("POST /files/rename", g.rename)
	m.HandleFunc("DELETE /files", g.remove)
	m.HandleFunc("GET /files/watch", g.watch)
	return g
}

func writeAgentJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func agentError(w http.ResponseWriter, status int, format string, args ...any) {
	writeAgentJSON(w, status, workapi.ErrorBody{Error: fmt.Sprintf(format, args...)})
}

// user checks ?user= (or a spec's user): the guest has hearth and root.
func guestUser(w http.ResponseWriter, name string) (string, bool) {
	if name == "" {
		name = workapi.DefaultUser
	}
	if name != workapi.DefaultUser && name != "root" {
		agentError(w, http.StatusBadRequest, "no user %q in the guest", name)
		return "", false
	}
	return name, true
}

func (g *workGuest) home(user string) string {
	if user == "root" {
		return "/root"
	}
	return "/home/" + user
}

// fakeProc is a process the guest started, with its output history.
type fakeProc struct {
	g        *workGuest
	spec     workapi.ProcessSpec
	cmd      *exec.Cmd
	stdin    io.WriteCloser // nil without stdin
	ptmx     *os.File       // nil without a PTY
	done     chan struct{}
	mu       sync.Mutex
	info     workapi.Process
	chunks   []fakeChunk // the history, oldest first
	held     int         // bytes in chunks
	changed  chan struct{}
	followed bool // a follower attached once
	reason   string
}

type fakeChunk struct {
	kind byte
	off  int64
	data []byte
}

func (p *fakeProc) snapshot() workapi.Process {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.info
}

// add records output of kind.
func (p *fakeProc) add(kind byte, b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for len(b) > 0 {
		n := min(len(b), workapi.MaxFrameData)
		off := p.info.HistoryEnd()
		p.chunks = append(p.chunks, fakeChunk{kind: kind, off: off, data: slices.Clone(b[:n])})
		p.held += n
		if kind == workapi.FrameStdout {
			p.info.StdoutBytes += int64(n)
		} else {
			p.info.StderrBytes += int64(n)
		}
		b = b[n:]
	}
	limit := p.spec.HistoryBytes
	for p.held > limit && len(p.chunks) > 0 {
		c := &p.chunks[0]
		cut := min(p.held-limit, len(c.data))
		c.data, c.off, p.held = c.data[cut:], c.off+int64(cut), p.held-cut
		if len(c.data) == 0 {
			p.chunks = p.chunks[1:]
		}
	}
	if len(p.chunks) > 0 {
		p.info.HistoryStart = p.chunks[0].off
	} else {
		p.info.HistoryStart = p.info.HistoryEnd()
	}
	p.wake()
}

func (p *fakeProc) wake() {
	close(p.changed)
	p.changed = make(chan struct{})
}

type outputWriter struct {
	p    *fakeProc
	kind byte
}

func (o outputWriter) Write(b []byte) (int, error) {
	o.p.add(o.kind, b)
	return len(b), nil
}

// kill ends the process group, saying why.
func (p *fakeProc) kill(reason string) {
	p.mu.Lock()
	if p.reason == "" {
		p.reason = reason
	}
	p.mu.Unlock()
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
}

func (g *workGuest) killAll() {
	g.mu.Lock()
	ps := make([]*fakeProc, 0, len(g.procs))
	for _, p := range g.procs {
		ps = append(ps, p)
	}
	g.mu.Unlock()
	for _, p := range ps {
		p.kill("killed on request")
		<-p.done
	}
}

func (g *workGuest) start(w http.ResponseWriter, r *http.Request) {
	var spec workapi.ProcessSpec
	if err := json.NewDecoder(io.LimitReader(r.Body, workapi.MaxJSONBody)).Decode(&spec); err != nil {
		agentError(w, http.StatusBadRequest, "bad process spec: %v", err)
		return
	}
	user, ok := guestUser(w, spec.User)
	if !ok {
		return
	}
	spec.User = user
	if spec.HistoryBytes == 0 {
		spec.HistoryBytes = workapi.DefaultHistoryBytes
	}
	argv := spec.Argv
	if spec.Command != "" {
		argv = []string{"/bin/sh", "-lc", spec.Command}
	}
	if len(argv) == 0 {
		agentError(w, http.StatusBadRequest, "give argv or command")
		return
	}
	cwd := spec.Cwd
	if cwd == "" {
		cwd = g.home(user)
	}
	dir, ok := g.realPath(w, cwd)
	if !ok {
		return
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		agentError(w, http.StatusBadRequest, "working directory %s: not a directory", cwd)
		return
	}
	g.mu.Lock()
	running := 0
	for _, p := range g.procs {
		if p.snapshot().State == workapi.StateRunning {
			running++
		}
	}
	g.mu.Unlock()
	if running >= fakeMaxRunning {
		agentError(w, http.StatusTooManyRequests, "%d processes are running, the most allowed", running)
		return
	}
	g.mu.Lock()
	g.next++
	id := "p" + strconv.Itoa(g.next)
	g.mu.Unlock()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" + filepath.Join(g.root, g.home(user)), "USER=" + user}, spec.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &fakeProc{g: g, spec: spec, cmd: cmd, done: make(chan struct{}), changed: make(chan struct{}),
		info: workapi.Process{ID: id, Argv: argv, User: user, Cwd: cwd, Tag: spec.Tag, PTY: spec.PTY,
			State: workapi.StateRunning, StartedAt: time.Now()}}
	var err error
	if spec.PTY != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		p.ptmx, err = pty.StartWithSize(cmd, &pty.Winsize{Cols: uint16(spec.PTY.Cols), Rows: uint16(spec.PTY.Rows)})
	} else {
		cmd.Stdout, cmd.Stderr = outputWriter{p, workapi.FrameStdout}, outputWriter{p, workapi.FrameStderr}
		if spec.Stdin {
			if p.stdin, err = cmd.StdinPipe(); err != nil {
				agentError(w, http.StatusInternalServerError, "%v", err)
				return
			}
		}
		err = cmd.Start()
	}
	if err != nil {
		agentError(w, http.StatusBadRequest, "start %s: %v", argv[0], err)
		return
	}
	p.mu.Lock()
	p.info.PID = cmd.Process.Pid
	p.mu.Unlock()
	g.mu.Lock()
	g.procs[id] = p
	g.mu.Unlock()
	if spec.TimeoutSeconds > 0 {
		t := time.AfterFunc(time.Duration(spec.TimeoutSeconds)*time.Second, func() { p.kill("timeout") })
		defer func() { go func() { <-p.done; t.Stop() }() }()
	}
	go p.wait()
	writeAgentJSON(w, http.StatusCreated, p.snapshot())
}

func (p *fakeProc) wait() {
	drained := make(chan struct{})
	if p.ptmx == nil {
		close(drained)
	} else {
		go func() {
			defer close(drained) // EIO once the terminal is closed and read out
			buf := make([]byte, 4096)
			for {
				n, err := p.ptmx.Read(buf)
				if n > 0 {
					p.add(workapi.FrameStdout, buf[:n])
				}
				if err != nil {
					return
				}
			}
		}()
	}
	_ = p.cmd.Wait()
	<-drained
	ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	p.mu.Lock()
	e := &workapi.Exit{EndedAt: time.Now(), DurationMS: time.Since(p.info.StartedAt).Milliseconds(), Reason: p.reason}
	if ws.Signaled() {
		e.Signal = strings.TrimPrefix(unixSignalName(ws.Signal()), "SIG")
	} else {
		code := ws.ExitStatus()
		e.Code = &code
	}
	p.info.State, p.info.Exit = workapi.StateExited, e
	p.wake()
	p.mu.Unlock()
	if p.ptmx != nil {
		p.ptmx.Close()
	}
	close(p.done)
}

func unixSignalName(s syscall.Signal) string {
	for name, sig := range signalsByName {
		if sig == s {
			return name
		}
	}
	return "SIG" + strconv.Itoa(int(s))
}

var signalsByName = map[string]syscall.Signal{"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "QUIT": syscall.SIGQUIT,
	"KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2,
	"STOP": syscall.SIGSTOP, "CONT": syscall.SIGCONT, "WINCH": syscall.SIGWINCH}

func (g *workGuest) list(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	l := workapi.ProcessList{Processes: []workapi.Process{}}
	for _, p := range g.procs {
		l.Processes = append(l.Processes, p.snapshot())
	}
	g.mu.Unlock()
	slices.SortFunc(l.Processes, func(a, b workapi.Process) int { return strings.Compare(a.ID, b.ID) })
	writeAgentJSON(w, http.StatusOK, l)
}

func (g *workGuest) withProc(h func(http.ResponseWriter, *http.Request, *fakeProc)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		p := g.procs[r.PathValue("id")]
		g.mu.Unlock()
		if p == nil {
			agentError(w, http.StatusNotFound, "no process %q", r.PathValue("id"))
			return
		}
		h(w, r, p)
	}
}

// output sends frames from ?offset=, and with follow=1 what comes next
// until the process's exit frame.
func (g *workGuest) output(w http.ResponseWriter, r *http.Request, p *fakeProc) {
	offset, err := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	if err != nil || offset < 0 {
		agentError(w, http.StatusBadRequest, "bad offset")
		return
	}
	follow := r.URL.Query().Get("follow") == "1"
	if follow {
		p.mu.Lock()
		p.info.Followers++
		p.followed = true
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			p.info.Followers--
			gone := p.info.Followers == 0 && p.spec.DieWithClient && p.info.State == workapi.StateRunning
			p.mu.Unlock()
			if gone {
				p.kill("client gone")
			}
		}()
	}
	w.WriteHeader(http.StatusOK)
	fl := w.(http.Flusher)
	fl.Flush()
	for {
		p.mu.Lock()
		var out []fakeChunk
		var dropped *workapi.Dropped
		if offset < p.info.HistoryStart {
			dropped = &workapi.Dropped{From: offset, To: p.info.HistoryStart}
			p.info.DroppedBytes += p.info.HistoryStart - offset
			offset = p.info.HistoryStart
		}
		for _, c := range p.chunks {
			if end := c.off + int64(len(c.data)); end > offset {
				from := max(offset-c.off, 0)
				out = append(out, fakeChunk{kind: c.kind, off: c.off + from, data: slices.Clone(c.data[from:])})
				offset = end
			}
		}
		exit, changed := p.info.Exit, p.changed
		p.mu.Unlock()
		if dropped != nil && workapi.WriteJSONFrame(w, workapi.FrameDropped, dropped) != nil {
			return
		}
		for _, c := range out {
			if workapi.WriteOutput(w, c.kind, c.off, c.data) != nil {
				return
			}
		}
		if exit != nil {
			_ = workapi.WriteJSONFrame(w, workapi.FrameExit, exit)
			return
		}
		fl.Flush()
		if !follow {
			return
		}
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

func (g *workGuest) stdin(w http.ResponseWriter, r *http.Request, p *fakeProc) {
	var in io.Writer = p.stdin
	if p.ptmx != nil {
		in = p.ptmx
	}
	if in == nil {
		agentError(w, http.StatusConflict, "process %s has no stdin", p.info.ID)
		return
	}
	if _, err := io.Copy(in, r.Body); err != nil {
		agentError(w, http.StatusConflict, "write to the stdin of process %s: %v", p.info.ID, err)
		return
	}
	if r.URL.Query().Get("eof") == "1" && p.stdin != nil {
		p.stdin.Close()
	}
	w.WriteHeader(http.StatusNoContent)
}

func (g *workGuest) signal(w http.ResponseWriter, r *http.Request, p *fakeProc) {
	var req workapi.SignalRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		agentError(w, http.StatusBadRequest, "bad signal request")
		return
	}
	sig, ok := signalsByName[strings.TrimPrefix(req.Signal, "SIG")]
	if !ok {
		agentError(w, http.StatusBadRequest, "unknown signal %q", req.Signal)
		return
	}
	if p.snapshot().State != workapi.StateRunning {
		agentError(w, http.StatusConflict, "process %s has ended", p.info.ID)
		return
	}
	pid := p.cmd.Process.Pid
	if req.Group {
		pid = -pid
	}
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM {
		p.mu.Lock()
		if p.reason == "" {
			p.reason = "killed on request"
		}
		p.mu.Unlock()
	}
	_ = syscall.Kill(pid, sig)
	w.WriteHeader(http.StatusNoContent)
}

func (g *workGuest) resize(w http.ResponseWriter, r *http.Request, p *fakeProc) {
	var req workapi.ResizeRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Validate() != nil {
		agentError(w, http.StatusBadRequest, "bad size")
		return
	}
	if p.ptmx == nil {
		agentError(w, http.StatusConflict, "process %s has no terminal", p.info.ID)
		return
	}
	if err := pty.Setsize(p.ptmx, &pty.Winsize{Cols: uint16(req.Cols), Rows: uint16(req.Rows)}); err != nil {
		agentError(w, http.StatusConflict, "resize: %v", err)
		return
	}
	p.mu.Lock()
	p.info.PTY = &req
	p.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// realPath maps a guest path to the host file that plays it.
func (g *workGuest) realPath(w http.ResponseWriter, p string) (string, bool) {
	if !strings.HasPrefix(p, "/") || strings.ContainsRune(p, 0) {
		agentError(w, http.StatusBadRequest, "path %q must be absolute", p)
		return "", false
	}
	return filepath.Join(g.root, path.Clean(p)), true
}

// fileArgs reads ?user= and ?path= ("~/" is the user's home, as the
// agent has it).
func (g *workGuest) fileArgs(w http.ResponseWriter, r *http.Request) (user, guestPath, real string, ok bool) {
	if user, ok = guestUser(w, r.URL.Query().Get("user")); !ok {
		return
	}
	guestPath = r.URL.Query().Get("path")
	if rest, home := strings.CutPrefix(guestPath, "~/"); home {
		guestPath = g.home(user) + "/" + rest
	}
	real, ok = g.realPath(w, guestPath)
	return
}

// mayWrite plays the guest kernel's permission check: only root writes
// under /etc and /root.
func mayWrite(w http.ResponseWriter, user, p string) bool {
	if user != "root" && (strings.HasPrefix(path.Clean(p), "/etc") || strings.HasPrefix(path.Clean(p), "/root")) {
		agentError(w, http.StatusForbidden, "%s: permission denied", p)
		return false
	}
	return true
}

func fileErr(w http.ResponseWriter, p string, err error) {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		agentError(w, http.StatusNotFound, "%s: no such file or directory", p)
	case errors.Is(err, fs.ErrExist), errors.Is(err, syscall.ENOTEMPTY):
		agentError(w, http.StatusConflict, "%s: %v", p, errors.Unwrap(err))
	default:
		agentError(w, http.StatusBadRequest, "%s: %v", p, err)
	}
}

func (g *workGuest) info(guestPath, real string) (workapi.FileInfo, error) {
	fi, err := os.Lstat(real)
	if err != nil {
		return workapi.FileInfo{}, err
	}
	out := workapi.FileInfo{Path: guestPath, Name: path.Base(guestPath), Type: "other", Size: fi.Size(),
		Mode: fmt.Sprintf("%04o", fi.Mode().Perm()), UID: 1000, GID: 1000, Owner: workapi.DefaultUser, ModTime: fi.ModTime()}
	switch {
	case fi.Mode().IsRegular():
		out.Type = "file"
	case fi.IsDir():
		out.Type = "dir"
	case fi.Mode()&fs.ModeSymlink != 0:
		out.Type = "symlink"
		out.Target, _ = os.Readlink(real)
	}
	return out, nil
}

func (g *workGuest) readFile(w http.ResponseWriter, r *http.Request) {
	_, p, real, ok := g.fileArgs(w, r)
	if !ok {
		return
	}
	f, err := os.Open(real)
	if err != nil {
		fileErr(w, p, err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.IsDir() {
		agentError(w, http.StatusBadRequest, "%s is a directory", p)
		return
	}
	var from int64
	if rg := r.Header.Get("Range"); rg != "" {
		from, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"), 10, 64)
		if from >= fi.Size() {
			agentError(w, http.StatusRequestedRangeNotSatisfiable, "%s has %d bytes", p, fi.Size())
			return
		}
		if _, err := f.Seek(from, io.SeekStart); err != nil {
			fileErr(w, p, err)
			return
		}
	}
	h := w.Header()
	h.Set(workapi.HeaderMode, fmt.Sprintf("%04o", fi.Mode().Perm()))
	h.Set(workapi.HeaderSize, strconv.FormatInt(fi.Size(), 10))
	h.Set(workapi.HeaderUID, "1000")
	h.Set(workapi.HeaderGID, "1000")
	h.Set("Content-Length", strconv.FormatInt(fi.Size()-from, 10))
	_, _ = io.Copy(w, f)
}

func (g *workGuest) writeFile(w http.ResponseWriter, r *http.Request) {
	user, p, real, ok := g.fileArgs(w, r)
	if !ok || !mayWrite(w, user, p) {
		return
	}
	mode := uint64(0o644)
	if m := r.URL.Query().Get("mode"); m != "" {
		var err error
		if mode, err = strconv.ParseUint(m, 8, 32); err != nil || mode > 0o7777 {
			agentError(w, http.StatusBadRequest, "bad mode %q", m)
			return
		}
	}
	tmp, err := os.CreateTemp(filepath.Dir(real), ".upload-*")
	if err != nil {
		fileErr(w, path.Dir(p), err)
		return
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, r.Body)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), fs.FileMode(mode))
	}
	if err == nil {
		err = os.Rename(tmp.Name(), real)
	}
	if err != nil {
		agentError(w, http.StatusBadRequest, "write %s: %v", p, err)
		return
	}
	g.changed(workapi.WatchCreate, p, false)
	fi, err := g.info(p, real)
	if err != nil {
		fileErr(w, p, err)
		return
	}
	writeAgentJSON(w, http.StatusOK, fi)
}

func (g *workGuest) stat(w http.ResponseWriter, r *http.Request) {
	_, p, real, ok := g.fileArgs(w, r)
	if !ok {
		return
	}
	fi, err := g.info(p, real)
	if err != nil {
		fileErr(w, p, err)
		return
	}
	writeAgentJSON(w, http.StatusOK, fi)
}

func (g *workGuest) listDir(w http.ResponseWriter, r *http.Request) {
	_, p, real, ok := g.fileArgs(w, r)
	if !ok {
		return
	}
	des, err := os.ReadDir(real)
	if err != nil {
		fileErr(w, p, err)
		return
	}
	l := workapi.FileList{Path: p, Entries: []workapi.FileInfo{}}
	for _, de := range des {
		if strings.HasPrefix(de.Name(), ".upload-") {
			continue
		}
		fi, err := g.info(path.Join(p, de.Name()), filepath.Join(real, de.Name()))
		if err == nil {
			l.Entries = append(l.Entries, fi)
		}
	}
	writeAgentJSON(w, http.StatusOK, l)
}

func (g *workGuest) mkdir(w http.ResponseWriter, r *http.Request) {
	user, ok := guestUser(w, r.URL.Query().Get("user"))
	if !ok {
		return
	}
	var req workapi.MkdirRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		agentError(w, http.StatusBadRequest, "bad mkdir request")
		return
	}
	real, ok := g.realPath(w, req.Path)
	if !ok || !mayWrite(w, user, req.Path) {
		return
	}
	var err error
	if req.Parents {
		err = os.MkdirAll(real, 0o755)
	} else {
		err = os.Mkdir(real, 0o755)
	}
	if err != nil {
		fileErr(w, req.Path, err)
		return
	}
	g.changed(workapi.WatchCreate, req.Path, true)
	fi, err := g.info(req.Path, real)
	if err != nil {
		fileErr(w, req.Path, err)
		return
	}
	writeAgentJSON(w, http.StatusOK, fi)
}

func (g *workGuest) rename(w http.ResponseWriter, r *http.Request) {
	user, ok := guestUser(w, r.URL.Query().Get("user"))
	if !ok {
		return
	}
	var req workapi.RenameRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		agentError(w, http.StatusBadRequest, "bad rename request")
		return
	}
	from, ok := g.realPath(w, req.From)
	if !ok {
		return
	}
	to, ok := g.realPath(w, req.To)
	if !ok || !mayWrite(w, user, req.From) || !mayWrite(w, user, req.To) {
		return
	}
	if err := os.Rename(from, to); err != nil {
		fileErr(w, req.From, err)
		return
	}
	g.changed(workapi.WatchRename, req.To, false)
	w.WriteHeader(http.StatusNoContent)
}

func (g *workGuest) remove(w http.ResponseWriter, r *http.Request) {
	user, p, real, ok := g.fileArgs(w, r)
	if !ok || !mayWrite(w, user, p) {
		return
	}
	if _, err := os.Lstat(real); err != nil {
		fileErr(w, p, err)
		return
	}
	var err error
	if r.URL.Query().Get("recursive") == "1" {
		err = os.RemoveAll(real)
	} else {
		err = os.Remove(real)
	}
	if err != nil {
		fileErr(w, p, err)
		return
	}
	g.changed(workapi.WatchRemove, p, false)
	w.WriteHeader(http.StatusNoContent)
}

// fakeWatcher is a watch stream: the changes this guest's own file
// routes make under dir.
type fakeWatcher struct {
	dir       string
	recursive bool
	events    chan workapi.WatchEvent
}

func (g *workGuest) changed(kind, p string, dir bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for wt := range g.watchers {
		parent := path.Dir(p)
		if parent == wt.dir || wt.recursive && strings.HasPrefix(parent+"/", strings.TrimSuffix(wt.dir, "/")+"/") {
			select {
			case wt.events <- workapi.WatchEvent{Kind: kind, Path: p, Dir: dir, Time: time.Now()}:
			default:
			}
		}
	}
}

func (g *workGuest) watch(w http.ResponseWriter, r *http.Request) {
	_, p, real, ok := g.fileArgs(w, r)
	if !ok {
		return
	}
	if fi, err := os.Stat(real); err != nil || !fi.IsDir() {
		fileErr(w, p, fs.ErrNotExist)
		return
	}
	wt := &fakeWatcher{dir: path.Clean(p), recursive: r.URL.Query().Get("recursive") == "1", events: make(chan workapi.WatchEvent, 64)}
	g.mu.Lock()
	g.watchers[wt] = true
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.watchers, wt)
		g.mu.Unlock()
	}()
	w.WriteHeader(http.StatusOK)
	w.(http.Flusher).Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case e := <-wt.events:
			if enc.Encode(e) != nil {
				return
			}
			w.(http.Flusher).Flush()
		case <-r.Context().Done():
			return
		}
	}
}

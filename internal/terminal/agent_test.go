package terminal

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/net/http2"

	"github.com/hearth-project/hearth/internal/workapi"
)

// fakeAgent serves the work API's process routes the way the guest agent
// does, for real processes on this host: /bin/sh on a real PTY (or pipes),
// one output history per process with offsets, follow, dropped and exit
// frames. It is small on purpose: enough to run the bridge and the
// sessions against real terminals.
type fakeAgent struct {
	t     *testing.T
	token []byte
	mu    sync.Mutex
	procs map[string]*fakeProc
	next  int
	// historyMax bounds each process's kept output.
	historyMax int
}

type fakeProc struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	info    workapi.Process
	hist    []byte // the kept output: offsets [info.HistoryStart, end)
	cmd     *exec.Cmd
	tty     *os.File // the PTY's master, or nil
	stdin   io.WriteCloser
	max     int
	signals []string
}

func newFakeAgent(t *testing.T) *fakeAgent {
	return &fakeAgent{t: t, token: []byte("0123456789abcdef0123456789abcdef"), procs: map[string]*fakeProc{}, historyMax: 1 << 20}
}

// client returns a work API client reaching a over a fresh socket pair per
// connection, with the real preamble and HTTP/2.
func (a *fakeAgent) client() *workapi.Client {
	srv := &http2.Server{}
	mux := a.mux()
	return workapi.NewClient(func(ctx context.Context) (net.Conn, error) {
		host, guest := net.Pipe()
		go func() {
			conn, err := workapi.GuestPreamble(guest, a.token)
			if err != nil {
				guest.Close()
				return
			}
			srv.ServeConn(conn, &http2.ServeConnOpts{Handler: mux})
		}()
		return host, nil
	}, a.token)
}

func (a *fakeAgent) mux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("POST /processes", a.start)
	m.HandleFunc("GET /processes", func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		var l workapi.ProcessList
		for _, p := range a.procs {
			l.Processes = append(l.Processes, p.snapshot())
		}
		a.mu.Unlock()
		_ = json.NewEncoder(w).Encode(l)
	})
	m.HandleFunc("GET /processes/{id}", a.with(func(w http.ResponseWriter, r *http.Request, p *fakeProc) {
		_ = json.NewEncoder(w).Encode(p.snapshot())
	}))
	m.HandleFunc("GET /processes/{id}/output", a.with(a.output))
	m.HandleFunc("POST /processes/{id}/stdin", a.with(func(w http.ResponseWriter, r *http.Request, p *fakeProc) {
		if p.stdin == nil {
			fail(w, http.StatusConflict, "process has no stdin")
			return
		}
		if _, err := io.Copy(p.stdin, r.Body); err != nil {
			fail(w, http.StatusConflict, err.Error())
			return
		}
		if r.URL.Query().Get("eof") == "1" {
			if p.tty != nil {
				_, _ = p.tty.Write([]byte{4}) // ^D
			} else {
				_ = p.stdin.Close()
			}
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	m.HandleFunc("POST /processes/{id}/resize", a.with(func(w http.ResponseWriter, r *http.Request, p *fakeProc) {
		var s workapi.WindowSize
		if err := json.NewDecoder(r.Body).Decode(&s); err != nil || s.Validate() != nil || p.tty == nil {
			fail(w, http.StatusBadRequest, "bad size or no terminal")
			return
		}
		if err := pty.Setsize(p.tty, &pty.Winsize{Cols: uint16(s.Cols), Rows: uint16(s.Rows)}); err != nil {
			fail(w, http.StatusInternalServerError, err.Error())
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	m.HandleFunc("POST /processes/{id}/signal", a.with(func(w http.ResponseWriter, r *http.Request, p *fakeProc) {
		var s workapi.SignalRequest
		if err := json.NewDecoder(r.Body).Decode(&s); err != nil {
			fail(w, http.StatusBadRequest, "bad signal")
			return
		}
		sig, ok := map[string]syscall.Signal{"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM}[s.Signal]
		if !ok {
			fail(w, http.StatusBadRequest, "unknown signal "+s.Signal)
			return
		}
		p.mu.Lock()
		p.signals = append(p.signals, s.Signal)
		pid := p.cmd.Process.Pid
		p.mu.Unlock()
		if s.Group {
			pid = -pid
		}
		_ = syscall.Kill(pid, sig)
		w.WriteHeader(http.StatusNoContent)
	}))
	return m
}

func fail(w http.ResponseWriter, status int, msg string) {
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(workapi.ErrorBody{Error: msg})
}

func (a *fakeAgent) with(h func(http.ResponseWriter, *http.Request, *fakeProc)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		p := a.procs[r.PathValue("id")]
		a.mu.Unlock()
		if p == nil {
			fail(w, http.StatusNotFound, "no process "+r.PathValue("id"))
			return
		}
		h(w, r, p)
	}
}

func (a *fakeAgent) start(w http.ResponseWriter, r *http.Request) {
	var spec workapi.ProcessSpec
	if err := json.NewDecoder(r.Body).Decode(&spec); err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	argv := spec.Argv
	if spec.Command != "" {
		argv = []string{"/bin/sh", "-c", spec.Command}
	}
	if len(argv) == 0 {
		fail(w, http.StatusBadRequest, "nothing to run")
		return
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "PS1=$ ", "ENV=")
	p := &fakeProc{changed: make(chan struct{}), cmd: cmd, max: a.historyMax}
	var outs []io.Reader
	if spec.PTY != nil {
		tty, err := pty.StartWithSize(cmd, &pty.Winsize{Cols: uint16(spec.PTY.Cols), Rows: uint16(spec.PTY.Rows)})
		if err != nil {
			fail(w, http.StatusInternalServerError, err.Error())
			return
		}
		p.tty, p.stdin = tty, tty
		outs = append(outs, tty)
	} else {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		stdout, _ := cmd.StdoutPipe()
		stderr, _ := cmd.StderrPipe()
		if spec.Stdin {
			p.stdin, _ = cmd.StdinPipe()
		}
		if err := cmd.Start(); err != nil {
			fail(w, http.StatusBadRequest, err.Error())
			return
		}
		outs = append(outs, stdout, stderr)
	}
	a.mu.Lock()
	a.next++
	id := "p" + strconv.Itoa(a.next)
	a.procs[id] = p
	a.mu.Unlock()
	p.info = workapi.Process{ID: id, PID: cmd.Process.Pid, Argv: argv, User: spec.User, Tag: spec.Tag, PTY: spec.PTY,
		State: workapi.StateRunning, StartedAt: time.Now()}
	var readers sync.WaitGroup
	for _, o := range outs {
		readers.Go(func() {
			buf := make([]byte, 4096)
			for {
				n, err := o.Read(buf)
				if n > 0 {
					p.append(buf[:n])
				}
				if err != nil {
					return
				}
			}
		})
	}
	go func() {
		readers.Wait()
		err := cmd.Wait()
		exit := &workapi.Exit{EndedAt: time.Now()}
		var ee *exec.ExitError
		switch {
		case err == nil:
			exit.Code = new(int)
		case errors.As(err, &ee) && ee.Exited():
			code := ee.ExitCode()
			exit.Code = &code
		case errors.As(err, &ee):
			exit.Signal = map[syscall.Signal]string{syscall.SIGHUP: "HUP", syscall.SIGKILL: "KILL", syscall.SIGTERM: "TERM", syscall.SIGINT: "INT"}[ee.Sys().(syscall.WaitStatus).Signal()]
		}
		if p.tty != nil {
			_ = p.tty.Close()
		}
		p.mu.Lock()
		p.info.State, p.info.Exit = workapi.StateExited, exit
		p.changedLocked()
		p.mu.Unlock()
	}()
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(p.snapshot())
}

func (p *fakeProc) changedLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *fakeProc) append(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hist = append(p.hist, b...)
	p.info.StdoutBytes += int64(len(b))
	if over := len(p.hist) - p.max; over > 0 {
		p.hist = append([]byte(nil), p.hist[over:]...)
		p.info.HistoryStart += int64(over)
	}
	p.changedLocked()
}

func (p *fakeProc) snapshot() workapi.Process {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.info
}

// output streams frames from ?offset= to the end of the history, and on
// with follow=1 until the process ends.
func (a *fakeAgent) output(w http.ResponseWriter, r *http.Request, p *fakeProc) {
	off, _ := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	follow := r.URL.Query().Get("follow") == "1"
	w.WriteHeader(http.StatusOK)
	flush := func() { _ = http.NewResponseController(w).Flush() }
	for {
		p.mu.Lock()
		start, end := p.info.HistoryStart, p.info.HistoryEnd()
		var data []byte
		if off < start {
			p.mu.Unlock()
			if err := workapi.WriteJSONFrame(w, workapi.FrameDropped, workapi.Dropped{From: off, To: start}); err != nil {
				return
			}
			off = start
			continue
		}
		if off < end {
			data = append([]byte(nil), p.hist[off-start:min(end-start, off-start+workapi.MaxFrameData)]...)
		}
		exit, changed := p.info.Exit, p.changed
		p.mu.Unlock()
		if len(data) > 0 {
			if err := workapi.WriteOutput(w, workapi.FrameStdout, off, data); err != nil {
				return
			}
			flush()
			off += int64(len(data))
			continue
		}
		if exit != nil {
			_ = workapi.WriteJSONFrame(w, workapi.FrameExit, exit)
			return
		}
		if !follow {
			return
		}
		flush()
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		}
	}
}

// signalsOf lists the signals sent to process id so far.
func (a *fakeAgent) signalsOf(id string) []string {
	a.mu.Lock()
	p := a.procs[id]
	a.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.signals...)
}

// waitExit waits until process id has ended.
func (a *fakeAgent) waitExit(t *testing.T, id string) workapi.Exit {
	t.Helper()
	a.mu.Lock()
	p := a.procs[id]
	a.mu.Unlock()
	deadline := time.After(20 * time.Second)
	for {
		p.mu.Lock()
		exit, changed := p.info.Exit, p.changed
		p.mu.Unlock()
		if exit != nil {
			return *exit
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("process %s did not end", id)
		}
	}
}

// killAll ends every process still running.
func (a *fakeAgent) killAll() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.procs {
		_ = p.cmd.Process.Kill()
	}
}

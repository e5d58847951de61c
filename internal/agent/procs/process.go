package procs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/agent/guestuser"
	"github.com/hearth-project/hearth/internal/workapi"
)

const (
	// readBuf is how much output is read from a pipe at once.
	readBuf = 32 << 10
	// ptyEOF is what /stdin?eof=1 sends a terminal: ^D, its end-of-file
	// character (closing it would hang the terminal up).
	ptyEOF = "\x04"
)

// Exit reasons hearth gives.
const (
	reasonTimeout    = "timeout"
	reasonClientGone = "client gone"
	reasonRequested  = "killed on request"
)

// process is one process the manager started, in its own session and
// process group (its pid is the group's id).
type process struct {
	id      string
	argv    []string
	user    string
	cwd     string
	tag     string
	started time.Time
	cmd     *exec.Cmd
	hist    *history
	// ended is closed once the process has exited and its output is in
	// the history.
	ended chan struct{}

	mu        sync.Mutex
	size      *workapi.WindowSize // of the PTY
	exit      *workapi.Exit
	reason    string // why hearth ended it, if it did
	requested string // the last signal sent on request
	timer     *time.Timer

	// stdinMu serializes /stdin requests.
	stdinMu sync.Mutex
	// stdin is the process's stdin (the PTY's master with a PTY), nil
	// without one; closed once it was given an end (eof) or the process
	// ended.
	stdin       *os.File
	stdinClosed bool
	closeStdin  func() // closes a pipe stdin, once
	// ptmx is the PTY's master, nil without a PTY.
	ptmx *os.File
	// outputs are read by run.
	outputs []output
	// onEnd, if set, is called once the process has ended, before its
	// followers are given the exit and ended is closed.
	onEnd func()
}

// launch is what start needs beyond the spec: the resolved user,
// program, working directory and environment.
type launch struct {
	user *guestuser.User
	path string
	argv []string
	cwd  string
	env  []string
}

// start starts the process of spec as l says; run then reads its output
// into a history of limit bytes, stall being how long a follower may hold
// it up.
func start(id string, spec *workapi.ProcessSpec, l launch, limit int, stall time.Duration) (*process, error) {
	p := &process{
		id: id, argv: l.argv, user: l.user.Name, cwd: l.cwd, tag: spec.Tag,
		hist: newHistory(limit, stall), ended: make(chan struct{}),
	}
	cmd := exec.Command(l.path)
	cmd.Args, cmd.Env, cmd.Dir = l.argv, l.env, l.cwd
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if os.Geteuid() == 0 || l.user.UID != uint32(os.Geteuid()) {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: l.user.UID, Gid: l.user.GID, Groups: l.user.Groups}
	}
	// The child's ends of its stdio, closed here once it has them.
	var childEnds []*os.File
	closeChildEnds := func() {
		for _, f := range childEnds {
			f.Close()
		}
	}
	var outputs []output
	fail := func(err error) (*process, error) {
		closeChildEnds()
		for _, o := range outputs {
			o.f.Close()
		}
		if p.closeStdin != nil {
			p.closeStdin()
		}
		return nil, err
	}
	if spec.PTY != nil {
		ptmx, tty, err := pty.Open()
		if err != nil {
			return fail(fmt.Errorf("open a terminal: %w", err))
		}
		p.ptmx, p.stdin = ptmx, ptmx
		outputs = append(outputs, output{ptmx, workapi.FrameStdout})
		childEnds = append(childEnds, tty)
		size := *spec.PTY
		p.size = &size
		if err := errors.Join(os.Chown(tty.Name(), int(l.user.UID), int(l.user.GID)),
			pty.Setsize(ptmx, &pty.Winsize{Rows: uint16(size.Rows), Cols: uint16(size.Cols)})); err != nil {
			return fail(fmt.Errorf("set up the terminal: %w", err))
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, 0
	} else {
		for _, kind := range []byte{workapi.FrameStdout, workapi.FrameStderr} {
			r, w, err := os.Pipe()
			if err != nil {
				return fail(fmt.Errorf("make a pipe: %w", err))
			}
			outputs = append(outputs, output{r, kind})
			childEnds = append(childEnds, w)
		}
		cmd.Stdout, cmd.Stderr = childEnds[0], childEnds[1]
		if spec.Stdin {
			r, w, err := os.Pipe()
			if err != nil {
				return fail(fmt.Errorf("make a pipe: %w", err))
			}
			p.stdin = w
			p.closeStdin = sync.OnceFunc(func() { _ = w.Close() })
			childEnds = append(childEnds, r)
			cmd.Stdin = r
		}
	}
	if err := cmd.Start(); err != nil {
		return fail(startError(l, err))
	}
	closeChildEnds()
	p.cmd, p.started = cmd, time.Now()
	if spec.TimeoutSeconds > 0 {
		p.timer = time.AfterFunc(time.Duration(spec.TimeoutSeconds)*time.Second, func() { p.kill(reasonTimeout) })
	}
	if spec.DieWithClient {
		p.hist.lastGone = func() { p.kill(reasonClientGone) }
	}
	p.outputs = outputs
	return p, nil
}

// startError explains a start that failed: the program, the directory or
// the user's credentials.
func startError(l launch, err error) error {
	return &statusError{400, fmt.Sprintf("start %s as %s in %s: %v", l.path, l.user.Name, l.cwd, unwrapPathError(err))}
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// output is one stream of the process's output.
type output struct {
	f    *os.File
	kind byte
}

// run reads the process's output into its history until the process has
// exited and its output ends, or grace has passed since it exited (a
// background child may hold the output open for ever), then records the
// exit.
func (p *process) run(grace time.Duration) {
	var readers sync.WaitGroup
	for _, o := range p.outputs {
		readers.Add(1)
		go func() {
			defer readers.Done()
			buf := make([]byte, readBuf)
			for {
				n, err := o.f.Read(buf)
				if n > 0 {
					p.hist.write(o.kind, buf[:n])
				}
				if err != nil {
					return // EOF; EIO from a terminal nobody holds; closed after grace
				}
			}
		}()
	}
	waitErr := p.cmd.Wait()
	endedAt := time.Now()
	read := make(chan struct{})
	go func() { readers.Wait(); close(read) }()
	select {
	case <-read:
	case <-time.After(grace):
	}
	for _, o := range p.outputs {
		o.f.Close() // ends the readers (a PTY's master is stdin too)
	}
	<-read

	e := workapi.Exit{EndedAt: endedAt, DurationMS: endedAt.Sub(p.started).Milliseconds()}
	if ps := p.cmd.ProcessState; ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Signal = strings.TrimPrefix(unix.SignalName(ws.Signal()), "SIG")
		} else {
			code := ps.ExitCode()
			e.Code = &code
		}
	} else {
		code := -1
		e.Code = &code
		e.Reason = fmt.Sprintf("wait: %v", waitErr)
	}
	p.mu.Lock()
	if p.timer != nil {
		p.timer.Stop()
	}
	switch {
	case p.reason != "":
		e.Reason = p.reason
	case e.Signal != "" && e.Signal == p.requested:
		e.Reason = reasonRequested
	}
	p.exit = &e
	p.mu.Unlock()
	if p.closeStdin != nil {
		p.closeStdin() // a blocked write fails; the PTY's master is closed already
	}
	// Counted as ended before any follower is told: whoever sees the
	// exit may start another process at once.
	if p.onEnd != nil {
		p.onEnd()
	}
	p.hist.finish(e)
	close(p.ended)
}

// kill ends the process group with SIGKILL, for reason, if it still runs.
func (p *process) kill(reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exit != nil {
		return
	}
	if p.reason == "" {
		p.reason = reason
	}
	_ = unix.Kill(-p.cmd.Process.Pid, unix.SIGKILL)
}

// signal sends sig to the process, or to its group.
func (p *process) signal(name string, group bool) error {
	sig := unix.SignalNum("SIG" + name)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exit != nil {
		return conflict("process %s has ended", p.id)
	}
	pid := p.cmd.Process.Pid
	if group {
		pid = -pid
	}
	if err := unix.Kill(pid, sig); err != nil && !(group && errors.Is(err, unix.ESRCH)) {
		return fmt.Errorf("signal %s: %w", name, err)
	}
	p.requested = name
	return nil
}

// resize changes the PTY's size.
func (p *process) resize(ws workapi.WindowSize) error {
	if p.ptmx == nil {
		return conflict("process %s has no terminal", p.id)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exit != nil {
		return conflict("process %s has ended", p.id)
	}
	if err := pty.Setsize(p.ptmx, &pty.Winsize{Rows: uint16(ws.Rows), Cols: uint16(ws.Cols)}); err != nil {
		return fmt.Errorf("resize the terminal: %w", err)
	}
	p.size = &ws
	return nil
}

// writeStdin copies r into the process's stdin, then, with eof, ends it
// (^D on a terminal). abort, called from another goroutine, makes a
// blocked write give up.
func (p *process) writeStdin(r io.Reader, eof bool, abort <-chan struct{}) (int64, error) {
	if p.stdin == nil {
		return 0, conflict("process %s has no stdin (start it with stdin: true)", p.id)
	}
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdinClosed {
		return 0, conflict("the stdin of process %s is closed", p.id)
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-abort:
			_ = p.stdin.SetWriteDeadline(time.Unix(1, 0))
		case <-stop:
		}
	}()
	defer func() {
		close(stop)
		<-stopped
		_ = p.stdin.SetWriteDeadline(time.Time{})
	}()
	n, err := io.Copy(p.stdin, r)
	if err == nil && eof {
		if p.ptmx != nil {
			_, err = io.WriteString(p.stdin, ptyEOF)
		} else {
			p.stdinClosed = true
			p.closeStdin() // (or the process has ended and it was)
		}
	}
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, os.ErrClosed), errors.Is(err, unix.EPIPE), errors.Is(err, unix.EIO):
		return n, conflict("process %s no longer reads its stdin", p.id)
	}
	return n, fmt.Errorf("write stdin: %w", err)
}

// info is the process as the API shows it.
func (p *process) info() workapi.Process {
	p.mu.Lock()
	w := workapi.Process{
		ID: p.id, PID: p.cmd.Process.Pid, Argv: p.argv, User: p.user, Cwd: p.cwd, Tag: p.tag,
		State: workapi.StateRunning, StartedAt: p.started,
	}
	if p.size != nil {
		size := *p.size
		w.PTY = &size
	}
	if p.exit != nil {
		e := *p.exit
		w.State, w.Exit = workapi.StateExited, &e
	}
	p.mu.Unlock()
	p.hist.state(&w)
	return w
}

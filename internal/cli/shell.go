package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/coder/websocket"
	"golang.org/x/term"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

// shellOptions are hearth vm shell's.
type shellOptions struct {
	user     string
	terminal bool // the VM's terminal session rather than a new process
	argv     []string
}

// vmShell attaches the operator's terminal to a new process on a PTY in
// VM id (or to its terminal session) and returns, once the process has
// ended, an exitCode carrying its exit status (nil for 0).
func vmShell(ctx context.Context, cl *client.Client, id string, o shellOptions, stdin *os.File, out output) error {
	fd := int(stdin.Fd())
	tty := term.IsTerminal(fd)
	cols, rows := 80, 24
	if tty {
		if w, h, err := term.GetSize(fd); err == nil && w > 0 && h > 0 {
			cols, rows = w, h
		}
	}
	var (
		pid    string
		offset *int64
		err    error
	)
	if o.terminal {
		var command string
		if len(o.argv) > 0 {
			command = shellJoin(o.argv)
		}
		t, err := cl.CreateTerminal(ctx, id, api.CreateTerminal{Cols: cols, Rows: rows, User: o.user, Command: command})
		if err != nil {
			return err
		}
		pid = t.ProcessID // from the oldest output kept: the screen comes back
	} else {
		if pid, err = cl.PTYProcess(ctx, id, o.user, o.argv, cols, rows); err != nil {
			return err
		}
		offset = new(int64)
	}
	ws, err := cl.Attach(ctx, id, pid, offset)
	if err != nil {
		return err
	}
	defer func() { _ = ws.CloseNow() }()
	ws.SetReadLimit(1 << 20)

	if tty {
		state, err := term.MakeRaw(fd)
		if err != nil {
			return fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		defer func() { _ = term.Restore(fd, state) }()
	}
	ioCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sendInput(ioCtx, ws, stdin, tty)
	if tty {
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for {
				select {
				case <-ioCtx.Done():
					return
				case <-winch:
				}
				if w, h, err := term.GetSize(fd); err == nil {
					_ = sendControl(ioCtx, ws, api.TerminalControl{Type: api.TerminalControlTypeResize, Cols: w, Rows: h})
				}
			}
		}()
	}
	exit, err := receive(ctx, ws, out.stdout)
	if tty {
		// Back to cooked mode before anything more is said.
		fmt.Fprint(out.stdout, "\r")
	}
	if err != nil {
		return err
	}
	if exit.Code == nil {
		fmt.Fprintf(out.stderr, "hearth: process ended by signal %s%s\n", exit.Signal, map[bool]string{true: " (" + exit.Reason + ")"}[exit.Reason != ""])
	}
	return exitStatus(api.ProcessExit{Code: exit.Code, Signal: exit.Signal})
}

// receive writes the process's output to w until it has ended, and
// returns how.
func receive(ctx context.Context, ws *websocket.Conn, w io.Writer) (api.TerminalEvent, error) {
	var exit *api.TerminalEvent
	for {
		typ, p, err := ws.Read(ctx)
		if err != nil {
			if exit != nil {
				return *exit, nil
			}
			if ctx.Err() != nil {
				return api.TerminalEvent{}, ctx.Err()
			}
			var ce websocket.CloseError
			if errors.As(err, &ce) {
				return api.TerminalEvent{}, fmt.Errorf("the daemon closed the connection: %s (%d)", ce.Reason, ce.Code)
			}
			return api.TerminalEvent{}, fmt.Errorf("connection lost: %w", err)
		}
		if typ == websocket.MessageBinary {
			if _, err := w.Write(p); err != nil {
				return api.TerminalEvent{}, err
			}
			continue
		}
		var ev api.TerminalEvent
		if json.Unmarshal(p, &ev) != nil {
			continue
		}
		switch ev.Type {
		case api.TerminalEventTypeExit:
			exit = &ev
		case api.TerminalEventTypeDropped:
			if ev.From != nil && ev.To != nil {
				fmt.Fprintf(w, "\r\n[hearth: %d bytes of output were not kept]\r\n", *ev.To-*ev.From)
			}
		}
	}
}

// sendInput sends stdin as input messages; at its end (not a terminal's:
// that has none), the process's stdin is closed.
func sendInput(ctx context.Context, ws *websocket.Conn, stdin io.Reader, tty bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := stdin.Read(buf)
		if n > 0 {
			if ws.Write(ctx, websocket.MessageBinary, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			if !tty {
				_ = sendControl(ctx, ws, api.TerminalControl{Type: api.TerminalControlTypeEOF})
			}
			return
		}
	}
}

func sendControl(ctx context.Context, ws *websocket.Conn, c api.TerminalControl) error {
	p, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return ws.Write(ctx, websocket.MessageText, p)
}

// shellJoin quotes argv for a POSIX shell.
func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

package terminal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/tokenbucket"
	"github.com/hearth-project/hearth/internal/viewer"
	"github.com/hearth-project/hearth/internal/workapi"
)

// CloseReason is the WebSocket close code and text a socket is closed
// with; terminals share the viewer's codes where they mean the same.
type CloseReason = viewer.CloseReason

// Close reasons of the bridge besides the viewer's (ReasonShutdown,
// ReasonPingTimeout, ReasonTokenExpired, ...).
var (
	ReasonExited      = CloseReason{Code: websocket.StatusNormalClosure, Text: "process exited"}
	ReasonBadMessage  = CloseReason{Code: websocket.StatusPolicyViolation, Text: "bad message"}
	ReasonTooFast     = CloseReason{Code: websocket.StatusPolicyViolation, Text: "too many control messages"}
	ReasonTooBig      = CloseReason{Code: websocket.StatusMessageTooBig, Text: "message too big"}
	ReasonNoProcess   = CloseReason{Code: 4015, Text: "no such process"}
	ReasonAgent       = CloseReason{Code: 4016, Text: "guest agent unreachable"}
	ReasonSlowClient  = CloseReason{Code: 4017, Text: "client too slow to take output"}
	ReasonClientGone  = viewer.ReasonClientClosed
	ReasonPingTimeout = viewer.ReasonPingTimeout
	ReasonShutdown    = viewer.ReasonShutdown
)

// Bounds of the socket protocol.
const (
	// MaxInput is the largest input (binary) message a client may send.
	MaxInput = 64 << 10
	// maxControl bounds a control (text) message.
	maxControl = 1 << 10
	// DefaultControlRate is the control messages a client may send a
	// second (in bursts of twice as many): resizes while a window is
	// dragged, signals.
	DefaultControlRate = 20
	// DefaultWriteTimeout bounds sending one message to the client.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultPingInterval is how often the client is pinged.
	DefaultPingInterval = 20 * time.Second
	// callTimeout bounds each call to the agent (resize, signal).
	callTimeout = 10 * time.Second
)

// Options tunes a bridge; zero fields take the defaults above.
type Options struct {
	// PingInterval is how often the client is pinged; a pong later than
	// PingTimeout (default PingInterval) closes it with ReasonPingTimeout.
	PingInterval, PingTimeout time.Duration
	// WriteTimeout bounds each message to the client; a client that
	// takes longer is dropped.
	WriteTimeout time.Duration
	// ControlRate is the control messages allowed a second.
	ControlRate int
	// Expires, if set, closes the socket with viewer.ReasonTokenExpired
	// then: a socket lives no longer than the link that opened it.
	Expires time.Time
	// Closer, if set, lets the caller close the bridge with a reason.
	Closer *viewer.Closer
}

func (o Options) withDefaults() Options {
	if o.PingInterval <= 0 {
		o.PingInterval = DefaultPingInterval
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = o.PingInterval
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = DefaultWriteTimeout
	}
	if o.ControlRate <= 0 {
		o.ControlRate = DefaultControlRate
	}
	return o
}

// end is why one side of the bridge stopped.
type end struct {
	reason CloseReason
	err    error
}

type bridge struct {
	ws   *websocket.Conn
	w    *workapi.Client
	pid  string
	opts Options
	ends chan end // one slot per goroutine: sends never block

	// stdin is the write end of the one streamed /stdin request, opened
	// on the first input; nil until then. Only the input goroutine uses
	// it. stdinCtx is the request's: cancelled as the bridge ends, which
	// also unblocks a write the agent does not take.
	stdin     *io.PipeWriter
	stdinCtx  context.Context
	stdinDone chan error // the request's result, once it ends
}

// Bridge joins a client's WebSocket to process processID of the work API
// w: the process's output from offset as binary messages (after a hello
// event), its dropped ranges and exit as JSON events, and the client's
// binary messages as its input and text messages as control (the protocol
// in the package comment). It returns, with the socket closed with the
// reason and every goroutine ended, when the process has ended and its
// exit was sent, the client goes, a bound or opts.Closer fires, or ctx is
// cancelled (ReasonShutdown). err is nil when the bridge ended by
// decision or by an end on either side, and says what failed otherwise.
//
// Output is read from the agent one frame at a time, only once the last
// was written to the client, so a slow client holds one frame here and
// slows the process's reader in the guest (which bounds how long it
// waits); input is written to the agent as it arrives, one message at a
// time.
func Bridge(ctx context.Context, ws *websocket.Conn, w *workapi.Client, processID string, offset int64, opts Options) (CloseReason, error) {
	stdinCtx, stopStdin := context.WithCancel(context.Background())
	defer stopStdin()
	b := &bridge{ws: ws, w: w, pid: processID, opts: opts.withDefaults(), ends: make(chan end, 3),
		stdinCtx: stdinCtx, stdinDone: make(chan error, 1)}
	ws.SetReadLimit(MaxInput)

	// As in the viewer's bridge, the copy goroutines use a context of
	// their own: cancelling one passed to a websocket read or write drops
	// the connection without a close frame.
	ioCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out, err := w.Output(ctx, processID, offset, true)
	if err != nil {
		r := agentReason(err)
		_ = ws.Close(r.Code, r.Text)
		return r, fmt.Errorf("open output of process %s: %w", processID, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { b.ends <- b.output(ioCtx, out, offset) })
	wg.Go(func() { b.ends <- b.input(ioCtx) })
	wg.Go(func() {
		if err := viewer.Keepalive(ioCtx, ws, b.opts.PingInterval, b.opts.PingTimeout); err != nil {
			b.ends <- end{reason: ReasonPingTimeout, err: err}
			return
		}
		b.ends <- end{reason: ReasonShutdown}
	})

	e := b.wait(ctx)
	// The output and input first, so nothing more queues behind the
	// close frame and the reader is free to see the client's answer.
	_ = out.Close()
	stopStdin()
	_ = ws.Close(e.reason.Code, e.reason.Text)
	cancel()
	wg.Wait()
	if b.stdin != nil {
		_ = <-b.stdinDone // how the stdin request ended matters no more
	}
	return e.reason, e.err
}

// wait returns the first reason to end the bridge.
func (b *bridge) wait(ctx context.Context) end {
	var expiry <-chan time.Time
	if !b.opts.Expires.IsZero() {
		t := time.NewTimer(max(time.Until(b.opts.Expires), 1))
		defer t.Stop()
		expiry = t.C
	}
	select {
	case e := <-b.ends:
		return e
	case <-b.opts.Closer.Done():
		return end{reason: b.opts.Closer.Reason()}
	case <-ctx.Done():
		return end{reason: ReasonShutdown}
	case <-expiry:
		return end{reason: viewer.ReasonTokenExpired}
	}
}

// agentReason is the close reason for a failed call to the agent.
func agentReason(err error) CloseReason {
	var we *workapi.Error
	if errors.As(err, &we) && we.Status == http.StatusNotFound {
		return ReasonNoProcess
	}
	return ReasonAgent
}

// write sends one message within the write timeout.
func (b *bridge) write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	wctx, cancel := context.WithTimeout(ctx, b.opts.WriteTimeout)
	defer cancel()
	return b.ws.Write(wctx, typ, p)
}

// writeEvent sends one JSON event.
func (b *bridge) writeEvent(ctx context.Context, ev v1.TerminalEvent) error {
	p, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	return b.write(ctx, websocket.MessageText, p)
}

// clientWriteEnd classifies a failed write to the client.
func clientWriteEnd(ctx context.Context, err error) end {
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return end{reason: ReasonSlowClient, err: fmt.Errorf("write to terminal client: %w", err)}
	}
	return clientEnd(err)
}

// clientEnd classifies a failed read from (or write to) the client.
func clientEnd(err error) end {
	if websocket.CloseStatus(err) == websocket.StatusMessageTooBig {
		return end{reason: ReasonTooBig}
	}
	if websocket.CloseStatus(err) != -1 || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return end{reason: ReasonClientGone}
	}
	return end{reason: ReasonClientGone, err: fmt.Errorf("terminal client: %w", err)}
}

// output sends hello, then every frame of out to the client, one at a
// time.
func (b *bridge) output(ctx context.Context, out *workapi.Output, offset int64) end {
	if err := b.writeEvent(ctx, v1.TerminalEvent{Type: v1.TerminalEventTypeHello, Process: b.pid, Offset: &offset}); err != nil {
		return clientWriteEnd(ctx, err)
	}
	for {
		f, err := out.Next()
		if err != nil {
			if ctx.Err() != nil {
				return end{reason: ReasonShutdown}
			}
			// The stream ended without an exit frame: the channel broke
			// (the guest rebooted, the agent restarted) or the agent
			// sent garbage.
			return end{reason: ReasonAgent, err: fmt.Errorf("output of process %s: %w", b.pid, err)}
		}
		switch f.Kind {
		case workapi.FrameStdout, workapi.FrameStderr:
			if len(f.Data) == 0 {
				continue
			}
			err = b.write(ctx, websocket.MessageBinary, f.Data)
		case workapi.FrameDropped:
			err = b.writeEvent(ctx, v1.TerminalEvent{Type: v1.TerminalEventTypeDropped, From: &f.Dropped.From, To: &f.Dropped.To})
		case workapi.FrameExit:
			ev := v1.TerminalEvent{Type: v1.TerminalEventTypeExit, Code: f.Exit.Code, Signal: f.Exit.Signal, Reason: f.Exit.Reason}
			if err := b.writeEvent(ctx, ev); err != nil {
				return clientWriteEnd(ctx, err)
			}
			return end{reason: ReasonExited}
		}
		if err != nil {
			return clientWriteEnd(ctx, err)
		}
	}
}

// input reads the client's messages: input bytes to stdin, control
// messages to the agent, in order.
func (b *bridge) input(ctx context.Context) end {
	limit := tokenbucket.New(float64(b.opts.ControlRate), float64(2*b.opts.ControlRate))
	for {
		typ, p, err := b.ws.Read(ctx)
		if err != nil {
			return clientEnd(err)
		}
		if typ == websocket.MessageBinary {
			if err := b.writeStdin(p); err != nil {
				return end{reason: ReasonAgent, err: err}
			}
			continue
		}
		if !limit.Take(time.Now(), 1) {
			return end{reason: ReasonTooFast}
		}
		if len(p) > maxControl {
			return end{reason: ReasonBadMessage}
		}
		var c v1.TerminalControl
		if err := json.Unmarshal(p, &c); err != nil {
			return end{reason: ReasonBadMessage}
		}
		if r, err := b.control(ctx, c); r != nil {
			return end{reason: *r, err: err}
		}
	}
}

// control carries out one control message; a non-nil reason ends the
// bridge.
func (b *bridge) control(ctx context.Context, c v1.TerminalControl) (*CloseReason, error) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	var err error
	switch c.Type {
	case v1.TerminalControlTypeResize:
		size := workapi.WindowSize{Cols: c.Cols, Rows: c.Rows}
		if size.Validate() != nil {
			return &ReasonBadMessage, nil
		}
		err = b.w.Resize(cctx, b.pid, size)
	case v1.TerminalControlTypeSignal:
		if c.Signal == "" || len(c.Signal) > 16 {
			return &ReasonBadMessage, nil
		}
		err = b.w.Signal(cctx, b.pid, c.Signal, true)
	case v1.TerminalControlTypeEOF:
		b.openStdin()
		_ = b.stdin.Close() // the request ends, closing stdin
	default:
		return &ReasonBadMessage, nil
	}
	var we *workapi.Error
	if errors.As(err, &we) && we.Status < http.StatusInternalServerError {
		// The agent refused (an unknown signal, a process that has
		// just ended or has no terminal): the process, not the
		// connection, is at fault; its exit arrives on the output.
		return nil, nil
	}
	if err != nil {
		return &ReasonAgent, fmt.Errorf("%s process %s: %w", c.Type, b.pid, err)
	}
	return nil, nil
}

// openStdin starts the one streamed stdin request, which ends (closing
// the process's stdin) once b.stdin is closed.
func (b *bridge) openStdin() {
	if b.stdin != nil {
		return
	}
	pr, pw := io.Pipe()
	b.stdin = pw
	go func() {
		err := b.w.Stdin(b.stdinCtx, b.pid, pr, true)
		_ = pr.CloseWithError(fmt.Errorf("stdin of process %s ended: %w", b.pid, orEOF(err)))
		b.stdinDone <- err
	}()
}

func orEOF(err error) error {
	if err == nil {
		return io.EOF
	}
	return err
}

// writeStdin writes one input message to the process's stdin. Input the
// process no longer takes (stdin closed, the process ended, no stdin at
// all) is dropped: what happened to the process arrives on its output.
func (b *bridge) writeStdin(p []byte) error {
	b.openStdin()
	if _, err := b.stdin.Write(p); err != nil {
		var we *workapi.Error
		if errors.Is(err, io.ErrClosedPipe) || errors.Is(err, io.EOF) || errors.As(err, &we) || b.stdinCtx.Err() != nil {
			return nil
		}
		return fmt.Errorf("write to stdin of process %s: %w", b.pid, err)
	}
	return nil
}

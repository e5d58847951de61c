package terminal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	v1 "github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/workapi"
)

// bridged serves Bridge for process pid of agent a at a test server and
// returns a connected client socket and the bridge's result.
type bridged struct {
	ws     *websocket.Conn
	result chan CloseReason
	out    bytes.Buffer // binary messages read so far
}

func openBridge(t *testing.T, w *workapi.Client, pid string, offset int64, opts Options) *bridged {
	t.Helper()
	result := make(chan CloseReason, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(rw, r, nil)
		if err != nil {
			return
		}
		reason, _ := Bridge(context.Background(), ws, w, pid, offset, opts)
		result <- reason
	}))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ws.SetReadLimit(1 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	return &bridged{ws: ws, result: result}
}

// next reads the next message: output bytes are collected, an event is
// returned.
func (b *bridged) next(t *testing.T) (*v1.TerminalEvent, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	typ, p, err := b.ws.Read(ctx)
	if err != nil {
		return nil, err
	}
	if typ == websocket.MessageBinary {
		b.out.Write(p)
		return nil, nil
	}
	var ev v1.TerminalEvent
	if err := json.Unmarshal(p, &ev); err != nil {
		t.Fatalf("bad event %q: %v", p, err)
	}
	return &ev, nil
}

// until reads until the output contains s.
func (b *bridged) until(t *testing.T, s string) {
	t.Helper()
	for !strings.Contains(b.out.String(), s) {
		ev, err := b.next(t)
		if err != nil {
			t.Fatalf("waiting for %q in %q: %v", s, b.out.String(), err)
		}
		if ev != nil && ev.Type == v1.TerminalEventTypeExit {
			t.Fatalf("process exited waiting for %q in %q", s, b.out.String())
		}
	}
}

// event reads until the next event.
func (b *bridged) event(t *testing.T) v1.TerminalEvent {
	t.Helper()
	for {
		ev, err := b.next(t)
		if err != nil {
			t.Fatalf("waiting for an event (output %q): %v", b.out.String(), err)
		}
		if ev != nil {
			return *ev
		}
	}
}

// closed reads until the socket closes and returns its status.
func (b *bridged) closed(t *testing.T) (websocket.StatusCode, string) {
	t.Helper()
	for {
		_, err := b.next(t)
		if err != nil {
			var ce websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("socket ended without a close frame: %v", err)
			}
			return ce.Code, ce.Reason
		}
	}
}

func (b *bridged) send(t *testing.T, typ websocket.MessageType, p []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.ws.Write(ctx, typ, p); err != nil {
		t.Fatal(err)
	}
}

func (b *bridged) control(t *testing.T, c v1.TerminalControl) {
	t.Helper()
	p, _ := json.Marshal(c)
	b.send(t, websocket.MessageText, p)
}

func startShell(t *testing.T, a *fakeAgent, w *workapi.Client) workapi.Process {
	t.Helper()
	p, err := w.StartProcess(context.Background(), workapi.ProcessSpec{Argv: []string{"/bin/sh"}, PTY: &workapi.WindowSize{Cols: 80, Rows: 24}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.killAll)
	return p
}

func TestBridgeRunsAShellOnAPTY(t *testing.T) {
	a := newFakeAgent(t)
	w := a.client()
	defer w.Close()
	p := startShell(t, a, w)
	b := openBridge(t, w, p.ID, 0, Options{})

	hello := b.event(t)
	if hello.Type != v1.TerminalEventTypeHello || hello.Process != p.ID || hello.Offset == nil || *hello.Offset != 0 {
		t.Fatalf("first event %+v, want hello for %s at 0", hello, p.ID)
	}
	word := fmt.Sprintf("hello-%d", time.Now().UnixNano())
	b.send(t, websocket.MessageBinary, []byte("echo "+word+"\n"))
	b.until(t, word+"\r\n")

	b.control(t, v1.TerminalControl{Type: v1.TerminalControlTypeResize, Cols: 101, Rows: 33})
	b.send(t, websocket.MessageBinary, []byte("stty size\n"))
	b.until(t, "33 101")

	b.send(t, websocket.MessageBinary, []byte("exit 3\n"))
	ev := b.event(t)
	if ev.Type != v1.TerminalEventTypeExit || ev.Code == nil || *ev.Code != 3 {
		t.Fatalf("got %+v, want exit with code 3", ev)
	}
	if code, text := b.closed(t); code != websocket.StatusNormalClosure || text != ReasonExited.Text {
		t.Fatalf("closed %d %q, want %d %q", code, text, websocket.StatusNormalClosure, ReasonExited.Text)
	}
	if r := <-b.result; r != ReasonExited {
		t.Fatalf("bridge ended with %v", r)
	}
}

// A second socket from the history's start sees the screen again: what the
// first one saw, then what comes next.
func TestBridgeReplaysHistoryOnReattach(t *testing.T) {
	a := newFakeAgent(t)
	w := a.client()
	defer w.Close()
	p := startShell(t, a, w)
	first := openBridge(t, w, p.ID, 0, Options{})
	first.event(t)
	first.send(t, websocket.MessageBinary, []byte("echo one-$((40+2))\n"))
	first.until(t, "one-42")
	_ = first.ws.Close(websocket.StatusNormalClosure, "")
	if r := <-first.result; r != ReasonClientGone {
		t.Fatalf("first bridge ended with %v, want %v", r, ReasonClientGone)
	}

	info, err := w.Process(context.Background(), p.ID)
	if err != nil {
		t.Fatal(err)
	}
	second := openBridge(t, w, p.ID, info.HistoryStart, Options{})
	second.event(t)
	second.until(t, "one-42")
	second.send(t, websocket.MessageBinary, []byte("echo two-$((40+3))\n"))
	second.until(t, "two-43")
}

// A client that fell behind the kept history is told what it missed.
func TestBridgeSaysWhatWasDropped(t *testing.T) {
	a := newFakeAgent(t)
	a.historyMax = 4096
	w := a.client()
	defer w.Close()
	p, err := w.StartProcess(context.Background(), workapi.ProcessSpec{Command: "head -c 10000 /dev/zero | tr '\\0' x; echo; echo done"})
	if err != nil {
		t.Fatal(err)
	}
	a.waitExit(t, p.ID)
	b := openBridge(t, w, p.ID, 0, Options{})
	b.event(t) // hello
	ev := b.event(t)
	if ev.Type != v1.TerminalEventTypeDropped || *ev.From != 0 || *ev.To <= 0 {
		t.Fatalf("got %+v, want dropped from 0", ev)
	}
	to := *ev.To
	if ev := b.event(t); ev.Type != v1.TerminalEventTypeExit || *ev.Code != 0 {
		t.Fatalf("got %+v, want exit 0", ev)
	}
	if !strings.HasSuffix(b.out.String(), "done\n") || int64(b.out.Len()) != 10006-to {
		t.Fatalf("output after the drop: %d bytes ending %q", b.out.Len(), b.out.String()[max(0, b.out.Len()-10):])
	}
}

func TestBridgeRefusesBadMessages(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(*testing.T, *bridged)
		want CloseReason
	}{
		{"input too big", func(t *testing.T, b *bridged) {
			b.send(t, websocket.MessageBinary, make([]byte, MaxInput+1))
		}, ReasonTooBig},
		{"not json", func(t *testing.T, b *bridged) { b.send(t, websocket.MessageText, []byte("resize 80x24")) }, ReasonBadMessage},
		{"unknown control", func(t *testing.T, b *bridged) { b.control(t, v1.TerminalControl{Type: "reboot"}) }, ReasonBadMessage},
		{"size out of range", func(t *testing.T, b *bridged) {
			b.control(t, v1.TerminalControl{Type: v1.TerminalControlTypeResize, Cols: 0, Rows: 24})
		}, ReasonBadMessage},
		{"control flood", func(t *testing.T, b *bridged) {
			for range 3 * DefaultControlRate {
				b.control(t, v1.TerminalControl{Type: v1.TerminalControlTypeResize, Cols: 80, Rows: 24})
			}
		}, ReasonTooFast},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newFakeAgent(t)
			w := a.client()
			defer w.Close()
			p := startShell(t, a, w)
			b := openBridge(t, w, p.ID, 0, Options{})
			b.event(t)
			tc.send(t, b)
			code, text := b.closed(t)
			if tc.want == ReasonTooBig {
				text = tc.want.Text // the websocket library says it in its own words
			}
			if code != tc.want.Code || text != tc.want.Text {
				t.Fatalf("closed %d %q, want %d %q", code, text, tc.want.Code, tc.want.Text)
			}
		})
	}
}

// Signals go to the process's group; an unknown one the agent refuses
// leaves the terminal open.
func TestBridgeSignals(t *testing.T) {
	a := newFakeAgent(t)
	w := a.client()
	defer w.Close()
	p := startShell(t, a, w)
	b := openBridge(t, w, p.ID, 0, Options{})
	b.event(t)
	b.control(t, v1.TerminalControl{Type: v1.TerminalControlTypeSignal, Signal: "WINCH"}) // the fake refuses it
	b.send(t, websocket.MessageBinary, []byte("echo still-$((1+1))\n"))
	b.until(t, "still-2")
	b.control(t, v1.TerminalControl{Type: v1.TerminalControlTypeSignal, Signal: "KILL"})
	ev := b.event(t)
	if ev.Type != v1.TerminalEventTypeExit || ev.Signal != "KILL" {
		t.Fatalf("got %+v, want exit by KILL", ev)
	}
	if got := a.signalsOf(p.ID); len(got) != 1 || got[0] != "KILL" {
		t.Fatalf("signals %v", got)
	}
}

// eof closes stdin: cat ends.
func TestBridgeEOFClosesStdin(t *testing.T) {
	a := newFakeAgent(t)
	w := a.client()
	defer w.Close()
	p, err := w.StartProcess(context.Background(), workapi.ProcessSpec{Command: "cat; echo cat-ended", Stdin: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.killAll)
	b := openBridge(t, w, p.ID, 0, Options{})
	b.event(t)
	b.send(t, websocket.MessageBinary, []byte("through-cat\n"))
	b.until(t, "through-cat\n")
	b.control(t, v1.TerminalControl{Type: v1.TerminalControlTypeEOF})
	b.until(t, "cat-ended")
	if ev := b.event(t); ev.Type != v1.TerminalEventTypeExit {
		t.Fatalf("got %+v, want exit", ev)
	}
}

func TestBridgeNoSuchProcess(t *testing.T) {
	a := newFakeAgent(t)
	w := a.client()
	defer w.Close()
	b := openBridge(t, w, "p404", 0, Options{})
	if code, text := b.closed(t); code != ReasonNoProcess.Code || text != ReasonNoProcess.Text {
		t.Fatalf("closed %d %q, want %v", code, text, ReasonNoProcess)
	}
}

// An idle terminal stays open across many ping intervals: the client's
// library answers the pings. A client that never reads is dropped once a
// pong is late.
func TestBridgeKeepsIdleSocketsAlive(t *testing.T) {
	a := newFakeAgent(t)
	w := a.client()
	defer w.Close()
	p := startShell(t, a, w)
	b := openBridge(t, w, p.ID, 0, Options{PingInterval: 20 * time.Millisecond})
	b.event(t)
	// Reading (so pongs are answered) for many intervals with nothing to
	// read: the read times out, the socket must not have closed.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, _, err := b.ws.Read(ctx)
	cancel()
	if err == nil || ctx.Err() == nil {
		// Output (a prompt) may arrive; read on until quiet.
		for err == nil {
			ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
			_, _, err = b.ws.Read(ctx)
			cancel()
		}
	}
	select {
	case r := <-b.result:
		t.Fatalf("idle bridge ended: %v", r)
	default:
	}
}

func TestBridgeDropsClientsThatDoNotAnswerPings(t *testing.T) {
	a := newFakeAgent(t)
	w := a.client()
	defer w.Close()
	p := startShell(t, a, w)
	b := openBridge(t, w, p.ID, 0, Options{PingInterval: 20 * time.Millisecond})
	// Never read: pongs are only answered by a reading client.
	select {
	case r := <-b.result:
		if r != ReasonPingTimeout {
			t.Fatalf("bridge ended with %v, want %v", r, ReasonPingTimeout)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a client that answers no pings was kept")
	}
}

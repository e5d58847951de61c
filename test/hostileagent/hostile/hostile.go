// Package hostile makes the real hearth agent misbehave, for tests of how
// the host bounds a hostile guest. Wrap puts itself between the agent
// (internal/agent, which still authenticates, configures the network and
// answers requests) and its channel to the host, and breaks the protocol
// in the ways a mode names once the agent has reported ready.
package hostile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Modes, combined with commas ("heartbeat-flood,console").
const (
	// HeartbeatFlood writes heartbeats as fast as the channel takes them,
	// from the first ready on, across sessions, until the channel fails.
	HeartbeatFlood = "heartbeat-flood"
	// Oversize sends, after every ready, a heartbeat padded to 32 KiB.
	Oversize = "oversize"
	// Malformed sends, after every ready, a line that is not JSON.
	Malformed = "malformed"
	// BadPort sends, after every ready, a port_ready for a port the host
	// never asked for: the session breaks at once, in a loop.
	BadPort = "bad-port"
	// Stall sends, after the first ready, half a line and never the rest
	// (the agent's own writes then wait forever).
	Stall = "stall"
	// Hangup ends the first connection after its third heartbeat, and
	// every later one right after its ready, before any heartbeat (on a
	// vsock or Unix channel the host sees it close; a virtio-serial port
	// is reopened).
	Hangup = "hangup"
	// EvilText puts terminal escape sequences into the hello's
	// agent_version and turns network_ready into a network_failed whose
	// error is made of them (then, as an agent whose network failed,
	// sends nothing more in that session but results).
	EvilText = "evil-text"
	// Console writes to stdout (the guest's console) as fast as it can,
	// from the first ready on.
	Console = "console"
)

// EvilString is what EvilText sends: it clears a terminal, sets its title
// and its clipboard, and reverses the text after it.
const EvilString = "hacked\x1b[2J\x1b]0;owned\x07\x1b]52;c;cm0gLXJmIH4=\x07\u009b31m\u202eevil"

// Modes parses a comma-separated list of modes.
func Modes(s string) (map[string]bool, error) {
	known := map[string]bool{HeartbeatFlood: true, Oversize: true, Malformed: true, BadPort: true,
		Stall: true, Hangup: true, EvilText: true, Console: true}
	m := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !known[f] {
			return nil, fmt.Errorf("unknown hostile mode %q", f)
		}
		m[f] = true
	}
	return m, nil
}

// Agent is one hostile guest: what it does depends on the modes and on
// how many connections it has served.
type Agent struct {
	modes       map[string]bool
	conns       atomic.Int64
	consoleOnce sync.Once
}

// New returns a hostile guest.
func New(modes map[string]bool) *Agent { return &Agent{modes: modes} }

// Wrap returns rw, the agent's channel to the host for one connection,
// misbehaving as the modes say. It keeps rw's SetDeadline.
func (a *Agent) Wrap(rw io.ReadWriter) io.ReadWriter {
	return &conn{a: a, rw: rw, modes: a.modes, first: a.conns.Add(1) == 1, closed: make(chan struct{})}
}

type conn struct {
	a     *Agent
	rw    io.ReadWriter
	modes map[string]bool
	first bool // the agent's first connection

	heartbeats int  // written, guarded by wmu
	netFailed  bool // EvilText: the session's network "failed", guarded by wmu

	wmu      sync.Mutex // one line at a time
	flooding bool       // guarded by wmu
	stalled  bool       // guarded by wmu

	closeOnce sync.Once
	closed    chan struct{} // Hangup: reads end
}

func (c *conn) Read(p []byte) (int, error) {
	select {
	case <-c.closed:
		return 0, io.EOF
	default:
	}
	return c.rw.Read(p)
}

// SetDeadline passes through to the channel, if it has deadlines.
func (c *conn) SetDeadline(t time.Time) error {
	if d, ok := c.rw.(interface{ SetDeadline(time.Time) error }); ok {
		return d.SetDeadline(t)
	}
	return errors.ErrUnsupported
}

// Write passes one line of the agent's through, rewritten or followed by
// misbehaviour as the modes say.
func (c *conn) Write(p []byte) (int, error) {
	var env struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(p, &env)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	line := p
	switch {
	case c.modes[EvilText] && env.Type == "hello":
		line = rewriteHello(p)
		c.netFailed = false
	case c.modes[EvilText] && env.Type == "network_ready":
		line = lineOf("network_failed", map[string]any{"error": EvilString})
		c.netFailed = true
	case c.netFailed && env.Type != "result":
		return len(p), nil
	}
	if _, err := c.rw.Write(line); err != nil {
		return 0, err
	}
	if env.Type == "heartbeat" {
		if c.heartbeats++; c.modes[Hangup] && c.first && c.heartbeats == 3 {
			c.hangUp()
		}
	}
	if env.Type != "ready" {
		return len(p), nil
	}
	var extra []byte
	switch {
	case c.modes[Oversize]:
		extra = lineOf("heartbeat", map[string]any{"seq": 1, "pad": strings.Repeat("x", 32<<10)})
	case c.modes[Malformed]:
		extra = []byte("this is not json\n")
	case c.modes[BadPort]:
		extra = lineOf("port_ready", map[string]any{"port": 1})
	}
	if extra != nil {
		if _, err := c.rw.Write(extra); err != nil {
			return 0, err
		}
	}
	if c.modes[Console] {
		c.a.consoleOnce.Do(func() { go spamConsole(os.Stdout) })
	}
	if c.modes[HeartbeatFlood] && !c.flooding {
		c.flooding = true
		go c.flood()
	}
	if c.modes[Hangup] && !c.first {
		c.hangUp()
	}
	if c.modes[Stall] && !c.stalled {
		c.stalled = true
		_, _ = c.rw.Write([]byte(`{"v":1,"type":"heartbeat","body":{"seq":`))
		select {} // hold the write lock: nothing more is ever written
	}
	return len(p), nil
}

// hangUp ends the connection: reads end, and the channel is closed.
func (c *conn) hangUp() {
	c.closeOnce.Do(func() { close(c.closed) })
	if cl, ok := c.rw.(io.Closer); ok {
		cl.Close()
	}
}

// FloodReport is the line the flood writes to stderr (the guest's
// console) every FloodReportEvery heartbeats, and when it ends: how many
// heartbeats the channel has taken.
const (
	FloodReport      = "hostile: heartbeats written: %d\n"
	FloodReportEvery = 100000
)

// flood writes heartbeats until the channel fails.
func (c *conn) flood() {
	var buf bytes.Buffer
	seq := 0
	defer func() { fmt.Fprintf(os.Stderr, FloodReport, seq) }()
	for seq = 0; ; seq++ {
		if seq%FloodReportEvery == 0 && seq > 0 {
			fmt.Fprintf(os.Stderr, FloodReport, seq)
		}
		buf.Reset()
		fmt.Fprintf(&buf, `{"v":1,"type":"heartbeat","body":{"seq":%d,"uptime_seconds":1,"mem_available_kib":1,"load1":0}}`+"\n", seq+1)
		c.wmu.Lock()
		_, err := c.rw.Write(buf.Bytes())
		c.wmu.Unlock()
		if err != nil {
			return
		}
	}
}

// rewriteHello replaces the agent_version of a hello line.
func rewriteHello(line []byte) []byte {
	var env map[string]json.RawMessage
	if json.Unmarshal(line, &env) != nil {
		return line
	}
	var body map[string]any
	if json.Unmarshal(env["body"], &body) != nil {
		return line
	}
	body["agent_version"] = EvilString
	b, _ := json.Marshal(body)
	env["body"] = b
	out, _ := json.Marshal(env)
	return append(out, '\n')
}

func lineOf(typ string, body any) []byte {
	b, _ := json.Marshal(map[string]any{"v": 1, "type": typ, "body": body})
	return append(b, '\n')
}

// spamConsole writes to w as fast as it can, escape sequences included.
func spamConsole(w io.Writer) {
	line := []byte(strings.Repeat("console flood "+EvilString+" ", 16) + "\n")
	for {
		if _, err := w.Write(line); err != nil {
			return
		}
	}
}

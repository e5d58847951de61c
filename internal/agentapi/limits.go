package agentapi

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/safetext"
	"github.com/hearth-project/hearth/internal/tokenbucket"
)

// Limits bound what a guest may send on one connection, from the first
// byte of the handshake to the end of the session. The guest is hostile:
// exceeding a limit is a protocol violation (a *ViolationError) that ends
// the connection before the flood costs the host noticeable CPU.
//
// Rates are token buckets: a guest may send Burst at once, then Rate per
// second. Results answering a request the host sent (or gave up waiting
// for) are not counted: the host's own requests bound them. Everything
// else is: stale lines before the hello, events, login progress, results
// for ids the host never used.
type Limits struct {
	// MessageRate is the sustained number of messages per second allowed
	// on top of twice the heartbeat rate the config asks for; MessageBurst
	// is how many may arrive at once.
	MessageRate  float64
	MessageBurst int
	// ByteRate and ByteBurst bound the bytes of those messages.
	ByteRate  float64
	ByteBurst int
	// LineTimeout is how long a line may take from its first byte to its
	// newline; a guest that starts a message and stalls is cut off.
	LineTimeout time.Duration
}

// Default limits. A legitimate agent sends a few hundred messages while it
// boots (one port_ready per required port, at most MaxRequiredPorts), then
// one heartbeat per interval, each well under a KiB.
const (
	DefaultMessageRate  = 10
	DefaultMessageBurst = 400
	DefaultByteRate     = 64 << 10
	DefaultByteBurst    = 1 << 20
	DefaultLineTimeout  = 10 * time.Second
)

// Per-type line sizes, far below MaxLineSize where the type allows: a
// result may carry an exec's output (MaxExecOutput per stream, base64) and
// is bounded by MaxLineSize only.
const (
	// MaxEventLine bounds hello, network_ready, network_failed, port_ready,
	// ready and heartbeat lines: their largest legitimate form (256 ports,
	// MaxErrorText bytes of escaped text) is a few KiB.
	MaxEventLine = 16 << 10
	// MaxOtherLine bounds login_progress (an escaped URL of up to
	// MaxLoginURL bytes) and message types this side does not know.
	MaxOtherLine = 64 << 10
)

// guestLines holds the largest line accepted from a guest for each message
// type a guest sends.
var guestLines = map[string]int{
	TypeResult:        MaxLineSize,
	TypeHello:         MaxEventLine,
	TypeNetworkReady:  MaxEventLine,
	TypeNetworkFailed: MaxEventLine,
	TypePortReady:     MaxEventLine,
	TypeReady:         MaxEventLine,
	TypeHeartbeat:     MaxEventLine,
	TypeLoginProgress: MaxOtherLine,
}

// maxLine is the largest line of type typ accepted from a guest.
func maxLine(typ string) int {
	if n, ok := guestLines[typ]; ok {
		return n
	}
	return MaxOtherLine
}

// WithDefaults returns l with zero fields replaced by the defaults.
func (l Limits) WithDefaults() Limits {
	if l.MessageRate == 0 {
		l.MessageRate = DefaultMessageRate
	}
	if l.MessageBurst == 0 {
		l.MessageBurst = DefaultMessageBurst
	}
	if l.ByteRate == 0 {
		l.ByteRate = DefaultByteRate
	}
	if l.ByteBurst == 0 {
		l.ByteBurst = DefaultByteBurst
	}
	if l.LineTimeout == 0 {
		l.LineTimeout = DefaultLineTimeout
	}
	return l
}

// Validate checks limits with their defaults applied: rates must be
// positive, a burst must let through what a legitimate agent sends at
// once (MaxRequiredPorts+2 messages, a MaxOtherLine line), and a line
// must have at least a second to arrive.
func (l Limits) Validate() error {
	switch {
	case !(l.MessageRate > 0) || !(l.ByteRate > 0):
		return fmt.Errorf("guest message and byte rates must be positive, got %v/s and %v B/s", l.MessageRate, l.ByteRate)
	case l.MessageBurst < MaxRequiredPorts+2:
		return fmt.Errorf("guest message burst %d is below the %d messages an agent may send while it boots", l.MessageBurst, MaxRequiredPorts+2)
	case l.ByteBurst < MaxOtherLine:
		return fmt.Errorf("guest byte burst %d is below one %d-byte message", l.ByteBurst, MaxOtherLine)
	case l.LineTimeout < time.Second:
		return fmt.Errorf("guest line timeout %v is below 1s", l.LineTimeout)
	}
	return nil
}

// ViolationError says how a guest broke the protocol: a message that was
// malformed, too large, unexpected, sent too often or never finished. Its
// Reason is clean text (see package safetext) for a VM's failure reason.
// It matches ErrProtocol.
type ViolationError struct {
	Reason string
	cause  error // ErrLineTooLong or ErrMalformed, if one of them
}

func (e *ViolationError) Error() string { return "protocol violation: " + e.Reason }

// Is makes a ViolationError match ErrProtocol.
func (e *ViolationError) Is(target error) bool { return target == ErrProtocol }

// Unwrap returns ErrLineTooLong or ErrMalformed for those violations.
func (e *ViolationError) Unwrap() error { return e.cause }

// maxReason bounds a ViolationError's reason.
const maxReason = 512

func violationf(format string, args ...any) *ViolationError {
	return &ViolationError{Reason: safetext.Line(fmt.Sprintf(format, args...), maxReason)}
}

// AsViolation returns the protocol violation err reports, if it reports
// one: a *ViolationError, or any error matching ErrProtocol, ErrMalformed
// or ErrLineTooLong (then described by its text).
func AsViolation(err error) (*ViolationError, bool) {
	var v *ViolationError
	if errors.As(err, &v) {
		return v, true
	}
	if errors.Is(err, ErrProtocol) || errors.Is(err, ErrMalformed) || errors.Is(err, ErrLineTooLong) {
		msg := err.Error()
		if i := strings.LastIndex(msg, ErrProtocol.Error()+": "); i >= 0 {
			msg = msg[i+len(ErrProtocol.Error())+2:]
		}
		v := violationf("%s", strings.TrimPrefix(msg, "agentapi: "))
		if errors.Is(err, ErrMalformed) {
			v.cause = ErrMalformed
		}
		return v, true
	}
	return nil, false
}

// guard enforces Limits on one connection. Lines are charged by admit,
// called by the connection's only reader; the stall timer runs on its
// own.
type guard struct {
	lim   Limits
	msgs  tokenbucket.Bucket
	bytes tokenbucket.Bucket

	conn  net.Conn
	stall *time.Timer

	mu      sync.Mutex
	partial bool            // the bytes read so far end inside a line
	stalled *ViolationError // set once the stall timer fired
}

// newGuard returns a guard for conn whose heartbeats come every
// heartbeat; lim has its defaults applied.
func newGuard(conn net.Conn, lim Limits, heartbeat time.Duration) *guard {
	rate := lim.MessageRate
	if heartbeat > 0 {
		rate += 2 * float64(time.Second) / float64(heartbeat)
	}
	g := &guard{
		lim:   lim,
		msgs:  tokenbucket.New(rate, float64(lim.MessageBurst)),
		bytes: tokenbucket.New(lim.ByteRate, float64(lim.ByteBurst)),
		conn:  conn,
	}
	g.stall = time.AfterFunc(time.Hour, g.onStall)
	g.stall.Stop()
	return g
}

// stop releases the stall timer.
func (g *guard) stop() { g.stall.Stop() }

// reader returns r (the connection) watched for lines that stall.
func (g *guard) reader(r io.Reader) io.Reader { return &stallReader{g: g, r: r} }

// stallReader arms the guard's stall timer when what it has read ends
// inside a line, and disarms it when a line ends.
type stallReader struct {
	g *guard
	r io.Reader
}

func (s *stallReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.g.sawBytes(p[:n])
	}
	return n, err
}

// sawBytes notes where the bytes just read leave the stream: at a line's
// end, in the line that was already open, or in a new one (whose timer
// starts now).
func (g *guard) sawBytes(b []byte) {
	nl := bytes.LastIndexByte(b, '\n')
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case nl == len(b)-1:
		if g.partial {
			g.stall.Stop()
		}
		g.partial = false
	case nl >= 0 || !g.partial:
		g.partial = true
		g.stall.Reset(g.lim.LineTimeout)
	}
}

func (g *guard) onStall() {
	g.mu.Lock()
	if !g.partial || g.stalled != nil {
		g.mu.Unlock()
		return
	}
	g.stalled = violationf("a message was not finished within %s of its first byte", g.lim.LineTimeout)
	g.mu.Unlock()
	g.conn.Close()
}

// readErr returns the violation a failed read stands for, if any: the
// stall that closed the connection, or a line too long or malformed.
func (g *guard) readErr(err error) error {
	g.mu.Lock()
	stalled := g.stalled
	g.mu.Unlock()
	switch {
	case stalled != nil:
		return stalled
	case errors.Is(err, ErrLineTooLong):
		v := violationf("a message longer than %d bytes", MaxLineSize)
		v.cause = ErrLineTooLong
		return v
	case errors.Is(err, ErrMalformed):
		v, _ := AsViolation(err)
		return v
	}
	return err
}

// admit charges a line of size bytes of type typ. expected says it is a
// result the host asked for, which only its size limit applies to.
func (g *guard) admit(typ string, size int, expected bool) error {
	if max := maxLine(typ); size > max {
		return violationf("%s message of %d bytes, at most %d allowed", typeName(typ), size, max)
	}
	if expected {
		return nil
	}
	now := time.Now()
	if !g.msgs.Take(now, 1) {
		return violationf("%s flood (more than %d messages at once or %.0f a second)", typeName(typ), int(g.msgs.Burst()), g.msgs.Rate())
	}
	if !g.bytes.Take(now, float64(size)) {
		return violationf("%s flood (more than %d bytes at once or %.0f a second)", typeName(typ), int(g.bytes.Burst()), g.bytes.Rate())
	}
	return nil
}

// typeName names a guest message type in a reason; a type this side does
// not know is guest-chosen text, so it is not repeated.
func typeName(typ string) string {
	if _, ok := guestLines[typ]; ok {
		return typ
	}
	return "unknown message"
}

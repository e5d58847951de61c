package agentapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/safetext"
)

// ErrClosed is the error of a session ended by Session.Close.
var ErrClosed = errors.New("session closed")

// heartbeatSlots is how many heartbeats the event buffer holds beyond the
// room reserved for network, port_ready and ready events.
const heartbeatSlots = 16

// Event is something the guest reported after the handshake.
type Event struct {
	// TypeNetworkReady, TypeNetworkFailed, TypePortReady, TypeReady or
	// TypeHeartbeat.
	Type string
	At   time.Time // when the host received it

	Port  int   // port_ready: the port that accepts connections
	Ports []int // ready: all required ports

	// network_ready, and ready when a network was configured: the guest
	// interface and its address (CIDR, as requested).
	Interface string
	Address   string
	// network_ready: the default route's gateway (as requested, may be
	// empty) and, if /etc/resolv.conf could not be written, why (not fatal).
	Gateway  string
	DNSError string

	// network_failed: why the guest could not apply the network, one
	// clean line (package safetext).
	Error string

	// heartbeat:
	Seq             uint64
	Uptime          time.Duration
	MemAvailableKiB uint64
	Load1           float64
}

// RemoteError is an error the agent returned for a request.
type RemoteError struct {
	Request string // request type
	Message string // the agent's error text, one clean line (package safetext) of at most MaxErrorText bytes
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("agentapi: %s: agent: %s", e.Request, e.Message)
}

// Session is an authenticated connection to a guest agent, made by
// Handshake. One goroutine reads from the connection; it stops when the
// session is closed or the connection fails, after which Done is closed,
// Events is closed and Err tells why. Methods are safe for concurrent use.
type Session struct {
	conn   net.Conn
	enc    *Encoder
	dec    *Decoder
	guard  *guard
	hello  Hello
	events chan Event
	done   chan struct{}

	wmu sync.Mutex // serialises writes and their deadlines

	mu      sync.Mutex
	err     error
	lastID  uint64
	pending map[uint64]chan Envelope
	// abandoned are requests whose caller stopped waiting (their ids in
	// the order they were given up, at most maxAbandoned): a late result
	// for one was still asked for, and is not charged to the guest.
	abandoned map[uint64]bool
	abandonQ  []uint64
	// progress holds the callbacks of logins in flight, by request id.
	progress map[uint64]func(LoginProgress)

	// Owned by the reader goroutine.
	required  []int
	reported  map[int]bool
	readySeen bool
	network   *ParsedNetwork // requested, nil if none
	netIface  string         // from network_ready; "" until then
	netFailed bool           // a network_failed was delivered
}

// maxAbandoned bounds the requests remembered as given up.
const maxAbandoned = 1024

// newSession starts the session's reader. cfg has been validated.
func newSession(conn net.Conn, enc *Encoder, dec *Decoder, g *guard, hello Hello, cfg Config) *Session {
	s := &Session{
		conn:      conn,
		enc:       enc,
		dec:       dec,
		guard:     g,
		hello:     hello,
		abandoned: map[uint64]bool{},
		done:      make(chan struct{}),
		pending:   make(map[uint64]chan Envelope),
		required:  slices.Clone(cfg.RequiredPorts),
		reported:  make(map[int]bool),
	}
	if cfg.Network != nil {
		if n, err := cfg.Network.Parse(); err == nil {
			s.network = &n
		}
	}
	s.events = make(chan Event, s.reservedSlots()+heartbeatSlots)
	go s.readLoop()
	return s
}

// Hello returns the hello the guest authenticated with; its text fields
// are clean (package safetext).
func (s *Session) Hello() Hello { return s.hello }

// Events returns the guest's network_ready, network_failed, port_ready,
// ready and heartbeat events, in order. It is closed when the session ends.
// Only heartbeats are ever dropped (while the buffer is full), so a slow
// consumer never stalls the session.
func (s *Session) Events() <-chan Event { return s.events }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err returns nil while the session runs, and afterwards why it ended:
// ErrClosed after Close, or the read error or the protocol violation (a
// *ViolationError, see AsViolation) that ended it.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the session and closes its connection. It waits for the
// reader goroutine to exit, and is safe to call more than once.
func (s *Session) Close() error {
	s.fail(ErrClosed)
	<-s.done
	return nil
}

// Ping asks the guest for its clock.
func (s *Session) Ping(ctx context.Context) (time.Time, error) {
	var res PingResult
	if err := s.call(ctx, TypePing, Ping{}, &res); err != nil {
		return time.Time{}, err
	}
	if res.GuestTime.IsZero() {
		return time.Time{}, fmt.Errorf("agentapi: ping: %w: missing guest_time", ErrProtocol)
	}
	return res.GuestTime, nil
}

// Shutdown asks the guest to sync its filesystems and power off. It returns
// once the guest has acknowledged; the session then ends when the VM goes
// away.
func (s *Session) Shutdown(ctx context.Context) error {
	return s.call(ctx, TypeShutdown, Shutdown{}, &ShutdownResult{})
}

// call sends request typ with body req and decodes the result into resp.
func (s *Session) call(ctx context.Context, typ string, req, resp any) error {
	id, replies, err := s.register()
	if err != nil {
		return fmt.Errorf("agentapi: %s: %w", typ, err)
	}
	defer s.unregister(id)

	msg, err := NewMessage(typ, id, req)
	if err != nil {
		return err
	}
	if err := s.send(ctx, msg); err != nil {
		return fmt.Errorf("agentapi: %s: %w", typ, err)
	}
	select {
	case res, ok := <-replies:
		if !ok {
			return fmt.Errorf("agentapi: %s: %w", typ, s.Err())
		}
		if res.Error != "" {
			return &RemoteError{Request: typ, Message: safetext.Line(res.Error, MaxErrorText)}
		}
		if err := res.DecodeBody(resp); err != nil {
			return fmt.Errorf("agentapi: %s: %w", typ, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("agentapi: %s: %w", typ, ctx.Err())
	}
}

// register allocates a request id and the channel its result arrives on.
func (s *Session) register() (uint64, chan Envelope, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return 0, nil, s.err
	}
	s.lastID++
	ch := make(chan Envelope, 1)
	s.pending[s.lastID] = ch
	return s.lastID, ch, nil
}

// unregister forgets request id. If its result has not come, the request
// is remembered as abandoned.
func (s *Session) unregister(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pending[id]; !ok {
		return // answered, or the session has ended
	}
	delete(s.pending, id)
	if len(s.abandonQ) == maxAbandoned {
		delete(s.abandoned, s.abandonQ[0])
		s.abandonQ = s.abandonQ[1:]
	}
	s.abandoned[id] = true
	s.abandonQ = append(s.abandonQ, id)
}

// expected reports whether env is a result the host asked for: of a
// request in flight or abandoned.
func (s *Session) expected(env Envelope) bool {
	if env.Type != TypeResult || env.ID == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, pending := s.pending[env.ID]
	return pending || s.abandoned[env.ID]
}

// send writes msg, bounded by ctx. A failed write may have left part of a
// line on the stream, so it ends the session.
func (s *Session) send(ctx context.Context, msg Envelope) error {
	if err := ctx.Err(); err != nil {
		return err // nothing written: the session is unharmed
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	stop := watchContext(ctx, s.conn.SetWriteDeadline)
	err := s.enc.Encode(msg)
	stop()
	if errors.Is(err, ErrLineTooLong) {
		return err // refused before writing anything
	}
	if err != nil {
		err = ctxErr(ctx, err)
		s.fail(err)
		return err
	}
	return nil
}

// fail records err as the reason the session ends (unless one is already
// recorded) and closes the connection, which stops the reader.
func (s *Session) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
	s.conn.Close()
}

// readLoop is the session's only reader. On exit it fails pending calls
// and closes Events and Done.
func (s *Session) readLoop() {
	err := s.readMessages()
	s.fail(err)
	s.guard.stop()

	s.mu.Lock()
	pending := s.pending
	s.pending = nil
	s.mu.Unlock()
	for _, ch := range pending {
		close(ch)
	}
	close(s.events)
	close(s.done)
}

// readMessages reads until the connection fails or the guest breaks the
// protocol: a bad or over-long line, a line that stalls, a message over
// its type's size, too many messages or bytes (Limits), or a message the
// session does not accept. Violations are returned as *ViolationError.
func (s *Session) readMessages() error {
	for {
		env, err := s.dec.Decode()
		if err != nil {
			return fmt.Errorf("agentapi: read: %w", s.guard.readErr(err))
		}
		if err := s.guard.admit(env.Type, s.dec.size, s.expected(env)); err != nil {
			return fmt.Errorf("agentapi: %w", err)
		}
		if err := s.dispatch(env); err != nil {
			if v, ok := AsViolation(err); ok {
				return fmt.Errorf("agentapi: %w", violationf("%s: %s", typeName(env.Type), v.Reason))
			}
			return fmt.Errorf("agentapi: %s: %w", env.Type, err)
		}
	}
}

// dispatch handles one message from the guest. Unknown message types are
// ignored for forward compatibility.
func (s *Session) dispatch(env Envelope) error {
	if env.V != ProtocolVersion {
		return fmt.Errorf("%w: envelope version %d", ErrProtocol, env.V)
	}
	switch env.Type {
	case TypeResult:
		s.deliver(env)
		return nil
	case TypeNetworkReady:
		return s.onNetworkReady(env)
	case TypeNetworkFailed:
		return s.onNetworkFailed(env)
	case TypePortReady:
		return s.onPortReady(env)
	case TypeReady:
		return s.onReady(env)
	case TypeHeartbeat:
		return s.onHeartbeat(env)
	case TypeLoginProgress:
		return s.onLoginProgress(env)
	default:
		return nil
	}
}

// deliver hands a result to the call waiting for it. Results for unknown
// ids (e.g. of calls that gave up) are dropped.
func (s *Session) deliver(env Envelope) {
	s.mu.Lock()
	ch := s.pending[env.ID]
	delete(s.pending, env.ID)
	delete(s.abandoned, env.ID) // its id stays queued until it ages out
	s.mu.Unlock()
	if ch != nil {
		ch <- env // buffered, and only ever sent once
	}
}

// onNetworkReady accepts the report that the requested network is applied.
// Reporting another address or gateway than requested ends the session.
func (s *Session) onNetworkReady(env Envelope) error {
	var m NetworkReady
	if err := env.DecodeBody(&m); err != nil {
		return err
	}
	if s.network == nil {
		return fmt.Errorf("%w: no network was requested", ErrProtocol)
	}
	addr, err := checkNetworkReady(m, *s.network)
	if err != nil {
		return err
	}
	if s.netIface != "" {
		if m.Interface != s.netIface {
			return fmt.Errorf("%w: network moved from %s to %s", ErrProtocol, s.netIface, m.Interface)
		}
		return nil // duplicate
	}
	s.netIface = m.Interface
	s.emit(Event{
		Type: TypeNetworkReady, At: time.Now(), Interface: m.Interface,
		Address: addr.String(), Gateway: addrString(s.network.Gateway), DNSError: safetext.Line(m.DNSError, MaxErrorText),
	})
	return nil
}

// onNetworkFailed delivers the first report that the network could not be
// applied.
func (s *Session) onNetworkFailed(env Envelope) error {
	var m NetworkFailed
	if err := env.DecodeBody(&m); err != nil {
		return err
	}
	if s.network == nil {
		return fmt.Errorf("%w: no network was requested", ErrProtocol)
	}
	if err := checkErrorText("error", m.Error); err != nil {
		return err
	}
	if s.netIface != "" {
		return fmt.Errorf("%w: network_failed after network_ready", ErrProtocol)
	}
	if s.netFailed {
		return nil // duplicate
	}
	s.netFailed = true
	if m.Error == "" {
		m.Error = "unspecified error"
	}
	s.emit(Event{Type: TypeNetworkFailed, At: time.Now(), Error: safetext.Line(m.Error, MaxErrorText)})
	return nil
}

// checkNetworkFirst reports a protocol violation if a network was
// requested and the guest sent typ before network_ready.
func (s *Session) checkNetworkFirst(typ string) error {
	if s.network != nil && s.netIface == "" {
		return fmt.Errorf("%w: %s before network_ready", ErrProtocol, typ)
	}
	return nil
}

func (s *Session) onPortReady(env Envelope) error {
	var m PortReady
	if err := env.DecodeBody(&m); err != nil {
		return err
	}
	if err := s.checkNetworkFirst(TypePortReady); err != nil {
		return err
	}
	if !slices.Contains(s.required, m.Port) {
		return fmt.Errorf("%w: port %d is not required", ErrProtocol, m.Port)
	}
	if s.reported[m.Port] {
		return nil // duplicate
	}
	s.reported[m.Port] = true
	s.emit(Event{Type: TypePortReady, At: time.Now(), Port: m.Port})
	return nil
}

func (s *Session) onReady(env Envelope) error {
	var m Ready
	if err := env.DecodeBody(&m); err != nil {
		return err
	}
	if err := s.checkNetworkFirst(TypeReady); err != nil {
		return err
	}
	if err := s.checkReadyNetwork(m.Network); err != nil {
		return err
	}
	if !sameSet(m.Ports, s.required) {
		return fmt.Errorf("%w: ready ports %v, required %v", ErrProtocol, m.Ports, s.required)
	}
	for _, p := range s.required {
		if !s.reported[p] {
			return fmt.Errorf("%w: ready before port %d was reported", ErrProtocol, p)
		}
	}
	if s.readySeen {
		return nil // duplicate
	}
	s.readySeen = true
	ev := Event{Type: TypeReady, At: time.Now(), Ports: slices.Clone(s.required)}
	if s.network != nil {
		ev.Interface, ev.Address = s.netIface, s.network.Address.String()
	}
	s.emit(ev)
	return nil
}

// checkReadyNetwork checks the optional network of a ready message against
// the network_ready that preceded it.
func (s *Session) checkReadyNetwork(n *ReadyNetwork) error {
	if n == nil {
		return nil
	}
	if s.network == nil {
		return fmt.Errorf("%w: ready reports a network, none was requested", ErrProtocol)
	}
	addr, err := netip.ParsePrefix(n.Address)
	if err != nil || addr != s.network.Address || n.Interface != s.netIface {
		return fmt.Errorf("%w: ready network %q %q, network_ready said %s %s", ErrProtocol,
			clipForError(n.Interface), clipForError(n.Address), s.netIface, s.network.Address)
	}
	return nil
}

func (s *Session) onHeartbeat(env Envelope) error {
	var m Heartbeat
	if err := env.DecodeBody(&m); err != nil {
		return err
	}
	if err := checkUptime(m.UptimeSeconds); err != nil {
		return err
	}
	if !(m.Load1 >= 0 && m.Load1 <= 1e6) {
		return fmt.Errorf("%w: load1 %v out of range", ErrProtocol, m.Load1)
	}
	s.emit(Event{
		Type:            TypeHeartbeat,
		At:              time.Now(),
		Seq:             m.Seq,
		Uptime:          seconds(m.UptimeSeconds),
		MemAvailableKiB: m.MemAvailableKiB,
		Load1:           m.Load1,
	})
	return nil
}

// emit queues ev without ever blocking. The buffer keeps one slot for each
// network, port_ready and ready event still to come; heartbeats only use
// the rest and are dropped when it is full. Only the reader goroutine
// sends, so the check cannot race with another send.
func (s *Session) emit(ev Event) {
	if ev.Type == TypeHeartbeat && len(s.events) >= cap(s.events)-s.reservedSlots() {
		return
	}
	s.events <- ev
}

// reservedSlots is the number of network, port_ready and ready events that
// may still come: each is delivered at most once.
func (s *Session) reservedSlots() int {
	n := len(s.required) - len(s.reported)
	if !s.readySeen {
		n++
	}
	if s.network != nil && s.netIface == "" {
		n++ // network_ready
		if !s.netFailed {
			n++ // network_failed
		}
	}
	return n
}

// sameSet reports whether a and b hold the same elements, counting
// duplicates.
func sameSet(a, b []int) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

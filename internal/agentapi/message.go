package agentapi

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// ProtocolVersion is the protocol version this package speaks. It is carried
// in every envelope and negotiated in the challenge/hello exchange.
const ProtocolVersion = 1

// Message types.
const (
	// Handshake.
	TypeChallenge = "challenge" // host → guest, starts a session
	TypeHello     = "hello"     // guest → host, answers a challenge
	TypeConfig    = "config"    // host → guest, accepts the hello
	TypeRejected  = "rejected"  // host → guest, refuses the hello

	// Guest events.
	TypeNetworkReady  = "network_ready"
	TypeNetworkFailed = "network_failed"
	TypePortReady     = "port_ready"
	TypeReady         = "ready"
	TypeHeartbeat     = "heartbeat"

	// Requests (host → guest, with an id) and their replies.
	TypePing     = "ping"
	TypeShutdown = "shutdown"
	TypeExec     = "exec"
	TypeResult   = "result" // guest → host, answers the request with the same id
)

// Limits on what a peer may send. The guest is untrusted from the host's
// point of view, so everything it sends is bounded and validated.
const (
	// NonceSize is the number of random bytes in a challenge nonce.
	NonceSize = 32
	// MaxRequiredPorts bounds Config.RequiredPorts.
	MaxRequiredPorts = 256
	// MinHeartbeatInterval and MaxHeartbeatInterval bound
	// Config.HeartbeatInterval.
	MinHeartbeatInterval = 10 * time.Millisecond
	MaxHeartbeatInterval = time.Hour
	// DefaultHeartbeatInterval is used when Config.HeartbeatInterval is zero.
	DefaultHeartbeatInterval = 5 * time.Second

	maxShortString = 256     // hostname, kernel release, agent version, reasons
	maxUptime      = 1 << 30 // seconds (~34 years); keeps durations from overflowing
)

// Errors reported for misbehaving peers. They are wrapped; test with errors.Is.
var (
	// ErrBadProof means the guest's hello did not prove knowledge of the token.
	ErrBadProof = errors.New("bad proof")
	// ErrProtocol means the peer sent a message that violates the protocol.
	ErrProtocol = errors.New("protocol violation")
)

// Envelope is one line on the wire.
type Envelope struct {
	V     int             `json:"v"`
	Type  string          `json:"type"`
	ID    uint64          `json:"id,omitempty"`
	Body  json.RawMessage `json:"body,omitempty"`
	Error string          `json:"error,omitempty"`
}

// NewMessage returns an envelope of the given type and id whose body is the
// JSON encoding of body (omitted when body is nil).
func NewMessage(typ string, id uint64, body any) (Envelope, error) {
	env := Envelope{V: ProtocolVersion, Type: typ, ID: id}
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return Envelope{}, fmt.Errorf("agentapi: encode %s body: %w", typ, err)
		}
		env.Body = b
	}
	return env, nil
}

// NewResult returns the reply to request id: its body is the encoding of
// body, or, if reqErr is not nil, its error is reqErr's text.
func NewResult(id uint64, body any, reqErr error) (Envelope, error) {
	if reqErr != nil {
		env := Envelope{V: ProtocolVersion, Type: TypeResult, ID: id, Error: reqErr.Error()}
		if env.Error == "" {
			env.Error = "error"
		}
		return env, nil
	}
	return NewMessage(TypeResult, id, body)
}

// DecodeBody decodes the envelope's body into v. A missing body decodes as
// an empty object.
func (e Envelope) DecodeBody(v any) error {
	body := e.Body
	if len(body) == 0 || string(body) == "null" {
		body = []byte("{}")
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%w: %s body: %v", ErrProtocol, e.Type, err)
	}
	return nil
}

// Challenge starts a session (host → guest).
type Challenge struct {
	Protocol int    `json:"protocol"` // highest version the host speaks
	Nonce    string `json:"nonce"`    // base64 (standard encoding) of NonceSize random bytes
}

// DecodeNonce returns the raw nonce bytes, checking their size.
func (c Challenge) DecodeNonce() ([]byte, error) {
	nonce, err := base64.StdEncoding.DecodeString(c.Nonce)
	if err != nil {
		return nil, fmt.Errorf("%w: challenge nonce: %v", ErrProtocol, err)
	}
	if len(nonce) != NonceSize {
		return nil, fmt.Errorf("%w: challenge nonce is %d bytes, want %d", ErrProtocol, len(nonce), NonceSize)
	}
	return nonce, nil
}

// Hello answers a challenge (guest → host) and describes the guest.
type Hello struct {
	Protocol      int       `json:"protocol"` // version the guest will speak
	AgentVersion  string    `json:"agent_version"`
	BootTime      time.Time `json:"boot_time"` // guest wall-clock boot time, RFC 3339
	UptimeSeconds float64   `json:"uptime_seconds"`
	Hostname      string    `json:"hostname"`
	Kernel        string    `json:"kernel"` // uname release
	Nonce         string    `json:"nonce"`  // the challenge nonce this hello answers
	Proof         string    `json:"proof"`  // Proof(token, nonce)
}

// Uptime returns UptimeSeconds as a duration.
func (h Hello) Uptime() time.Duration { return seconds(h.UptimeSeconds) }

// Validate checks the hello's fields (but not its proof).
func (h Hello) Validate() error {
	if h.Protocol != ProtocolVersion {
		return fmt.Errorf("%w: unsupported protocol version %d", ErrProtocol, h.Protocol)
	}
	for _, f := range []struct{ name, value string }{
		{"agent_version", h.AgentVersion},
		{"hostname", h.Hostname},
		{"kernel", h.Kernel},
	} {
		if err := checkShortString(f.name, f.value); err != nil {
			return err
		}
	}
	if err := checkUptime(h.UptimeSeconds); err != nil {
		return err
	}
	if len(h.Proof) != 2*proofSize {
		return fmt.Errorf("%w: proof is %d characters, want %d", ErrProtocol, len(h.Proof), 2*proofSize)
	}
	if _, err := hex.DecodeString(h.Proof); err != nil {
		return fmt.Errorf("%w: proof is not hex", ErrProtocol)
	}
	return nil
}

// Config accepts a hello (host → guest) and tells the guest what to set up
// and report. On the wire the interval is heartbeat_interval_ms.
type Config struct {
	// RequiredPorts are the guest TCP ports that must accept connections on
	// 127.0.0.1 before the guest reports ready.
	RequiredPorts []int
	// HeartbeatInterval is the period of heartbeats once ready. Zero means
	// DefaultHeartbeatInterval.
	HeartbeatInterval time.Duration
	// Network, if not nil, is applied by the guest before it probes ports;
	// the guest then reports network_ready (or network_failed) first.
	Network *NetworkConfig
	// Limits bound what the guest may send. They stay on the host: they
	// are not part of the message. Zero fields mean the defaults.
	Limits Limits
}

type configWire struct {
	RequiredPorts       []int          `json:"required_ports"`
	HeartbeatIntervalMS int64          `json:"heartbeat_interval_ms"`
	Network             *NetworkConfig `json:"network,omitempty"`
}

// MarshalJSON implements json.Marshaler.
func (c Config) MarshalJSON() ([]byte, error) {
	w := configWire{RequiredPorts: c.RequiredPorts, HeartbeatIntervalMS: c.HeartbeatInterval.Milliseconds(), Network: c.Network}
	if w.RequiredPorts == nil {
		w.RequiredPorts = []int{}
	}
	return json.Marshal(w)
}

// UnmarshalJSON implements json.Unmarshaler.
func (c *Config) UnmarshalJSON(b []byte) error {
	var w configWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	if w.HeartbeatIntervalMS < 0 || w.HeartbeatIntervalMS > MaxHeartbeatInterval.Milliseconds() {
		return fmt.Errorf("heartbeat_interval_ms %d out of range", w.HeartbeatIntervalMS)
	}
	*c = Config{
		RequiredPorts:     w.RequiredPorts,
		HeartbeatInterval: time.Duration(w.HeartbeatIntervalMS) * time.Millisecond,
		Network:           w.Network,
	}
	return nil
}

// WithDefaults returns c with a zero HeartbeatInterval replaced by
// DefaultHeartbeatInterval, and zero limits by theirs.
func (c Config) WithDefaults() Config {
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	c.Limits = c.Limits.WithDefaults()
	return c
}

// Validate checks the ports, the interval, the network and the limits
// (with their defaults applied).
func (c Config) Validate() error {
	if len(c.RequiredPorts) > MaxRequiredPorts {
		return fmt.Errorf("%d required ports, at most %d allowed", len(c.RequiredPorts), MaxRequiredPorts)
	}
	if err := checkPorts(c.RequiredPorts); err != nil {
		return err
	}
	if c.HeartbeatInterval < MinHeartbeatInterval || c.HeartbeatInterval > MaxHeartbeatInterval {
		return fmt.Errorf("heartbeat interval %v outside [%v, %v]", c.HeartbeatInterval, MinHeartbeatInterval, MaxHeartbeatInterval)
	}
	if c.Network != nil {
		if err := c.Network.Validate(); err != nil {
			return err
		}
	}
	return c.Limits.WithDefaults().Validate()
}

// Rejected refuses a hello (host → guest); the host then closes the stream.
type Rejected struct {
	Reason string `json:"reason"`
}

// PortReady reports that a required port accepts TCP connections (guest → host).
type PortReady struct {
	Port int `json:"port"`
}

// Ready reports that every required port is ready (guest → host), and, if
// the config carried a network, which interface has which address.
type Ready struct {
	Ports   []int         `json:"ports"`
	Network *ReadyNetwork `json:"network,omitempty"`
}

// Heartbeat is sent periodically once ready (guest → host).
type Heartbeat struct {
	Seq             uint64  `json:"seq"`
	UptimeSeconds   float64 `json:"uptime_seconds"`
	MemAvailableKiB uint64  `json:"mem_available_kib"`
	Load1           float64 `json:"load1"`
}

// Ping is the body of a ping request. It has no fields.
type Ping struct{}

// PingResult is the body of the result of a ping.
type PingResult struct {
	GuestTime time.Time `json:"guest_time"`
}

// Shutdown is the body of a shutdown request. It has no fields. The guest
// replies, then syncs its filesystems and powers off.
type Shutdown struct{}

// ShutdownResult is the body of the result of a shutdown. It has no fields.
type ShutdownResult struct{}

// checkPort reports whether p is a valid TCP port number.
func checkPort(p int) error {
	if p < 1 || p > 65535 {
		return fmt.Errorf("port %d out of range", p)
	}
	return nil
}

// checkPorts validates every port and rejects duplicates.
func checkPorts(ports []int) error {
	seen := make(map[int]bool, len(ports))
	for _, p := range ports {
		if err := checkPort(p); err != nil {
			return err
		}
		if seen[p] {
			return fmt.Errorf("duplicate port %d", p)
		}
		seen[p] = true
	}
	return nil
}

func checkShortString(name, v string) error {
	if len(v) > maxShortString {
		return fmt.Errorf("%w: %s is %d bytes, at most %d allowed", ErrProtocol, name, len(v), maxShortString)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrProtocol, name)
	}
	return nil
}

func checkUptime(s float64) error {
	if !(s >= 0 && s <= maxUptime) { // also rejects NaN
		return fmt.Errorf("%w: uptime %v out of range", ErrProtocol, s)
	}
	return nil
}

// seconds converts a validated number of seconds to a duration.
func seconds(s float64) time.Duration {
	if !(s >= 0 && s <= maxUptime) {
		return 0
	}
	return time.Duration(s * float64(time.Second))
}

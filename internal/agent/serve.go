package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/hearth-project/hearth/internal/agentapi"
)

const (
	probeInterval = 100 * time.Millisecond // between rounds of port probes
	probeTimeout  = 200 * time.Millisecond // one TCP connect
	maxHelloField = 256                    // bytes; the host rejects longer fields
)

// Serve speaks the agent protocol over rw, a stream to one host connection,
// until reading fails or ctx is done. Each challenge starts a fresh session:
// Serve answers with a hello proving knowledge of token, and once
// configured reports the required ports, then heartbeats. It answers
// requests of a configured session.
//
// Serve returns ctx.Err() once ctx is done, and otherwise the read error:
// io.EOF, io.ErrUnexpectedEOF or a connection reset when the host went away. If rw has a
// SetDeadline method (net.Conn, a pollable *os.File) ctx interrupts blocked
// reads and writes; otherwise closing rw is the way to stop Serve.
func Serve(ctx context.Context, rw io.ReadWriter, token []byte, opts Options) error {
	if len(token) < agentapi.MinTokenSize {
		return fmt.Errorf("serve: token is %d bytes, at least %d required", len(token), agentapi.MinTokenSize)
	}
	return newServer(rw, token, opts.withDefaults()).serve(ctx)
}

// handler answers one request type. afterReply, if not nil, runs once the
// reply has been written.
type handler func(ctx context.Context, req agentapi.Envelope) (result any, afterReply func(), err error)

// server is the state of one Serve call.
type server struct {
	rw       io.ReadWriter
	opts     Options
	log      *slog.Logger
	token    []byte
	enc      *agentapi.Encoder
	dec      *agentapi.Decoder
	handlers map[string]handler

	received bool     // a line was read from the host
	sess     *session // the current host session, nil before a challenge
}

// session is one host session, from a challenge until the next one, a
// rejection, or the end of Serve.
type session struct {
	configured bool
	stop       context.CancelFunc // stops the reporter (nil until configured)
	done       chan struct{}      // closed when the reporter has exited
}

func newServer(rw io.ReadWriter, token []byte, opts Options) *server {
	s := &server{
		rw:    rw,
		opts:  opts,
		log:   opts.Logger,
		token: token,
		enc:   agentapi.NewEncoder(rw),
		dec:   agentapi.NewDecoder(rw),
	}
	s.handlers = map[string]handler{
		agentapi.TypePing:     s.ping,
		agentapi.TypeShutdown: s.shutdown,
	}
	return s
}

func (s *server) serve(ctx context.Context) error {
	stop := interruptOnDone(ctx, s.rw)
	defer stop()
	defer s.endSession() // before stop: the reporter may need the interrupt

	for {
		env, err := s.dec.Decode()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, agentapi.ErrLineTooLong) || errors.Is(err, agentapi.ErrMalformed) {
			s.received = true
			s.log.Warn("ignoring bad line from host", "err", err)
			continue
		}
		if err != nil {
			return err
		}
		s.received = true
		s.handle(ctx, env)
	}
}

// handle dispatches one message from the host. Messages without an id that
// the agent does not know are ignored, for forward compatibility.
func (s *server) handle(ctx context.Context, env agentapi.Envelope) {
	switch env.Type {
	case agentapi.TypeChallenge:
		s.onChallenge(ctx, env)
	case agentapi.TypeConfig:
		s.onConfig(ctx, env)
	case agentapi.TypeRejected:
		s.onRejected(env)
	default:
		if env.ID != 0 {
			s.onRequest(ctx, env)
		}
	}
}

// onChallenge ends any current session and answers with a hello.
func (s *server) onChallenge(ctx context.Context, env agentapi.Envelope) {
	s.endSession()
	var c agentapi.Challenge
	if err := env.DecodeBody(&c); err != nil {
		s.log.Warn("ignoring bad challenge", "err", err)
		return
	}
	nonce, err := c.DecodeNonce()
	if err != nil {
		s.log.Warn("ignoring bad challenge", "err", err)
		return
	}
	if c.Protocol < agentapi.ProtocolVersion {
		s.log.Warn("ignoring challenge for unsupported protocol", "protocol", c.Protocol)
		return
	}
	if err := s.send(agentapi.TypeHello, s.hello(c.Nonce, nonce)); err != nil {
		s.logSendError(ctx, err)
		return
	}
	s.sess = &session{}
	s.log.Info("host connected, sent hello")
}

// hello describes this guest and proves knowledge of the token.
func (s *server) hello(nonceText string, nonce []byte) agentapi.Hello {
	up := uptimeSeconds()
	return agentapi.Hello{
		Protocol:      agentapi.ProtocolVersion,
		AgentVersion:  clip(s.opts.Version, maxHelloField),
		BootTime:      bootTime(time.Now(), up),
		UptimeSeconds: up,
		Hostname:      clip(hostname(), maxHelloField),
		Kernel:        clip(kernelRelease(), maxHelloField),
		Nonce:         nonceText,
		Proof:         agentapi.Proof(s.token, nonce),
	}
}

// onConfig starts reporting for the session the config accepts.
func (s *server) onConfig(ctx context.Context, env agentapi.Envelope) {
	if s.sess == nil || s.sess.configured {
		s.log.Warn("ignoring unexpected config")
		return
	}
	var cfg agentapi.Config
	if err := env.DecodeBody(&cfg); err != nil {
		s.log.Warn("ignoring bad config", "err", err)
		return
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		s.log.Warn("ignoring bad config", "err", err)
		return
	}
	s.log.Info("session configured", "required_ports", fmt.Sprint(cfg.RequiredPorts),
		"heartbeat_interval", cfg.HeartbeatInterval)

	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	s.sess.configured, s.sess.stop, s.sess.done = true, cancel, done
	go func() {
		defer close(done)
		s.report(rctx, cfg)
	}()
}

func (s *server) onRejected(env agentapi.Envelope) {
	var r agentapi.Rejected
	_ = env.DecodeBody(&r)
	s.log.Warn("host rejected agent", "reason", clip(r.Reason, maxHelloField))
	s.endSession()
}

// endSession stops the current session's reporter and waits for it.
func (s *server) endSession() {
	if s.sess == nil {
		return
	}
	if s.sess.stop != nil {
		s.sess.stop()
		<-s.sess.done
	}
	s.sess = nil
}

// onRequest answers a request, then runs its afterReply action.
func (s *server) onRequest(ctx context.Context, req agentapi.Envelope) {
	result, afterReply, err := s.dispatch(ctx, req)
	reply, err := agentapi.NewResult(req.ID, result, err)
	if err != nil {
		reply, _ = agentapi.NewResult(req.ID, nil, err)
	}
	if err := s.enc.Encode(reply); err != nil {
		s.logSendError(ctx, err)
		return
	}
	if afterReply != nil {
		afterReply()
	}
}

func (s *server) dispatch(ctx context.Context, req agentapi.Envelope) (any, func(), error) {
	if req.V != agentapi.ProtocolVersion {
		return nil, nil, fmt.Errorf("unsupported protocol version %d", req.V)
	}
	if s.sess == nil || !s.sess.configured {
		return nil, nil, errors.New("no session")
	}
	h, ok := s.handlers[req.Type]
	if !ok {
		return nil, nil, fmt.Errorf("unknown request type %s", clip(req.Type, maxHelloField))
	}
	return h(ctx, req)
}

func (s *server) ping(context.Context, agentapi.Envelope) (any, func(), error) {
	return agentapi.PingResult{GuestTime: time.Now().UTC()}, nil, nil
}

// shutdown replies, then powers off.
func (s *server) shutdown(context.Context, agentapi.Envelope) (any, func(), error) {
	after := func() {
		s.log.Info("shutdown requested, powering off")
		if err := s.opts.PowerOff(); err != nil {
			s.log.Error("power off failed", "err", err)
		}
	}
	return agentapi.ShutdownResult{}, after, nil
}

// report sends port_ready for each required port as it starts accepting
// connections, then ready, then heartbeats until ctx is done.
func (s *server) report(ctx context.Context, cfg agentapi.Config) {
	if err := s.awaitPorts(ctx, cfg.RequiredPorts); err != nil {
		s.logSendError(ctx, err)
		return
	}
	ports := slices.Clone(cfg.RequiredPorts)
	if ports == nil {
		ports = []int{}
	}
	if err := s.send(agentapi.TypeReady, agentapi.Ready{Ports: ports}); err != nil {
		s.logSendError(ctx, err)
		return
	}
	s.log.Info("ready", "ports", fmt.Sprint(ports))
	if err := s.heartbeats(ctx, cfg.HeartbeatInterval); err != nil {
		s.logSendError(ctx, err)
	}
}

// awaitPorts probes the ports every probeInterval, sending port_ready for
// each one that accepts a connection, until all have.
func (s *server) awaitPorts(ctx context.Context, ports []int) error {
	pending := slices.Clone(ports)
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		var still []int
		for _, p := range pending {
			if !portOpen(ctx, p) {
				still = append(still, p)
				continue
			}
			if err := s.send(agentapi.TypePortReady, agentapi.PortReady{Port: p}); err != nil {
				return err
			}
			s.log.Info("port ready", "port", p)
		}
		if pending = still; len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// heartbeats sends a heartbeat every interval until ctx is done.
func (s *server) heartbeats(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for seq := uint64(1); ; seq++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		hb := agentapi.Heartbeat{
			Seq:             seq,
			UptimeSeconds:   uptimeSeconds(),
			MemAvailableKiB: memAvailableKiB(),
			Load1:           load1(),
		}
		if err := s.send(agentapi.TypeHeartbeat, hb); err != nil {
			return err
		}
	}
}

// send writes an unsolicited message.
func (s *server) send(typ string, body any) error {
	msg, err := agentapi.NewMessage(typ, 0, body)
	if err != nil {
		return err
	}
	return s.enc.Encode(msg)
}

// logSendError logs a failed write unless it is due to the session ending.
func (s *server) logSendError(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	s.log.Warn("write to host failed", "err", err)
}

// portOpen reports whether 127.0.0.1:port accepts TCP connections.
func portOpen(ctx context.Context, port int) bool {
	d := net.Dialer{Timeout: probeTimeout}
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// interruptOnDone makes blocked reads and writes on rw fail once ctx is
// done, if rw supports deadlines. The returned function undoes this.
func interruptOnDone(ctx context.Context, rw io.ReadWriter) (stop func()) {
	d, ok := rw.(interface{ SetDeadline(time.Time) error })
	if !ok {
		return func() {}
	}
	fired := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		_ = d.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	return func() {
		if !stopAfter() {
			<-fired
			_ = d.SetDeadline(time.Time{})
		}
	}
}

// clip shortens s to at most n bytes without splitting a UTF-8 sequence.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

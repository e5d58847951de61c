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
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/safetext"
)

const (
	probeInterval = 100 * time.Millisecond // between rounds of port probes
	probeTimeout  = 200 * time.Millisecond // one TCP connect
	maxHelloField = 256                    // bytes; the host rejects longer fields
)

// Serve speaks the agent protocol over rw, a stream to one host connection,
// until reading fails or ctx is done. Each challenge starts a fresh session:
// Serve answers with a hello proving knowledge of token, and once
// configured sets up the network (if the config has one), reports the
// required ports, then heartbeats. It answers requests of a configured
// session, each in its own goroutine; a session's running requests are
// cancelled when it ends, and their replies are never written into the
// next one.
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

// maxInflightRequests bounds the requests being answered at once; more are
// refused.
const maxInflightRequests = 32

// handler answers one request type. ctx is done when the session ends.
// afterReply, if not nil, runs once the reply has been written.
type handler func(ctx context.Context, req agentapi.Envelope) (result any, afterReply func(), err error)

// server is the state of one Serve call.
type server struct {
	rw       io.ReadWriter
	opts     Options
	log      *slog.Logger
	token    []byte
	enc      *agentapi.Encoder // safe for concurrent use; one Write per message
	dec      *agentapi.Decoder
	net      networker
	handlers map[string]handler
	inflight chan struct{}            // a token per request being answered
	limits   map[string]chan struct{} // tighter bounds for some request types
	requests sync.WaitGroup           // request goroutines

	cmu     sync.Mutex
	cancels map[requestKey]context.CancelFunc // requests in progress, for cancel

	// Owned by the reading goroutine.
	received bool     // a line was read from the host
	sess     *session // the current host session, nil before a challenge
}

// session is one host session, from a challenge until the next one, a
// rejection, or the end of Serve.
type session struct {
	ctx        context.Context // done when the session ends
	cancel     context.CancelFunc
	configured bool          // owned by the reading goroutine
	reporter   chan struct{} // closed when the reporter has exited; nil until configured

	mu    sync.Mutex // held while a reply is written
	ended bool       // no reply may be written any more
}

func newServer(rw io.ReadWriter, token []byte, opts Options) *server {
	if opts.WrapChannel != nil {
		rw = opts.WrapChannel(rw)
	}
	s := &server{
		rw:       rw,
		opts:     opts,
		log:      opts.Logger,
		token:    token,
		enc:      agentapi.NewEncoder(rw),
		dec:      agentapi.NewDecoder(rw),
		net:      networker{ops: opts.netOps, linkTimeout: opts.linkTimeout, resolvConf: opts.resolvConf},
		inflight: make(chan struct{}, maxInflightRequests),
		limits: map[string]chan struct{}{
			agentapi.TypeExec:  make(chan struct{}, maxConcurrentExecs),
			agentapi.TypeLogin: make(chan struct{}, maxConcurrentLogins),
		},
		cancels: map[requestKey]context.CancelFunc{},
	}
	s.handlers = map[string]handler{
		agentapi.TypePing:      s.ping,
		agentapi.TypeShutdown:  s.shutdown,
		agentapi.TypeExec:      s.exec,
		agentapi.TypeLogin:     s.login,
		agentapi.TypeCancel:    s.cancel,
		agentapi.TypeWriteFile: s.writeFile,
	}
	return s
}

func (s *server) serve(ctx context.Context) error {
	stop := interruptOnDone(ctx, s.rw)
	defer stop()
	defer s.requests.Wait() // ending the session stops them
	defer s.endSession()    // before stop: the reporter may need the interrupt

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
		s.onConfig(env)
	case agentapi.TypeRejected:
		s.onRejected(env)
	default:
		if env.ID != 0 {
			s.onRequest(env)
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
	sctx, cancel := context.WithCancel(ctx)
	s.sess = &session{ctx: sctx, cancel: cancel}
	s.log.Info("host connected, sent hello")
}

// hello describes this guest and proves knowledge of the token. Its text
// fields are valid UTF-8 within the host's bound: JSON would turn each
// invalid byte into three, and the host refuses a hello with a longer field.
func (s *server) hello(nonceText string, nonce []byte) agentapi.Hello {
	up := uptimeSeconds()
	return agentapi.Hello{
		Protocol:      agentapi.ProtocolVersion,
		AgentVersion:  safetext.Clip(s.opts.Version, maxHelloField),
		BootTime:      bootTime(time.Now(), up),
		UptimeSeconds: up,
		Hostname:      safetext.Clip(hostname(), maxHelloField),
		Kernel:        safetext.Clip(kernelRelease(), maxHelloField),
		Nonce:         nonceText,
		Proof:         agentapi.Proof(s.token, nonce),
	}
}

// onConfig starts the reporter for the session the config accepts. The
// network is validated by the reporter, so that a bad one is answered
// with network_failed rather than silence.
func (s *server) onConfig(env agentapi.Envelope) {
	if s.sess == nil || s.sess.configured {
		s.log.Warn("ignoring unexpected config")
		return
	}
	var cfg agentapi.Config
	if err := env.DecodeBody(&cfg); err != nil {
		s.log.Warn("ignoring bad config", "err", err)
		return
	}
	network := cfg.Network
	cfg.Network = nil
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		s.log.Warn("ignoring bad config", "err", err)
		return
	}
	s.log.Info("session configured", "required_ports", fmt.Sprint(cfg.RequiredPorts),
		"heartbeat_interval", cfg.HeartbeatInterval, "network", network != nil)

	sess := s.sess
	sess.configured = true
	sess.reporter = make(chan struct{})
	go func() {
		defer close(sess.reporter)
		s.report(sess.ctx, cfg, network)
	}()
}

func (s *server) onRejected(env agentapi.Envelope) {
	var r agentapi.Rejected
	_ = env.DecodeBody(&r)
	s.log.Warn("host rejected agent", "reason", safetext.Clip(r.Reason, maxHelloField))
	s.endSession()
}

// endSession ends the current session, if any.
func (s *server) endSession() {
	if s.sess == nil {
		return
	}
	s.sess.end()
	s.sess = nil
}

// end stops the session. Once it returns, no reply of the session will be
// written (one being written is finished first), its requests are
// cancelled and its reporter has exited.
func (sess *session) end() {
	sess.mu.Lock()
	sess.ended = true
	sess.mu.Unlock()
	sess.cancel()
	if sess.reporter != nil {
		<-sess.reporter
	}
}

// onRequest answers a request in a goroutine of its own, so that a slow
// one (exec) holds up neither the reader nor other requests. A request
// that cannot be routed or admitted is refused at once.
func (s *server) onRequest(req agentapi.Envelope) {
	sess := s.sess
	h, err := s.route(req)
	var release func()
	if err == nil {
		release, err = s.admit(req.Type)
	}
	if err != nil {
		s.reply(sess, req.ID, nil, err)
		return
	}
	key := requestKey{sess, req.ID}
	ctx, cancel := context.WithCancel(context.WithValue(sess.ctx, sessionKey{}, sess))
	s.cmu.Lock()
	s.cancels[key] = cancel
	s.cmu.Unlock()
	s.requests.Add(1)
	go func() {
		defer s.requests.Done()
		result, afterReply, err := h(ctx, req)
		written := s.reply(sess, req.ID, result, err)
		s.cmu.Lock()
		delete(s.cancels, key)
		s.cmu.Unlock()
		cancel()
		release()
		if written && afterReply != nil {
			afterReply()
		}
	}()
}

// sessionKey carries a request's session in its context.
type sessionKey struct{}

// requestKey names a request in progress: ids are per session.
type requestKey struct {
	sess *session
	id   uint64
}

// maxConcurrentLogins bounds the logins running at once.
const maxConcurrentLogins = 2

// cancel cancels a request of the current session that is still running
// (one that already ended is not an error).
func (s *server) cancel(ctx context.Context, req agentapi.Envelope) (any, func(), error) {
	var c agentapi.Cancel
	if err := req.DecodeBody(&c); err != nil {
		return nil, nil, err
	}
	s.cmu.Lock()
	for k, cancel := range s.cancels {
		if k.id == c.RequestID && k.sess == ctx.Value(sessionKey{}) {
			cancel()
		}
	}
	s.cmu.Unlock()
	return struct{}{}, nil, nil
}

// writeFile writes a file as a guest user. Only the path is logged.
func (s *server) writeFile(ctx context.Context, req agentapi.Envelope) (any, func(), error) {
	var r agentapi.WriteFileRequest
	if err := req.DecodeBody(&r); err != nil {
		return nil, nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, nil, err
	}
	if err := writeFile(ctx, r); err != nil {
		return nil, nil, err
	}
	s.log.Info("file written", "path", safetext.Clip(r.Path, 256), "user", r.User, "bytes", len(r.Content))
	return struct{}{}, nil, nil
}

// login runs a provider CLI's login and answers with its credential
// files. Progress goes to the host as it happens. Neither the files nor
// the URL are logged.
func (s *server) login(ctx context.Context, req agentapi.Envelope) (any, func(), error) {
	var r agentapi.LoginRequest
	if err := req.DecodeBody(&r); err != nil {
		return nil, nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, nil, err
	}
	progress := func(p agentapi.LoginProgress) {
		if ctx.Err() != nil {
			return
		}
		msg, err := agentapi.NewMessage(agentapi.TypeLoginProgress, req.ID, p)
		if err == nil {
			err = s.enc.Encode(msg)
		}
		if err != nil {
			s.logSendError(ctx, err)
		}
	}
	s.log.Info("login starting", "cmd", safetext.Clip(r.Argv[0], maxHelloField), "user", r.User)
	res, err := runLogin(ctx, r, progress, s.log)
	if err != nil {
		s.log.Warn("login failed", "cmd", safetext.Clip(r.Argv[0], maxHelloField), "err", err)
		return nil, nil, err
	}
	s.log.Info("login captured its credentials", "cmd", safetext.Clip(r.Argv[0], maxHelloField), "files", len(res.Files),
		"exit_code", res.ExitCode, "duration", res.Duration)
	return res, nil, nil
}

// route returns the handler of a request of the configured session.
func (s *server) route(req agentapi.Envelope) (handler, error) {
	if req.V != agentapi.ProtocolVersion {
		return nil, fmt.Errorf("unsupported protocol version %d", req.V)
	}
	if s.sess == nil || !s.sess.configured {
		return nil, errors.New("no session")
	}
	h, ok := s.handlers[req.Type]
	if !ok {
		return nil, fmt.Errorf("unknown request type %s", safetext.Clip(req.Type, maxHelloField))
	}
	return h, nil
}

// admit takes a slot for a request of type typ, or says why there is none.
// release gives the slot back.
func (s *server) admit(typ string) (release func(), err error) {
	select {
	case s.inflight <- struct{}{}:
	default:
		return nil, fmt.Errorf("too many requests in progress (at most %d)", cap(s.inflight))
	}
	limit := s.limits[typ]
	if limit == nil {
		return func() { <-s.inflight }, nil
	}
	select {
	case limit <- struct{}{}:
		return func() { <-limit; <-s.inflight }, nil
	default:
		<-s.inflight
		return nil, fmt.Errorf("too many %s requests in progress (at most %d)", typ, cap(limit))
	}
}

// reply writes the result of request id, result or reqErr, unless sess
// (nil before any challenge) has ended. It reports whether it wrote it.
func (s *server) reply(sess *session, id uint64, result any, reqErr error) bool {
	if reqErr != nil {
		reqErr = errors.New(errorText(reqErr))
	}
	env, err := agentapi.NewResult(id, result, reqErr)
	if err != nil {
		env, _ = agentapi.NewResult(id, nil, err)
	}
	ctx := context.Background()
	if sess != nil {
		sess.mu.Lock()
		defer sess.mu.Unlock()
		if sess.ended {
			return false
		}
		ctx = sess.ctx
	}
	err = s.enc.Encode(env)
	if errors.Is(err, agentapi.ErrLineTooLong) { // nothing was written
		env, _ = agentapi.NewResult(id, nil, errors.New("result too large"))
		err = s.enc.Encode(env)
	}
	if err != nil {
		s.logSendError(ctx, err)
		return false
	}
	return true
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

// exec runs a command until it exits, its timeout passes or the session
// ends. Only the command's name is logged: its arguments may be secret.
func (s *server) exec(ctx context.Context, req agentapi.Envelope) (any, func(), error) {
	var r agentapi.ExecRequest
	if err := req.DecodeBody(&r); err != nil {
		return nil, nil, err
	}
	r = r.WithDefaults()
	if err := r.Validate(); err != nil {
		return nil, nil, err
	}
	res, err := runCommand(ctx, r)
	if err != nil {
		s.log.Warn("exec failed", "cmd", safetext.Clip(r.Argv[0], maxHelloField), "err", err)
		return nil, nil, fmt.Errorf("exec: %w", err)
	}
	s.log.Info("exec done", "cmd", safetext.Clip(r.Argv[0], maxHelloField), "exit_code", res.ExitCode,
		"signal", res.Signal, "timed_out", res.TimedOut, "duration", res.Duration)
	return res, nil, nil
}

// report sets up the network, if cfg had one, then sends port_ready for
// each required port as it starts accepting connections, then ready, then
// heartbeats until ctx is done.
func (s *server) report(ctx context.Context, cfg agentapi.Config, network *agentapi.NetworkConfig) {
	ready := agentapi.Ready{Ports: slices.Clone(cfg.RequiredPorts)}
	if ready.Ports == nil {
		ready.Ports = []int{}
	}
	if network != nil {
		nr, ok := s.setUpNetwork(ctx, *network)
		if !ok {
			return
		}
		ready.Network = &agentapi.ReadyNetwork{Interface: nr.Interface, Address: nr.Address}
	}
	if err := s.awaitPorts(ctx, cfg.RequiredPorts); err != nil {
		s.logSendError(ctx, err)
		return
	}
	if err := s.send(agentapi.TypeReady, ready); err != nil {
		s.logSendError(ctx, err)
		return
	}
	s.log.Info("ready", "ports", fmt.Sprint(ready.Ports))
	if err := s.heartbeats(ctx, cfg.HeartbeatInterval); err != nil {
		s.logSendError(ctx, err)
	}
}

// setUpNetwork applies network and tells the host how it went. It returns
// false when the session must not go on: the network failed (the host was
// sent network_failed; a new challenge tries again) or the session ended.
func (s *server) setUpNetwork(ctx context.Context, network agentapi.NetworkConfig) (agentapi.NetworkReady, bool) {
	nr, err := s.net.apply(ctx, network)
	if ctx.Err() != nil {
		return agentapi.NetworkReady{}, false
	}
	if err != nil {
		s.log.Error("network configuration failed", "err", err)
		failed := agentapi.NetworkFailed{Error: errorText(err)}
		if err := s.send(agentapi.TypeNetworkFailed, failed); err != nil {
			s.logSendError(ctx, err)
		}
		return agentapi.NetworkReady{}, false
	}
	if nr.DNSError != "" {
		s.log.Warn("resolv.conf not written", "err", nr.DNSError)
	}
	s.log.Info("network configured", "interface", nr.Interface, "address", nr.Address, "gateway", nr.Gateway)
	if err := s.send(agentapi.TypeNetworkReady, nr); err != nil {
		s.logSendError(ctx, err)
		return agentapi.NetworkReady{}, false
	}
	return nr, true
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

// errorText is err's text as the host accepts it: valid UTF-8 of at most
// agentapi.MaxErrorText bytes.
func errorText(err error) string { return safetext.Clip(err.Error(), agentapi.MaxErrorText) }

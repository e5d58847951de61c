package fctest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultInstanceID is Firecracker's instance id when --id is not given.
const DefaultInstanceID = "anonymous-instance"

// DefaultMaxPayload is Firecracker's default --http-api-max-payload-size.
const DefaultMaxPayload = 51200

// Options configure a Server.
type Options struct {
	// SocketPath is the API socket to create (required). As in
	// Firecracker, an existing file there is an error.
	SocketPath string
	// InstanceID is GET /'s id (default DefaultInstanceID).
	InstanceID string
	// RequestLog, if set, is a file every request is appended to as one
	// JSON line (a Request), besides Requests().
	RequestLog string
	// Faults answers a request with 400 and the given fault_message
	// instead of carrying it out, after it passed the spec. The key is
	// "METHOD /path", with the request's path ("PUT /drives/rootfs") or
	// the spec's template ("PUT /drives/{drive_id}").
	Faults map[string]string
	// AgentPath, if set, is the guest agent binary started when the guest
	// boots (see Server).
	AgentPath string
	// GuestDir holds the fake guest's sockets (vsock-<port>.sock). The
	// default is a directory next to the API socket; a directory the
	// server creates is removed by Close.
	GuestDir string
	// Stdout is the process's standard output: the serial console when no
	// serial_out_path is set and the log before PUT /logger (default
	// os.Stdout).
	Stdout io.Writer
	// MaxPayload is the API's request size limit (default
	// DefaultMaxPayload), MMDSSizeLimit the data store's (default
	// MaxPayload).
	MaxPayload    int
	MMDSSizeLimit int
	// Logger and MetricsPath configure logging and metrics from the
	// start, as Firecracker's --log-path/--level/--show-level/
	// --show-log-origin/--module and --metrics-path flags do.
	Logger      *Logger
	MetricsPath string
	// ExitDelay is how long after answering SendCtrlAltDel the "guest"
	// takes to reboot, which makes Firecracker exit (default 100ms).
	ExitDelay time.Duration
	// LogFlood, if positive, is how long a misbehaving guest makes
	// Firecracker write log lines and metrics as fast as they are taken,
	// once it runs (see Server.flood).
	LogFlood time.Duration
}

// Request is one API request the server answered.
type Request struct {
	Time   time.Time `json:"time"`
	Method string    `json:"method"`
	Path   string    `json:"path"`
	Body   string    `json:"body,omitempty"`
	Status int       `json:"status"`
	// Fault is the fault_message of a 4xx answer.
	Fault string `json:"fault,omitempty"`
	// Violation says how the request broke Firecracker's swagger
	// document; empty when it did not.
	Violation string `json:"violation,omitempty"`
}

// vmState is the instance's state as GET / reports it.
type vmState string

const (
	stateNotStarted vmState = "Not started"
	stateRunning    vmState = "Running"
	statePaused     vmState = "Paused"
)

// Server is a fake Firecracker process: its API on a Unix socket and the
// fake guest behind it.
//
// The guest "boots" at InstanceStart (or PUT /snapshot/load): kernel-like
// lines go to the serial console (serial_out_path, else Stdout) when the
// boot arguments have console=ttyS0, as the real kernel's would; MMDS is
// served over HTTP on 127.0.0.1 (MMDSURL) when /mmds/config was set; and
// the agent, if configured, is started as
//
//	AGENT -listen unix:<GuestDir>/vsock-1024.sock -data-listen unix:<GuestDir>/vsock-1025.sock \
//	      -token-source mmds -mmds-url <MMDSURL>
//
// with its output on the serial console. A vsock device (bound at PUT
// /vsock, as Firecracker does) forwards "CONNECT <port>\n" to the guest's
// listener GuestSocket(port), answers "OK <host port>\n" and proxies, or
// closes the connection unanswered when nothing listens there.
type Server struct {
	opts   Options
	spec   *Spec
	ln     net.Listener
	http   *http.Server
	log    *fcLogger
	reqLog *os.File

	mu       sync.Mutex
	state    vmState
	running  atomic.Bool // state == stateRunning, readable without mu
	bootPath bool        // a boot-specific resource was configured
	cfg      VMConfig
	mmds     *mmdsStore
	vsock    *vsockDev
	guest    *guest
	metrics  *dropWriter
	// missedMetrics counts metrics lines lost (missed_metrics_count).
	missedMetrics int64
	requests      []Request
	counts        map[string]int // requests per method and resource, for metrics
	closed        bool
	// rebootPending: Ctrl+Alt+Del was sent; a paused guest reboots once
	// resumed.
	rebootPending bool
	// bootArgs of a guest restored from a snapshot.
	bootArgs string

	guestDirCreated bool
	done            chan struct{}
	exitOnce        sync.Once
	exitCode        int
	bg              sync.WaitGroup
}

// Start creates the API socket and serves the fake Firecracker API on it
// until Close or until the fake VM exits (see Done).
func Start(opts Options) (*Server, error) {
	if opts.SocketPath == "" {
		return nil, errors.New("fctest: Options.SocketPath is required")
	}
	if opts.InstanceID == "" {
		opts.InstanceID = DefaultInstanceID
	}
	if opts.Stdout == nil {
		opts.Stdout = os.Stdout
	}
	if opts.MaxPayload <= 0 {
		opts.MaxPayload = DefaultMaxPayload
	}
	if opts.MMDSSizeLimit <= 0 {
		opts.MMDSSizeLimit = opts.MaxPayload
	}
	if opts.ExitDelay <= 0 {
		opts.ExitDelay = 100 * time.Millisecond
	}
	s := &Server{
		opts:   opts,
		spec:   mustSpec(),
		state:  stateNotStarted,
		cfg:    VMConfig{Drives: []Drive{}, NetworkInterfaces: []NetworkInterface{}, MachineConfig: defaultMachineConfig()},
		counts: map[string]int{},
		done:   make(chan struct{}),
		log:    newLogger(opts.InstanceID, opts.Stdout),
	}
	if s.opts.GuestDir == "" {
		s.opts.GuestDir = filepath.Join(filepath.Dir(opts.SocketPath), "fakefc-guest-"+opts.InstanceID)
	}
	if _, err := os.Stat(s.opts.GuestDir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(s.opts.GuestDir, 0o700); err != nil {
			return nil, fmt.Errorf("fctest: create guest dir: %w", err)
		}
		s.guestDirCreated = true
	}
	if opts.Logger != nil {
		if err := s.log.configure(*opts.Logger); err != nil {
			s.cleanupGuestDir()
			return nil, fmt.Errorf("fctest: could not initialize logger: %w", err)
		}
		l := *opts.Logger
		s.cfg.Logger = &l
	}
	s.log.Unrestricted("Running Firecracker v" + SpecVersion)
	if opts.MetricsPath != "" {
		f, err := openDropFile(opts.MetricsPath)
		if err != nil {
			s.closeFiles()
			s.cleanupGuestDir()
			return nil, fmt.Errorf("fctest: could not initialize metrics: %w", err)
		}
		s.metrics = f
		s.cfg.Metrics = &Metrics{MetricsPath: opts.MetricsPath}
	}
	if opts.RequestLog != "" {
		f, err := os.OpenFile(opts.RequestLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			s.cleanupGuestDir()
			return nil, fmt.Errorf("fctest: open request log: %w", err)
		}
		s.reqLog = f
	}
	// Firecracker refuses an API socket path that exists (the bind fails
	// with "address in use"); it never removes one.
	ln, err := net.Listen("unix", opts.SocketPath)
	if err != nil {
		s.closeFiles()
		s.cleanupGuestDir()
		return nil, fmt.Errorf("fctest: failed to open the API socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	s.ln = ln
	s.http = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		_ = s.http.Serve(ln)
	}()
	return s, nil
}

// SocketPath is the API socket.
func (s *Server) SocketPath() string { return s.opts.SocketPath }

// GuestDir is where the fake guest's sockets are.
func (s *Server) GuestDir() string { return s.opts.GuestDir }

// GuestSocket is the Unix socket a guest program listening on vsock port
// listens on in the fake; the vsock device dials it for "CONNECT port".
func (s *Server) GuestSocket(port uint32) string {
	return filepath.Join(s.opts.GuestDir, fmt.Sprintf("vsock-%d.sock", port))
}

// setState changes the instance state (with s.mu held).
func (s *Server) setState(st vmState) {
	s.state = st
	s.running.Store(st == stateRunning)
}

// State is GET /'s state: "Not started", "Running" or "Paused".
func (s *Server) State() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.state)
}

// Config returns a copy of the microVM's configuration as set so far.
func (s *Server) Config() VMConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.clone()
}

// MMDS returns the data store as JSON ("{}" when empty).
func (s *Server) MMDS() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mmds == nil {
		return []byte("{}")
	}
	return s.mmds.json()
}

// MMDSURL is the fake guest's metadata service (http://127.0.0.1:port),
// empty until the guest runs with MMDS configured.
func (s *Server) MMDSURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.guest == nil {
		return ""
	}
	return s.guest.mmdsURL()
}

// AgentPID is the running agent's process id, 0 if none.
func (s *Server) AgentPID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.guest == nil {
		return 0
	}
	return s.guest.agentPID()
}

// Requests returns every request answered so far, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Violations returns the requests that broke Firecracker's swagger
// document.
func (s *Server) Violations() []Request {
	var out []Request
	for _, r := range s.Requests() {
		if r.Violation != "" {
			out = append(out, r)
		}
	}
	return out
}

// Done is closed when the fake Firecracker process would have exited:
// after SendCtrlAltDel (the guest rebooted) or a failed snapshot load. The
// API is no longer served then. ExitCode says how it exited.
func (s *Server) Done() <-chan struct{} { return s.done }

// ExitCode is the exit status Firecracker would have had, once Done is
// closed: 0 after SendCtrlAltDel, 1 after a failed snapshot load.
func (s *Server) ExitCode() int {
	<-s.done
	return s.exitCode
}

// Close stops serving, stops the guest (killing the agent) and removes the
// guest directory if the server created it. It leaves the API and vsock
// sockets in place, as an exiting Firecracker does.
func (s *Server) Close() error {
	s.exit(-1)
	s.bg.Wait()
	s.closeFiles()
	s.cleanupGuestDir()
	return nil
}

// exit shuts the fake process down once; code < 0 means Close without the
// VM exiting on its own (Done is closed all the same).
func (s *Server) exit(code int) {
	s.exitOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		g := s.guest
		s.guest = nil
		v := s.vsock
		s.vsock = nil
		s.mu.Unlock()
		if g != nil {
			g.stop()
		}
		if v != nil {
			v.close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.http.Shutdown(ctx)
		cancel()
		if code < 0 {
			code = 0
		}
		s.exitCode = code
		close(s.done)
	})
}

func (s *Server) closeFiles() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reqLog != nil {
		s.reqLog.Close()
		s.reqLog = nil
	}
	if s.metrics != nil {
		s.metrics.Close()
		s.metrics = nil
	}
	s.log.close()
}

func (s *Server) cleanupGuestDir() {
	if s.guestDirCreated {
		os.RemoveAll(s.opts.GuestDir)
	}
}

// reply is what a request gets.
type reply struct {
	status    int
	body      any // marshalled as JSON; nil: no body
	raw       []byte
	fault     string
	violation string
	after     func() // run after the response is written
}

func faultReply(status int, format string, args ...any) reply {
	msg := fmt.Sprintf(format, args...)
	return reply{status: status, fault: msg}
}

func badRequest(format string, args ...any) reply {
	return faultReply(http.StatusBadRequest, format, args...)
}

var noContent = reply{status: http.StatusNoContent}

// ServeHTTP answers one API request as Firecracker would.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(s.opts.MaxPayload)+1))
	var rep reply
	switch {
	case err != nil:
		rep = badRequest("reading the request body: %v", err)
	case len(body) > s.opts.MaxPayload:
		rep = badRequest("Request payload with size %d is larger than the limit of %d allowed by server.", r.ContentLength, s.opts.MaxPayload)
	default:
		rep = s.handle(r.Method, r.URL.Path, body)
	}
	out := rep.raw
	if rep.fault != "" {
		out, _ = json.Marshal(map[string]string{"fault_message": rep.fault})
	} else if rep.body != nil {
		out, _ = json.Marshal(rep.body)
	}
	w.Header().Set("Server", "Firecracker API")
	if len(out) > 0 {
		w.Header().Set("Content-Type", "application/json")
	}
	w.WriteHeader(rep.status)
	_, _ = w.Write(out) // a client that hung up reads nothing
	s.record(Request{Time: time.Now().UTC(), Method: r.Method, Path: r.URL.Path, Body: string(body), Status: rep.status, Fault: rep.fault, Violation: rep.violation})
	if rep.after != nil {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		rep.after()
	}
}

func (s *Server) record(req Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, req)
	if s.reqLog != nil {
		b, _ := json.Marshal(req)
		_, _ = s.reqLog.Write(append(b, '\n')) // the log is for people; the requests stay in memory
	}
}

// handle validates a request and carries it out.
func (s *Server) handle(method, path string, body []byte) reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return faultReply(http.StatusServiceUnavailable, "the fake Firecracker process has exited")
	}
	s.log.infof("The API server received a %s request on %q.", method, path)
	if err := s.spec.Validate(method, path, body); err != nil {
		rep := badRequest("%v", err)
		rep.violation = err.Error()
		return rep
	}
	template, params, _ := s.spec.Match(method, path)
	s.counts[strings.ToLower(method)+" "+template]++
	// Firecracker's own parsing, beyond the document.
	if len(strings.TrimSpace(string(body))) == 0 {
		switch {
		case method == http.MethodPut:
			return badRequest("Empty PUT request.")
		case method == http.MethodPatch && !strings.HasPrefix(template, "/balloon"):
			return badRequest("Empty PATCH request.")
		}
	}
	for _, name := range []string{"drive_id", "iface_id", "id"} {
		id, ok := params[name]
		if !ok {
			continue
		}
		if !validResourceID(id) {
			return badRequest("API Resource IDs can only contain alphanumeric characters and underscores.")
		}
		var fields map[string]any
		if json.Unmarshal(body, &fields) == nil && fields[name] != id {
			return badRequest("The id from the path does not match the id from the body!")
		}
	}
	for _, key := range []string{method + " " + path, method + " " + template} {
		if msg, ok := s.opts.Faults[key]; ok {
			return badRequest("%s", msg)
		}
	}
	rep := s.dispatch(method, template, body)
	if rep.fault != "" {
		s.log.errorf("Received Error. Status code: %d. Message: %s", rep.status, rep.fault)
	}
	return rep
}

func validResourceID(id string) bool {
	if id == "" {
		return false
	}
	for _, c := range id {
		if c != '_' && !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// Firecracker's answers to an operation in the wrong state.
const (
	errPreBoot  = "The requested operation is not supported before starting the microVM."
	errPostBoot = "The requested operation is not supported after starting the microVM."
)

func (s *Server) dispatch(method, template string, body []byte) reply {
	started := s.state != stateNotStarted
	preBootOnly := func() *reply {
		if started {
			r := badRequest(errPostBoot)
			return &r
		}
		return nil
	}
	postBootOnly := func() *reply {
		if !started {
			r := badRequest(errPreBoot)
			return &r
		}
		return nil
	}
	switch method + " " + template {
	case "GET /":
		return reply{status: http.StatusOK, body: map[string]string{
			"app_name": "Firecracker", "id": s.opts.InstanceID, "state": string(s.state), "vmm_version": SpecVersion,
		}}
	case "GET /version":
		return reply{status: http.StatusOK, body: map[string]string{"firecracker_version": SpecVersion}}
	case "GET /machine-config":
		return reply{status: http.StatusOK, body: s.cfg.MachineConfig}
	case "GET /vm/config":
		return reply{status: http.StatusOK, body: s.cfg.clone()}
	case "GET /mmds":
		if s.mmds == nil {
			return reply{status: http.StatusOK, raw: []byte("{}")}
		}
		return reply{status: http.StatusOK, raw: s.mmds.json()}
	case "PUT /mmds":
		return s.putMMDS(body)
	case "PATCH /mmds":
		return s.patchMMDS(body)
	case "PUT /actions":
		return s.action(body)
	case "PATCH /vm":
		if r := postBootOnly(); r != nil {
			return *r
		}
		return s.patchVM(body)
	case "PUT /snapshot/create":
		if r := postBootOnly(); r != nil {
			return *r
		}
		return s.createSnapshot(body)
	case "PUT /snapshot/load":
		if r := preBootOnly(); r != nil {
			return *r
		}
		return s.loadSnapshot(body)
	case "PATCH /drives/{drive_id}":
		if r := postBootOnly(); r != nil {
			return *r
		}
		return s.patchDrive(body)
	case "PATCH /network-interfaces/{iface_id}":
		if r := postBootOnly(); r != nil {
			return *r
		}
		return s.patchNet(body)
	}
	// Everything else that the fake models is pre-boot configuration.
	var put func([]byte) reply
	bootSpecific := true
	switch method + " " + template {
	case "PUT /boot-source":
		put = s.putBootSource
	case "PUT /drives/{drive_id}":
		put = s.putDrive
	case "PUT /network-interfaces/{iface_id}":
		put = s.putNet
	case "PUT /machine-config":
		put = s.putMachineConfig
	case "PATCH /machine-config":
		put = s.patchMachineConfig
	case "PUT /vsock":
		put = s.putVsock
	case "PUT /mmds/config":
		put = s.putMMDSConfig
	case "PUT /entropy":
		put = s.putEntropy
	case "PUT /logger":
		put, bootSpecific = s.putLogger, false
	case "PUT /metrics":
		put, bootSpecific = s.putMetrics, false
	case "PUT /serial":
		put, bootSpecific = s.putSerial, false
	case "PUT /cpu-config":
		put, bootSpecific = s.putCPUConfig, false
	default:
		return badRequest("fctest: %s %s is valid per Firecracker's API, but the fake does not model it", method, template)
	}
	if r := preBootOnly(); r != nil {
		return *r
	}
	rep := put(body)
	if rep.status < 300 && bootSpecific {
		s.bootPath = true
	}
	return rep
}

// Package vmfake holds hand-written fakes of the VMM driver and the guest
// agent, so lifecycle and API code can be tested without booting guests.
// They behave like the real parts (processes outlive managers, agents prove
// the VM's token) but run in memory.
//
// Driver is held to the driver contract: it passes the part of the
// conformance suite that needs no guest (vmmtest.RunContract, in
// conformance_test.go). Where it differs from a real driver, on purpose:
//
//   - its processes are entries of a Host, not the machine's: their PIDs
//     and start times are the Host's own and nothing of them is in /proc;
//   - it boots nothing and reads no image: Kernel, Initrd and Rootfs need
//     name no file (the lifecycle, API and login tests give it image
//     records whose paths do not exist), and the disk it makes is a few
//     bytes;
//   - its VMs run no guest: Agents plays the guest's agent (reached
//     through no socket) and WriteConsole writes the guest's console;
//     their handles name no data channel, so vmm.DialData reports
//     vmm.ErrNoDataChannel for them, as for a VM of an older hearth;
//   - Stop ends the process at once, as a guest that powers off as soon as
//     it is asked would;
//   - it offers neither pause nor snapshots.
package vmfake

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vmm"
)

// Host is the machine fake VM processes run on. Every Driver made on one
// Host sees its processes, as daemons on one machine do; a Driver made
// anew (a restarted daemon) knows them only through the handles it is
// given and FindProcesses.
type Host struct {
	mu      sync.Mutex
	nextPID int
	clock   uint64 // start times: one tick per process started
	procs   map[int]*process
}

// process is one fake VM process.
type process struct {
	start   uint64
	dir     string        // the VM directory it works for
	exited  chan struct{} // closed when it ends
	console int           // its end of the console FIFO; -1 once it ended
}

// NewHost returns a host that runs no processes.
func NewHost() *Host {
	return &Host{nextPID: 1000, procs: map[int]*process{}}
}

// NewDriver returns a driver on h.
func (h *Host) NewDriver() *Driver { return &Driver{host: h} }

// running returns the process that pid names if it started at start and
// still runs. h.mu is held.
func (h *Host) running(pid int, start uint64) (*process, bool) {
	p, ok := h.procs[pid]
	if !ok || p.start != start {
		return nil, false
	}
	select {
	case <-p.exited:
		return nil, false
	default:
		return p, true
	}
}

// end ends p, as its exit would. h.mu is held.
func (h *Host) end(p *process) {
	select {
	case <-p.exited:
		return
	default:
	}
	close(p.exited)
	if p.console >= 0 {
		syscall.Close(p.console)
		p.console = -1
	}
}

// Driver runs "VMs" as processes of its Host; the processes outlive any
// manager, as real detached QEMU processes do.
type Driver struct {
	host    *Host
	mu      sync.Mutex
	Started int
	FailOn  string // "prepare" or "start": fail that step
	// ExitWhy is what ExitReason says about any VM.
	ExitWhy string
}

// ExitReason implements vmm.ExitExplainer.
func (d *Driver) ExitReason(vmm.Handle) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ExitWhy
}

// NewDriver returns a driver on a host of its own, with no VMs.
func NewDriver() *Driver { return NewHost().NewDriver() }

// Host returns the host d runs its VMs on, where another driver (a
// restarted daemon) can be made.
func (d *Driver) Host() *Host { return d.host }

var (
	_ vmm.Driver        = (*Driver)(nil)
	_ vmm.ExitExplainer = (*Driver)(nil)
	_ vmm.ProcessFinder = (*Driver)(nil)
	_ vm.AgentDialer    = (*Agents)(nil)
)

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "fake" }

// Capabilities implements vmm.Driver.
func (d *Driver) Capabilities() vmm.Capabilities {
	return vmm.Capabilities{Accel: "tcg", AgentTransport: "fake", DiskCloning: "none", GracefulStop: true}
}

// Prepare implements vmm.Driver: the VM directory, its token, a disk of a
// few bytes (kept if an earlier Prepare made it) and the console FIFO.
func (d *Driver) Prepare(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	h := vmm.Handle{Driver: d.Name(), Dir: spec.Dir}
	if spec.Dir == "" {
		return h, errors.New("fake prepare: the spec names no directory")
	}
	h.ConsoleStream = filepath.Join(spec.Dir, "console.fifo")
	h.AgentSocket = filepath.Join(spec.Dir, "agent.sock")
	h.DiskPath = filepath.Join(spec.Dir, "disk")
	h.TokenPath = filepath.Join(spec.Dir, "token")
	if d.FailOn == "prepare" {
		return h, errors.New("fake prepare failure")
	}
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return h, err
	}
	if err := vmm.WriteToken(h.TokenPath, spec.Token); err != nil {
		return h, err
	}
	disk, err := os.OpenFile(h.DiskPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, os.ErrExist): // made by an earlier Prepare: the guest's
	case err != nil:
		return h, err
	default:
		_, err := disk.WriteString("disk")
		if cerr := disk.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return h, err
		}
	}
	if err := syscall.Mkfifo(h.ConsoleStream, 0o600); err != nil && !errors.Is(err, os.ErrExist) {
		return h, err
	}
	return h, nil
}

// Start implements vmm.Driver: a new process of the host, unless h names
// one that runs. The process holds its console FIFO as Firecracker does:
// open for reading and writing, written without blocking.
func (d *Driver) Start(ctx context.Context, spec vmm.Spec, h *vmm.Handle) error {
	if d.FailOn == "start" {
		return errors.New("qemu failed to start: fake")
	}
	if d.Alive(*h) {
		return nil
	}
	fd, err := syscall.Open(h.ConsoleStream, syscall.O_RDWR|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open console: %w", err)
	}
	_, _ = syscall.Write(fd, []byte("fake kernel booting\nfake init\n"))
	host := d.host
	host.mu.Lock()
	host.nextPID++
	host.clock++
	p := &process{start: host.clock, dir: h.Dir, exited: make(chan struct{}), console: fd}
	host.procs[host.nextPID] = p
	h.PID, h.PIDStart = host.nextPID, p.start
	host.mu.Unlock()
	d.mu.Lock()
	d.Started++
	d.mu.Unlock()
	return nil
}

// WriteConsole writes to a running VM's console as its guest would, and
// says how much the console took: what the pipe cannot take at once is
// dropped, as Firecracker does.
func (d *Driver) WriteConsole(h vmm.Handle, b []byte) int {
	d.host.mu.Lock()
	defer d.host.mu.Unlock()
	p, ok := d.host.running(h.PID, h.PIDStart)
	if !ok {
		return 0
	}
	n, err := syscall.Write(p.console, b)
	if err != nil {
		return 0
	}
	return n
}

// Alive implements vmm.Driver.
func (d *Driver) Alive(h vmm.Handle) bool {
	d.host.mu.Lock()
	defer d.host.mu.Unlock()
	_, ok := d.host.running(h.PID, h.PIDStart)
	return ok
}

// Watch implements vmm.Driver.
func (d *Driver) Watch(h vmm.Handle) (<-chan struct{}, error) {
	d.host.mu.Lock()
	defer d.host.mu.Unlock()
	if p, ok := d.host.procs[h.PID]; ok && p.start == h.PIDStart {
		return p.exited, nil
	}
	ch := make(chan struct{})
	close(ch)
	return ch, nil
}

// Kill ends a process as a crash would.
func (d *Driver) Kill(pid int) {
	d.host.mu.Lock()
	defer d.host.mu.Unlock()
	if p, ok := d.host.procs[pid]; ok {
		d.host.end(p)
	}
}

// Stop implements vmm.Driver: the guest powers off as soon as it is asked.
func (d *Driver) Stop(ctx context.Context, h vmm.Handle, grace time.Duration) error {
	return d.KillProcess(vmm.Process{PID: h.PID, Start: h.PIDStart})
}

// Cleanup implements vmm.Driver.
func (d *Driver) Cleanup(ctx context.Context, h vmm.Handle) error {
	if d.Alive(h) {
		return fmt.Errorf("cleanup: fake pid %d still running", h.PID)
	}
	if h.Dir == "" {
		return nil
	}
	for _, p := range []string{h.DiskPath, h.TokenPath, h.TokenPath + ".tmp", h.AgentSocket, h.ConsoleStream} {
		if p == "" {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// FindProcesses implements vmm.ProcessFinder: live processes by the name
// of their VM directory, when it is directly under vmsDir.
func (d *Driver) FindProcesses(vmsDir string) (map[string][]vmm.Process, error) {
	d.host.mu.Lock()
	defer d.host.mu.Unlock()
	found := map[string][]vmm.Process{}
	for pid, p := range d.host.procs {
		if _, ok := d.host.running(pid, p.start); !ok {
			continue
		}
		if filepath.Dir(p.dir) == filepath.Clean(vmsDir) {
			name := filepath.Base(p.dir)
			found[name] = append(found[name], vmm.Process{PID: pid, Start: p.start})
		}
	}
	return found, nil
}

// KillProcess implements vmm.ProcessFinder: it ends p if p is still that
// process.
func (d *Driver) KillProcess(p vmm.Process) error {
	d.host.mu.Lock()
	defer d.host.mu.Unlock()
	if proc, ok := d.host.running(p.PID, p.Start); ok {
		d.host.end(proc)
	}
	return nil
}

// Running counts the host's live processes.
func (d *Driver) Running() int {
	d.host.mu.Lock()
	defer d.host.mu.Unlock()
	n := 0
	for pid, p := range d.host.procs {
		if _, ok := d.host.running(pid, p.start); ok {
			n++
		}
	}
	return n
}

// Behaviour says how a fake guest's agent behaves.
type Behaviour int

const (
	GuestReady      Behaviour = iota // connects and reports ready
	GuestSilent                      // never connects
	GuestPortsStuck                  // connects, never reports ready
	GuestBadProof                    // answers, but cannot prove the token
)

// Agents plays the guest side: it answers when the VM's "process" runs.
type Agents struct {
	mu        sync.Mutex
	behaviour Behaviour
	shutdowns int
	login     LoginFunc
	written   []WrittenFile
}

// LoginFunc plays a guest's login: it gets the VM's id (its directory's
// name), the request and the progress callback.
type LoginFunc func(ctx context.Context, vmID string, req agentapi.LoginRequest, progress func(agentapi.LoginProgress)) (agentapi.LoginResult, error)

// WrittenFile is a file a write_file request put into a fake guest.
type WrittenFile struct {
	VMID string
	agentapi.WriteFileRequest
}

// SetLogin sets how guests answer login requests (by default with an
// error).
func (a *Agents) SetLogin(f LoginFunc) {
	a.mu.Lock()
	a.login = f
	a.mu.Unlock()
}

// Written returns the files written into guests so far, oldest first.
func (a *Agents) Written() []WrittenFile {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]WrittenFile(nil), a.written...)
}

// SetBehaviour changes how guests answer from now on.
func (a *Agents) SetBehaviour(b Behaviour) {
	a.mu.Lock()
	a.behaviour = b
	a.mu.Unlock()
}

// Shutdowns counts graceful shutdowns asked through the agent.
func (a *Agents) Shutdowns() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.shutdowns
}

// Connect implements vm.AgentDialer.
func (a *Agents) Connect(ctx context.Context, h vmm.Handle, token []byte, cfg vm.AgentConfig) (vm.AgentSession, vm.AgentHello, error) {
	socket := h.AgentSocket
	ports, hb := cfg.RequiredPorts, cfg.Heartbeat
	a.mu.Lock()
	b := a.behaviour
	a.mu.Unlock()
	// The token file is next to the socket: the agent proves the same secret.
	raw, err := os.ReadFile(filepath.Join(filepath.Dir(socket), "token"))
	if err != nil {
		return nil, vm.AgentHello{}, err
	}
	if want, err := agentapi.ParseToken(string(raw)); err != nil || string(want) != string(token) {
		return nil, vm.AgentHello{}, errors.New("bad proof")
	}
	if b == GuestBadProof {
		return nil, vm.AgentHello{}, fmt.Errorf("agent handshake: %w", agentapi.ErrBadProof)
	}
	if b == GuestSilent {
		<-ctx.Done()
		return nil, vm.AgentHello{}, ctx.Err()
	}
	s := &session{events: make(chan vm.AgentEvent, 16), done: make(chan struct{}), agents: a, vmID: filepath.Base(filepath.Dir(socket))}
	if b == GuestReady {
		if cfg.Network != nil {
			s.events <- vm.AgentEvent{Type: "network_ready", At: time.Now()}
		}
		for _, p := range ports {
			s.events <- vm.AgentEvent{Type: "port_ready", Port: p, At: time.Now()}
		}
		s.events <- vm.AgentEvent{Type: "ready", At: time.Now()}
		go s.heartbeats(hb)
	}
	return s, vm.AgentHello{Version: "fake-1", BootTime: time.Now()}, nil
}

type session struct {
	events chan vm.AgentEvent
	done   chan struct{}
	once   sync.Once
	agents *Agents
	vmID   string
}

func (s *session) Login(ctx context.Context, req agentapi.LoginRequest, progress func(agentapi.LoginProgress)) (agentapi.LoginResult, error) {
	if err := req.Validate(); err != nil {
		return agentapi.LoginResult{}, err
	}
	s.agents.mu.Lock()
	f := s.agents.login
	s.agents.mu.Unlock()
	if f == nil {
		return agentapi.LoginResult{}, &agentapi.RemoteError{Request: agentapi.TypeLogin, Message: "fake guest: no login configured"}
	}
	if progress == nil {
		progress = func(agentapi.LoginProgress) {}
	}
	return f(ctx, s.vmID, req, progress)
}

func (s *session) WriteFile(ctx context.Context, req agentapi.WriteFileRequest) error {
	if err := req.Validate(); err != nil {
		return err
	}
	s.agents.mu.Lock()
	defer s.agents.mu.Unlock()
	req.Content = append([]byte(nil), req.Content...)
	s.agents.written = append(s.agents.written, WrittenFile{VMID: s.vmID, WriteFileRequest: req})
	return nil
}

func (s *session) heartbeats(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			select {
			case s.events <- vm.AgentEvent{Type: "heartbeat", At: time.Now()}:
			case <-s.done:
				return
			}
		}
	}
}

func (s *session) Events() <-chan vm.AgentEvent { return s.events }

// Exec answers "echo ARGS" like a shell would and fails everything else.
func (s *session) Exec(ctx context.Context, req vm.ExecRequest) (vm.ExecResult, error) {
	if req.Argv[0] == "echo" {
		return vm.ExecResult{Stdout: []byte(strings.Join(req.Argv[1:], " ") + "\n")}, nil
	}
	return vm.ExecResult{ExitCode: 127, Stderr: []byte(req.Argv[0] + ": not found\n")}, nil
}
func (s *session) Shutdown(ctx context.Context) error {
	s.agents.mu.Lock()
	s.agents.shutdowns++
	s.agents.mu.Unlock()
	return nil
}
func (s *session) Done() <-chan struct{} { return s.done }
func (s *session) Err() error {
	select {
	case <-s.done:
		return agentapi.ErrClosed
	default:
		return nil
	}
}
func (s *session) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

// Network is an in-memory vm.Networker: leases and TAPs in maps, so tests
// can check that every attach is undone.
type Network struct {
	mu       sync.Mutex
	next     int
	capacity int
	Leases   map[string]string // vm id -> address
	TAPs     map[string]string // vm id -> tap
	Egress   map[string]vm.Egress
	Attachs  int
	policy   vm.Egress // the default; zero: open
}

var _ vm.Networker = (*Network)(nil)

// NewNetwork returns an empty fake network.
func NewNetwork() *Network {
	return &Network{Leases: map[string]string{}, TAPs: map[string]string{}, Egress: map[string]vm.Egress{}}
}

// ValidateEgress implements vm.Networker.
func (n *Network) ValidateEgress(e vm.Egress) error {
	switch e.Mode {
	case "open", "none", "allowlist":
		return nil
	}
	return fmt.Errorf("mode must be open, none or allowlist, got %q", e.Mode)
}

// DefaultEgress implements vm.Networker: "open" unless SetDefaultEgress
// said otherwise.
func (n *Network) DefaultEgress() vm.Egress {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.policy.Mode == "" {
		return vm.Egress{Mode: "open"}
	}
	return n.policy
}

// SetDefaultEgress sets the configured policy: the default, and the most
// a user key may ask for.
func (n *Network) SetDefaultEgress(e vm.Egress) {
	n.mu.Lock()
	n.policy = e
	n.mu.Unlock()
}

// Capacity, if positive, is how many leases the fake pool holds.
func (n *Network) SetCapacity(c int) {
	n.mu.Lock()
	n.capacity = c
	n.mu.Unlock()
}

// Reserve implements vm.Networker.
func (n *Network) Reserve(ctx context.Context, vmID string) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ip, ok := n.Leases[vmID]; ok {
		return ip + "/24", nil
	}
	if n.capacity > 0 && len(n.Leases) >= n.capacity {
		return "", errdefs.Unavailablef("no free address: all %d are leased", n.capacity)
	}
	n.next++
	n.Leases[vmID] = fmt.Sprintf("10.0.0.%d", n.next+1)
	n.TAPs[vmID] = fmt.Sprintf("tap%d", n.next)
	return n.Leases[vmID] + "/24", nil
}

// Attach implements vm.Networker.
func (n *Network) Attach(ctx context.Context, vmID string, e vm.Egress) (vm.NetAttachment, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ip, ok := n.Leases[vmID]
	if !ok {
		n.next++
		ip = fmt.Sprintf("10.0.0.%d", n.next+1)
		n.Leases[vmID] = ip
		n.TAPs[vmID] = fmt.Sprintf("tap%d", n.next)
		n.Attachs++
	}
	n.Egress[vmID] = e
	return vm.NetAttachment{TAP: n.TAPs[vmID], MAC: "02:00:00:00:00:01", Address: ip + "/24", Gateway: "10.0.0.1", Egress: e}, nil
}

// Detach implements vm.Networker.
func (n *Network) Detach(ctx context.Context, vmID string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.Leases, vmID)
	delete(n.TAPs, vmID)
	delete(n.Egress, vmID)
	return nil
}

// Reconcile implements vm.Networker.
func (n *Network) Reconcile(ctx context.Context, held map[string]vm.NetAttachment) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for id := range n.Leases {
		if _, ok := held[id]; !ok {
			delete(n.Leases, id)
			delete(n.TAPs, id)
			delete(n.Egress, id)
		}
	}
	for id, a := range held {
		n.Leases[id] = strings.TrimSuffix(a.Address, "/24")
		n.TAPs[id] = a.TAP
		n.Egress[id] = a.Egress
	}
	return nil
}

// Held counts attached VMs.
func (n *Network) Held() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.Leases)
}

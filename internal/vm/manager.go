// Package vm owns the lifecycle of every VM: the state machine, creation and
// deletion as idempotent steps, a supervisor goroutine per VM that holds the
// agent session and watches the process, and adoption of running VMs after
// the daemon restarts. A VM's lifetime belongs to the Manager, never to the
// request that asked for it.
package vm

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/diskspace"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vmm"
)

// Config bounds requests and sets the lifecycle's deadlines.
type Config struct {
	VMsDir            string
	Roles             map[string][]int
	DefaultVCPUs      int
	MaxVCPUs          int
	DefaultMemoryMiB  int
	MinMemoryMiB      int
	MaxMemoryMiB      int
	BootTimeout       time.Duration
	MaxBootTimeout    time.Duration
	StopTimeout       time.Duration
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	// AgentLimits bound what a guest agent may send (zero fields: the
	// agentapi defaults). An agent that breaks them, or the protocol
	// otherwise, AgentMaxViolations times within AgentViolationWindow
	// fails its VM (zero: DefaultAgentMaxViolations and
	// DefaultAgentViolationWindow).
	AgentLimits          agentapi.Limits
	AgentMaxViolations   int
	AgentViolationWindow time.Duration
	// StopOnShutdown stops every VM when the manager shuts down; otherwise
	// VMs keep running and the next manager adopts them.
	StopOnShutdown bool
	// Console bounds each VM's console log and how fast it is read; zero
	// means DefaultConsole.
	Console ConsoleConfig
	// MinFree is the free space VMsDir's file system must keep: below it
	// new VMs are refused (ErrUnavailable) and CheckDiskSpace says so.
	// Zero disables the check.
	MinFree int64
}

// CreateRequest is what a caller may ask for.
type CreateRequest struct {
	UserID      string
	Image       string
	Role        string
	VCPUs       int
	MemoryMiB   int
	BootTimeout time.Duration
	// Egress is the VM's outbound policy; nil means the default.
	Egress *Egress
	// Admin says the request comes with an admin key, which may ask for
	// egress wider than the configured policy; a user key may not.
	Admin bool
}

// Deps are the manager's collaborators.
type Deps struct {
	Store  store.Store
	Driver vmm.Driver
	Agents AgentDialer
	// Network attaches VMs to the host network; nil means VMs get none.
	Network Networker
	Log     *slog.Logger
	// OnTransition, if set, is called after every state change with the
	// VM's new record (e.g. to close its viewers when it stops). It runs
	// on the changing goroutine and must not block.
	OnTransition func(store.VM)
}

// Manager runs VMs.
type Manager struct {
	cfg    Config
	store  store.Store
	driver vmm.Driver
	agents AgentDialer
	net    Networker
	// onTransition is Deps.OnTransition.
	onTransition func(store.VM)
	log          *slog.Logger
	bus          *Bus

	ctx    context.Context // the manager's lifetime; VMs' supervisors run under it
	cancel context.CancelFunc

	mu        sync.Mutex
	instances map[string]*instance
	wg        sync.WaitGroup
}

// New returns a manager. Call Start before use.
func New(cfg Config, d Deps) *Manager {
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{
		cfg: cfg, store: d.Store, driver: d.Driver, agents: d.Agents, net: d.Network, log: d.Log, bus: NewBus(),
		onTransition: d.OnTransition,
		ctx:          ctx, cancel: cancel, instances: map[string]*instance{},
	}
}

// Bus returns the live event bus.
func (m *Manager) Bus() *Bus { return m.bus }

// Driver returns the VMM driver in use.
func (m *Manager) Driver() vmm.Driver { return m.driver }

// newID returns a short random VM id ("vm-" + 16 base32 characters).
func newID() string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err)) // the kernel's RNG does not fail
	}
	return "vm-" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}

// newToken returns a fresh per-VM agent secret in the text form the guest
// reads at boot.
func newToken() ([]byte, error) {
	tok, err := agentapi.NewToken()
	if err != nil {
		return nil, err
	}
	return []byte(agentapi.FormatToken(tok)), nil
}

// Validate checks a request against the configured bounds and the images in
// the store, filling defaults. It returns ErrInvalid or ErrNotFound errors
// with caller-facing messages.
func (m *Manager) validate(ctx context.Context, req *CreateRequest) (store.Image, error) {
	if req.VCPUs == 0 {
		req.VCPUs = m.cfg.DefaultVCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = m.cfg.DefaultMemoryMiB
	}
	if req.BootTimeout == 0 {
		req.BootTimeout = m.cfg.BootTimeout
	}
	if req.VCPUs < 1 || req.VCPUs > m.cfg.MaxVCPUs {
		return store.Image{}, errdefs.Invalidf("vcpus must be between 1 and %d, got %d", m.cfg.MaxVCPUs, req.VCPUs)
	}
	if req.MemoryMiB < m.cfg.MinMemoryMiB || req.MemoryMiB > m.cfg.MaxMemoryMiB {
		return store.Image{}, errdefs.Invalidf("memory_mib must be between %d and %d, got %d", m.cfg.MinMemoryMiB, m.cfg.MaxMemoryMiB, req.MemoryMiB)
	}
	if sc, ok := m.driver.(vmm.SizeChecker); ok {
		if err := sc.CheckSize(req.VCPUs, req.MemoryMiB); err != nil {
			return store.Image{}, errdefs.Invalidf("%v", err)
		}
	}
	if req.BootTimeout < time.Second || req.BootTimeout > m.cfg.MaxBootTimeout {
		return store.Image{}, errdefs.Invalidf("boot_timeout_seconds must be between 1 and %d", int(m.cfg.MaxBootTimeout.Seconds()))
	}
	if req.Image == "" {
		return store.Image{}, errdefs.Invalidf("image is required")
	}
	img, err := m.store.GetImage(ctx, req.Image)
	if errors.Is(err, store.ErrNotFound) {
		return store.Image{}, errdefs.Invalidf("unknown image %q", req.Image)
	}
	if errors.Is(err, store.ErrConflict) {
		return store.Image{}, errdefs.Invalidf("image %q is ambiguous; give more of its id", req.Image)
	}
	if err != nil {
		return store.Image{}, fmt.Errorf("look up image: %w", err)
	}
	if img.Status != store.ImageVerified {
		why := string(img.Status)
		if img.Status == "" {
			why = string(store.ImageUnverified)
		}
		return store.Image{}, errdefs.Invalidf("image %s (%s) is %s; VMs start only from verified images (hearth image verify %s)",
			img.Name, shortID(img.ID), why, img.Name)
	}
	if req.Role == "" {
		req.Role = img.Role
	}
	if _, ok := m.cfg.Roles[req.Role]; !ok {
		return store.Image{}, errdefs.Invalidf("unknown role %q (known: %s)", req.Role, strings.Join(m.roleNames(), ", "))
	}
	if req.UserID == "" {
		return store.Image{}, errdefs.Invalidf("user is required")
	}
	if req.Egress != nil {
		if m.net == nil {
			return store.Image{}, errdefs.Invalidf("network.egress given, but this host runs VMs without networking")
		}
		if err := m.net.ValidateEgress(*req.Egress); err != nil {
			return store.Image{}, errdefs.Invalidf("network.egress: %v", err)
		}
		if err := req.Egress.Within(m.net.DefaultEgress()); err != nil && !req.Admin {
			return store.Image{}, errdefs.Forbiddenf("network.egress: %v; only an admin key may ask for more", err)
		}
	}
	if _, err := m.store.GetUser(ctx, req.UserID); errors.Is(err, store.ErrNotFound) {
		return store.Image{}, errdefs.Invalidf("unknown user %q", req.UserID)
	} else if err != nil {
		return store.Image{}, fmt.Errorf("look up user: %w", err)
	}
	return img, nil
}

func (m *Manager) roleNames() []string {
	names := make([]string, 0, len(m.cfg.Roles))
	for r := range m.cfg.Roles {
		names = append(names, r)
	}
	slices.Sort(names)
	return names
}

// Create records a new VM and hands it to a supervisor that boots it. It
// returns at once with the VM in state pending; nothing is left behind if
// the request is invalid.
func (m *Manager) Create(ctx context.Context, req CreateRequest) (store.VM, error) {
	if m.ctx.Err() != nil {
		return store.VM{}, errdefs.Unavailablef("hearth is shutting down")
	}
	img, err := m.validate(ctx, &req)
	if err != nil {
		return store.VM{}, err
	}
	// A VM needs room (its disk, its console, its records): refuse it
	// before anything is made rather than fail it, or others, later.
	if err := m.CheckDiskSpace(); err != nil {
		return store.VM{}, err
	}
	now := time.Now().UTC()
	id := newID()
	var network []byte
	if m.net != nil {
		egress := m.net.DefaultEgress()
		if req.Egress != nil {
			egress = *req.Egress
		}
		// Only the wanted policy for now; Attach fills in the rest.
		if network, err = json.Marshal(NetAttachment{Egress: egress}); err != nil {
			return store.VM{}, fmt.Errorf("encode network: %w", err)
		}
	}
	v := store.VM{
		ID: id, UserID: req.UserID, ImageID: img.ID, Role: req.Role, Network: network,
		VCPUs: req.VCPUs, MemoryMiB: req.MemoryMiB, Driver: m.driver.Name(),
		State: store.StatePending, Dir: filepath.Join(m.cfg.VMsDir, id),
		BootDeadline: now.Add(req.BootTimeout), CreatedAt: now, UpdatedAt: now,
	}
	if err := m.store.CreateVM(ctx, v); err != nil {
		return store.VM{}, fmt.Errorf("record vm: %w", err)
	}
	if m.net != nil {
		// Lease the address now, so a full pool is the caller's answer
		// (503) rather than a VM that fails later; nothing stays behind.
		if v, err = m.reserve(ctx, v); err != nil {
			return store.VM{}, err
		}
	}
	ev, err := m.store.AppendEvent(ctx, store.Event{At: now, Type: "vm.created", VMID: id, UserID: v.UserID,
		ToState: store.StatePending, Message: fmt.Sprintf("image %s, role %s, %d vcpu, %d MiB", img.Name, v.Role, v.VCPUs, v.MemoryMiB)})
	if err != nil {
		// The VM exists and boots; only its creation is missing from the
		// event log.
		m.log.Error("record vm.created event", "vm", id, "err", err)
	} else {
		m.bus.Publish(ev)
	}
	m.spawn(v, modeRun)
	return v, nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// reserve leases the VM's address and records it; on failure the VM row is
// removed again.
func (m *Manager) reserve(ctx context.Context, v store.VM) (store.VM, error) {
	ctx = context.WithoutCancel(ctx)
	addr, err := m.net.Reserve(ctx, v.ID)
	if err == nil {
		var network []byte
		network, err = withAddress(v.Network, addr)
		if err == nil {
			var nv store.VM
			if nv, err = m.update(v.ID, func(x *store.VM) { x.Network = network }); err == nil {
				return nv, nil
			}
		}
		err = errors.Join(err, m.net.Detach(ctx, v.ID))
	}
	if derr := m.store.DeleteVM(ctx, v.ID); derr != nil {
		err = errors.Join(err, fmt.Errorf("remove vm record: %w", derr))
	}
	return store.VM{}, err
}

// withAddress returns a VM's stored network with its address set.
func withAddress(network []byte, addr string) ([]byte, error) {
	att, err := DecodeAttachment(network)
	if err != nil {
		return nil, err
	}
	att.Address = addr
	b, err := json.Marshal(att)
	if err != nil {
		return nil, fmt.Errorf("encode network: %w", err)
	}
	return b, nil
}

// CheckDiskSpace is an errdefs.ErrUnavailable saying what is low when the
// file system VMs live on has less than Config.MinFree free, else nil.
func (m *Manager) CheckDiskSpace() error {
	if m.cfg.MinFree <= 0 {
		return nil
	}
	return diskspace.Check(m.cfg.VMsDir, uint64(m.cfg.MinFree))
}

// Get returns one VM.
func (m *Manager) Get(ctx context.Context, id string) (store.VM, error) {
	v, err := m.store.GetVM(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return store.VM{}, errdefs.NotFoundf("vm %s not found", id)
	}
	return v, err
}

// List returns VMs matching f.
func (m *Manager) List(ctx context.Context, f store.VMFilter) ([]store.VM, error) {
	return m.store.ListVMs(ctx, f)
}

// Delete starts tearing a VM down and returns its current record. It is
// idempotent and works from every state; the teardown itself belongs to the
// manager, so the caller's cancellation does not interrupt it.
func (m *Manager) Delete(ctx context.Context, id string) (store.VM, error) {
	v, err := m.Get(ctx, id)
	if err != nil {
		return store.VM{}, err
	}
	if v.State == store.StateDestroyed {
		return v, nil
	}
	// Record the request first, so the answer (and every reader) sees
	// "stopping" at once; the supervisor does the rest.
	if v.State == store.StatePending || v.State == store.StateBooting || v.State == store.StateReady {
		nv, err := m.transition(id, store.StateStopping, "delete requested", nil)
		if err == nil {
			v = nv
		} else if !errors.Is(err, errdefs.ErrConflict) {
			return store.VM{}, err
		} // a conflict: the VM moved on (e.g. failed) meanwhile; teardown handles any state
	}
	m.mu.Lock()
	inst, running := m.instances[id]
	if running {
		inst.requestStop()
	}
	m.mu.Unlock()
	if !running {
		m.spawn(v, modeDestroy)
	}
	return m.Get(context.WithoutCancel(ctx), id)
}

// Exec runs a command in a ready VM through its agent. The command's
// lifetime is bounded by req.Timeout inside the guest and by ctx here.
func (m *Manager) Exec(ctx context.Context, id string, req ExecRequest) (ExecResult, error) {
	if err := req.Validate(); err != nil {
		return ExecResult{}, err
	}
	v, err := m.Get(ctx, id)
	if err != nil {
		return ExecResult{}, err
	}
	if v.State != store.StateReady {
		return ExecResult{}, errdefs.Conflictf("vm %s is %s; exec needs a ready vm", id, v.State)
	}
	sess := m.awaitSession(ctx, id, sessionWait)
	if sess == nil {
		return ExecResult{}, errdefs.Unavailablef("vm %s has no agent session right now; retry", id)
	}
	res, err := sess.Exec(ctx, req)
	if err != nil {
		return ExecResult{}, fmt.Errorf("exec in %s: %w", id, err)
	}
	return res, nil
}

// readySession returns the agent session of a ready VM, waiting a little
// for one being (re)established.
func (m *Manager) readySession(ctx context.Context, id, what string) (AgentSession, error) {
	v, err := m.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if v.State != store.StateReady {
		return nil, errdefs.Conflictf("vm %s is %s; %s needs a ready vm", id, v.State, what)
	}
	sess := m.awaitSession(ctx, id, sessionWait)
	if sess == nil {
		return nil, errdefs.Unavailablef("vm %s has no agent session right now; retry", id)
	}
	return sess, nil
}

// Login runs a provider CLI's login in a ready VM through its agent; see
// agentapi.Session.Login.
func (m *Manager) Login(ctx context.Context, id string, req agentapi.LoginRequest, progress func(agentapi.LoginProgress)) (agentapi.LoginResult, error) {
	sess, err := m.readySession(ctx, id, "a login")
	if err != nil {
		return agentapi.LoginResult{}, err
	}
	return sess.Login(ctx, req, progress)
}

// WriteFile writes a file as a guest user in a ready VM.
func (m *Manager) WriteFile(ctx context.Context, id string, req agentapi.WriteFileRequest) error {
	sess, err := m.readySession(ctx, id, "writing a file")
	if err != nil {
		return err
	}
	if err := sess.WriteFile(ctx, req); err != nil {
		return fmt.Errorf("write %s in vm %s: %w", req.Path, id, err)
	}
	return nil
}

// sessionWait is how long Exec waits for an agent session that is being
// (re)established, e.g. right after the daemon restarted.
const sessionWait = 15 * time.Second

func (m *Manager) awaitSession(ctx context.Context, id string, d time.Duration) AgentSession {
	deadline := time.Now().Add(d)
	for {
		m.mu.Lock()
		inst := m.instances[id]
		m.mu.Unlock()
		if inst != nil {
			if s := inst.session(); s != nil {
				return s
			}
		}
		if inst == nil || time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Wait blocks until the VM reaches target, the target becomes unreachable
// (e.g. the VM failed while the caller waited for ready), or ctx ends.
func (m *Manager) Wait(ctx context.Context, id string, target store.State) (store.VM, error) {
	only := store.EventFilter{VMID: id}
	sub := m.bus.Subscribe(64, only)
	defer func() { sub.Close() }()
	var last store.VM
	for {
		v, err := m.Get(ctx, id)
		if err != nil {
			if ctx.Err() != nil && !errors.Is(err, errdefs.ErrNotFound) {
				// The caller's deadline passed while reading the row.
				if last.ID == "" {
					return last, errdefs.Timeoutf("vm %s: the wait ended before its state was read", id)
				}
				return last, errdefs.Timeoutf("vm %s is still %s", id, last.State)
			}
			return store.VM{}, err
		}
		last = v
		if v.State == target {
			return v, nil
		}
		if !Reachable(v.State, target) {
			return v, errdefs.Conflictf("vm %s is %s and can no longer become %s", id, v.State, target)
		}
		if err := waitForVMEvent(ctx, sub); err != nil {
			if errors.Is(err, errBusDropped) {
				sub = m.bus.Subscribe(64, only) // fell behind: re-read the row and go on
				continue
			}
			return v, errdefs.Timeoutf("vm %s is still %s", id, v.State)
		}
	}
}

var errBusDropped = errors.New("subscription dropped")

// waitForVMEvent waits for the next event of sub (which carries only
// the VM's own).
func waitForVMEvent(ctx context.Context, sub *Subscription) error {
	select {
	case _, ok := <-sub.C:
		if !ok {
			return errBusDropped
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// transition moves a VM to a new state (checked against the state machine),
// applies extra changes and publishes the event.
func (m *Manager) transition(id string, to store.State, msg string, fn func(*store.VM)) (store.VM, error) {
	ctx := context.WithoutCancel(m.ctx)
	v, ev, err := m.store.UpdateVM(ctx, id, msg, func(v *store.VM) error {
		if v.State != to {
			if err := checkTransition(v.State, to); err != nil {
				return err
			}
		}
		v.State = to
		if fn != nil {
			fn(v)
		}
		return nil
	})
	if err != nil {
		return v, fmt.Errorf("vm %s to %s: %w", id, to, err)
	}
	if ev != nil {
		m.bus.Publish(*ev)
		m.log.Info("vm state", "vm", id, "from", ev.FromState, "to", ev.ToState, "msg", msg)
		if m.onTransition != nil {
			m.onTransition(v)
		}
	}
	return v, nil
}

// GuestAddr returns host:port for reaching port on a ready VM's guest
// address. The port must be one the VM's role waits for, so that readiness
// (reported from inside the guest) has proven something listens there.
// A VM that is gone is not found; one that is not ready, has no network or
// whose role does not serve port is a conflict.
func (m *Manager) GuestAddr(ctx context.Context, id string, port int) (string, error) {
	v, err := m.Get(ctx, id)
	if err != nil {
		return "", err
	}
	if v.State == store.StateDestroyed {
		return "", errdefs.NotFoundf("vm %s is destroyed", id)
	}
	if !m.Serves(v.Role, port) {
		return "", errdefs.Conflictf("vm %s has role %s, which does not serve port %d", id, v.Role, port)
	}
	if v.State != store.StateReady {
		return "", errdefs.Conflictf("vm %s is %s, not ready", id, v.State)
	}
	att, err := DecodeAttachment(v.Network)
	if err != nil || att.Address == "" {
		return "", errdefs.Conflictf("vm %s has no network address", id)
	}
	ip, _, ok := strings.Cut(att.Address, "/")
	if !ok {
		ip = att.Address
	}
	return net.JoinHostPort(ip, strconv.Itoa(port)), nil
}

// Serves reports whether VMs of role wait for port before they are ready.
func (m *Manager) Serves(role string, port int) bool {
	return slices.Contains(m.cfg.Roles[role], port)
}

// update changes fields of a VM without a state change.
func (m *Manager) update(id string, fn func(*store.VM)) (store.VM, error) {
	v, _, err := m.store.UpdateVM(context.WithoutCancel(m.ctx), id, "", func(v *store.VM) error {
		fn(v)
		return nil
	})
	return v, err
}

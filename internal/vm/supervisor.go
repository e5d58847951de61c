package vm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/workapi"
)

// AgentHello is what an authenticated agent says about its guest.
type AgentHello struct {
	Version  string
	BootTime time.Time
}

// AgentEvent is a readiness or liveness report from the agent.
type AgentEvent struct {
	Type  string // "network_ready", "network_failed", "port_ready", "ready" or "heartbeat"
	Port  int
	Error string // network_failed: why
	At    time.Time
}

// AgentConfig is what the host tells an agent after it authenticated.
type AgentConfig struct {
	RequiredPorts []int
	Heartbeat     time.Duration
	// Network, if set, is configured by the agent before anything else;
	// the agent reports ready only once it is up.
	Network *NetAttachment
	// Limits bound what the agent may send (agentapi.Limits).
	Limits agentapi.Limits
}

// ExecRequest runs a command in the guest.
type ExecRequest struct {
	Argv    []string
	Env     []string
	Dir     string
	Timeout time.Duration
	Stdin   []byte
}

// ExecResult is what the command did.
type ExecResult struct {
	ExitCode        int
	Stdout, Stderr  []byte
	StdoutTruncated bool
	StderrTruncated bool
	TimedOut        bool
	Duration        time.Duration
}

// AgentSession is an authenticated conversation with one guest's agent.
type AgentSession interface {
	Events() <-chan AgentEvent
	Exec(ctx context.Context, req ExecRequest) (ExecResult, error)
	// Login runs a provider CLI's login in the guest (agentapi.Session.Login).
	Login(ctx context.Context, req agentapi.LoginRequest, progress func(agentapi.LoginProgress)) (agentapi.LoginResult, error)
	// WriteFile writes a file as a guest user (agentapi.Session.WriteFile).
	WriteFile(ctx context.Context, req agentapi.WriteFileRequest) error
	Shutdown(ctx context.Context) error
	Done() <-chan struct{}
	// Err says why the session ended once Done is closed: a protocol
	// violation is an error agentapi.AsViolation recognises.
	Err() error
	Close() error
}

// AgentDialer connects to a guest agent through the host side of its
// channel (the handle's agent socket, see vmm.DialAgent) and authenticates
// it with the VM's token.
type AgentDialer interface {
	Connect(ctx context.Context, h vmm.Handle, token []byte, cfg AgentConfig) (AgentSession, AgentHello, error)
}

// heartbeatPersistEvery bounds how often a VM's last heartbeat is written.
const heartbeatPersistEvery = 10 * time.Second

type mode int

const (
	modeRun     mode = iota // boot (or resume booting) a VM
	modeAdopt               // re-attach to a VM found running at start
	modeDestroy             // tear down a VM nobody supervises
)

// instance is the supervisor of one VM.
type instance struct {
	id       string
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}

	mu   sync.Mutex
	sess AgentSession    // the live agent session, nil while there is none
	work *workapi.Client // the work API's client, nil without a data channel
}

func (i *instance) setWork(w *workapi.Client) {
	i.mu.Lock()
	i.work = w
	i.mu.Unlock()
}

func (i *instance) workClient() *workapi.Client {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.work
}

func (i *instance) setSession(s AgentSession) {
	i.mu.Lock()
	i.sess = s
	i.mu.Unlock()
}

func (i *instance) session() AgentSession {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.sess
}

func (i *instance) requestStop() { i.stopOnce.Do(func() { close(i.stop) }) }

func (i *instance) stopRequested() bool {
	select {
	case <-i.stop:
		return true
	default:
		return false
	}
}

// spawn starts a supervisor for v unless one runs already, or the manager
// has shut down (the next manager takes the VM up from its record: a
// supervisor started now would outlive Shutdown's wait).
func (m *Manager) spawn(v store.VM, md mode) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.instances[v.ID]; ok || m.ctx.Err() != nil {
		return
	}
	inst := &instance{id: v.ID, stop: make(chan struct{}), done: make(chan struct{})}
	if md == modeDestroy {
		inst.requestStop()
	}
	m.instances[v.ID] = inst
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer close(inst.done)
		m.supervise(inst, v, md)
		m.finishStop(inst)
	}()
}

// finishStop honours a delete that arrived while the supervisor was busy
// failing the VM (or shutting down), then retires the supervisor. The check
// and the removal happen under the lock Delete takes, so a delete is either
// seen here or finds no supervisor and starts its own.
func (m *Manager) finishStop(inst *instance) {
	handled := false
	for {
		m.mu.Lock()
		if !inst.stopRequested() || handled || m.ctx.Err() != nil {
			delete(m.instances, inst.id)
			m.mu.Unlock()
			return
		}
		m.mu.Unlock()
		handled = true
		cur, err := m.store.GetVM(context.WithoutCancel(m.ctx), inst.id)
		if err != nil {
			// Deleting again (or a restart, for a stopping VM)
			// finishes it.
			m.log.Error("read vm to finish its deletion", "vm", inst.id, "err", err)
		} else if cur.State != store.StateDestroyed {
			m.teardown(cur, nil)
		}
	}
}

// supervise drives one VM from its current state to its next resting one.
func (m *Manager) supervise(inst *instance, v store.VM, md mode) {
	log := m.log.With("vm", v.ID)
	if md == modeDestroy || v.State == store.StateStopping || v.State == store.StateStopped {
		m.teardown(v, nil)
		return
	}
	if v.State == store.StateFailed {
		m.release(v)
		return
	}
	var h vmm.Handle
	var err error
	if md == modeRun && v.State == store.StatePending {
		v, h, err = m.boot(inst, v)
		if err != nil {
			// A conflict here means a delete moved the VM to stopping
			// under us; finishStop (or the deleter) tears it down.
			if !inst.stopRequested() && !errors.Is(err, errdefs.ErrConflict) {
				m.fail(v.ID, err.Error())
			}
			return
		}
	} else {
		if h, err = vmm.UnmarshalHandle(v.Handle); err != nil {
			m.fail(v.ID, err.Error())
			return
		}
		if !m.driver.Alive(h) {
			reason := "vm process exited while hearth was not running"
			if h.PID == 0 {
				// Start ended any process it found for the VM.
				reason = "hearth stopped while it was starting the vm process"
			}
			m.fail(v.ID, reason)
			return
		}
		log.Info("adopted running vm", "pid", h.PID, "state", v.State)
	}
	exited, err := m.driver.Watch(h)
	if err != nil {
		m.fail(v.ID, fmt.Sprintf("watch vm process: %v", err))
		return
	}
	m.monitor(inst, v, h, exited)
}

// boot runs the creation steps; each one is idempotent, and a failure undoes
// what the earlier ones made (the cleanup stack). The VM it returns is the
// last record written, never one a failed write replaced.
func (m *Manager) boot(inst *instance, v store.VM) (store.VM, vmm.Handle, error) {
	ctx := context.WithoutCancel(m.ctx)
	img, err := m.store.GetImage(ctx, v.ImageID)
	if err != nil {
		return v, vmm.Handle{}, fmt.Errorf("image %s: %w", v.ImageID, err)
	}
	token, err := newToken()
	if err != nil {
		return v, vmm.Handle{}, err
	}
	spec := vmm.Spec{ID: v.ID, Dir: v.Dir, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB,
		Kernel: img.KernelPath, Initrd: img.InitrdPath, Rootfs: img.RootfsPath, Token: token}
	var undo cleanupStack
	// abort undoes the steps done so far; err stays the VM's failure
	// reason, what the undoing could not undo is logged (release tries
	// again once the VM is failed).
	abort := func(err error) error {
		if uerr := undo.run(); uerr != nil {
			m.log.Error("undo boot steps", "vm", v.ID, "err", uerr)
		}
		return err
	}
	var netJSON []byte
	if want, _, err := attachmentOf(v.Network); err != nil {
		return v, vmm.Handle{}, err
	} else if m.net != nil && len(v.Network) > 0 {
		att, err := m.net.Attach(ctx, v.ID, want.Egress)
		undo.push(func() error { return m.net.Detach(ctx, v.ID) })
		if err != nil {
			return v, vmm.Handle{}, abort(fmt.Errorf("attach network: %w", err))
		}
		spec.NICs = []vmm.NIC{{TAP: att.TAP, MAC: att.MAC, Address: att.Address, Gateway: att.Gateway, DNS: att.DNS}}
		if netJSON, err = json.Marshal(att); err != nil {
			return v, vmm.Handle{}, abort(fmt.Errorf("encode network: %w", err))
		}
	}
	h, err := m.driver.Prepare(ctx, spec)
	undo.push(func() error { return m.driver.Cleanup(ctx, h) })
	if err != nil {
		return v, h, abort(fmt.Errorf("prepare: %w", err))
	}
	// The handle is recorded before the process exists; the process is
	// found by the VM's directory until its PID is recorded too.
	nv, err := m.transition(v.ID, store.StateBooting, "starting "+m.driver.Name(), func(x *store.VM) {
		x.Handle = h.Marshal()
		if netJSON != nil {
			x.Network = netJSON
		}
	})
	if err != nil {
		return v, h, abort(err)
	}
	v = nv
	if inst.stopRequested() {
		return v, h, nil // monitor sees the stop at once and tears down
	}
	// Pushed before Start: a start that fails half-way may leave a
	// process its handle does not name.
	undo.push(func() error { return m.stopProcesses(ctx, v, h, 0) })
	if err := m.driver.Start(ctx, spec, &h); err != nil {
		return v, h, abort(err)
	}
	nv, err = m.update(v.ID, func(x *store.VM) { x.Handle = h.Marshal() })
	if err != nil {
		return v, h, abort(fmt.Errorf("record handle: %w", err))
	}
	return nv, h, nil
}

// cleanupStack undoes steps in reverse order.
type cleanupStack []func() error

func (c *cleanupStack) push(f func() error) { *c = append(*c, f) }

// run undoes every step, newest first, even after one fails, and returns
// every failure.
func (c *cleanupStack) run() error {
	var errs []error
	for i := len(*c) - 1; i >= 0; i-- {
		if err := (*c)[i](); err != nil {
			errs = append(errs, err)
		}
	}
	*c = nil
	return errors.Join(errs...)
}

// agentResult is what the agent goroutine hands the monitor.
type agentResult struct {
	sess  AgentSession
	hello AgentHello
	err   error
}

// monitor holds the agent session and watches the process until the VM is
// deleted, fails, or the manager shuts down.
func (m *Manager) monitor(inst *instance, v store.VM, h vmm.Handle, exited <-chan struct{}) {
	log := m.log.With("vm", v.ID)
	ports := m.cfg.Roles[v.Role]
	agentCfg := AgentConfig{RequiredPorts: ports, Heartbeat: m.cfg.HeartbeatInterval, Limits: m.cfg.AgentLimits}
	if att, ok, err := attachmentOf(v.Network); err != nil {
		m.fail(v.ID, err.Error())
		return
	} else if ok {
		agentCfg.Network = &att
	}
	token, err := readToken(h.TokenPath)
	if err != nil {
		m.fail(v.ID, err.Error())
		return
	}
	if w := m.newWork(h, token); w != nil {
		inst.setWork(w)
		defer func() {
			inst.setWork(nil)
			w.Close()
		}()
	}
	// The console is recorded for as long as this supervisor runs; a
	// restarted daemon's supervisor records it again (what the guest
	// wrote in between is lost).
	rec := m.recordConsole(v, h)
	defer rec.stop(0)
	var sess AgentSession
	defer func() {
		inst.setSession(nil)
		if sess != nil {
			sess.Close()
		}
	}()
	var (
		helloSeen  bool
		lastErr    error // why the last agent connection attempt failed
		persisted  time.Time
		readyPorts = map[int]bool{}
		connecting chan agentResult
		connCancel context.CancelFunc = func() {}
	)
	defer func() { connCancel() }()
	// Reconnects back off, their log lines are sampled, and an agent that
	// keeps breaking the protocol fails the VM.
	watch := newAgentWatch(log, m.cfg)
	defer watch.flush()
	var retry <-chan time.Time // the next connection attempt is due
	connect := func(deadline time.Time) {
		ctx, cancel := context.WithDeadline(m.ctx, deadline)
		connCancel = cancel
		ch := make(chan agentResult, 1)
		connecting = ch
		go func() {
			s, hello, err := m.agents.Connect(ctx, h, token, agentCfg)
			ch <- agentResult{s, hello, err}
		}()
	}
	// A booting VM has until its deadline; an adopted ready VM has one
	// heartbeat timeout to answer again.
	deadline := v.BootDeadline
	if v.State == store.StateReady {
		deadline = time.Now().Add(m.cfg.HeartbeatTimeout)
	}
	connect(deadline)
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	var events <-chan AgentEvent
	var sessDone <-chan struct{}

	for {
		select {
		case <-inst.stop:
			connCancel()
			inst.setSession(nil)
			rec.stop(0) // before teardown removes the VM's directory
			m.teardown(v, sess)
			sess = nil
			return

		case <-m.ctx.Done():
			if m.cfg.StopOnShutdown {
				rec.stop(0)
				m.teardown(v, sess)
				sess = nil
			}
			return

		case <-exited:
			if inst.stopRequested() {
				rec.stop(0)
				m.teardown(v, nil)
				return
			}
			// The guest's last words (a panic, say) are for the tail of
			// its failure.
			rec.stop(consoleDrain)
			reason := "vm process exited unexpectedly"
			if v.State == store.StateBooting {
				reason = "vm process exited before the guest became ready"
			}
			if ee, ok := m.driver.(vmm.ExitExplainer); ok {
				if why := ee.ExitReason(h); why != "" {
					reason += ": " + why
				}
			}
			m.fail(v.ID, reason)
			return

		case r := <-connecting:
			connecting = nil
			if r.err != nil {
				lastErr = r.err
				if m.ctx.Err() != nil {
					continue
				}
				// The agent is not there yet (or the session broke
				// during a restart): try again until the deadline,
				// unless it broke the protocol once too often.
				why, delay := watch.onEnded(time.Now(), r.err, false)
				if why != "" {
					m.fail(v.ID, why)
					return
				}
				if time.Now().Add(delay).Before(deadline) {
					retry = time.After(delay)
				}
				continue // past the deadline, the timer reports the failure
			}
			sess, events, sessDone = r.sess, r.sess.Events(), r.sess.Done()
			inst.setSession(sess)
			helloSeen = true
			watch.onConnected(time.Now(), r.hello.Version)
			// A connection is not a heartbeat: only what the hello says
			// is recorded, and only when it changed. A failed write keeps
			// the record as it was.
			if r.hello.Version != v.AgentVersion || !r.hello.BootTime.Equal(v.GuestBootAt) {
				if nv, err := m.update(v.ID, func(x *store.VM) {
					x.AgentVersion = r.hello.Version
					x.GuestBootAt = r.hello.BootTime
				}); err != nil {
					log.Error("record agent facts", "err", err)
				} else {
					v = nv
				}
			}

		case <-retry:
			retry = nil
			connect(deadline)

		case e, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			switch e.Type {
			case "network_failed":
				m.fail(v.ID, "guest network setup failed: "+e.Error)
				return
			case "port_ready":
				readyPorts[e.Port] = true
			case "ready":
				if v.State == store.StateBooting {
					nv, err := m.transition(v.ID, store.StateReady, readyMessage(ports), func(x *store.VM) {
						x.ReadyAt = time.Now().UTC()
						x.LastHeartbeatAt = x.ReadyAt
					})
					if err != nil {
						// A delete moved it to stopping meanwhile: not an error.
						if !errors.Is(err, errdefs.ErrConflict) {
							log.Error("mark ready", "err", err)
						}
						continue
					}
					v = nv
					resetTimer(timer, m.cfg.HeartbeatTimeout)
				}
				// A ready VM's agent says ready again after every
				// reconnect: that proves no liveness, heartbeats do.
			case "heartbeat":
				if v.State == store.StateReady {
					resetTimer(timer, m.cfg.HeartbeatTimeout)
					// Liveness is judged here, in memory; the stored time
					// is for people and is written at most every few beats.
					if e.At.Sub(persisted) >= heartbeatPersistEvery {
						persisted = e.At
						if nv, err := m.update(v.ID, func(x *store.VM) { x.LastHeartbeatAt = e.At.UTC() }); err != nil {
							log.Error("record heartbeat", "err", err)
						} else {
							v = nv
						}
					}
				}
			}

		case <-sessDone:
			// The guest went away (agent restarted, or it is shutting
			// down), or broke the protocol; reconnect while the
			// process lives, after a delay that grows while sessions
			// keep ending early.
			ended := sess.Err()
			inst.setSession(nil)
			sess.Close()
			sess, events, sessDone = nil, nil, nil
			why, delay := watch.onEnded(time.Now(), ended, true)
			if why != "" {
				m.fail(v.ID, why)
				return
			}
			deadline = time.Now().Add(m.cfg.HeartbeatTimeout)
			if v.State == store.StateBooting && v.BootDeadline.Before(deadline) {
				deadline = v.BootDeadline
			}
			retry = time.After(delay)

		case <-timer.C:
			if v.State == store.StateReady && sess != nil {
				m.fail(v.ID, fmt.Sprintf("agent sent no heartbeat for %s", m.cfg.HeartbeatTimeout))
				return
			}
			m.fail(v.ID, notReadyReason(v, helloSeen, lastErr, ports, readyPorts, deadline))
			return
		}
	}
}

// readToken reads the VM's agent secret from the file its driver delivers
// to the guest.
func readToken(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent token: %w", err)
	}
	tok, err := agentapi.ParseToken(string(b))
	if err != nil {
		return nil, fmt.Errorf("read agent token: %w", err)
	}
	return tok, nil
}

func readyMessage(ports []int) string {
	if len(ports) == 0 {
		return "agent reported ready"
	}
	return fmt.Sprintf("agent reported ready; ports %v accept connections", ports)
}

func notReadyReason(v store.VM, helloSeen bool, lastErr error, ports []int, ready map[int]bool, deadline time.Time) string {
	if v.State == store.StateReady {
		return "agent stopped answering"
	}
	within := deadline.Sub(v.CreatedAt).Round(time.Second)
	if !helloSeen {
		if lastErr != nil && errors.Is(lastErr, agentapi.ErrBadProof) {
			return fmt.Sprintf("not ready within %s: the guest agent could not prove the vm's token", within)
		}
		return fmt.Sprintf("not ready within %s: the guest agent never connected", within)
	}
	var missing []string
	for _, p := range ports {
		if !ready[p] {
			missing = append(missing, fmt.Sprint(p))
		}
	}
	return fmt.Sprintf("not ready within %s: agent connected but port(s) %s never accepted connections", within, strings.Join(missing, ", "))
}

func resetTimer(t *time.Timer, d time.Duration) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	t.Reset(d)
}

// fail marks the VM failed with reason, then releases what it holds. A
// VM is never left running unsupervised because the store failed: its
// processes are stopped at once, and the write is retried until the store
// takes it.
func (m *Manager) fail(id, reason string) {
	mark := func() (store.VM, error) {
		return m.transition(id, store.StateFailed, reason, func(x *store.VM) {
			x.FailureReason = reason
			x.StoppedAt = time.Now().UTC()
		})
	}
	v, err := mark()
	if err != nil && !errors.Is(err, errdefs.ErrConflict) && !errors.Is(err, store.ErrNotFound) {
		m.log.Error("mark failed; stopping the vm while the write is retried", "vm", id, "reason", reason, "err", err)
		m.stopUnrecorded(id)
		err = m.persist(id, "mark failed", func() error {
			var err error
			v, err = mark()
			return err
		})
	}
	if err != nil {
		// A conflict: a delete (or another failure) moved it on, and its
		// teardown owns it now.
		m.log.Error("mark failed", "vm", id, "reason", reason, "err", err)
		return
	}
	m.release(v)
}

// stopUnrecorded stops a VM's processes when its state cannot be written:
// from its stored record if that can be read, else from where its
// directory must be.
func (m *Manager) stopUnrecorded(id string) {
	ctx := context.WithoutCancel(m.ctx)
	v, err := m.store.GetVM(ctx, id)
	if err != nil {
		v = store.VM{ID: id, Dir: filepath.Join(m.cfg.VMsDir, id)}
	}
	if err := m.stopProcesses(ctx, v, m.handleOf(v), 0); err != nil {
		m.log.Error("stop vm", "vm", id, "err", err)
	}
}

// release stops a failed VM's processes and removes its network, disk,
// sockets and token. The console log stays, so the failure can be read,
// until the VM is deleted.
func (m *Manager) release(v store.VM) {
	ctx := context.WithoutCancel(m.ctx)
	log := m.log.With("vm", v.ID)
	h := m.handleOf(v)
	if err := m.stopProcesses(ctx, v, h, 0); err != nil {
		log.Error("stop failed vm", "err", err)
		return // the network and files stay until the process is gone
	}
	if err := m.detach(ctx, v); err != nil {
		log.Error("detach failed vm's network", "err", err)
	}
	if h.Dir != "" {
		if err := m.driver.Cleanup(ctx, h); err != nil {
			log.Error("clean up failed vm", "err", err)
		}
	}
}

// detach releases a VM's network (rules, TAP, lease); its process must be
// gone already, so an address is never handed out while still in use.
func (m *Manager) detach(ctx context.Context, v store.VM) error {
	if m.net == nil || len(v.Network) == 0 {
		return nil
	}
	return m.net.Detach(ctx, v.ID)
}

// teardown stops the VM gracefully (agent first, then the driver), removes
// every resource and marks it destroyed. Each step is idempotent, so a
// teardown interrupted by a crash is finished by the next daemon; a state
// the store fails to write is retried (persist).
func (m *Manager) teardown(v store.VM, sess AgentSession) {
	ctx := context.WithoutCancel(m.ctx)
	log := m.log.With("vm", v.ID)
	if cur, err := m.store.GetVM(ctx, v.ID); err == nil {
		v = cur // the caller's copy may predate a delete or a failure
	} else {
		log.Error("read vm before teardown; using the supervisor's copy", "err", err)
	}
	if v.State == store.StateDestroyed {
		return
	}
	move := func(to store.State, msg string, fn func(*store.VM)) error {
		return m.persist(v.ID, "mark "+string(to), func() error {
			nv, err := m.transition(v.ID, to, msg, fn)
			if err == nil {
				v = nv
			}
			return err
		})
	}
	h := m.handleOf(v)
	if v.State != store.StateFailed && v.State != store.StateStopped {
		if err := move(store.StateStopping, "stop requested", nil); err != nil {
			log.Error("mark stopping", "err", err)
			return
		}
		grace := m.cfg.StopTimeout
		if sess != nil && m.driver.Alive(h) {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if err := sess.Shutdown(sctx); err == nil {
				if ch, err := m.driver.Watch(h); err == nil {
					select {
					case <-ch:
					case <-time.After(grace):
					}
				}
			}
			cancel()
		}
		if sess != nil {
			if err := sess.Close(); err != nil {
				log.Debug("close agent session", "err", err)
			}
		}
		if err := m.stopProcesses(ctx, v, h, grace/2); err != nil {
			log.Error("stop vm", "err", err)
			m.fail(v.ID, fmt.Sprintf("stop: %v", err))
			return
		}
		if err := move(store.StateStopped, "vm process stopped", func(x *store.VM) { x.StoppedAt = time.Now().UTC() }); err != nil {
			log.Error("mark stopped", "err", err)
			return
		}
	} else if err := m.stopProcesses(ctx, v, h, 0); err != nil {
		log.Error("stop vm", "err", err)
		return
	}
	if err := m.detach(ctx, v); err != nil {
		log.Error("detach network", "err", err)
		return
	}
	if h.Dir != "" {
		if err := m.driver.Cleanup(ctx, h); err != nil {
			log.Error("clean up vm", "err", err)
			return
		}
	}
	if v.Dir != "" {
		if err := os.RemoveAll(v.Dir); err != nil {
			log.Error("remove vm dir", "err", err)
			return
		}
	}
	if err := move(store.StateDestroyed, "all resources released", func(x *store.VM) { x.DestroyedAt = time.Now().UTC() }); err != nil {
		log.Error("mark destroyed", "err", err)
	}
}

// Start reconciles the store with the host: VMs still running are adopted,
// VMs whose process died are failed and cleaned up, interrupted creations
// and deletions are finished, and VM directories or processes that belong
// to no VM are removed.
func (m *Manager) Start(ctx context.Context) error {
	vms, err := m.store.ListVMs(ctx, store.VMFilter{IncludeDestroyed: true})
	if err != nil {
		return fmt.Errorf("list vms: %w", err)
	}
	// Processes first: an address or TAP is released only once no process
	// the store does not account for can still use it.
	if err := m.reconcileProcesses(vms); err != nil {
		return err
	}
	if err := m.reconcileNetwork(ctx, vms); err != nil {
		return err
	}
	known := map[string]bool{}
	for _, v := range vms {
		if v.State != store.StateDestroyed {
			known[v.ID] = true
		}
		switch v.State {
		case store.StatePending:
			m.spawn(v, modeRun)
		case store.StateBooting, store.StateReady:
			m.spawn(v, modeAdopt)
		case store.StateStopping, store.StateStopped:
			m.spawn(v, modeDestroy) // a deletion was interrupted: finish it
		case store.StateFailed:
			h, err := vmm.UnmarshalHandle(v.Handle)
			if err != nil || m.driver.Alive(h) || (h.DiskPath != "" && exists(h.DiskPath)) {
				m.spawn(v, modeAdopt) // supervise releases what a failed VM still holds
			}
		}
	}
	return m.removeStrays(known)
}

// reconcileNetwork rebuilds rules for every VM that still holds its network
// and removes the TAPs and leases of everything else. A failed VM whose
// process is gone holds nothing any more.
func (m *Manager) reconcileNetwork(ctx context.Context, vms []store.VM) error {
	if m.net == nil {
		return nil
	}
	held := map[string]NetAttachment{}
	for _, v := range vms {
		if v.State == store.StateDestroyed || len(v.Network) == 0 {
			continue
		}
		att, err := DecodeAttachment(v.Network)
		if err != nil {
			// Nothing can be rebuilt from it; its supervisor fails it.
			m.log.Error("vm network unreadable; its network is released", "vm", v.ID, "err", err)
			continue
		}
		if att.Address == "" {
			continue // never reserved
		}
		if v.State == store.StateFailed {
			// An unreadable handle names no process: reconcileProcesses
			// ended whatever ran for the VM.
			if h, err := vmm.UnmarshalHandle(v.Handle); err != nil || !m.driver.Alive(h) {
				continue
			}
		}
		held[v.ID] = att
	}
	if err := m.net.Reconcile(ctx, held); err != nil {
		return fmt.Errorf("reconcile network: %w", err)
	}
	return nil
}

// removeStrays removes VM directories that belong to no VM that is not
// destroyed (their processes are gone: reconcileProcesses).
func (m *Manager) removeStrays(known map[string]bool) error {
	entries, err := os.ReadDir(m.cfg.VMsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("read vms dir: %w", err)
	}
	for _, e := range entries {
		if !known[e.Name()] {
			m.log.Warn("removing stray vm directory", "dir", e.Name())
			if err := os.RemoveAll(filepath.Join(m.cfg.VMsDir, e.Name())); err != nil {
				return fmt.Errorf("remove stray %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Shutdown stops supervising. VMs keep running (and are adopted by the next
// manager) unless StopOnShutdown is set, in which case they are stopped.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.mu.Lock() // spawn checks for this under the lock before it adds to wg
	m.cancel()
	m.mu.Unlock()
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("vm supervisors still running: %w", ctx.Err())
	}
}

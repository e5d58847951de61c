package fctest

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/workapi"
)

// AgentVsockPort is the guest vsock port the fake starts the agent
// listening on (hearth's agent port); its data channel listens on
// workapi.VsockPort.
const AgentVsockPort = 1024

// guest is what runs "inside" the fake VM.
type guest struct {
	serial     *lockedWriter
	serialFile *dropWriter
	console    bool // boot args have console=ttyS0: kernel lines go to serial

	mmds     *http.Server
	mmdsBase string

	agentPath, agentSock string
	dataSock             string // the agent's data channel listener
	bootArgs             string
	onReboot             func() // the guest rebooted or powered off
	nics                 []NetworkInterface
	net                  *guestNet // when the guest has its own network namespace
	agent                *exec.Cmd
	agentDone            chan struct{}
	wg                   sync.WaitGroup
}

// lockedWriter serialises writers sharing the serial console.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (g *guest) mmdsURL() string { return g.mmdsBase }

func (g *guest) agentPID() int {
	if g.agent == nil || g.agent.Process == nil {
		return 0
	}
	select {
	case <-g.agentDone:
		return 0
	default:
		return g.agent.Process.Pid
	}
}

// kernelf writes a kernel-like console line, if the console is on ttyS0.
func (g *guest) kernelf(format string, args ...any) {
	if g.console {
		fmt.Fprintf(g.serial, format+"\n", args...)
	}
}

// bootGuest starts the fake guest (with s.mu held). bootArgs are the
// kernel command line the guest was booted with.
func (s *Server) bootGuest(bootArgs string) (*guest, error) {
	g := &guest{agentPath: s.opts.AgentPath, agentSock: s.GuestSocket(AgentVsockPort), dataSock: s.GuestSocket(workapi.VsockPort),
		bootArgs: bootArgs, onReboot: s.reboot}
	var out io.Writer = s.opts.Stdout
	if s.cfg.Serial != nil && s.cfg.Serial.SerialOutPath != "" {
		f, err := openDropFile(s.cfg.Serial.SerialOutPath)
		if err != nil {
			return nil, fmt.Errorf("cannot open the serial output %s: %w", s.cfg.Serial.SerialOutPath, err)
		}
		f.onError = func(err error) { s.log.write(levelError, "fc_vcpu 0", serialErrorf(err), false) }
		g.serialFile, out = f, f
	}
	g.serial = &lockedWriter{w: out}
	g.console = hasSerialConsole(bootArgs)
	g.nics = append([]NetworkInterface(nil), s.cfg.NetworkInterfaces...)

	// The metadata service answers on 127.0.0.1 instead of the guest's
	// 169.254.169.254, and only when MMDS was configured.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		g.stop()
		return nil, fmt.Errorf("cannot listen for MMDS: %w", err)
	}
	g.mmdsBase = "http://" + ln.Addr().String()
	if s.cfg.MMDSConfig != nil {
		g.mmds = &http.Server{Handler: s.mmdsStore(), ReadHeaderTimeout: 10 * time.Second}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			_ = g.mmds.Serve(ln) // ends when the guest stops (Close)
		}()
	} else {
		ln.Close() // nothing answers: the guest cannot reach MMDS
	}

	m := s.cfg.MachineConfig
	g.kernelf("[    0.000000] Linux version 6.1.0-fctest (fake guest of Firecracker v%s; no kernel runs)", SpecVersion)
	g.kernelf("[    0.000000] Command line: %s", bootArgs)
	g.kernelf("[    0.000000] Memory: %dK available", m.MemSizeMiB*1024)
	g.kernelf("[    0.004000] smp: Brought up 1 node, %d CPUs", m.VCPUCount)
	for i, d := range s.cfg.Drives {
		g.kernelf("[    0.050000] virtio_blk virtio%d: [vd%c] %s", i, 'a'+i, d.DriveID)
	}
	g.kernelf("[    0.100000] Run /sbin/init as init process")
	return g, nil
}

func hasSerialConsole(bootArgs string) bool {
	for _, f := range strings.Fields(bootArgs) {
		if strings.HasPrefix(f, "console=ttyS0") {
			return true
		}
	}
	return false
}

// startAgent starts the configured agent, if any.
func (g *guest) startAgent(mmdsURL string) error {
	if g.agentPath == "" || g.agent != nil {
		return nil
	}
	// Stale sockets from a previous boot.
	os.Remove(g.agentSock)
	os.Remove(g.dataSock)
	// The guest's mount namespace (isolated, below) sees the same files:
	// the vsock device reaches both listeners by these paths.
	argv := []string{g.agentPath, "-listen", "unix:" + g.agentSock, "-data-listen", "unix:" + g.dataSock,
		"-token-source", "mmds", "-mmds-url", mmdsURL}
	// The agent dies with the fake VMM, as a guest dies with its VMM.
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	isolated := os.Geteuid() == 0
	if isolated {
		// The guest's init (see MaybeGuestInit): the agent's power-off
		// must never reach the host.
		cmdline := g.agentSock + ".cmdline"
		if err := os.WriteFile(cmdline, []byte(g.bootArgs+"\n"), 0o444); err != nil {
			return fmt.Errorf("write the guest command line: %w", err)
		}
		self, err := selfPath()
		if err != nil {
			return err
		}
		argv = append([]string{self, guestInitArg, cmdline}, argv...)
		// Its own network namespace too: the guest's NICs and MMDS
		// live there (see guestNet), and nothing the agent does to
		// its network reaches the host's.
		attr.Cloneflags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWNET
		argv[len(argv)-1] = guestMMDSURL
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = g.serial, g.serial
	// Not /dev/null: a jail has none.
	cmd.Stdin = strings.NewReader("")
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the guest agent: %w", err)
	}
	g.agent, g.agentDone = cmd, make(chan struct{})
	if isolated {
		g.net.close() // an earlier agent's
		gn, err := setupGuestNet(cmd.Process.Pid, g.nics, g.mmds != nil, g.kernelf)
		if err != nil {
			_ = cmd.Process.Kill() // its Wait (below) reaps it
			return err
		}
		g.net = gn
		if gn.mmds != nil {
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				_ = g.mmds.Serve(gn.mmds) // ends when the guest stops (Close)
			}()
		}
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		err := cmd.Wait()
		g.kernelf("[    9.999999] fctest: guest agent exited: %v", err)
		close(g.agentDone)
		// reboot(2) by the init of a PID namespace: SIGHUP for a
		// restart, SIGINT for a power-off or halt.
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); isolated && ok && ws.Signaled() &&
			(ws.Signal() == syscall.SIGHUP || ws.Signal() == syscall.SIGINT) && g.onReboot != nil {
			g.onReboot()
		}
	}()
	return nil
}

// signalAgent sends sig (SIGSTOP to pause, SIGCONT to resume).
func (g *guest) signalAgent(sig syscall.Signal) {
	if pid := g.agentPID(); pid != 0 {
		_ = syscall.Kill(pid, sig) // an agent already gone has nothing to pause
	}
}

// stop ends the guest: the agent is killed, MMDS stops answering.
func (g *guest) stop() {
	if g.agent != nil && g.agent.Process != nil {
		_ = g.agent.Process.Kill() // already gone is fine
	}
	if g.mmds != nil {
		g.mmds.Close()
	}
	g.net.close()
	g.wg.Wait()
	if g.serialFile != nil {
		g.serialFile.Close()
	}
}

// action carries out PUT /actions.
func (s *Server) action(body []byte) reply {
	var a struct {
		ActionType string `json:"action_type"`
	}
	if r := decodeBody(body, &a); r != nil {
		return *r
	}
	started := s.state != stateNotStarted
	switch a.ActionType {
	case "InstanceStart":
		if started {
			return badRequest(errPostBoot)
		}
		if s.cfg.BootSource == nil {
			return badRequest("Start microvm error: Cannot start microvm without kernel configuration.")
		}
		g, err := s.bootGuest(s.cfg.BootSource.BootArgs)
		if err != nil {
			return badRequest("Start microvm error: %v", err)
		}
		if err := g.startAgent(g.mmdsURL()); err != nil {
			g.stop()
			return badRequest("Start microvm error: %v", err)
		}
		s.guest = g
		s.setState(stateRunning)
		if s.opts.LogFlood > 0 {
			s.bg.Add(1)
			go s.flood(s.opts.LogFlood)
		}
		return noContent
	case "FlushMetrics":
		if !started {
			return badRequest(errPreBoot)
		}
		if err := s.flushMetrics(); err != nil {
			return badRequest("Internal VMM error: %v", err)
		}
		return noContent
	case "SendCtrlAltDel":
		if !started {
			return badRequest(errPreBoot)
		}
		s.rebootPending = true
		rep := noContent
		if s.state == stateRunning {
			rep.after = s.reboot
		}
		return rep
	}
	return badRequest("fctest: unknown action %q", a.ActionType) // the spec check rules this out
}

// flood is a guest that keeps Firecracker logging as fast as its log
// takes lines, for d: error lines of the kind a guest triggers by driving
// a device wrongly, each written as Firecracker writes a line, and a
// metrics flush after every tenth. Firecracker limits each of its log call
// sites (10 lines, then one per 500 ms) but has many, and unrestricted
// ones; the flood stands in for the worst of them together. What a full
// pipe cannot take is lost and counted, as in Firecracker. A last line
// says how many were written and lost; unlike Firecracker's lines it is
// tried again until it goes out whole, so whoever reads the log learns
// that the flood is over.
func (s *Server) flood(d time.Duration) {
	defer s.bg.Done()
	lines, lost, metrics, metricsLost := 0, 0, 0, 0
	for end := time.Now().Add(d); time.Now().Before(end); {
		select {
		case <-s.done:
			return
		default:
		}
		lines++
		if !s.log.write(levelError, "fc_vcpu 0", fmt.Sprintf("Failed to handle a write to virtio-block: fctest log flood, line %d", lines), false) {
			lost++
		}
		if lines%10 == 0 {
			s.mu.Lock()
			if s.metrics != nil {
				metrics++
				if s.flushMetrics() != nil {
					metricsLost++
				}
			}
			s.mu.Unlock()
		}
	}
	done := fmt.Sprintf("fctest: log flood done: %d lines (%d lost), %d metrics (%d lost)", lines, lost, metrics, metricsLost)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for !s.log.write(levelError, "fc_vcpu 0", done, true) {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
	}
}

// reboot is the guest reacting to Ctrl+Alt+Del: on x86 it reboots, which
// makes Firecracker exit (status 0). Runs outside s.mu.
func (s *Server) reboot() {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		s.mu.Lock()
		if g := s.guest; g != nil {
			g.kernelf("[   10.000000] reboot: Restarting system")
		}
		s.mu.Unlock()
		select {
		case <-time.After(s.opts.ExitDelay):
			s.log.Unrestricted("Vmm is stopping.")
			s.log.Unrestricted("Firecracker exiting successfully. exit_code=0")
			s.exit(0)
		case <-s.done:
		}
	}()
}

// patchVM carries out PATCH /vm (pause or resume the vCPUs).
func (s *Server) patchVM(body []byte) reply {
	var v struct {
		State string `json:"state"`
	}
	if r := decodeBody(body, &v); r != nil {
		return *r
	}
	switch v.State {
	case "Paused":
		if s.state == stateRunning {
			s.guest.signalAgent(syscall.SIGSTOP)
			s.setState(statePaused)
		}
		return noContent
	case "Resumed":
		if s.state == statePaused {
			s.setState(stateRunning)
			s.guest.signalAgent(syscall.SIGCONT)
			if err := s.guest.startAgent(s.guest.mmdsURL()); err != nil {
				return badRequest("Internal VMM error: %v", err)
			}
		}
		rep := noContent
		if s.rebootPending {
			rep.after = s.reboot
		}
		return rep
	}
	return badRequest("fctest: unknown state %q", v.State) // the spec check rules this out
}

// nowMillis is the time in ms since the epoch.
func nowMillis() int64 { return time.Now().UnixMilli() }

// snapshotState is the fake's snapshot state file. Real snapshot files are
// a binary format; this one only needs to round-trip through the fake.
type snapshotState struct {
	Format     string   `json:"format"`
	VMMVersion string   `json:"vmm_version"`
	Config     VMConfig `json:"config"`
	// BootArgs survive in the guest's memory, not in the restored
	// configuration (GET /vm/config shows no boot-source).
	BootArgs string    `json:"boot_args"`
	Created  time.Time `json:"created"`
}

const snapshotFormat = "fctest-snapshot/1"

func (s *Server) createSnapshot(body []byte) reply {
	var p struct {
		MemFilePath  string `json:"mem_file_path"`
		SnapshotPath string `json:"snapshot_path"`
		SnapshotType string `json:"snapshot_type"`
	}
	if r := decodeBody(body, &p); r != nil {
		return *r
	}
	if s.state != statePaused {
		return badRequest("Create snapshot error: Cannot save the microVM state: the microVM must be paused (it is %s).", s.state)
	}
	if p.SnapshotType == "Diff" && !s.cfg.MachineConfig.TrackDirtyPages {
		return badRequest("Create snapshot error: Diff snapshots are not allowed on uVMs with dirty page tracking disabled.")
	}
	st := snapshotState{Format: snapshotFormat, VMMVersion: SpecVersion, Config: s.cfg.clone(), Created: time.Now().UTC()}
	if s.cfg.BootSource != nil {
		st.BootArgs = s.cfg.BootSource.BootArgs
	} else {
		st.BootArgs = s.bootArgs
	}
	st.Config.Logger, st.Config.Metrics, st.Config.Serial = nil, nil, nil
	b, _ := json.MarshalIndent(st, "", "  ")
	if err := os.WriteFile(p.SnapshotPath, b, 0o644); err != nil {
		return badRequest("Create snapshot error: Cannot save the microVM state: %v", err)
	}
	mem, err := os.OpenFile(p.MemFilePath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err == nil {
		err = mem.Truncate(int64(s.cfg.MachineConfig.MemSizeMiB) << 20) // sparse
		if cerr := mem.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return badRequest("Create snapshot error: Cannot write the guest memory: %v", err)
	}
	return noContent
}

func (s *Server) loadSnapshot(body []byte) reply {
	var p struct {
		SnapshotPath string `json:"snapshot_path"`
		MemFilePath  string `json:"mem_file_path"`
		MemBackend   *struct {
			BackendType string `json:"backend_type"`
			BackendPath string `json:"backend_path"`
		} `json:"mem_backend"`
		EnableDiffSnapshots bool `json:"enable_diff_snapshots"`
		TrackDirtyPages     bool `json:"track_dirty_pages"`
		ResumeVM            bool `json:"resume_vm"`
		NetworkOverrides    []struct {
			IfaceID     string `json:"iface_id"`
			HostDevName string `json:"host_dev_name"`
		} `json:"network_overrides"`
		VsockOverride *struct {
			UDSPath string `json:"uds_path"`
		} `json:"vsock_override"`
	}
	if r := decodeBody(body, &p); r != nil {
		return *r
	}
	switch {
	case p.MemBackend != nil && p.MemFilePath != "":
		return badRequest("An error occurred when deserializing the json body of a request: too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")
	case p.MemBackend == nil && p.MemFilePath == "":
		return badRequest("An error occurred when deserializing the json body of a request: missing field: either `mem_backend` or `mem_file_path` is required.")
	}
	if s.bootPath {
		return badRequest("Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")
	}
	memPath := p.MemFilePath
	if p.MemBackend != nil {
		if p.MemBackend.BackendType != "File" {
			return badRequest("fctest: mem_backend %s is valid per Firecracker's API, but the fake only models File", p.MemBackend.BackendType)
		}
		memPath = p.MemBackend.BackendPath
	}
	// From here on a failure leaves Firecracker unusable: it answers the
	// error and exits.
	fatal := func(format string, args ...any) reply {
		rep := badRequest("Load snapshot error: Failed to restore from snapshot: "+format, args...)
		rep.after = func() {
			s.bg.Add(1)
			go func() {
				defer s.bg.Done()
				s.log.Unrestricted("Firecracker exiting with error. exit_code=1")
				s.exit(1)
			}()
		}
		return rep
	}
	raw, err := os.ReadFile(p.SnapshotPath)
	if err != nil {
		return fatal("Failed to open the snapshot state file: %v", err)
	}
	var st snapshotState
	if err := json.Unmarshal(raw, &st); err != nil || st.Format != snapshotFormat {
		return fatal("Cannot deserialize the microVM state from %s (not a snapshot the fake wrote)", p.SnapshotPath)
	}
	fi, err := os.Stat(memPath)
	if err != nil {
		return fatal("Cannot open the guest memory file: %v", err)
	}
	if want := int64(st.Config.MachineConfig.MemSizeMiB) << 20; fi.Size() != want {
		return fatal("The guest memory file %s has %d bytes, the snapshot needs %d", memPath, fi.Size(), want)
	}
	cfg := st.Config.clone()
	for _, o := range p.NetworkOverrides {
		i := -1
		for j, n := range cfg.NetworkInterfaces {
			if n.IfaceID == o.IfaceID {
				i = j
			}
		}
		if i < 0 {
			return fatal("Invalid network override: the snapshot has no network interface %q", o.IfaceID)
		}
		cfg.NetworkInterfaces[i].HostDevName = o.HostDevName
	}
	if p.VsockOverride != nil {
		if cfg.Vsock == nil {
			return fatal("Invalid vsock override: the snapshot has no vsock device")
		}
		cfg.Vsock.UDSPath = p.VsockOverride.UDSPath
	}
	for _, d := range cfg.Drives {
		if d.PathOnHost != "" {
			if err := openable(d.PathOnHost, d.IsReadOnly == nil || !*d.IsReadOnly); err != nil {
				return fatal("Failed to restore the block device %s: %v", d.DriveID, err)
			}
		}
	}
	var dev *vsockDev
	if cfg.Vsock != nil {
		if dev, err = s.newVsock(cfg.Vsock.UDSPath); err != nil {
			return fatal("Failed to restore the vsock device: %v", err)
		}
	}
	// The restored VM has no boot source, SMT or CPU template in its
	// configuration; the data store is not part of a snapshot (only the
	// MMDS version and configuration are).
	cfg.BootSource = nil
	cfg.MachineConfig.SMT = false
	cfg.MachineConfig.CPUTemplate = ""
	cfg.MachineConfig.TrackDirtyPages = p.TrackDirtyPages || p.EnableDiffSnapshots
	cfg.Logger, cfg.Metrics, cfg.Serial = s.cfg.Logger, s.cfg.Metrics, s.cfg.Serial
	s.cfg = cfg
	s.mmds = nil
	if cfg.MMDSConfig != nil {
		s.mmdsStore().setVersion(cfg.MMDSConfig.Version, cfg.MMDSConfig.IMDSCompat)
	}
	s.bootArgs = st.BootArgs
	g, err := s.bootGuest(st.BootArgs)
	if err != nil {
		if dev != nil {
			dev.close()
		}
		return fatal("%v", err)
	}
	s.vsock, s.guest = dev, g
	s.setState(statePaused)
	if p.ResumeVM {
		s.setState(stateRunning)
		if err := g.startAgent(g.mmdsURL()); err != nil {
			return fatal("%v", err)
		}
	}
	return noContent
}

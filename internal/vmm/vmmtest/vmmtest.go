// Package vmmtest is the conformance suite of the vmm.Driver contract: the
// one set of tests every driver (vmm/qemu, vmm/firecracker, a fake) runs,
// so that the lifecycle manager can rely on the same behaviour from all of
// them. A driver's test supplies a Harness (how to make the driver and the
// spec of a VM) and calls Run; every subtest boots its own guest, talks to
// its agent over the real agent protocol (vmm.DialAgent, then
// agentapi.Handshake with the VM's token) and removes what it created, even
// when it fails.
//
// What the suite requires beyond the interface's own documentation:
//
//   - the guest kernel command line carries hearth.vm=<Spec.ID> and the
//     Spec's KernelArgs, and never the token;
//   - the guest runs the hearth agent, which accepts a new host connection
//     after the previous one closed and answers an exec of cat;
//   - the agent serves the work API on the data channel the handle names
//     (vmm.DialData, then workapi.HostPreamble with the VM's token, then
//     HTTP/2), independently of its control channel, and accepts a new
//     host connection there after the previous one closed;
//   - when the agent has acknowledged a shutdown request, the guest powers
//     off and the VM process exits by itself (the lifecycle manager's
//     teardown asks the agent before it calls Stop);
//   - the guest's serial console (its /dev/ttyS0) reaches the host through
//     Handle.ConsoleStream (vmm.OpenConsole) from the VM's start; a guest
//     writing it while no one reads is neither held up nor stored by the
//     VMM, and a new reader gets what the guest writes next;
//   - Start and Restore leave a VM process that does not depend on the
//     context they were given (it is cancelled as soon as they return);
//   - a handle with the VM's PID but another start time (a recycled PID)
//     is not the VM's: Alive is false for it, Watch returns a closed
//     channel and Stop leaves the VM running;
//   - a spec with no directory, or whose rootfs or kernel names no file,
//     is refused by Prepare or Start, leaving nothing running.
//
// Pause/resume and snapshot/restore are tested only when the driver's
// Capabilities offer them, and finding processes by directory only when
// the driver is a vmm.ProcessFinder (they are skipped, saying so,
// otherwise).
//
// RunContract runs the same subtests without a guest, for a stand-in
// whose VMs run none (vm/vmfake): every check that holds of a VM process
// alone — Prepare and Start idempotent, a recycled PID never taken for the
// VM, adoption by a second driver instance from the persisted handle alone,
// Alive and Watch of stopped, killed and never started VMs, Stop and
// Cleanup idempotent, what Cleanup removes and keeps, refused specs,
// processes found by directory, the console stream from the start, and the
// pause/resume and snapshot bookkeeping the Capabilities offer. The steps
// that talk to the guest are reported skipped.
package vmmtest

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/vmm/proc"
	"github.com/hearth-project/hearth/internal/workapi"
)

// Harness is what a driver's test supplies to Run.
type Harness struct {
	// NewDriver returns a new driver instance. It is called at the start
	// of every subtest, and again within one to stand for a restarted
	// daemon: the second instance must adopt, through a persisted handle
	// alone, a VM the first one started. It fails t if it cannot.
	NewDriver func(t *testing.T) vmm.Driver
	// Spec returns the spec of a new VM called id: kernel, initrd, rootfs,
	// VCPUs, MemoryMiB, NICs if the driver needs any, and a Dir of its own
	// that does not exist yet (the driver creates it) and is short enough
	// for the Unix sockets the driver puts in it (108 bytes per path).
	// The suite sets ID to id, appends a KernelArgs entry of its own and,
	// if Token is empty, makes a fresh one (agentapi.NewToken in its
	// FormatToken text form); a Token the harness sets must be new on every
	// call.
	Spec func(t *testing.T, id string) vmm.Spec
	// BootTimeout bounds the time from Start (or Restore) until the guest
	// agent has completed a handshake (for RunContract, the time Start and
	// Restore may take; a minute if unset).
	BootTimeout time.Duration
	// ConsoleMarker is text the console shows once the guest agent
	// answers, e.g. "Linux version" or, for guests booted with "quiet",
	// "hearth-agent" (the agent logs to the console). For RunContract it
	// is optional: text the console shows from Start.
	ConsoleMarker string
	// Kill ends a VM's process as a crash would. Unset, the suite sends
	// SIGKILL to the handle's PID; only a stand-in whose processes are not
	// the host's sets it.
	Kill func(h vmm.Handle) error
	// WriteConsole, for RunContract, writes b to a running VM's console as
	// its guest would write /dev/ttyS0: without waiting for a reader, and
	// whatever the console cannot take is lost. Unset, RunContract does not
	// check what reaches the console stream after Start.
	WriteConsole func(h vmm.Handle, b []byte)
	// WorkUser is the guest user the work API checks run as
	// (workapi.DefaultUser if empty): a stand-in guest that is the
	// host's own system has no workspace user.
	WorkUser string
	// Skip names subtests (e.g. "guest_poweroff_ends_process") or steps
	// of one (e.g. "token_not_on_process_cmdline") this harness cannot
	// run, each with the reason, which the skip reports; "guest_cmdline"
	// skips reading the guest's kernel command line through the agent,
	// "console" the guest's writes to /dev/ttyS0. A skipped step must not
	// be one the next steps build on. Only for limits of a stand-in, never
	// of a driver.
	Skip map[string]string
}

const (
	// stopGrace is what the graceful Stops give the guest to power off.
	stopGrace = 10 * time.Second
	// exitWait bounds how long a process that is gone (or was killed) may
	// take to be reported so by Watch.
	exitWait = 5 * time.Second
	// callTimeout bounds a request to an agent that is up, and a Stop or
	// Cleanup beyond its grace.
	callTimeout = time.Minute
	// pausedWait is how long a Ping to a paused guest must stay unanswered.
	pausedWait = time.Second
	// consoleTail is how much of the console a failure message shows.
	consoleTail = 4000
	// cmdlineArg is the kernel argument the suite adds to every spec.
	cmdlineArg = "hearth.vmmtest"
)

// Run runs the conformance suite against the driver h makes, with a
// guest in every VM.
func Run(t *testing.T, h Harness) {
	t.Helper()
	switch {
	case h.BootTimeout <= 0:
		t.Fatal("vmmtest: Harness.BootTimeout must be positive")
	case h.ConsoleMarker == "":
		t.Fatal("vmmtest: Harness.ConsoleMarker is required")
	}
	run(t, &suite{h: h, guest: true})
}

// RunContract runs the part of the conformance suite that holds without a
// guest against the driver h makes: for stand-ins whose VMs run no guest
// agent. Drivers run all of it, with Run.
func RunContract(t *testing.T, h Harness) {
	t.Helper()
	if h.BootTimeout <= 0 {
		h.BootTimeout = callTimeout
	}
	run(t, &suite{h: h})
}

func run(t *testing.T, s *suite) {
	t.Helper()
	if s.h.NewDriver == nil || s.h.Spec == nil {
		t.Fatal("vmmtest: Harness.NewDriver and Harness.Spec are required")
	}
	for _, sub := range []struct {
		name  string
		fn    func(*testing.T)
		guest bool // there is nothing to check without a guest
	}{
		{"lifecycle", s.testLifecycle, false},
		{"bad_spec_refused", s.testBadSpec, false},
		{"wrong_token_rejected", s.testWrongToken, true},
		{"guest_poweroff_ends_process", s.testGuestPowerOff, true},
		{"data_channel", s.testDataChannel, true},
		{"crash_detected", s.testCrash, false},
		{"adopted_after_restart", s.testAdoption, false},
		{"found_by_directory", s.testFindProcesses, false},
		{"console", s.testConsole, false},
		{"pause_resume", s.testPause, false},
		{"snapshot_restore", s.testSnapshot, false},
	} {
		t.Run(sub.name, func(t *testing.T) {
			if why, ok := s.h.Skip[sub.name]; ok {
				t.Skip(why)
			}
			if sub.guest && !s.guest {
				t.Skip(noGuest)
			}
			sub.fn(t)
		})
	}
}

// noGuest is why RunContract skips what it skips.
const noGuest = "needs a guest (vmmtest.RunContract runs none)"

// suite is one run of the suite; guest says whether its VMs boot a guest
// (Run) or not (RunContract).
type suite struct {
	h     Harness
	guest bool
}

// vm is one guest under test and the driver currently in charge of it.
type vm struct {
	s       *suite
	d       vmm.Driver
	spec    vmm.Spec
	token   []byte // raw, parsed from spec.Token
	h       vmm.Handle
	console *capture   // the console read since Start, as the daemon reads it
	owner   *testing.T // the test the VM belongs to
}

// step runs fn as a named subtest of t and stops t if it fails: the steps
// of a test build on each other. A step the harness skips (Skip) is
// reported skipped.
func (s *suite) step(t *testing.T, name string, fn func(t *testing.T)) {
	t.Helper()
	if !s.check(t, name, fn) {
		t.FailNow()
	}
}

// check runs fn as a named subtest of t, unless the harness skips it
// (Skip), and reports whether it passed.
func (s *suite) check(t *testing.T, name string, fn func(t *testing.T)) bool {
	t.Helper()
	return t.Run(name, func(t *testing.T) {
		if why, skip := s.h.Skip[name]; skip {
			t.Skip(why)
		}
		fn(t)
	})
}

// guestStep is a step that talks to the guest: without one (RunContract)
// it is reported skipped.
func (s *suite) guestStep(t *testing.T, name string, fn func(t *testing.T)) {
	t.Helper()
	if !s.guest {
		fn = func(t *testing.T) { t.Skip(noGuest) }
	}
	s.step(t, name, fn)
}

// kill ends the VM's process as a crash would.
func (s *suite) kill(h vmm.Handle) error {
	if s.h.Kill != nil {
		return s.h.Kill(h)
	}
	return proc.Signal(h.PID, h.PIDStart, syscall.SIGKILL)
}

// newVM asks the harness for a spec and registers, on t, the removal of
// everything the VM will have: its process, its files and its directory.
func (s *suite) newVM(t *testing.T, d vmm.Driver, prefix string) *vm {
	t.Helper()
	id := prefix + "-" + randomHex(t, 3)
	spec := s.h.Spec(t, id)
	spec.ID = id
	if spec.Dir == "" {
		t.Fatalf("Harness.Spec(%q) returned no Dir", id)
	}
	if _, err := os.Lstat(spec.Dir); err == nil {
		t.Fatalf("Harness.Spec(%q) returned Dir %s, which exists already; want a new one", id, spec.Dir)
	}
	if len(spec.Token) == 0 {
		tok, err := agentapi.NewToken()
		if err != nil {
			t.Fatal(err)
		}
		spec.Token = []byte(agentapi.FormatToken(tok))
	}
	token, err := agentapi.ParseToken(string(spec.Token))
	if err != nil {
		t.Fatalf("Harness.Spec(%q) returned a token that is not in agentapi.FormatToken's form: %v", id, err)
	}
	spec.KernelArgs = append(spec.KernelArgs[:len(spec.KernelArgs):len(spec.KernelArgs)], cmdlineArg+"="+id)
	v := &vm{s: s, d: d, spec: spec, token: token, owner: t}
	t.Cleanup(func() { v.remove(t) })
	return v
}

// remove stops the VM, cleans up after it and removes its directory,
// whatever state an earlier failure left it in.
func (v *vm) remove(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if err := v.d.Stop(ctx, v.h, 0); err != nil {
		t.Errorf("cleanup of %s: Stop: %v", v.spec.ID, err)
		if v.h.PID > 0 {
			_ = v.s.kill(v.h)
			waitFor(exitWait, func() bool { return !v.d.Alive(v.h) })
		}
	}
	if err := v.d.Cleanup(ctx, v.h); err != nil {
		t.Errorf("cleanup of %s: Cleanup: %v", v.spec.ID, err)
	}
	if err := os.RemoveAll(v.spec.Dir); err != nil {
		t.Errorf("cleanup of %s: %v", v.spec.ID, err)
	}
}

// prepare runs Prepare and checks the handle it returns.
func (v *vm) prepare(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	h, err := v.d.Prepare(ctx, v.spec)
	v.h = h // even a partial one: the cleanup needs what it names
	if err != nil {
		t.Fatalf("Prepare(%s): %v", v.spec.ID, err)
	}
	if h.PID != 0 {
		t.Fatalf("Prepare returned a handle with PID %d; want none before Start", h.PID)
	}
}

// start runs Start with a context that is cancelled as soon as Start
// returns: the VM process must not depend on it (it outlives the daemon).
func (v *vm) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), v.s.h.BootTimeout)
	err := v.d.Start(ctx, v.spec, &v.h)
	cancel()
	if err != nil {
		t.Fatalf("Start(%s): %v\n%s", v.spec.ID, err, v.consoleTail())
	}
	if v.h.PID <= 0 {
		t.Fatalf("Start returned a handle without a PID: %+v", v.h)
	}
	v.attachConsole(t)
}

// boot prepares and starts the VM and waits for its agent. Without a
// guest (RunContract) there is no agent to wait for: the session is nil.
func (v *vm) boot(t *testing.T) *agentapi.Session {
	t.Helper()
	v.prepare(t)
	v.start(t)
	if !v.s.guest {
		return nil
	}
	return v.awaitAgent(t, v.token)
}

// connect dials the agent through the handle and authenticates it with
// token.
func (v *vm) connect(ctx context.Context, token []byte) (*agentapi.Session, error) {
	conn, err := vmm.DialAgent(ctx, v.h)
	if err != nil {
		return nil, err
	}
	return agentapi.Handshake(ctx, conn, token, agentapi.Config{})
}

// awaitAgent connects to the agent with token within BootTimeout; the
// session is closed when t ends.
func (v *vm) awaitAgent(t *testing.T, token []byte) *agentapi.Session {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), v.s.h.BootTimeout)
	defer cancel()
	sess, err := v.connect(ctx, token)
	if err != nil {
		t.Fatalf("want a handshake with the agent of %s within %v (BootTimeout); after %v: %v\n%s",
			v.spec.ID, v.s.h.BootTimeout, time.Since(start).Round(time.Millisecond), err, v.consoleTail())
	}
	t.Cleanup(func() { sess.Close() })
	t.Logf("agent of %s answered after %v (agent %s, guest kernel %s)", v.spec.ID,
		time.Since(start).Round(time.Millisecond), sess.Hello().AgentVersion, sess.Hello().Kernel)
	return sess
}

// ping checks that the agent answers a ping. Without a guest (sess is
// nil) there is no agent to ask.
func (v *vm) ping(t *testing.T, sess *agentapi.Session) {
	t.Helper()
	if sess == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	gt, err := sess.Ping(ctx)
	if err != nil {
		t.Fatalf("want the agent of %s to answer a ping: %v\n%s", v.spec.ID, err, v.consoleTail())
	}
	if gt.IsZero() {
		t.Fatal("ping answered without a guest time")
	}
}

// guestCmdline returns the guest kernel's command line, read by the agent.
func (v *vm) guestCmdline(t *testing.T, sess *agentapi.Session) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	res, err := sess.Exec(ctx, agentapi.ExecRequest{Argv: []string{"cat", "/proc/cmdline"}, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("exec of cat /proc/cmdline in %s: %v", v.spec.ID, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("cat /proc/cmdline in %s exited with %d (signal %q): %s", v.spec.ID, res.ExitCode, res.Signal, res.Stderr)
	}
	return string(res.Stdout)
}

// checkInGuest proves that sess reaches this VM's guest: its kernel
// command line names the VM and carries the spec's KernelArgs. A harness
// whose stand-in guest has no command line to read skips this with
// Skip["guest_cmdline"] (the handshake with the VM's token still proves
// the agent is this VM's).
func (v *vm) checkInGuest(t *testing.T, sess *agentapi.Session) string {
	t.Helper()
	if why, ok := v.s.h.Skip["guest_cmdline"]; ok {
		t.Logf("not reading the guest's kernel command line: %s", why)
		return ""
	}
	cmdline := v.guestCmdline(t, sess)
	args := strings.Fields(cmdline)
	for _, want := range []string{"hearth.vm=" + v.spec.ID, cmdlineArg + "=" + v.spec.ID} {
		if !slices.Contains(args, want) {
			t.Fatalf("want the guest kernel command line to carry %s; it is %q", want, strings.TrimSpace(cmdline))
		}
	}
	return cmdline
}

// stop runs Stop with grace and checks the process is gone and Watch says
// so.
func (v *vm) stop(t *testing.T, grace time.Duration) {
	t.Helper()
	exited, err := v.d.Watch(v.h)
	if err != nil {
		t.Fatalf("Watch of running %s: %v", v.spec.ID, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace+callTimeout)
	defer cancel()
	start := time.Now()
	if err := v.d.Stop(ctx, v.h, grace); err != nil {
		t.Fatalf("Stop(%s, grace %v): %v", v.spec.ID, grace, err)
	}
	if took := time.Since(start); took >= grace && grace > 0 {
		t.Logf("Stop with grace %v returned after %v: the guest did not power off when asked, the driver ended the process",
			grace, took.Round(time.Millisecond))
	} else {
		t.Logf("Stop with grace %v returned after %v", grace, took.Round(time.Millisecond))
	}
	if v.d.Alive(v.h) {
		t.Fatalf("Alive is true after Stop returned (pid %d)", v.h.PID)
	}
	if !closedWithin(exited, exitWait) {
		t.Fatalf("Watch channel still open %v after Stop returned", exitWait)
	}
}

// cleanup runs Cleanup and checks what it removed and what it kept.
func (v *vm) cleanup(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if err := v.d.Cleanup(ctx, v.h); err != nil {
		t.Fatalf("Cleanup(%s): %v", v.spec.ID, err)
	}
	for _, f := range []struct{ what, path string }{
		{"disk", v.h.DiskPath}, {"token", v.h.TokenPath},
		{"agent socket", v.h.AgentSocket}, {"data socket", v.h.DataSocket}, {"control socket", v.h.ControlSocket},
		{"console stream", v.h.ConsoleStream},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Lstat(f.path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("want the %s %s removed by Cleanup; Lstat says %v", f.what, f.path, err)
		}
	}
	if fi, err := os.Stat(v.spec.Dir); err != nil || !fi.IsDir() {
		t.Errorf("want the VM directory (the daemon's, with its console log) kept by Cleanup: %v", err)
	}
	if err := v.d.Cleanup(ctx, v.h); err != nil {
		t.Errorf("Cleanup again (want a no-op): %v", err)
	}
}

func (v *vm) consoleTail() string {
	if v.console == nil {
		return "(no console read)"
	}
	b, err := consolelog.Tail(v.console.dir, consoleTail)
	if err != nil {
		return fmt.Sprintf("(console: %v)", err)
	}
	if len(b) == 0 {
		return "(the console of " + v.spec.ID + " is empty)"
	}
	return "console tail:\n" + string(b)
}

func (s *suite) testLifecycle(t *testing.T) {
	d := s.h.NewDriver(t)
	caps := d.Capabilities()
	t.Logf("driver %s: %+v", d.Name(), caps)
	v := s.newVM(t, d, "life")

	s.step(t, "prepare", func(t *testing.T) {
		v.prepare(t)
		if v.h.Driver != d.Name() {
			t.Errorf("handle says driver %q; want %q", v.h.Driver, d.Name())
		}
		if v.h.Dir != v.spec.Dir {
			t.Errorf("handle says dir %q; want the spec's %q", v.h.Dir, v.spec.Dir)
		}
		if fi, err := os.Stat(v.spec.Dir); err != nil || !fi.IsDir() {
			t.Fatalf("want the VM directory %s after Prepare: %v", v.spec.Dir, err)
		}
		if fi, err := os.Stat(v.h.DiskPath); err != nil || !fi.Mode().IsRegular() {
			t.Fatalf("want the disk %q to be a file after Prepare: %v", v.h.DiskPath, err)
		}
		checkTokenFile(t, v.h.TokenPath, v.token)
		v.checkGone(t, "a prepared VM that was not started")
		before := v.h
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		again, err := d.Prepare(ctx, v.spec)
		if err != nil {
			t.Fatalf("Prepare again (want a no-op): %v", err)
		}
		if again != before {
			t.Fatalf("Prepare again returned another handle:\n got %+v\nwant %+v", again, before)
		}
		checkTokenFile(t, v.h.TokenPath, v.token)
	})
	s.step(t, "start", func(t *testing.T) {
		v.start(t)
		if !d.Alive(v.h) {
			t.Fatalf("Alive is false right after Start (pid %d)\n%s", v.h.PID, v.consoleTail())
		}
		before := v.h
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if err := d.Start(ctx, v.spec, &v.h); err != nil {
			t.Fatalf("Start again (want a no-op): %v", err)
		}
		if v.h != before {
			t.Fatalf("Start again changed the handle (a second process?):\n got %+v\nwant %+v", v.h, before)
		}
	})
	s.step(t, "recycled_pid_is_not_the_vm", func(t *testing.T) {
		exited, err := d.Watch(v.h)
		if err != nil {
			t.Fatalf("Watch of running %s: %v", v.spec.ID, err)
		}
		// The handle of a process that had the VM's PID before it.
		other := v.h
		other.PIDStart--
		if d.Alive(other) {
			t.Errorf("Alive is true for a handle with the VM's PID %d but another start time (%d, the VM's is %d)",
				other.PID, other.PIDStart, v.h.PIDStart)
		}
		gone, err := d.Watch(other)
		if err != nil {
			t.Fatalf("Watch of a handle whose process is gone: %v", err)
		}
		if !closedWithin(gone, exitWait) {
			t.Errorf("Watch of a handle with the VM's PID but another start time returned a channel that stays open")
		}
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if err := d.Stop(ctx, other, 0); err != nil {
			t.Errorf("Stop of a handle whose process is gone: %v; want nil", err)
		}
		if !d.Alive(v.h) || closedWithin(exited, 0) {
			t.Fatalf("Stop of a handle with the VM's PID but another start time ended the VM (pid %d)", v.h.PID)
		}
	})
	s.guestStep(t, "agent_ready", func(t *testing.T) {
		sess := v.awaitAgent(t, v.token) // closed when this step ends
		v.ping(t, sess)
		cmdline := v.checkInGuest(t, sess)
		if strings.Contains(cmdline, string(v.spec.Token)) {
			t.Errorf("the token is on the guest kernel command line: %q", cmdline)
		}
	})
	s.step(t, "console_shows_boot", func(t *testing.T) {
		if s.h.ConsoleMarker == "" {
			t.Skip("Harness.ConsoleMarker is empty: nothing to look for on the console")
		}
		v.awaitConsole(t, s.h.ConsoleMarker, exitWait)
	})
	s.step(t, "token_not_on_process_cmdline", func(t *testing.T) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(v.h.PID) + "/cmdline")
		if err != nil {
			t.Fatalf("read the command line of pid %d: %v", v.h.PID, err)
		}
		if bytes.Contains(b, v.spec.Token) || bytes.Contains(b, v.token) {
			t.Fatalf("the token is on the command line of the VM process (pid %d)", v.h.PID)
		}
	})
	s.step(t, "graceful_stop", func(t *testing.T) {
		v.stop(t, stopGrace)
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		start := time.Now()
		if err := d.Stop(ctx, v.h, stopGrace); err != nil {
			t.Fatalf("Stop again (want a no-op): %v", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("Stop of a stopped VM took %v; want a no-op", took)
		}
	})
	s.step(t, "cleanup_keeps_dir", v.cleanup)
}

// checkGone checks that the driver says the VM's process (of a VM in the
// state what) is not running, and that Stop has nothing to do.
func (v *vm) checkGone(t *testing.T, what string) {
	t.Helper()
	if v.d.Alive(v.h) {
		t.Fatalf("Alive is true for %s", what)
	}
	exited, err := v.d.Watch(v.h)
	if err != nil {
		t.Fatalf("Watch of %s: %v", what, err)
	}
	if !closedWithin(exited, exitWait) {
		t.Fatalf("Watch of %s returned a channel that stays open", what)
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if err := v.d.Stop(ctx, v.h, stopGrace); err != nil {
		t.Fatalf("Stop of %s: %v; want nil (nothing to stop)", what, err)
	}
}

// testBadSpec checks that a VM that cannot be made or booted is refused
// by Prepare or Start, with nothing left running that Stop and Cleanup
// would not end and remove.
func (s *suite) testBadSpec(t *testing.T) {
	d := s.h.NewDriver(t)
	for _, c := range []struct {
		name, what string
		spoil      func(sp *vmm.Spec, missing string)
	}{
		{"no_dir", "no directory", func(sp *vmm.Spec, _ string) { sp.Dir = "" }},
		{"missing_rootfs", "a rootfs that names no file", func(sp *vmm.Spec, p string) { sp.Rootfs = p }},
		{"missing_kernel", "a kernel that names no file", func(sp *vmm.Spec, p string) { sp.Kernel = p }},
	} {
		s.check(t, c.name, func(t *testing.T) {
			v := s.newVM(t, d, "bad")
			spec := v.spec
			c.spoil(&spec, filepath.Join(t.TempDir(), "missing"))
			ctx, cancel := context.WithTimeout(context.Background(), s.h.BootTimeout)
			defer cancel()
			h, err := d.Prepare(ctx, spec)
			v.h = h // even a partial one: Cleanup needs what it names
			if err == nil {
				err = d.Start(ctx, spec, &v.h)
			}
			if err == nil {
				t.Fatalf("Prepare and Start of a spec with %s succeeded; want an error", c.what)
			}
			t.Logf("refused: %v", err)
			v.checkGone(t, "a VM that Prepare or Start refused")
			if err := d.Cleanup(ctx, v.h); err != nil {
				t.Fatalf("Cleanup of a VM that Prepare or Start refused: %v", err)
			}
		})
	}
}

func (s *suite) testWrongToken(t *testing.T) {
	v := s.newVM(t, s.h.NewDriver(t), "tok")
	v.prepare(t)
	v.start(t)
	wrong, err := agentapi.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	s.step(t, "handshake_with_another_token_fails", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), s.h.BootTimeout)
		defer cancel()
		sess, err := v.connect(ctx, wrong)
		if err == nil {
			sess.Close()
			t.Fatal("a handshake with a token that is not the VM's succeeded; want agentapi.ErrBadProof")
		}
		if !errors.Is(err, agentapi.ErrBadProof) {
			t.Fatalf("want a handshake with another token to fail with agentapi.ErrBadProof; got: %v\n%s", err, v.consoleTail())
		}
	})
	s.step(t, "then_the_right_token_succeeds", func(t *testing.T) {
		v.ping(t, v.awaitAgent(t, v.token))
	})
}

// testGuestPowerOff checks what the lifecycle manager's teardown tries
// first: the agent's shutdown request powers the guest off, and the VM
// process exits on its own.
func (s *suite) testGuestPowerOff(t *testing.T) {
	v := s.newVM(t, s.h.NewDriver(t), "off")
	sess := v.boot(t)
	exited, err := v.d.Watch(v.h)
	if err != nil {
		t.Fatalf("Watch of running %s: %v", v.spec.ID, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	if err := sess.Shutdown(ctx); err != nil {
		t.Fatalf("agent shutdown request: %v", err)
	}
	start := time.Now()
	if !closedWithin(exited, stopGrace) {
		t.Fatalf("want the VM process (pid %d) to exit within %v of the agent acknowledging a shutdown; it still runs\n%s",
			v.h.PID, stopGrace, v.consoleTail())
	}
	t.Logf("VM process exited %v after the agent acknowledged the shutdown", time.Since(start).Round(time.Millisecond))
	if v.d.Alive(v.h) {
		t.Fatal("Alive is true after the VM process exited")
	}
	if err := v.d.Stop(ctx, v.h, stopGrace); err != nil {
		t.Fatalf("Stop of a VM that powered off: %v; want nil (already gone)", err)
	}
	v.cleanup(t)
}

func (s *suite) testCrash(t *testing.T) {
	v := s.newVM(t, s.h.NewDriver(t), "crash")
	sess := v.boot(t)
	exited, err := v.d.Watch(v.h)
	if err != nil {
		t.Fatalf("Watch of running %s: %v", v.spec.ID, err)
	}
	if closedWithin(exited, 0) {
		t.Fatal("Watch channel closed while the VM runs")
	}
	s.step(t, "sigkill_closes_watch", func(t *testing.T) {
		if err := s.kill(v.h); err != nil {
			t.Fatalf("SIGKILL pid %d: %v", v.h.PID, err)
		}
		if !closedWithin(exited, exitWait) {
			t.Fatalf("want the Watch channel closed within %v of SIGKILL to pid %d; still open", exitWait, v.h.PID)
		}
		if v.d.Alive(v.h) {
			t.Fatalf("Alive is true after the process was killed and Watch fired")
		}
		again, err := v.d.Watch(v.h)
		if err != nil {
			t.Fatalf("Watch of a dead VM: %v", err)
		}
		if !closedWithin(again, exitWait) {
			t.Fatalf("Watch of a dead VM returned a channel that stays open")
		}
		if sess != nil && !closedWithin(sess.Done(), exitWait) {
			t.Errorf("the agent session did not end within %v of the VM process dying", exitWait)
		}
	})
	s.step(t, "stop_and_cleanup_succeed", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if err := v.d.Stop(ctx, v.h, stopGrace); err != nil {
			t.Fatalf("Stop of a crashed VM: %v; want nil (already gone)", err)
		}
		v.cleanup(t)
	})
}

func (s *suite) testAdoption(t *testing.T) {
	a := s.h.NewDriver(t)
	v := s.newVM(t, a, "adopt")
	if sess := v.boot(t); sess != nil {
		v.ping(t, sess)
		sess.Close() // the old daemon's connections go away with it
	}
	v.detachConsole()

	stored := v.h.Marshal()
	h, err := vmm.UnmarshalHandle(stored)
	if err != nil {
		t.Fatalf("UnmarshalHandle(%s): %v", stored, err)
	}
	if h != v.h {
		t.Fatalf("handle changed in a Marshal/UnmarshalHandle round trip:\n got %+v\nwant %+v", h, v.h)
	}
	b := s.h.NewDriver(t)
	v.d, v.h = b, h // from here on only the new driver and the stored handle

	var exited <-chan struct{}
	s.step(t, "alive_and_watched", func(t *testing.T) {
		if !b.Alive(h) {
			t.Fatalf("the new driver says the VM (pid %d) is not alive", h.PID)
		}
		var err error
		if exited, err = b.Watch(h); err != nil {
			t.Fatalf("Watch by the new driver: %v", err)
		}
		if closedWithin(exited, 0) {
			t.Fatal("Watch channel of the new driver closed while the VM runs")
		}
	})
	s.guestStep(t, "agent_reconnects", func(t *testing.T) {
		sess := v.awaitAgent(t, v.token)
		v.ping(t, sess)
		v.checkInGuest(t, sess)
		v.reattachConsole(t, sess)
		sess.Close()
	})
	if !s.guest {
		s.step(t, "console_reattached", func(t *testing.T) { v.reattachConsole(t, nil) })
	}
	s.step(t, "stop_and_cleanup", func(t *testing.T) {
		v.stop(t, stopGrace)
		if !closedWithin(exited, exitWait) {
			t.Fatalf("the Watch channel taken before Stop is still open %v after it", exitWait)
		}
		v.cleanup(t)
	})
}

// testFindProcesses checks a vmm.ProcessFinder: it finds a running VM's
// process by the VM's directory, with no handle, and ends it.
func (s *suite) testFindProcesses(t *testing.T) {
	d := s.h.NewDriver(t)
	pf, ok := d.(vmm.ProcessFinder)
	if !ok {
		t.Skipf("driver %s does not find processes by directory (it is no vmm.ProcessFinder)", d.Name())
	}
	v := s.newVM(t, d, "find")
	v.prepare(t)
	v.start(t)
	parent, name := filepath.Dir(v.spec.Dir), filepath.Base(v.spec.Dir)
	own := vmm.Process{PID: v.h.PID, Start: v.h.PIDStart}
	s.step(t, "listed_under_its_directory", func(t *testing.T) {
		found, err := pf.FindProcesses(parent)
		if err != nil {
			t.Fatalf("FindProcesses(%s): %v", parent, err)
		}
		if !slices.Contains(found[name], own) {
			t.Fatalf("FindProcesses(%s) lists %v for %s; want the VM's process %+v among them", parent, found[name], name, own)
		}
		elsewhere := t.TempDir()
		found, err = pf.FindProcesses(elsewhere)
		if err != nil {
			t.Fatalf("FindProcesses(%s): %v", elsewhere, err)
		}
		for dir, procs := range found {
			if slices.Contains(procs, own) {
				t.Fatalf("FindProcesses(%s), a directory with no VMs, lists the process of %s as %s's", elsewhere, v.spec.ID, dir)
			}
		}
	})
	s.step(t, "killed_by_kill_process", func(t *testing.T) {
		exited, err := d.Watch(v.h)
		if err != nil {
			t.Fatalf("Watch of running %s: %v", v.spec.ID, err)
		}
		if err := pf.KillProcess(own); err != nil {
			t.Fatalf("KillProcess(%+v): %v", own, err)
		}
		if d.Alive(v.h) {
			t.Fatal("Alive is true after KillProcess returned")
		}
		if !closedWithin(exited, exitWait) {
			t.Fatalf("Watch channel still open %v after KillProcess returned", exitWait)
		}
		found, err := pf.FindProcesses(parent)
		if err != nil {
			t.Fatalf("FindProcesses(%s): %v", parent, err)
		}
		if slices.Contains(found[name], own) {
			t.Fatalf("FindProcesses(%s) still lists the process %+v that KillProcess ended", parent, own)
		}
		if err := pf.KillProcess(own); err != nil {
			t.Fatalf("KillProcess of a process that is gone: %v; want nil", err)
		}
	})
	s.step(t, "stop_and_cleanup_succeed", func(t *testing.T) {
		v.checkGone(t, "a VM whose process KillProcess ended")
		v.cleanup(t)
	})
}

func (s *suite) testPause(t *testing.T) {
	d := s.h.NewDriver(t)
	if !d.Capabilities().Pause {
		t.Skipf("driver %s does not offer pause (Capabilities().Pause is false)", d.Name())
	}
	p, ok := d.(vmm.Pauser)
	if !ok {
		t.Fatalf("driver %s says it can pause but does not implement vmm.Pauser", d.Name())
	}
	v := s.newVM(t, d, "pause")
	sess := v.boot(t)
	v.ping(t, sess)

	s.step(t, "paused_guest_does_not_answer", func(t *testing.T) {
		ctx := opContext(t)
		if err := p.Pause(ctx, v.h); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		if err := p.Pause(ctx, v.h); err != nil {
			t.Fatalf("Pause again (want a no-op): %v", err)
		}
		if !d.Alive(v.h) {
			t.Fatal("Alive is false for a paused VM")
		}
		if sess == nil {
			return
		}
		pctx, pcancel := context.WithTimeout(ctx, pausedWait)
		defer pcancel()
		if _, err := sess.Ping(pctx); err == nil {
			t.Fatal("a paused guest answered a ping")
		} else if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("want a ping to a paused guest to go unanswered for %v; it failed: %v", pausedWait, err)
		}
	})
	s.step(t, "resumed_guest_answers", func(t *testing.T) {
		ctx := opContext(t)
		if err := p.Resume(ctx, v.h); err != nil {
			t.Fatalf("Resume: %v", err)
		}
		if err := p.Resume(ctx, v.h); err != nil {
			t.Fatalf("Resume again (want a no-op): %v", err)
		}
		if !d.Alive(v.h) {
			t.Fatal("Alive is false for a resumed VM")
		}
		v.ping(t, sess)
	})
	s.step(t, "paused_vm_stops", func(t *testing.T) {
		if err := p.Pause(opContext(t), v.h); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		if sess != nil {
			sess.Close()
		}
		v.stop(t, time.Second)
		v.cleanup(t)
	})
}

func (s *suite) testSnapshot(t *testing.T) {
	d := s.h.NewDriver(t)
	caps := d.Capabilities()
	if !caps.Snapshot {
		t.Skipf("driver %s does not offer snapshots (Capabilities().Snapshot is false)", d.Name())
	}
	snapper, ok := d.(vmm.Snapshotter)
	if !ok {
		t.Fatalf("driver %s says it can snapshot but does not implement vmm.Snapshotter", d.Name())
	}
	p, ok := d.(vmm.Pauser)
	if !caps.Pause || !ok {
		t.Fatalf("driver %s offers snapshots, which are taken of paused VMs, but cannot pause (Pause %v, Pauser %v)", d.Name(), caps.Pause, ok)
	}
	src := s.newVM(t, d, "snap")
	sess := src.boot(t)
	src.ping(t, sess)
	snapDir := t.TempDir() // outlives the steps: Restore reads it
	var snap vmm.Snapshot
	s.step(t, "create_from_paused_vm", func(t *testing.T) {
		ctx := opContext(t)
		if err := p.Pause(ctx, src.h); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		var err error
		snap, err = snapper.CreateSnapshot(ctx, src.h, snapDir)
		if err != nil {
			t.Fatalf("CreateSnapshot: %v", err)
		}
		if snap.Driver != d.Name() {
			t.Errorf("snapshot says driver %q; want %q", snap.Driver, d.Name())
		}
		for _, f := range []string{snap.StatePath, snap.MemPath} {
			if fi, err := os.Stat(f); err != nil || !fi.Mode().IsRegular() {
				t.Fatalf("want snapshot file %q: %v", f, err)
			}
		}
		if sess != nil {
			sess.Close()
		}
		src.stop(t, time.Second)
	})

	dst := s.newVM(t, d, "restored")
	if bytes.Equal(dst.token, src.token) {
		t.Fatal("Harness.Spec returned the same token twice; want a new one per VM")
	}
	s.step(t, "restore_with_new_identity", func(t *testing.T) {
		dst.prepare(t)
		ctx, cancel := context.WithTimeout(context.Background(), s.h.BootTimeout)
		defer cancel()
		start := time.Now()
		if err := snapper.Restore(ctx, dst.spec, &dst.h, snap); err != nil {
			t.Fatalf("Restore(%s from %s's snapshot): %v\n%s", dst.spec.ID, src.spec.ID, err, dst.consoleTail())
		}
		if dst.h.PID <= 0 || !d.Alive(dst.h) {
			t.Fatalf("want a running process after Restore; handle %+v, alive %v", dst.h, d.Alive(dst.h))
		}
		dst.attachConsole(t)
		t.Logf("Restore returned after %v", time.Since(start).Round(time.Millisecond))
	})
	s.guestStep(t, "old_token_rejected", func(t *testing.T) {
		// First, so that a restored agent still proving the snapshot's
		// identity is caught before anything refreshes it.
		hctx, hcancel := context.WithTimeout(context.Background(), s.h.BootTimeout)
		defer hcancel()
		sess, err := dst.connect(hctx, src.token)
		if err == nil {
			sess.Close()
			t.Fatal("the restored VM authenticated with the snapshot's old token; want agentapi.ErrBadProof")
		}
		if !errors.Is(err, agentapi.ErrBadProof) {
			t.Fatalf("want a handshake with the old token to fail with agentapi.ErrBadProof; got: %v\n%s", err, dst.consoleTail())
		}
	})
	s.guestStep(t, "new_token_accepted", func(t *testing.T) {
		dst.ping(t, dst.awaitAgent(t, dst.token))
	})
	s.step(t, "stop_and_cleanup", func(t *testing.T) {
		dst.stop(t, stopGrace)
		dst.cleanup(t)
		src.cleanup(t)
	})
}

// opContext returns a context for one driver operation, cancelled when t
// ends.
func opContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	t.Cleanup(cancel)
	return ctx
}

// checkTokenFile checks the token file is private and holds token.
func checkTokenFile(t *testing.T, path string, token []byte) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("want the token file %q: %v", path, err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("token file %s has mode %v; want 0600", path, perm)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := agentapi.ParseToken(string(b))
	if err != nil || !bytes.Equal(got, token) {
		t.Errorf("token file %s does not hold the spec's token (parse error: %v)", path, err)
	}
}

// closedWithin reports whether ch is closed within d (at once if d is 0).
func closedWithin(ch <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ch:
		return true
	case <-timer.C:
		return false
	}
}

// waitFor polls cond until it holds or d passes; it reports the last result.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// testDataChannel checks the VM's data channel: the handle names one, the
// agent proves the VM's token on it (and a host holding another token is
// refused) and then speaks HTTP/2, a reconnect of the control channel
// leaves it working, and so does a new connection after the previous one
// closed.
func (s *suite) testDataChannel(t *testing.T) {
	v := s.newVM(t, s.h.NewDriver(t), "data")
	sess := v.boot(t)
	if v.h.DataSocket == "" {
		t.Fatalf("the handle names no data channel: %+v", v.h)
	}
	var first *http2.ClientConn
	s.step(t, "reachable", func(t *testing.T) {
		first = v.awaitData(t, v.token)
	})
	s.step(t, "another_token_refused", func(t *testing.T) {
		wrong, err := agentapi.NewToken()
		if err != nil {
			t.Fatal(err)
		}
		// The first connection is closed for this one: a virtio-serial
		// port takes one host connection at a time.
		first.Close()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		conn, err := vmm.DialData(ctx, v.h)
		if err != nil {
			t.Fatalf("DialData(%s): %v", v.spec.ID, err)
		}
		c, err := workapi.HostPreamble(ctx, conn, wrong)
		if err == nil {
			c.Close()
			t.Fatal("the data channel preamble with a token that is not the VM's succeeded; want workapi.ErrBadProof")
		}
		if !errors.Is(err, workapi.ErrBadProof) {
			t.Fatalf("want the data channel preamble with another token to fail with workapi.ErrBadProof; got: %v\n%s", err, v.consoleTail())
		}
		first = v.awaitData(t, v.token)
	})
	s.step(t, "works_after_control_reconnect", func(t *testing.T) {
		sess.Close()
		v.ping(t, v.awaitAgent(t, v.token))
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		if err := first.Ping(ctx); err != nil {
			t.Fatalf("the data channel connection made before the control channel reconnected no longer answers: %v\n%s",
				err, v.consoleTail())
		}
	})
	s.step(t, "reconnects", func(t *testing.T) {
		first.Close()
		v.awaitData(t, v.token).Close()
	})
	// The work API itself, through the host's client, as the daemon
	// calls it: a process as the workspace user with its output, stdin
	// and exit, and a file written and read back.
	w := workapi.NewClient(func(ctx context.Context) (net.Conn, error) { return vmm.DialData(ctx, v.h) }, v.token)
	t.Cleanup(func() { w.Close() })
	user := cmp.Or(s.h.WorkUser, workapi.DefaultUser)
	s.step(t, "process", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		p, err := w.StartProcess(ctx, workapi.ProcessSpec{Command: "read line; echo \"$line as $(id -un)\"; exit 3", Stdin: true, User: user})
		if err != nil {
			t.Fatalf("start a process: %v\n%s", err, v.consoleTail())
		}
		if err := w.Stdin(ctx, p.ID, strings.NewReader("hello\n"), true); err != nil {
			t.Fatalf("stdin: %v", err)
		}
		out, err := w.Output(ctx, p.ID, 0, true)
		if err != nil {
			t.Fatalf("output: %v", err)
		}
		defer out.Close()
		var got strings.Builder
		for {
			f, err := out.Next()
			if err != nil {
				t.Fatalf("output after %q: %v", got.String(), err)
			}
			if f.Kind == workapi.FrameExit {
				if f.Exit.Code == nil || *f.Exit.Code != 3 || got.String() != "hello as "+user+"\n" {
					t.Fatalf("the process wrote %q and ended %+v; want %q and code 3", got.String(), f.Exit, "hello as "+user+"\n")
				}
				return
			}
			got.Write(f.Data)
		}
	})
	s.step(t, "file", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		content := strings.Repeat("hearth data channel\n", 10000)
		// In /tmp: a stand-in guest's files are the host's.
		path := "/tmp/hearth-conformance-" + v.spec.ID
		fi, err := w.WriteFile(ctx, user, path, "0600", strings.NewReader(content), int64(len(content)))
		if err != nil {
			t.Fatalf("write a file: %v", err)
		}
		if fi.Size != int64(len(content)) || fi.Mode != "0600" {
			t.Fatalf("wrote %+v", fi)
		}
		defer func() { _ = w.Remove(context.WithoutCancel(ctx), user, path, false) }()
		f, err := w.ReadFile(ctx, user, path, 0)
		if err != nil {
			t.Fatalf("read it back: %v", err)
		}
		defer f.Close()
		b, err := io.ReadAll(f)
		if err != nil || string(b) != content {
			t.Fatalf("read back %d bytes (%v), want the %d written", len(b), err, len(content))
		}
	})
}

// awaitData connects to the VM's data channel, authenticates the agent
// with token and checks that HTTP/2 follows, within BootTimeout. The
// connection outlives the step t is (later steps use it): it is closed
// when the VM's test ends.
func (v *vm) awaitData(t *testing.T, token []byte) *http2.ClientConn {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), v.s.h.BootTimeout)
	defer cancel()
	conn, err := vmm.DialData(ctx, v.h)
	if err != nil {
		t.Fatalf("want the data channel of %s within %v (BootTimeout); after %v: %v\n%s",
			v.spec.ID, v.s.h.BootTimeout, time.Since(start).Round(time.Millisecond), err, v.consoleTail())
	}
	c, err := workapi.HostPreamble(ctx, conn, token)
	if err != nil {
		t.Fatalf("want the agent of %s to answer the data channel preamble within %v (BootTimeout); after %v: %v\n%s",
			v.spec.ID, v.s.h.BootTimeout, time.Since(start).Round(time.Millisecond), err, v.consoleTail())
	}
	tr := &http2.Transport{AllowHTTP: true}
	cc, err := tr.NewClientConn(c)
	if err != nil {
		c.Close()
		t.Fatalf("HTTP/2 on the data channel of %s: %v", v.spec.ID, err)
	}
	v.owner.Cleanup(func() { cc.Close() })
	if err := cc.Ping(ctx); err != nil {
		t.Fatalf("want the agent of %s to answer an HTTP/2 ping on its data channel: %v\n%s", v.spec.ID, err, v.consoleTail())
	}
	t.Logf("data channel of %s answered after %v", v.spec.ID, time.Since(start).Round(time.Millisecond))
	return cc
}

package vmmtest

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/vmm"
)

const (
	// floodBytes is what the guest writes to its console with no reader
	// attached; floodLeft is the most the VM's files may have grown by
	// meanwhile (the VMM stores no console).
	floodBytes = 1 << 20
	floodLeft  = 256 << 10
	// guestConsole is the guest's serial console device.
	guestConsole = "/dev/ttyS0"
)

// capture reads a VM's console into a log of its own, as the daemon does.
type capture struct {
	dir    string
	cancel context.CancelFunc
	done   chan struct{}
}

// attachConsole starts reading the VM's console through its handle; the
// reading stops at detachConsole or when the VM's test ends.
func (v *vm) attachConsole(t *testing.T) {
	t.Helper()
	if v.h.ConsoleStream == "" {
		t.Fatalf("the handle of %s names no ConsoleStream: the driver must hand the guest's console to the daemon", v.spec.ID)
	}
	v.detachConsole()
	if v.console == nil {
		dir, err := os.MkdirTemp("", "vmmtest-console-")
		if err != nil {
			t.Fatal(err)
		}
		v.owner.Cleanup(func() { os.RemoveAll(dir) })
		v.console = &capture{dir: filepath.Join(dir, "console")}
	}
	ctx, cancel := context.WithCancel(context.Background())
	src, err := vmm.OpenConsole(ctx, v.h)
	if err != nil {
		cancel()
		t.Fatalf("open the console of %s: %v", v.spec.ID, err)
	}
	w, err := consolelog.Open(v.console.dir, consolelog.Limits{Max: 8 << 20, Head: 4 << 20})
	if err != nil {
		cancel()
		src.Close()
		t.Fatal(err)
	}
	c := v.console
	c.cancel, c.done = cancel, make(chan struct{})
	go func() {
		defer close(c.done)
		defer w.Close()
		stop := context.AfterFunc(ctx, func() { src.Close() })
		defer stop()
		// It ends when the VM's process does, or at detachConsole.
		_ = consolelog.Copy(ctx, w, src, consolelog.NewBucket(1<<30, 1<<30), nil)
		src.Close()
	}()
	v.owner.Cleanup(v.detachConsole)
}

// detachConsole stops reading the console, as a daemon that goes away.
func (v *vm) detachConsole() {
	if c := v.console; c != nil && c.cancel != nil {
		c.cancel()
		<-c.done
		c.cancel = nil
	}
}

// consoleText is all the captured console holds.
func (v *vm) consoleText() string {
	if v.console == nil {
		return ""
	}
	b, _ := io.ReadAll(consolelog.NewReader(v.console.dir, 0))
	return string(b)
}

// awaitConsole waits until the captured console shows text.
func (v *vm) awaitConsole(t *testing.T, text string, within time.Duration) {
	t.Helper()
	if !waitFor(within, func() bool { return strings.Contains(v.consoleText(), text) }) {
		t.Fatalf("want the console of %s to show %q within %v; it does not\n%s", v.spec.ID, text, within, v.consoleTail())
	}
}

// guestWrite has the guest write to its console device through the agent.
func (v *vm) guestWrite(t *testing.T, sess *agentapi.Session, script string, timeout time.Duration) agentapi.ExecResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout+callTimeout)
	defer cancel()
	res, err := sess.Exec(ctx, agentapi.ExecRequest{Argv: []string{"sh", "-c", script}, Timeout: timeout})
	if err != nil {
		t.Fatalf("exec of %q in %s: %v", script, v.spec.ID, err)
	}
	return res
}

// writeLine has the guest write line to its console device: through the
// agent (sess) or, without a guest, through Harness.WriteConsole.
func (v *vm) writeLine(t *testing.T, sess *agentapi.Session, line string) {
	t.Helper()
	if sess == nil {
		v.s.h.WriteConsole(v.h, []byte(line+"\n"))
		return
	}
	res := v.guestWrite(t, sess, "echo "+line+" > "+guestConsole, 30*time.Second)
	if res.ExitCode != 0 {
		t.Fatalf("writing %s in the guest exited %d: %s", guestConsole, res.ExitCode, res.Stderr)
	}
}

// guestEcho has the guest write a new line to its console until the
// captured console shows it. Once is not always enough: a VMM that drops
// what a full pipe cannot take (Firecracker) drops it while the reader
// still drains what the pipe held before.
func (v *vm) guestEcho(t *testing.T, sess *agentapi.Session, prefix string) {
	t.Helper()
	mark := prefix + randomHex(t, 4)
	deadline := time.Now().Add(30 * time.Second)
	for {
		v.writeLine(t, sess, mark)
		if waitFor(time.Second, func() bool { return strings.Contains(v.consoleText(), mark) }) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("want the console of %s to show %q, written by the guest to %s; it does not\n%s",
				v.spec.ID, mark, guestConsole, v.consoleTail())
		}
	}
}

// flood has the guest write floodBytes to its console and returns how
// long that took; it fails t if the write does not end.
func (v *vm) flood(t *testing.T, sess *agentapi.Session) time.Duration {
	t.Helper()
	const within = 2 * time.Minute
	start := time.Now()
	if sess == nil {
		line := []byte("hearth-flood\n")
		b := bytes.Repeat(line, floodBytes/len(line)+1)[:floodBytes]
		done := make(chan struct{})
		go func() {
			defer close(done)
			v.s.h.WriteConsole(v.h, b)
		}()
		if !closedWithin(done, within) {
			t.Fatalf("Harness.WriteConsole of %d bytes with no reader attached did not return within %v", floodBytes, within)
		}
		return time.Since(start)
	}
	// A fixed amount, so the write ends: a VMM that waited for a reader
	// would hold it until the timeout.
	res := v.guestWrite(t, sess, "yes hearth-flood | head -c "+strconv.Itoa(floodBytes)+" > "+guestConsole, within)
	if res.TimedOut || res.ExitCode != 0 {
		t.Fatalf("the guest's write of %d bytes to its console with no reader did not finish (exit %d, timed out %v): %s",
			floodBytes, res.ExitCode, res.TimedOut, res.Stderr)
	}
	return time.Since(start)
}

// reattachConsole reads the console again, through the VM's (stored)
// handle, as a new daemon does, and checks that what the guest writes
// next reaches it.
func (v *vm) reattachConsole(t *testing.T, sess *agentapi.Session) {
	t.Helper()
	if why, skip := v.s.h.Skip["console"]; skip {
		t.Logf("not reading the console again: %s", why)
		return
	}
	v.attachConsole(t)
	if sess == nil && v.s.h.WriteConsole == nil {
		t.Log("the console stream opens again; Harness.WriteConsole is unset, so nothing is written to it")
		return
	}
	v.guestEcho(t, sess, "hearth-vmmtest-adopted-")
}

// filesSize is the bytes the VM's files hold, but for its disk (which the
// guest may fill as it likes) and snapshots.
func (v *vm) filesSize(t *testing.T) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(v.spec.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() || p == v.h.DiskPath {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		n += fi.Size()
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", v.spec.Dir, err)
	}
	return n
}

// testConsole checks what the daemon relies on to keep consoles bounded:
// the guest's console reaches the host only through the handle's stream;
// a guest writing it with no reader attached is neither stopped nor stored
// by the VMM (output is discarded or dropped); and a new reader (a new
// daemon) gets what the guest writes next. Without a guest (RunContract)
// the harness's WriteConsole writes in its place.
func (s *suite) testConsole(t *testing.T) {
	if !s.guest && s.h.WriteConsole == nil {
		t.Skip("Harness.WriteConsole is unset and there is no guest: nothing writes the console")
	}
	v := s.newVM(t, s.h.NewDriver(t), "cons")
	sess := v.boot(t)
	s.step(t, "guest_writes_reach_the_stream", func(t *testing.T) {
		v.guestEcho(t, sess, "hearth-vmmtest-console-")
	})
	s.step(t, "flood_without_reader_is_not_stored", func(t *testing.T) {
		v.detachConsole()
		before := v.filesSize(t)
		took := v.flood(t, sess)
		after := v.filesSize(t)
		t.Logf("the guest wrote %d bytes to its console in %v with no reader; the VM's files (but its disk) went from %d to %d bytes",
			floodBytes, took.Round(time.Millisecond), before, after)
		if after-before > floodLeft {
			t.Fatalf("the VM's files grew by %d bytes while the guest wrote %d to its console: the VMM keeps the console itself",
				after-before, floodBytes)
		}
		v.ping(t, sess)
	})
	s.step(t, "a_new_reader_gets_what_follows", func(t *testing.T) {
		v.attachConsole(t)
		v.guestEcho(t, sess, "hearth-vmmtest-after-")
		if tail := v.consoleText(); bytes.Count([]byte(tail), []byte("hearth-flood")) > floodLeft/len("hearth-flood\n") {
			t.Errorf("the new reader got %d lines of the flood written while none was attached; want at most a pipe's worth",
				bytes.Count([]byte(tail), []byte("hearth-flood")))
		}
	})
	s.step(t, "stop_and_cleanup", func(t *testing.T) {
		if sess != nil {
			sess.Close()
		}
		v.stop(t, time.Second) // graceful stops are the lifecycle's test
		v.detachConsole()
		v.cleanup(t)
	})
}

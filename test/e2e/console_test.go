package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/test/testrun"
)

// floodLimits are the console bounds a flood test runs with: small, so a
// flood passes them within seconds.
type floodLimits struct{ max, head, rate, burst int64 }

func (l floodLimits) env() []string {
	return []string{fmt.Sprintf("HEARTH_CONSOLE_MAX_SIZE=%dKiB", l.max>>10), fmt.Sprintf("HEARTH_CONSOLE_HEAD_SIZE=%dKiB", l.head>>10),
		fmt.Sprintf("HEARTH_CONSOLE_RATE=%dKiB", l.rate>>10), fmt.Sprintf("HEARTH_CONSOLE_BURST=%dKiB", l.burst>>10)}
}

const floodFor = 15 * time.Second

// vmFilesSize is the bytes the VM's directory holds but for its disk.
func vmFilesSize(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		switch filepath.Base(p) {
		case "disk.qcow2", "rootfs.ext4", "vmlinux", "initrd.img":
			return nil // the guest's disk, and a jail's copies of the boot files
		}
		if fi, err := d.Info(); err == nil {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// floodConsole has flooder's guest write its console at full speed for
// floodFor while checking, every second, that the VM's console on disk
// stays within its bound, that the daemon reads it no faster than its
// rate, and that the quiet VM's API answers stay quick. It reports the
// daemon's CPU time over the flood.
func floodConsole(t *testing.T, d *daemon, lim floodLimits, flooder, quiet api.VM) {
	t.Helper()
	ctx := ctxT(t, 5*time.Minute)
	vmDir := filepath.Join(d.stateDir, "vms", flooder.ID)
	logDir := filepath.Join(vmDir, "console")
	pid := d.cmd.Process.Pid // ip netns exec execs hearth in its place
	// What the daemon costs without a flood, answering the same requests.
	cpu0, start := procCPU(t, pid), time.Now()
	for range 5 {
		time.Sleep(time.Second)
		_, _ = d.alice.GetVM(ctx, quiet.ID)
		guest(t, d.alice, quiet.ID, "echo", "quiet")
	}
	idle := procCPU(t, pid) - cpu0
	idleFor := time.Since(start)

	before, err := consolelog.Stat(logDir)
	if err != nil {
		t.Fatal(err)
	}
	cpu0, start = procCPU(t, pid), time.Now()

	var wg sync.WaitGroup
	var res api.ExecResult
	var execErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		res, execErr = d.alice.Exec(ctx, flooder.ID, api.ExecRequest{User: "root",
			Argv: []string{"sh", "-c", "yes hearth-flood-line > /dev/ttyS0"}, TimeoutSeconds: int(floodFor / time.Second)})
	}()
	var worst time.Duration
	var maxDisk, maxFiles int64
	for time.Since(start) < floodFor {
		time.Sleep(time.Second)
		q := time.Now()
		if _, err := d.alice.GetVM(ctx, quiet.ID); err != nil {
			t.Fatalf("the quiet VM during the flood: %v", err)
		}
		if code, out := guest(t, d.alice, quiet.ID, "echo", "quiet"); code != 0 || !strings.Contains(out, "quiet") {
			t.Fatalf("exec in the quiet VM during the flood: %d %q", code, out)
		}
		worst = max(worst, time.Since(q))
		info, err := consolelog.Stat(logDir)
		if err != nil {
			t.Fatal(err)
		}
		maxDisk, maxFiles = max(maxDisk, info.Disk), max(maxFiles, vmFilesSize(t, vmDir))
		if info.Disk > lim.max {
			t.Fatalf("the flooding VM's console holds %d bytes on disk; bound %d", info.Disk, lim.max)
		}
		if limit := before.Size + lim.burst + consolelog.ReadSize + int64(float64(lim.rate)*time.Since(start).Seconds()); info.Size > limit {
			t.Fatalf("the daemon read %d bytes of console in %v; its rate allows %d", info.Size-before.Size, time.Since(start), limit-before.Size)
		}
	}
	wg.Wait()
	took := time.Since(start)
	cpu := procCPU(t, pid) - cpu0
	if execErr != nil {
		t.Fatalf("the flood: %v", execErr)
	}
	if !res.TimedOut {
		t.Fatalf("the flood ended before its timeout (exit %d): %s", res.ExitCode, res.Stderr)
	}
	info, err := consolelog.Stat(logDir)
	if err != nil {
		t.Fatal(err)
	}
	read := info.Size - before.Size
	t.Logf("console flood of %v: the daemon read %d bytes (%.1f KiB/s; rate %d KiB/s), kept %d on disk (bound %d; the VM's files but its disk peaked at %d), "+
		"used %v of CPU (%.1f%% of one core; %.1f%% over %v without a flood); the quiet VM's slowest answer (get + exec) took %v",
		took.Round(time.Millisecond), read, float64(read)/took.Seconds()/1024, lim.rate>>10, info.Disk, lim.max, maxFiles,
		cpu, 100*cpu.Seconds()/took.Seconds(), 100*idle.Seconds()/idleFor.Seconds(), idleFor.Round(time.Millisecond), worst.Round(time.Millisecond))
	// The guest writes faster than the daemon may read: the daemon is
	// what holds it back.
	if read < lim.rate*int64(floodFor/time.Second)/2 {
		t.Fatalf("the daemon read only %d bytes of a %v flood: the guest did not flood, or its console did not reach the daemon", read, floodFor)
	}
	if maxFiles > lim.max+256<<10 {
		t.Fatalf("the flooding VM's files (but its disk) reached %d bytes; the console's bound is %d", maxFiles, lim.max)
	}
	// Reading is rate-limited, so this is a sanity bound for a machine
	// as busy as CI's; the log line says what it cost.
	if cpu > took/2 {
		t.Fatalf("the daemon used %v of CPU over a %v flood", cpu, took)
	}
	if worst > 10*time.Second {
		t.Fatalf("the quiet VM's API answers took up to %v during the flood", worst)
	}
}

// consoleText reads a VM's whole console through the API.
func consoleText(t *testing.T, c *client.Client, id string) string {
	t.Helper()
	rc, err := c.Console(ctxT(t, time.Minute), id, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// echoUntilSeen has the guest write a line to its console until the
// daemon's log shows it.
func echoUntilSeen(t *testing.T, d *daemon, id, line string) {
	t.Helper()
	logDir := filepath.Join(d.stateDir, "vms", id, "console")
	deadline := time.Now().Add(time.Minute)
	for {
		guest(t, d.alice, id, "sh", "-c", "echo "+line+" > /dev/ttyS0")
		for range 10 {
			if tail, _ := consolelog.Tail(logDir, 4096); strings.Contains(string(tail), line) {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q, written to the console of %s, never reached its log", line, id)
		}
	}
}

// checkConsoleAfterFlood: the console reads as the boot head, one marker
// for what was skipped, and the latest output; a follower gets what the
// guest writes next; a kill -9 of the daemon and its restart keep the
// log going at the same offsets.
func checkConsoleAfterFlood(t *testing.T, d *daemon, lim floodLimits, id, bootText string) {
	t.Helper()
	logDir := filepath.Join(d.stateDir, "vms", id, "console")
	info, err := consolelog.Stat(logDir)
	if err != nil {
		t.Fatal(err)
	}
	text := consoleText(t, d.alice, id)
	marker := consolelog.SkipMarker(info.Skipped())
	if info.Skipped() == 0 || !strings.Contains(text, marker) {
		t.Fatalf("the console after a flood: %+v, no marker %q", info, marker)
	}
	head, rest, _ := strings.Cut(text, marker)
	if !strings.Contains(head, bootText) || int64(len(head)) != info.Head {
		t.Fatalf("the console's head (%d bytes; kept %d) lacks the boot output %q", len(head), info.Head, bootText)
	}
	if !strings.Contains(rest, "hearth-flood-line") { // a tty ends lines with \r\n
		t.Fatalf("the console's tail lacks the flood: %q", tail(rest, 200))
	}

	// Follow from the end: the next line the guest writes arrives.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rc, err := d.alice.Console(ctx, id, info.Size, true)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	seen := make(chan error, 1)
	go func() {
		s := bufio.NewScanner(rc)
		for s.Scan() {
			if strings.Contains(s.Text(), "hearth-followed") {
				seen <- nil
				return
			}
		}
		seen <- errors.Join(errors.New("the follow ended"), s.Err())
	}()
	echoUntilSeen(t, d, id, "hearth-followed")
	select {
	case err := <-seen:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the follower did not get the line the guest wrote")
	}

	// kill -9: the next daemon adopts the VM and records on, at the same
	// offsets.
	sizeBefore, _ := consolelog.Stat(logDir)
	d.kill9()
	d.start()
	if _, err := d.alice.WaitVM(ctxT(t, 2*time.Minute), id, "ready", time.Minute); err != nil {
		t.Fatal(err)
	}
	echoUntilSeen(t, d, id, "hearth-after-restart")
	after, err := consolelog.Stat(logDir)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size <= sizeBefore.Size || after.Head != info.Head || after.Disk > lim.max {
		t.Fatalf("console after the restart %+v; before it %+v", after, sizeBefore)
	}
}

// TestConsoleFloodIsBounded: a real guest writes its console at full speed
// for a while; its console on disk stays within the bound, the daemon reads
// it at its rate at a small CPU cost, another VM answers as usual, and the
// console stays readable and followable, across a kill -9 of the daemon.
func TestConsoleFloodIsBounded(t *testing.T) {
	// A TCG guest's UART manages only some KiB/s on a busy machine (12
	// KiB/s with two cores shared by many guests): a rate below that, so
	// the daemon is what holds the guest back, and a bound the flood rolls.
	lim := floodLimits{max: 48 << 10, head: 8 << 10, rate: 4 << 10, burst: 16 << 10}
	d := newDaemon(t, lim.env()...)
	vms := bootAll(t, d.alice, api.CreateVM{Image: "minimal"}, api.CreateVM{Image: "minimal"})
	floodConsole(t, d, lim, vms[0], vms[1])
	checkConsoleAfterFlood(t, d, lim, vms[0].ID, "hearth-agent")
}

// TestFirecrackerConsoleFloodIsBounded: the same under the fake
// Firecracker, whose serial output goes into a FIFO the daemon reads, and
// which drops (never waits) what the daemon does not read in time.
func TestFirecrackerConsoleFloodIsBounded(t *testing.T) {
	lim := floodLimits{max: 1 << 20, head: 64 << 10, rate: 256 << 10, burst: 256 << 10}
	d := firecrackerDaemon(t, lim.env()...)
	vms := bootAll(t, d.alice, api.CreateVM{Image: "minimal"}, api.CreateVM{Image: "minimal"})
	floodConsole(t, d, lim, vms[0], vms[1])
	checkConsoleAfterFlood(t, d, lim, vms[0].ID, "Linux version")
}

// TestLowDiskSpaceMakesTheDaemonUnready: the daemon's state dir is a small
// file system; filled past state_dir_min_free, /readyz answers 503 saying
// what is low, a new VM is refused with 503 and doctor warns; freed, the
// daemon is ready again.
func TestLowDiskSpaceMakesTheDaemonUnready(t *testing.T) {
	needRoot(t)
	state, err := testrun.TempDir("fs") // its mount too goes if the test is cut off
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", state, "tmpfs", 0, "size=64m,mode=0700"); err != nil {
		t.Fatalf("mount a small state dir: %v", err)
	}
	t.Cleanup(func() { // after the daemon's own cleanup
		_ = syscall.Unmount(state, syscall.MNT_DETACH)
		_ = os.Remove(state)
	})
	d := newDaemonIn(t, state, "HEARTH_STATE_DIR_MIN_FREE=32MiB")
	ctx := ctxT(t, 2*time.Minute)

	fill := filepath.Join(state, "fill")
	if err := os.WriteFile(fill, make([]byte, 40<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	var ae *client.Error
	if err := d.admin.Readyz(ctx); !errors.As(err, &ae) || ae.Status != 503 ||
		!strings.Contains(ae.Message, "low disk space") || !strings.Contains(ae.Message, "state_dir_min_free") {
		t.Fatalf("readyz with the state dir nearly full: %v", err)
	}
	if _, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "minimal"}); !errors.As(err, &ae) || ae.Status != 503 ||
		!strings.Contains(ae.Message, "low disk space") {
		t.Fatalf("create with the state dir nearly full: %v", err)
	}
	if vms, err := d.admin.ListVMs(ctx, api.ListVMsParams{}); err != nil || len(vms) != 0 {
		t.Fatalf("a refused create left %d vms (%v)", len(vms), err)
	}
	out, _ := hearthCmd(d, "doctor")
	if !strings.Contains(out, "WARN  free disk") || !strings.Contains(out, "/readyz answers 503") {
		t.Fatalf("doctor with the state dir nearly full:\n%s", out)
	}
	t.Logf("doctor: %s", lineWith(out, "free disk"))

	if err := os.Remove(fill); err != nil {
		t.Fatal(err)
	}
	if err := d.admin.Readyz(ctx); err != nil {
		t.Fatalf("readyz once there is room again: %v", err)
	}
}

func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

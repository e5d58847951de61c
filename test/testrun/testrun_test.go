package testrun

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/vmm/proc"
)

// The helper process: it makes a directory, a network namespace (as
// root) and a long-lived process, the way a test makes a daemon's state
// dir, its namespace and its guests, prints them, and waits to be killed,
// signalled or timed out.
const helperEnv = "HEARTH_TESTRUN_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(Main(m))
	}
	os.Exit(m.Run())
}

// TestHelperMakesThings is the helper's body; it runs only in a helper.
func TestHelperMakesThings(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("runs only as a helper process")
	}
	dir, err := TempDir("t")
	if err != nil {
		t.Fatal(err)
	}
	ns := ""
	if os.Geteuid() == 0 {
		ns = NetnsName("t")
		if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add: %v %s", err, out)
		}
	}
	// Like a daemonized guest: its own session, not waited for.
	child := exec.Command("sleep", "600")
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("made %s %s %d\n", dir, ns, child.Process.Pid)
	select {} // until killed, signalled or timed out
}

type made struct {
	dir, ns string
	pid     int
	start   uint64
	cmd     *exec.Cmd
}

func startHelper(t *testing.T, mode string, args ...string) made {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestHelperMakesThings$", "-test.v"}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder // read only after Wait, which waits for its copying
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("helper's stderr:\n%s", stderr.String())
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), "made "); ok {
				lines <- l
			}
		}
	}()
	select {
	case l := <-lines:
		f := strings.Split(l, " ")
		pid, _ := strconv.Atoi(f[2])
		start, err := proc.StartTime(pid)
		if err != nil {
			t.Fatalf("the helper's process: %v", err)
		}
		m := made{dir: f[0], ns: f[1], pid: pid, start: start, cmd: cmd}
		t.Cleanup(func() { _ = syscall.Kill(m.pid, syscall.SIGKILL); _ = os.RemoveAll(m.dir) })
		return m
	case <-time.After(time.Minute):
		t.Fatal("the helper never said what it made")
	}
	return made{}
}

// gone waits until everything the helper made is gone.
func (m made) gone(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		_, dirErr := os.Stat(m.dir)
		nsThere := false
		if m.ns != "" {
			_, err := os.Stat(filepath.Join(netnsDir, m.ns))
			nsThere = err == nil
		}
		procThere := proc.Alive(m.pid, m.start)
		if os.IsNotExist(dirErr) && !nsThere && !procThere {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("left behind: dir %v, netns %v, process %v", dirErr == nil, nsThere, procThere)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestSignalRemovesWhatTheProcessMade(t *testing.T) {
	m := startHelper(t, "signal")
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	_ = m.cmd.Wait()
	m.gone(t, 30*time.Second)
}

func TestNearTimeoutRemovesWhatTheProcessMade(t *testing.T) {
	// -timeout 25s: the guard acts 20s before, long before go test's own
	// alarm would end the binary without any cleanup.
	start := time.Now()
	m := startHelper(t, "timeout", "-test.timeout=25s")
	_ = m.cmd.Wait()
	if took := time.Since(start); took > 25*time.Second {
		t.Fatalf("the helper ran %s: the guard did not act before -timeout", took)
	}
	if code := m.cmd.ProcessState.ExitCode(); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	m.gone(t, 30*time.Second)
}

// A test process killed outright cleans nothing; what it left is
// abandoned, found and removed by the end-of-run check.
func TestAbandonedAfterKill(t *testing.T) {
	m := startHelper(t, "kill")
	_ = m.cmd.Process.Kill()
	_ = m.cmd.Wait()
	left := Abandoned("")
	kinds := map[string]bool{}
	for _, l := range left {
		if l.Owner == m.cmd.Process.Pid {
			kinds[l.Kind] = true
		}
	}
	want := []string{"dir", "process"}
	if m.ns != "" {
		want = append(want, "netns")
	}
	for _, k := range want {
		if !kinds[k] {
			t.Fatalf("abandoned %v: no %s of the killed helper", left, k)
		}
	}
	var mine []Leftover
	for _, l := range left {
		if l.Owner == m.cmd.Process.Pid {
			mine = append(mine, l)
		}
	}
	if err := Remove(mine); err != nil {
		t.Fatal(err)
	}
	m.gone(t, 30*time.Second)
	// What a live test process made is never abandoned.
	for _, l := range Abandoned("") {
		if l.Owner == os.Getpid() {
			t.Fatalf("%s counted as abandoned while its test runs", l)
		}
	}
}

func TestOwnerOf(t *testing.T) {
	for name, want := range map[string]int{"hth-123-e2e-ab": 123, "hth-7-x": 7, "hth-x-1": 0, "he2e-12": 0, "hth--1": 0} {
		got, ok := ownerOf(name)
		if (want != 0) != ok || got != want {
			t.Errorf("ownerOf(%q) = %d, %v", name, got, ok)
		}
	}
}

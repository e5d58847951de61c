// Package testrun lets hearth's tests leave nothing behind on the host,
// however they end: passed, failed, interrupted by a signal or cut off by
// go test's -timeout.
//
// What a test makes is named after the test process that made it:
// temporary directories and network namespaces are "hth-<pid>-<tag>-…"
// (TempDir, NetnsName), and every process a test starts, with its
// descendants (daemons, QEMU guests, fake Firecrackers, browsers), inherits
// HEARTH_TEST_OWNER=<pid> in its environment (Main sets it). So
// Owned(pid) finds all of it: the processes to kill, mounts to detach,
// namespaces (with the bridges, TAPs and nftables tables inside them) to
// delete and directories to remove. Main removes what its process made
// when a signal arrives or -timeout draws near, and fails a run that left
// anything; test/leftovers, run by `make test` at its end, removes what
// any finished test process left and fails if there was anything.
package testrun

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/vmm/proc"
)

const (
	// Prefix starts the name of every directory and network namespace
	// a test makes through this package.
	Prefix = "hth-"
	// OwnerEnv marks the processes a test process started (and theirs).
	OwnerEnv = "HEARTH_TEST_OWNER"
	// RunEnv marks every process of one `make test` run (scripts/test.sh
	// sets it), whichever package's test started it.
	RunEnv = "HEARTH_TEST_RUN"
	// netnsDir is where `ip netns` keeps named namespaces.
	netnsDir = "/run/netns"
)

// TempDir makes a directory in the system's temporary directory named
// after this process and tag (short: VM socket paths live under it).
func TempDir(tag string) (string, error) {
	return os.MkdirTemp("", fmt.Sprintf("%s%d-%s-", Prefix, os.Getpid(), tag))
}

// MustTempDir is TempDir for a test; the directory is removed when the
// test ends.
func MustTempDir(t testing.TB, tag string) string {
	t.Helper()
	dir, err := TempDir(tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// NetnsName names a network namespace after this process and tag, with a
// random suffix.
func NetnsName(tag string) string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // never fails
	return fmt.Sprintf("%s%d-%s-%x", Prefix, os.Getpid(), tag, b)
}

// ownerOf returns the PID a name made by TempDir or NetnsName carries.
func ownerOf(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return 0, false
	}
	p, _, ok := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(p)
	return pid, ok && err == nil && pid > 0
}

// Leftover is one thing a test process made that is still there.
type Leftover struct {
	Kind  string // "process", "mount", "netns" or "dir"
	Name  string // PID and command line, mount point, namespace name or path
	Owner int    // the test process (0: marked only by RunEnv)
	pid   int    // a process's PID and start time (internal/vmm/proc)
	start uint64
}

func (l Leftover) String() string {
	if l.Owner > 0 {
		return fmt.Sprintf("%s %s (test process %d)", l.Kind, l.Name, l.Owner)
	}
	return fmt.Sprintf("%s %s", l.Kind, l.Name)
}

// alive reports whether a process with pid exists (a test process: only
// its PID is known, from the names of what it made).
func alive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) != syscall.ESRCH
}

// Owned lists what the test process pid made that is still there.
func Owned(pid int) []Leftover {
	return find(func(owner int) bool { return owner == pid }, "")
}

// Abandoned lists what test processes that have ended left behind, and
// every process marked with RunEnv=run (if run is not empty): once a run's
// tests have ended, none of its processes should be left.
func Abandoned(run string) []Leftover {
	return find(func(owner int) bool { return !alive(owner) }, run)
}

func find(match func(owner int) bool, run string) []Leftover {
	var out []Leftover
	var dirs []string
	tmp := os.TempDir()
	if es, err := os.ReadDir(tmp); err == nil {
		for _, e := range es {
			if owner, ok := ownerOf(e.Name()); ok && e.IsDir() && match(owner) {
				p := filepath.Join(tmp, e.Name())
				dirs = append(dirs, p)
				out = append(out, Leftover{Kind: "dir", Name: p, Owner: owner})
			}
		}
	}
	var nets []Leftover
	if es, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range es {
			if owner, ok := ownerOf(e.Name()); ok && match(owner) {
				nets = append(nets, Leftover{Kind: "netns", Name: e.Name(), Owner: owner})
			}
		}
	}
	procs := findProcesses(match, run, dirs)
	mounts := findMounts(dirs)
	// In removal order: processes, mounts, namespaces, directories.
	return slices.Concat(procs, mounts, nets, out)
}

// findProcesses lists processes marked by OwnerEnv (or RunEnv) or working
// in or naming one of dirs.
func findProcesses(match func(owner int) bool, run string, dirs []string) []Leftover {
	var out []Leftover
	self := os.Getpid()
	es, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	for _, e := range es {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == os.Getppid() {
			continue
		}
		base := filepath.Join("/proc", e.Name())
		cmdline, _ := os.ReadFile(filepath.Join(base, "cmdline"))
		env, _ := readCapped(filepath.Join(base, "environ"), 1<<20)
		owner, marked := 0, false
		for kv := range bytes.SplitSeq(env, []byte{0}) {
			k, v, _ := strings.Cut(string(kv), "=")
			switch {
			case k == OwnerEnv:
				if p, err := strconv.Atoi(v); err == nil && match(p) {
					owner, marked = p, true
				}
			case k == RunEnv && run != "" && v == run:
				marked = true
			}
		}
		if !marked {
			cwd, _ := os.Readlink(filepath.Join(base, "cwd"))
			for _, d := range dirs {
				if under(cwd, d) || bytes.Contains(cmdline, []byte(d)) {
					marked = true
					owner, _ = ownerOf(filepath.Base(d))
					break
				}
			}
		}
		if !marked {
			continue
		}
		start, err := proc.StartTime(pid)
		if err != nil {
			continue // gone meanwhile
		}
		cmd := strings.TrimSpace(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))
		if len(cmd) > 160 {
			cmd = cmd[:160] + "…"
		}
		out = append(out, Leftover{Kind: "process", Name: fmt.Sprintf("%d %s", pid, cmd), Owner: owner, pid: pid, start: start})
	}
	return out
}

func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

func readCapped(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(io.LimitReader(f, n))
	return b.Bytes(), err
}

// findMounts lists mount points under dirs, deepest first.
func findMounts(dirs []string) []Leftover {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []Leftover
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		for _, d := range dirs {
			if under(mp, d) {
				owner, _ := ownerOf(filepath.Base(d))
				out = append(out, Leftover{Kind: "mount", Name: mp, Owner: owner})
			}
		}
	}
	slices.SortFunc(out, func(a, b Leftover) int { return len(b.Name) - len(a.Name) })
	return out
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Remove kills, detaches, deletes and removes what ls lists, in its order
// (the order Owned and Abandoned return), and says what it could not.
func Remove(ls []Leftover) error {
	var errs []error
	var procs []Leftover
	for _, l := range ls {
		if l.Kind == "process" {
			_ = proc.Signal(l.pid, l.start, syscall.SIGKILL)
			procs = append(procs, l)
		}
	}
	// Gone means exited: a zombie its parent has not reaped runs nothing.
	deadline := time.Now().Add(15 * time.Second)
	for _, l := range procs {
		if !proc.WaitGone(l.pid, l.start, time.Until(deadline)) {
			errs = append(errs, fmt.Errorf("process %d survived SIGKILL", l.pid))
		}
	}
	for _, l := range ls {
		switch l.Kind {
		case "mount":
			if err := unix.Unmount(l.Name, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", l.Name, err))
			}
		case "netns":
			if out, err := exec.Command("ip", "netns", "del", l.Name).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", l.Name, err, strings.TrimSpace(string(out))))
			}
		case "dir":
			if err := os.RemoveAll(l.Name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Main runs a test binary's tests so that what they make never outlives
// them: its processes carry OwnerEnv; on SIGINT, SIGTERM or SIGHUP, and
// shortly before go test's -timeout would end the binary without running
// any cleanup, everything it made is removed (its goroutines are dumped
// first on a timeout); and after the tests, anything still there is
// removed and fails the run. Use it as
//
//	func TestMain(m *testing.M) { os.Exit(testrun.Main(m)) }
func Main(m *testing.M) int {
	stop := Guard()
	code := m.Run()
	stop()
	return Finish(code)
}

// Guard sets OwnerEnv and removes what this process made on a signal or
// a near -timeout, exiting. Call it before the tests run; the returned
// function disarms it.
func Guard() (stop func()) {
	if !flag.Parsed() {
		flag.Parse()
	}
	self := os.Getpid()
	_ = os.Setenv(OwnerEnv, strconv.Itoa(self))
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	var alarm <-chan time.Time
	if f := flag.Lookup("test.timeout"); f != nil {
		if g, ok := f.Value.(flag.Getter); ok {
			if d, ok := g.Get().(time.Duration); ok && d > 0 {
				margin := min(max(d/20, 20*time.Second), 2*time.Minute)
				alarm = time.After(d - margin)
			}
		}
	}
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigs:
			fmt.Fprintf(os.Stderr, "testrun: %v: removing every process, namespace and directory this test process made\n", s)
		case <-alarm:
			fmt.Fprintf(os.Stderr, "testrun: the -timeout is near; goroutines:\n")
			_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 2)
			fmt.Fprintf(os.Stderr, "testrun: the -timeout is near: removing every process, namespace and directory this test process made\n")
		case <-done:
			return
		}
		report(Owned(self))
		os.Exit(2)
	}()
	return func() { signal.Stop(sigs); close(done) }
}

// Finish removes what this process still has (its tests should have) and
// turns code into a failure if there was anything.
func Finish(code int) int {
	if left := Owned(os.Getpid()); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "testrun: the tests left %d things behind:\n", len(left))
		report(left)
		return 1
	}
	return code
}

func report(ls []Leftover) {
	for _, l := range ls {
		fmt.Fprintf(os.Stderr, "  %s\n", l)
	}
	if err := Remove(ls); err != nil {
		fmt.Fprintf(os.Stderr, "testrun: %v\n", err)
	}
}

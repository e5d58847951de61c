package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
	"github.com/hearth-project/hearth/test/connflood"
	"github.com/hearth-project/hearth/test/testrun"
)

var (
	binDir   string // hearth and hearth-agent built for this run
	imageDir string // shared image output, so each daemon's build is a cache hit
	cacheDir string
	skipWhy  string
)

func TestMain(m *testing.M) {
	connflood.Helper() // a flood helper process (clients_test.go) runs only that
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		skipWhy = "e2e tests need root (QEMU guests, VM state under a private dir); run 'sudo make test'"
		return m.Run()
	}
	// Whatever ends this binary — a failure, a signal, -timeout — every
	// guest, daemon, namespace and directory it made goes with it, and a
	// run that left any fails (test/testrun).
	stop := testrun.Guard()
	tmp, err := testrun.TempDir("e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := runIn(m, tmp)
	stop()
	_ = os.RemoveAll(tmp)
	return testrun.Finish(code)
}

func runIn(m *testing.M, tmp string) int {
	binDir = filepath.Join(tmp, "bin")
	cacheDir = envOr("HEARTH_TEST_CACHE_DIR", "/var/cache/hearth")
	imageDir = filepath.Join(cacheDir, "e2e-images")
	root := repoRoot()
	for _, b := range []struct{ pkg, out string }{{"./cmd/hearth", "hearth"}, {"./cmd/hearth-agent", "hearth-agent"},
		{"./test/fakefirecracker", "firecracker"}, {"./test/hostileagent", "hostileagent"}, {"./test/fakeprompt", "fakeprompt"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, b.out), b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b.pkg, err, out)
			return 1
		}
	}
	code := m.Run()
	pruneImages(imageDir, 2)
	return code
}

// pruneImages keeps the newest keep builds of each profile in the shared
// e2e image cache (every agent change makes a new digest).
func pruneImages(dir string, keep int) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	byProfile := map[string][]os.DirEntry{}
	for _, e := range entries {
		if name, _, ok := strings.Cut(e.Name(), "-"); ok && e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			byProfile[name] = append(byProfile[name], e)
		}
	}
	for _, es := range byProfile {
		sort.Slice(es, func(i, j int) bool { return modTime(es[i]).After(modTime(es[j])) })
		for _, e := range es[min(keep, len(es)):] {
			_ = os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

func modTime(e os.DirEntry) time.Time {
	info, err := e.Info()
	if err != nil {
		return time.Time{}
	}
	return info.ModTime()
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func needRoot(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
}

// daemon is one `hearth serve` process with its own state directory, run
// inside its own network namespace: its bridge, TAPs and nftables tables
// never touch the host's.
type daemon struct {
	t        *testing.T
	netns    string
	stateDir string
	addr     string
	cmd      *exec.Cmd
	logPath  string
	admin    *client.Client
	alice    *client.Client
	bob      *client.Client
	env      []string
}

// newDaemon prepares a state dir with the minimal image and keys for an
// admin, alice and bob, then starts the daemon.
func newDaemon(t *testing.T, extraEnv ...string) *daemon {
	t.Helper()
	needRoot(t)
	// Short socket paths: VM sockets live under the state dir.
	state, err := testrun.TempDir("d")
	if err != nil {
		t.Fatal(err)
	}
	return newDaemonIn(t, state, extraEnv...)
}

// newDaemonIn is newDaemon with its state in the directory state, which
// it removes when the test ends.
func newDaemonIn(t *testing.T, state string, extraEnv ...string) *daemon {
	t.Helper()
	d := prepareDaemon(t, state, "127.0.0.1:7070", extraEnv...)
	d.start()
	return d
}

// prepareDaemon is newDaemonIn up to starting the daemon, which is to
// listen on listen inside its namespace: a test that has it listen on an
// address of its own gives the namespace that address, then calls start.
// Whatever becomes of it, the daemon, its VMs and its state go when the
// test ends.
func prepareDaemon(t *testing.T, state, listen string, extraEnv ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, stateDir: state, addr: listen, logPath: filepath.Join(state, "hearth.log")}
	d.netns = newNetns(t)
	t.Cleanup(func() { d.cleanup() }) // registered after the namespace's: runs before it goes
	d.env = append([]string{"HEARTH_STATE_DIR=" + state, "HEARTH_LISTEN=" + d.addr, "HEARTH_IMAGE_DIR=" + imageDir,
		"HEARTH_CACHE_DIR=" + cacheDir, "HEARTH_CONFIG="}, extraEnv...)
	out := d.hearth("image", "build", "--local", "--profile", "minimal", "--agent", filepath.Join(binDir, "hearth-agent"))
	t.Logf("image: %s", lastLine(out))
	d.admin = d.client(strings.TrimSpace(d.hearth("apikey", "create", "--admin", "--name", "e2e")))
	d.alice = d.client(strings.TrimSpace(d.hearth("apikey", "create", "--user", "alice")))
	d.bob = d.client(strings.TrimSpace(d.hearth("apikey", "create", "--user", "bob")))
	return d
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// hearthCmd runs a CLI command that may fail; it returns all its output.
func hearthCmd(d *daemon, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(binDir, "hearth"), args...)
	cmd.Env = append(os.Environ(), d.env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// hearthAs runs the CLI inside the daemon's namespace with key as
// HEARTH_API_KEY; it returns stdout and stderr together.
func (d *daemon) hearthAs(key string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", d.netns, filepath.Join(binDir, "hearth")}, args...)...)
	cmd.Env = append(append(os.Environ(), d.env...), "HEARTH_API_KEY="+key)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// hearth runs a CLI command against this daemon's state and returns stdout.
func (d *daemon) hearth(args ...string) string {
	d.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "hearth"), args...)
	cmd.Env = append(os.Environ(), d.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		d.t.Fatalf("hearth %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func (d *daemon) start() {
	d.t.Helper()
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", d.netns, filepath.Join(binDir, "hearth"), "serve")
	cmd.Env = append(os.Environ(), d.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	logf.Close()
	d.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	anon := d.client("")
	for time.Now().Before(deadline) {
		if anon.Healthz(context.Background()) == nil && d.ready() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("daemon did not become ready; log:\n%s", d.log())
}

// client returns an API client whose connections are made inside the
// daemon's network namespace.
func (d *daemon) client(key string) *client.Client {
	c := client.New(d.addr, key)
	c.HTTP = &http.Client{Transport: &http.Transport{DialContext: nsDialer(d.netns)}}
	return c
}

func (d *daemon) ready() bool {
	return d.admin.Readyz(context.Background()) == nil
}

func (d *daemon) log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}

// kill9 kills the daemon the hard way; its VMs keep running.
func (d *daemon) kill9() {
	d.t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		d.t.Fatal(err)
	}
	_ = d.cmd.Wait()
	d.cmd = nil
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop() {
	d.t.Helper()
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			d.t.Errorf("daemon exit: %v\n%s", err, d.log())
		}
	case <-time.After(40 * time.Second):
		_ = d.cmd.Process.Kill()
		d.t.Errorf("daemon did not stop on SIGTERM")
	}
	d.cmd = nil
}

// cleanup deletes every VM, stops the daemon and checks nothing leaked.
func (d *daemon) cleanup() {
	t := d.t
	if d.cmd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		vms, err := d.admin.ListVMs(ctx, api.ListVMsParams{})
		if err == nil {
			for _, v := range vms {
				_, _ = d.admin.DeleteVM(ctx, v.ID)
			}
			for _, v := range vms {
				if _, err := d.admin.WaitVM(ctx, v.ID, "destroyed", time.Minute); err != nil {
					t.Errorf("cleanup: vm %s: %v", v.ID, err)
				}
			}
		}
		d.stop()
	}
	if pids := qemuPIDs(d.stateDir); len(pids) > 0 {
		t.Errorf("qemu processes left behind: %v", pids)
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}
	if t.Failed() {
		t.Logf("daemon log (but its request lines):\n%s", tail(withoutRequests(d.log()), 8000))
	}
	_ = os.RemoveAll(d.stateDir)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// qemuPIDs lists QEMU processes whose command line mentions dir.
func qemuPIDs(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procCPU is the CPU time process pid has used so far.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name: state is the first, utime the 12th,
	// stime the 13th (clock ticks, 100 a second on Linux).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// withoutRequests drops the daemon log's per-request lines.
func withoutRequests(log string) string {
	var b strings.Builder
	for line := range strings.Lines(log) {
		if !strings.Contains(line, `"msg":"http request"`) {
			b.WriteString(line)
		}
	}
	return b.String()
}

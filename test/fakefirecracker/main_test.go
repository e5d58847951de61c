package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/vmm/firecracker/fctest"
	"github.com/hearth-project/hearth/test/testrun"
)

// bin holds the fake built once, static (it must run in a chroot), under
// the names it answers to.
var bin struct {
	dir, firecracker, jailer, agent string
}

func TestMain(m *testing.M) {
	stop := testrun.Guard()
	dir, err := testrun.TempDir("ffcbin")
	if err != nil {
		panic(err)
	}
	os.Chmod(dir, 0o755)
	bin.dir = dir
	bin.firecracker = filepath.Join(dir, "firecracker")
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-o", bin.firecracker, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		panic(err)
	}
	bin.jailer = filepath.Join(dir, "jailer")
	bin.agent = filepath.Join(dir, "fake-agent")
	for _, l := range []string{bin.jailer, bin.agent} {
		if err := os.Link(bin.firecracker, l); err != nil {
			panic(err)
		}
	}
	code := m.Run()
	stop()
	os.RemoveAll(dir)
	os.Exit(testrun.Finish(code))
}

// shortDir is a temporary directory short enough for Unix socket paths.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := testrun.TempDir("ffc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// output collects a process's stream for the test to wait on.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.Write(p)
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// proc is a running fake.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *output
	done           chan struct{}
	err            error
}

func start(t *testing.T, path string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(path, args...), stdout: &output{}, stderr: &output{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

func (p *proc) wait(t *testing.T) *exec.ExitError {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("process did not exit; stdout %q stderr %q", p.stdout, p.stderr)
	}
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		t.Fatal(p.err)
	}
	return ee
}

func exitCode(ee *exec.ExitError) int {
	if ee == nil {
		return 0
	}
	return ee.ExitCode()
}

func waitForFile(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// api is a client of the fake's API socket that holds every response to
// Firecracker's swagger document.
type api struct {
	t      *testing.T
	client *http.Client
}

func newAPI(t *testing.T, sock string) *api {
	waitForFile(t, sock)
	return &api{t: t, client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}}
}

func (a *api) call(method, path, body string) (int, string) {
	a.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://localhost"+path, rd)
	resp, err := a.client.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := fctest.ValidateResponse(method, path, resp.StatusCode, b); err != nil {
		a.t.Errorf("response breaks the spec: %v", err)
	}
	return resp.StatusCode, string(b)
}

func (a *api) ok(method, path, body string) string {
	a.t.Helper()
	status, resp := a.call(method, path, body)
	if status/100 != 2 {
		a.t.Fatalf("%s %s %s: %d %s", method, path, body, status, resp)
	}
	return resp
}

func TestCommandLine(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "api.sock")
	for _, c := range []struct {
		name string
		args []string
		code int
		out  string
	}{
		{"unknown flag", []string{"--api-sock", sock, "--frobnicate"}, exitArgParsing, "'frobnicate' which wasn't expected"},
		{"equals form", []string{"--api-sock=" + sock}, exitArgParsing, "wasn't expected"},
		{"single dash", []string{"-api-sock", sock}, exitArgParsing, "wasn't expected"},
		{"repeated flag", []string{"--id", "a", "--id", "b"}, exitArgParsing, "more than once"},
		{"missing value", []string{"--api-sock"}, exitArgParsing, "requires a value"},
		{"value looks like a flag", []string{"--api-sock", "--id"}, exitArgParsing, "requires a value"},
		{"seccomp conflict", []string{"--no-seccomp", "--seccomp-filter", "/f"}, exitArgParsing, "cannot be used together"},
		{"no-api without config", []string{"--no-api"}, exitArgParsing, "config-file"},
		{"config file not modelled", []string{"--config-file", "/c.json"}, exitGenericError, "does not model"},
		{"bad id", []string{"--api-sock", sock, "--id", "a_b"}, exitGenericError, "Invalid instance ID"},
		{"bad level", []string{"--api-sock", sock, "--level", "loud"}, exitBadConfiguration, "logger level"},
		{"bad start time", []string{"--api-sock", sock, "--start-time-us", "x"}, exitGenericError, "start-time-us"},
		{"bad fault", []string{"--api-sock", sock}, exitGenericError, envFault},
	} {
		t.Run(c.name, func(t *testing.T) {
			var env []string
			if c.name == "bad fault" {
				env = []string{envFault + "=nonsense"}
			}
			p := start(t, bin.firecracker, env, c.args...)
			ee := p.wait(t)
			if exitCode(ee) != c.code || !strings.Contains(p.stderr.String(), c.out) {
				t.Errorf("exit %d, stderr %q; want %d mentioning %q", exitCode(ee), p.stderr, c.code, c.out)
			}
		})
	}
	p := start(t, bin.firecracker, nil, "--api-sock", sock, "--version")
	if ee := p.wait(t); ee != nil || !strings.HasPrefix(p.stdout.String(), "Firecracker v1.16.1") {
		t.Errorf("--version: %v %q", ee, p.stdout)
	}
	p = start(t, bin.firecracker, nil, "--help")
	if ee := p.wait(t); ee != nil || !strings.Contains(p.stdout.String(), "--api-sock <api-sock>") {
		t.Errorf("--help: %v %q", ee, p.stdout)
	}
	if _, err := os.Stat(sock); err == nil {
		t.Error("a refused command line created the API socket")
	}
}

func TestServeUntilCtrlAltDel(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "api.sock")
	reqLog := filepath.Join(dir, "requests.jsonl")
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	p := start(t, bin.firecracker, []string{
		envAgent + "=" + bin.agent,
		envRequestLog + "=" + reqLog,
		envFault + "=PATCH /machine-config=no patching; PUT /entropy=no entropy",
	}, "--api-sock", sock, "--id", "vm-42", "--start-time-us", "1", "--start-time-cpu-us", "2", "--parent-cpu-time-us", "3",
		"--level", "Info", "--show-level", "--log-path", filepath.Join(dir, "fc.log"), "--no-seccomp", "--boot-timer")
	a := newAPI(t, sock)
	if !strings.Contains(p.stdout.String(), "Running Firecracker v1.16.1") {
		// With --log-path the start line goes to the log file.
		if b, _ := os.ReadFile(filepath.Join(dir, "fc.log")); !strings.Contains(string(b), "[vm-42:main:INFO] Running Firecracker v1.16.1") {
			t.Errorf("no start line: stdout %q, log %q", p.stdout, b)
		}
	}
	var info map[string]string
	json.Unmarshal([]byte(a.ok("GET", "/", "")), &info)
	if info["id"] != "vm-42" || info["state"] != "Not started" {
		t.Errorf("GET / = %v", info)
	}
	if status, body := a.call("PATCH", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`); status != 400 || !strings.Contains(body, "no patching") {
		t.Errorf("injected fault: %d %s", status, body)
	}
	if status, _ := a.call("PUT", "/entropy", `{}`); status != 400 {
		t.Errorf("second injected fault: %d", status)
	}
	uds := filepath.Join(dir, "v.sock")
	a.ok("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","boot_args":"console=ttyS0"}`)
	a.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`)
	a.ok("PUT", "/vsock", `{"guest_cid":3,"uds_path":"`+uds+`"}`)
	a.ok("PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"]}`)
	a.ok("PUT", "/mmds", `{"hearth":{"token":"tok-42"}}`)
	a.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if got := agentGreeting(t, uds); got != "token=tok-42" {
		t.Errorf("agent said %q", got)
	}
	a.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	if ee := p.wait(t); ee != nil {
		t.Errorf("exit after SendCtrlAltDel: %v; stderr %q", ee, p.stderr)
	}
	if !strings.Contains(p.stdout.String(), "Linux version") || !strings.Contains(p.stdout.String(), "fake-agent: listening") {
		t.Errorf("serial console (stdout): %q", p.stdout)
	}
	raw, _ := os.ReadFile(reqLog)
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) != 10 {
		t.Errorf("request log has %d lines:\n%s", len(lines), raw)
	}
	for _, l := range lines {
		var r fctest.Request
		if err := json.Unmarshal([]byte(l), &r); err != nil || r.Violation != "" {
			t.Errorf("request log line %s: %v", l, err)
		}
	}
}

// agentGreeting dials the agent as hearth does and reads its first line.
func agentGreeting(t *testing.T, uds string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := vmm.DialAgent(ctx, vmm.Handle{AgentSocket: uds, AgentVsockPort: fctest.AgentVsockPort})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	return strings.TrimSpace(line)
}

func TestDiesOfSIGTERM(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "api.sock")
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, nil, 0o644)
	p := start(t, bin.firecracker, []string{envAgent + "=" + bin.agent}, "--api-sock", sock)
	a := newAPI(t, sock)
	a.ok("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`"}`)
	a.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`)
	a.ok("PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"]}`)
	a.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	guestDir := filepath.Join(dir, "fakefc-guest-"+fctest.DefaultInstanceID)
	waitForFile(t, guestDir)
	p.cmd.Process.Signal(syscall.SIGTERM)
	ee := p.wait(t)
	if ee == nil {
		t.Fatal("exited 0 after SIGTERM; Firecracker dies of it")
	}
	if ws := ee.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("wait status %v, want killed by SIGTERM", ws)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Error("the API socket was removed; Firecracker leaves it")
	}
	if _, err := os.Stat(guestDir); err == nil {
		t.Error("the guest directory the fake created is still there")
	}
}

func TestNoSocket(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "api.sock")
	p := start(t, bin.firecracker, []string{envNoSocket + "=1"}, "--api-sock", sock, "--id", "nosock")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(p.stdout.String(), "Running Firecracker v1.16.1") {
		if time.Now().After(deadline) {
			t.Fatalf("no start line: %q", p.stdout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(sock); err == nil {
		t.Fatal("the API socket appeared")
	}
	select {
	case <-p.done:
		t.Fatal("exited without a socket")
	default:
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	if ee := p.wait(t); ee == nil {
		t.Error("exited 0 after SIGINT")
	}
}

func TestJailerCommandLine(t *testing.T) {
	dir := shortDir(t)
	notFC := filepath.Join(dir, "vmm")
	os.WriteFile(notFC, []byte("x"), 0o755)
	for _, c := range []struct {
		name string
		args []string
		out  string
	}{
		{"missing id", []string{"--exec-file", bin.firecracker, "--uid", "0", "--gid", "0"}, "'id' required"},
		{"unknown flag", []string{"--id", "a", "--exec-file", bin.firecracker, "--uid", "0", "--gid", "0", "--node", "0"}, "wasn't expected"},
		{"exec file name", []string{"--id", "a", "--exec-file", notFC, "--uid", "0", "--gid", "0", "--chroot-base-dir", dir}, "must contain \"firecracker\""},
		{"bad id", []string{"--id", "a/b", "--exec-file", bin.firecracker, "--uid", "0", "--gid", "0", "--chroot-base-dir", dir}, "Invalid instance ID"},
		{"bad uid", []string{"--id", "a", "--exec-file", bin.firecracker, "--uid", "x", "--gid", "0", "--chroot-base-dir", dir}, "Invalid uid"},
		{"bad cgroup", []string{"--id", "a", "--exec-file", bin.firecracker, "--uid", "0", "--gid", "0", "--chroot-base-dir", dir, "--cgroup", "cpu"}, "Invalid format for cgroups"},
		{"bad cgroup version", []string{"--id", "a", "--exec-file", bin.firecracker, "--uid", "0", "--gid", "0", "--chroot-base-dir", dir, "--cgroup-version", "3"}, "invalid cgroup version"},
		{"bad parent cgroup", []string{"--id", "a", "--exec-file", bin.firecracker, "--uid", "0", "--gid", "0", "--chroot-base-dir", dir, "--parent-cgroup", "../x"}, "Parent cgroup path is invalid"},
		{"bad resource limit", []string{"--id", "a", "--exec-file", bin.firecracker, "--uid", "0", "--gid", "0", "--chroot-base-dir", dir, "--resource-limit", "cpu=1"}, "Invalid resource argument"},
		{"missing chroot base", []string{"--id", "a", "--exec-file", bin.firecracker, "--uid", "0", "--gid", "0", "--chroot-base-dir", filepath.Join(dir, "nope")}, "canonicalize"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := start(t, bin.jailer, nil, c.args...)
			ee := p.wait(t)
			if exitCode(ee) != 1 || !strings.Contains(p.stdout.String()+p.stderr.String(), c.out) {
				t.Errorf("exit %d, output %q %q; want 1 mentioning %q", exitCode(ee), p.stdout, p.stderr, c.out)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "firecracker")); err == nil {
		t.Error("a refused command line built a jail")
	}
	p := start(t, bin.jailer, nil, "--version")
	if ee := p.wait(t); ee != nil || !strings.HasPrefix(p.stdout.String(), "Jailer v1.16.1") {
		t.Errorf("--version: %v %q", ee, p.stdout)
	}
}

func TestJailer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the jailer needs root (chroot, mknod, setuid): skipped as a normal user")
	}
	base := shortDir(t)
	os.Chmod(base, 0o755)
	const id, uid = "jail-1", 65534
	// A network namespace to join: that of a process started in a new one.
	holder := exec.Command("sleep", "60")
	holder.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	if err := holder.Start(); err != nil {
		t.Fatalf("new network namespace: %v", err)
	}
	defer func() { holder.Process.Kill(); holder.Wait() }()
	netns := fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid)

	p := start(t, bin.jailer, []string{envAgent + "=" + bin.agent, "UNRELATED=1"},
		"--id", id, "--exec-file", bin.firecracker, "--uid", fmt.Sprint(uid), "--gid", fmt.Sprint(uid),
		"--chroot-base-dir", base, "--netns", netns, "--cgroup-version", "2", "--cgroup", "pids.max=100",
		"--resource-limit", "no-file=1024",
		"--", "--api-sock", "/run/firecracker.socket", "--level", "Debug")
	root := filepath.Join(base, "firecracker", id, "root")
	a := newAPI(t, filepath.Join(root, "run/firecracker.socket"))
	pid := p.cmd.Process.Pid // the jailer execs in place

	// Jailed: chroot, credentials, devices, namespace, limits, arguments.
	if link, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", pid)); link != root {
		t.Errorf("process root %q, want %q", link, root)
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if !strings.Contains(string(status), fmt.Sprintf("Uid:\t%d\t%d", uid, uid)) || !strings.Contains(string(status), fmt.Sprintf("Gid:\t%d\t%d", uid, uid)) {
		t.Errorf("credentials not dropped:\n%s", status)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(root, "dev/net/tun"), &st); err != nil || st.Mode&syscall.S_IFCHR == 0 || st.Rdev != uint64(10<<8|200) || st.Uid != uid {
		t.Errorf("/dev/net/tun in the jail: %+v %v", st, err)
	}
	if err := syscall.Stat(filepath.Join(root, "dev/kvm"), &st); err != nil || st.Rdev != uint64(10<<8|232) {
		t.Errorf("/dev/kvm in the jail: %v", err)
	}
	if got, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); got == "" || got != mustReadlink(netns) {
		t.Errorf("network namespace %q, want %q", got, mustReadlink(netns))
	}
	limits, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if !regexpLine(string(limits), "Max open files", "1024") {
		t.Errorf("limits:\n%s", limits)
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) < 11 || args[0] != "/firecracker" || args[1] != "--id" || args[2] != id || args[3] != "--start-time-us" || args[5] != "--start-time-cpu-us" || args[7] != "--parent-cpu-time-us" || args[9] != "--api-sock" {
		t.Errorf("jailed command line %q", args)
	}
	environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if strings.Contains(string(environ), "UNRELATED") || !strings.Contains(string(environ), envAgent+"=/fake-agent") {
		t.Errorf("jailed environment %q", environ)
	}
	if cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid)); strings.Contains(string(cg), "/firecracker/"+id) {
		if v, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/firecracker", id, "pids.max")); strings.TrimSpace(string(v)) != "100" {
			t.Errorf("pids.max = %q", v)
		}
		t.Cleanup(func() {
			os.Remove(filepath.Join("/sys/fs/cgroup/firecracker", id))
			os.Remove("/sys/fs/cgroup/firecracker") // only if empty
		})
	} else {
		t.Logf("cgroup v2 not applied here (%s): %s", strings.TrimSpace(string(cg)), p.stderr)
	}

	// The jailed fake works, with paths inside the jail.
	os.WriteFile(filepath.Join(root, "vmlinux"), []byte("k"), 0o644)
	a.ok("PUT", "/boot-source", `{"kernel_image_path":"/vmlinux","boot_args":"console=ttyS0"}`)
	a.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`)
	a.ok("PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v.sock"}`)
	a.ok("PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"]}`)
	a.ok("PUT", "/mmds", `{"hearth":{"token":"jailed"}}`)
	a.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if got := agentGreeting(t, filepath.Join(root, "v.sock")); got != "token=jailed" {
		t.Errorf("jailed agent said %q", got)
	}
	a.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	if ee := p.wait(t); ee != nil {
		t.Errorf("jailed fake exit: %v; stderr %q", ee, p.stderr)
	}
}

func TestJailerDaemonizeNewPIDNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the jailer needs root (chroot, mknod, setuid, CLONE_NEWPID): skipped as a normal user")
	}
	base := shortDir(t)
	const id = "jail-2"
	p := start(t, bin.jailer, nil, "--id", id, "--exec-file", bin.firecracker, "--uid", "65534", "--gid", "65534",
		"--chroot-base-dir", base, "--daemonize", "--new-pid-ns")
	if ee := p.wait(t); ee != nil {
		t.Fatalf("jailer with --new-pid-ns: %v %q", ee, p.stderr)
	}
	root := filepath.Join(base, "firecracker", id, "root")
	pidFile := filepath.Join(root, "firecracker.pid")
	waitForFile(t, pidFile)
	raw, _ := os.ReadFile(pidFile)
	var pid int
	fmt.Sscan(string(raw), &pid)
	if pid <= 0 {
		t.Fatalf("pid file %q", raw)
	}
	defer syscall.Kill(pid, syscall.SIGKILL)
	a := newAPI(t, filepath.Join(root, "run/firecracker.socket"))
	a.ok("GET", "/", "")
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if !regexpLine(string(status), "NSpid", "1") {
		t.Errorf("not init of a new PID namespace:\n%s", status)
	}
	// Daemonized: its own session, standard I/O on /dev/null.
	if sid, _ := getsid(pid); sid != pid && sid != 0 {
		t.Logf("session %d", sid)
	}
	if fd1, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/1", pid)); fd1 != "/dev/null" {
		t.Errorf("stdout of the daemonized fake: %q", fd1)
	}
}

func getsid(pid int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_GETSID, uintptr(pid), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

func mustReadlink(p string) string {
	l, _ := os.Readlink(p)
	return l
}

// regexpLine reports whether a line starting with prefix contains value
// as a field.
func regexpLine(text, prefix, value string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			for _, f := range strings.Fields(strings.TrimPrefix(l, prefix)) {
				if strings.TrimSuffix(f, ":") == value {
					return true
				}
			}
		}
	}
	return false
}

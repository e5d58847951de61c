package fctest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/workapi"
)

func TestInstanceInfoAndVersion(t *testing.T) {
	ts := startServer(t, Options{InstanceID: "vm-1"})
	var info map[string]string
	json.Unmarshal([]byte(ts.ok("GET", "/", "")), &info)
	want := map[string]string{"app_name": "Firecracker", "id": "vm-1", "state": "Not started", "vmm_version": "1.16.1"}
	for k, v := range want {
		if info[k] != v {
			t.Errorf("GET / %s = %q, want %q", k, info[k], v)
		}
	}
	if got := ts.ok("GET", "/version", ""); got != `{"firecracker_version":"1.16.1"}` {
		t.Errorf("GET /version = %s", got)
	}
	if got := ts.ok("GET", "/machine-config", ""); !strings.Contains(got, `"vcpu_count":1`) || !strings.Contains(got, `"mem_size_mib":128`) {
		t.Errorf("GET /machine-config defaults = %s", got)
	}
	if got := ts.ok("GET", "/mmds", ""); got != "{}" {
		t.Errorf("GET /mmds before any PUT = %s, want {}", got)
	}
	if !strings.Contains(ts.stdout.String(), "[vm-1:main] Running Firecracker v1.16.1") {
		t.Errorf("no start line on stdout: %q", ts.stdout.String())
	}
}

func TestBootAndPreBootRules(t *testing.T) {
	ts := startServer(t, Options{})
	ts.configure()
	cfg := ts.ok("GET", "/vm/config", "")
	for _, want := range []string{`"boot-source":{`, `"drive_id":"rootfs"`, `"iface_id":"eth0"`, `"vcpu_count":2`, `"guest_cid":3`, `"version":"V2"`} {
		if !strings.Contains(cfg, want) {
			t.Errorf("GET /vm/config lacks %s: %s", want, cfg)
		}
	}
	// Pre-boot only the boot path is open.
	ts.fails("PATCH", "/vm", `{"state":"Paused"}`, errPreBoot)
	ts.fails("PUT", "/actions", `{"action_type":"FlushMetrics"}`, errPreBoot)
	ts.fails("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, errPreBoot)
	ts.fails("PUT", "/snapshot/create", `{"snapshot_path":"/s","mem_file_path":"/m"}`, errPreBoot)
	ts.fails("PATCH", "/drives/rootfs", `{"drive_id":"rootfs"}`, errPreBoot)

	ts.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if ts.State() != "Running" {
		t.Fatalf("state %s after InstanceStart", ts.State())
	}
	// Post-boot the configuration is closed.
	for _, r := range []struct{ method, path, body string }{
		{"PUT", "/boot-source", `{"kernel_image_path":"/k"}`},
		{"PUT", "/drives/d2", `{"drive_id":"d2","path_on_host":"/d","is_root_device":false,"is_read_only":true}`},
		{"PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1"}`},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`},
		{"PATCH", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v"}`},
		{"PUT", "/mmds/config", `{"network_interfaces":["eth0"]}`},
		{"PUT", "/logger", `{"log_path":"/l"}`},
		{"PUT", "/metrics", `{"metrics_path":"/m"}`},
		{"PUT", "/serial", `{"serial_out_path":"/s"}`},
		{"PUT", "/entropy", `{}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
		{"PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m"}`},
	} {
		ts.fails(r.method, r.path, r.body, errPostBoot)
	}
	// MMDS stays writable, and drives can be patched.
	ts.ok("PATCH", "/mmds", `{"hearth":{"token":"secret-2"}}`)
	if got := ts.ok("GET", "/mmds", ""); !strings.Contains(got, "secret-2") || !strings.Contains(got, `"vm_id":"test-vm"`) {
		t.Errorf("GET /mmds after PATCH = %s", got)
	}
	ts.ok("PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"`+ts.file("rootfs2", 10)+`"}`)
	ts.fails("PATCH", "/drives/nope", `{"drive_id":"nope"}`, "Invalid device ID")

	// The guest writes to the serial console, metrics and the log.
	ts.ok("PUT", "/actions", `{"action_type":"FlushMetrics"}`)
	console, _ := os.ReadFile(filepath.Join(ts.dir, "console.log"))
	if !strings.Contains(string(console), "Command line: console=ttyS0 reboot=k panic=1") {
		t.Errorf("serial output: %q", console)
	}
	metrics, _ := os.ReadFile(filepath.Join(ts.dir, "metrics.json"))
	var m map[string]any
	if err := json.Unmarshal(metrics, &m); err != nil || m["utc_timestamp_ms"] == nil {
		t.Errorf("metrics line %q: %v", metrics, err)
	}
	logs, _ := os.ReadFile(filepath.Join(ts.dir, "fc.log"))
	if !strings.Contains(string(logs), "[test-vm:fc_api:INFO] The API server received a PUT request on \"/actions\".") {
		t.Errorf("log: %q", logs)
	}
	ts.noViolations()
}

func TestFirecrackerChecksBeyondTheSpec(t *testing.T) {
	ts := startServer(t, Options{})
	kernel := ts.file("k", 1)
	disk := ts.file("d", 1)
	ts.fails("PUT", "/actions", `{"action_type":"InstanceStart"}`, "without kernel configuration")
	ts.fails("PUT", "/boot-source", `{"kernel_image_path":"/no/such/kernel"}`, "kernel file cannot be opened")
	ts.fails("PUT", "/drives/root-fs", `{"drive_id":"root-fs","path_on_host":"`+disk+`","is_root_device":true,"is_read_only":true}`, "alphanumeric characters and underscores")
	ts.fails("PUT", "/drives/a", `{"drive_id":"b","path_on_host":"`+disk+`","is_root_device":true,"is_read_only":true}`, "does not match the id from the body")
	ts.fails("PUT", "/network-interfaces/eth0", `{"iface_id":"eth1","host_dev_name":"tap0"}`, "does not match the id from the body")
	ts.fails("PUT", "/drives/a", `{"drive_id":"a","path_on_host":"/no/such/disk","is_root_device":true,"is_read_only":true}`, "backing file")
	ts.fails("PUT", "/drives/a", `{"drive_id":"a","is_root_device":true}`, "needs path_on_host and is_read_only")
	ts.ok("PUT", "/drives/a", `{"drive_id":"a","path_on_host":"`+disk+`","is_root_device":true,"is_read_only":true}`)
	ts.fails("PUT", "/drives/b", `{"drive_id":"b","path_on_host":"`+disk+`","is_root_device":true,"is_read_only":true}`, "root block device already exists")
	ts.fails("PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":128,"smt":true}`, "SMT")
	ts.fails("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":0}`, "memory size")
	ts.fails("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"not-a-mac"}`, "MAC")
	ts.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`)
	ts.fails("PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap0"}`, "already in use")
	ts.fails("PUT", "/mmds/config", `{"network_interfaces":[]}`, "is empty")
	ts.fails("PUT", "/mmds/config", `{"network_interfaces":["eth9"]}`, "does not correspond to any existing network interface")
	ts.fails("PATCH", "/mmds", `{"a":1}`, "not initialized")
	ts.fails("PUT", "/mmds", ``, "Empty PUT request")
	ts.fails("PUT", "/metrics", `{"metrics_path":"/no/such/dir/m"}`, "metrics")
	ts.ok("PUT", "/metrics", `{"metrics_path":"`+filepath.Join(ts.dir, "m")+`"}`)
	ts.fails("PUT", "/metrics", `{"metrics_path":"`+filepath.Join(ts.dir, "m")+`"}`, "Reinitialization")
	ts.ok("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`"}`)
	ts.noViolations()

	// A request breaking the spec is answered 400 and recorded as such.
	ts.fails("PUT", "/boot-source", `{"kernel_image_path":"k","kernel_args":""}`, `unknown field \"kernel_args\"`)
	ts.fails("PUT", "/snapshot", `{}`, "no path")
	v := ts.Violations()
	if len(v) != 2 || !strings.Contains(v[0].Violation, "kernel_args") {
		t.Errorf("violations = %+v", v)
	}
}

func TestMMDSBeforeConfig(t *testing.T) {
	// Firecracker creates the data store (V1) on first use, so PUT /mmds
	// works before /mmds/config, and /mmds/config later sets its version.
	ts := startServer(t, Options{})
	ts.ok("PUT", "/mmds", `{"a":{"b":"c"}}`)
	ts.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`)
	ts.ok("PUT", "/mmds/config", `{"network_interfaces":["eth0"],"version":"V2"}`)
	if got := ts.ok("GET", "/mmds", ""); got != `{"a":{"b":"c"}}` {
		t.Errorf("GET /mmds = %s", got)
	}
	big := `{"x":"` + strings.Repeat("y", DefaultMaxPayload) + `"}`
	status, _ := ts.do("PUT", "/mmds", big)
	if status != http.StatusBadRequest {
		t.Errorf("over-large request: %d, want 400 (payload limit)", status)
	}
}

func TestMMDSSizeLimit(t *testing.T) {
	ts := startServer(t, Options{MMDSSizeLimit: 20})
	status, body := ts.do("PUT", "/mmds", `{"x":"0123456789012345678901234567890"}`)
	if status != http.StatusRequestEntityTooLarge {
		t.Errorf("PUT /mmds over the data store limit: %d %s, want 413", status, body)
	}
}

func TestFaultsAndRequestLog(t *testing.T) {
	dir := shortTempDir(t)
	logPath := filepath.Join(dir, "requests.jsonl")
	ts := startServer(t, Options{RequestLog: logPath, Faults: map[string]string{
		"PUT /boot-source":       "injected boot failure",
		"PUT /drives/{drive_id}": "no drives today",
	}})
	ts.fails("PUT", "/boot-source", `{"kernel_image_path":"/k"}`, "injected boot failure")
	ts.fails("PUT", "/drives/a", `{"drive_id":"a","is_root_device":false}`, "no drives today")
	// A spec violation is reported as such even where a fault is set.
	ts.fails("PUT", "/boot-source", `{}`, "kernel_image_path")
	ts.ok("GET", "/", "")
	reqs := ts.Requests()
	if len(reqs) != 4 || reqs[0].Fault != "injected boot failure" || reqs[0].Violation != "" || reqs[2].Violation == "" || reqs[3].Status != 200 {
		t.Errorf("requests = %+v", reqs)
	}
	raw, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) != 4 {
		t.Fatalf("request log has %d lines: %s", len(lines), raw)
	}
	var r Request
	if err := json.Unmarshal([]byte(lines[0]), &r); err != nil || r.Method != "PUT" || r.Path != "/boot-source" || r.Status != 400 || r.Body != `{"kernel_image_path":"/k"}` {
		t.Errorf("first log line %s: %+v %v", lines[0], r, err)
	}
}

func TestVsockHandshake(t *testing.T) {
	ts := startServer(t, Options{})
	ts.configure()
	uds := filepath.Join(ts.dir, "v.sock")
	// Firecracker binds the device's socket when it takes PUT /vsock.
	if fi, err := os.Stat(uds); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("vsock socket not bound at PUT /vsock: %v", err)
	}
	// A guest program listening on port 52.
	ln, err := net.Listen("unix", ts.GuestSocket(52))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				c.Write([]byte(strings.ToUpper(string(buf[:n]))))
			}()
		}
	}()

	// Connected before boot: answered once the guest runs.
	early, err := net.Dial("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	fmt.Fprintf(early, "CONNECT 52\n")
	time.Sleep(100 * time.Millisecond)
	ts.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	br := bufio.NewReader(early)
	if line := readLine(t, br, early); line != "OK 1073741824" {
		t.Fatalf("answer %q, want OK 1073741824", line)
	}
	early.Write([]byte("hello"))
	early.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 5)
	if _, err := br.Read(buf); err != nil || string(buf) != "HELLO" {
		t.Fatalf("proxied %q, %v", buf, err)
	}

	// hearth's own dialer agrees with the fake.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := vmm.DialAgent(ctx, vmm.Handle{AgentSocket: uds, AgentVsockPort: 52})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	// Nothing listening on the port: closed without an answer.
	for _, cmd := range []string{"CONNECT 53\n", "HELLO\n", "CONNECT x\n"} {
		c, err := net.Dial("unix", uds)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, cmd)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 16))
		if n != 0 || err == nil {
			t.Errorf("%q: read %d bytes, %v; want the connection closed unanswered", cmd, n, err)
		}
		c.Close()
	}
	ts.noViolations()
}

func TestVsockRebindAndAddressInUse(t *testing.T) {
	ts := startServer(t, Options{})
	uds := filepath.Join(ts.dir, "v.sock")
	ts.ok("PUT", "/vsock", `{"guest_cid":3,"uds_path":"`+uds+`"}`)
	ts.ok("PUT", "/vsock", `{"guest_cid":4,"uds_path":"`+uds+`"}`) // replaces the device
	other := ts.file("taken", 0)
	ts.fails("PUT", "/vsock", `{"guest_cid":3,"uds_path":"`+other+`"}`, "Cannot create backend for vsock device")
}

func TestAPISocketInUse(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "api.sock")
	os.WriteFile(sock, nil, 0o644)
	if _, err := Start(Options{SocketPath: sock, Stdout: &syncBuffer{}}); err == nil {
		t.Fatal("an existing API socket path was accepted")
	}
	if _, err := os.Stat(sock); err != nil {
		t.Error("the existing file was removed")
	}
}

func TestMMDSGuestService(t *testing.T) {
	ts := startServer(t, Options{})
	ts.configure()
	ts.ok("PUT", "/mmds", `{"latest":{"meta-data":{"ami-id":"ami-1","n":{"x":"y"}},"num":3},"hearth":{"token":"t"}}`)
	ts.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	base := ts.MMDSURL()
	if base == "" {
		t.Fatal("no MMDS URL")
	}
	call := func(method, path string, hdr map[string]string) (int, string, http.Header) {
		req, _ := http.NewRequest(method, base+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var sb strings.Builder
		buf := make([]byte, 4096)
		for {
			n, err := resp.Body.Read(buf)
			sb.Write(buf[:n])
			if err != nil {
				break
			}
		}
		return resp.StatusCode, sb.String(), resp.Header
	}
	if st, body, _ := call("GET", "/latest", nil); st != 401 || !strings.Contains(body, "No MMDS token") {
		t.Errorf("GET without token: %d %s", st, body)
	}
	if st, body, _ := call("PUT", "/latest/api/token", nil); st != 400 || !strings.Contains(body, "time to live") {
		t.Errorf("PUT token without TTL: %d %s", st, body)
	}
	if st, _, _ := call("PUT", "/latest/api/token", map[string]string{"X-metadata-token-ttl-seconds": "21601"}); st != 400 {
		t.Errorf("TTL 21601: %d", st)
	}
	if st, _, _ := call("PUT", "/latest/api/token", map[string]string{"X-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "1.2.3.4"}); st != 400 {
		t.Errorf("X-Forwarded-For: %d", st)
	}
	if st, _, _ := call("PUT", "/latest/other", map[string]string{"X-metadata-token-ttl-seconds": "60"}); st != 404 {
		t.Errorf("PUT elsewhere: %d", st)
	}
	st, token, hdr := call("PUT", "/latest/api/token", map[string]string{"X-metadata-token-ttl-seconds": "60"})
	if st != 200 || token == "" || hdr.Get("Content-Type") != "text/plain" {
		t.Fatalf("PUT token: %d %q %v", st, token, hdr)
	}
	if st, _, _ := call("GET", "/latest", map[string]string{"X-metadata-token": "bogus"}); st != 401 {
		t.Errorf("bogus token: %d", st)
	}
	auth := map[string]string{"X-metadata-token": token}
	for _, c := range []struct {
		path, accept string
		status       int
		body         string
	}{
		{"/latest", "", 200, "meta-data/\nnum"},
		{"/latest/meta-data/", "", 200, "ami-id\nn/"},
		{"/latest/meta-data/ami-id", "", 200, "ami-1"},
		{"/latest//meta-data/ami-id", "", 200, "ami-1"},
		{"/latest/num", "", 501, "unsupported type"},
		{"/latest/num", "application/json", 200, "3"},
		{"/latest/meta-data", "application/json", 200, `{"ami-id":"ami-1","n":{"x":"y"}}`},
		{"/hearth/token", "", 200, "t"},
		{"/hearth/token", "application/json", 200, `"t"`},
		{"/nope", "", 404, "Resource not found"},
	} {
		h := map[string]string{"X-metadata-token": token}
		if c.accept != "" {
			h["Accept"] = c.accept
		}
		st, body, _ := call("GET", c.path, h)
		if st != c.status || !strings.Contains(body, c.body) {
			t.Errorf("GET %s (Accept %q): %d %q, want %d %q", c.path, c.accept, st, body, c.status, c.body)
		}
	}
	if st, _, hdr := call("POST", "/latest", auth); st != 405 || hdr.Get("Allow") == "" {
		t.Errorf("POST: %d, Allow %q", st, hdr.Get("Allow"))
	}
	ts.noViolations()
}

func TestAgentLifecycle(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Options{AgentPath: self})
	ts.configure()
	ts.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	uds := filepath.Join(ts.dir, "v.sock")
	token := agentToken(t, uds)
	if token != "secret-1" {
		t.Fatalf("agent read token %q from MMDS, want secret-1", token)
	}
	pid := ts.AgentPID()
	if pid == 0 {
		t.Fatal("no agent process")
	}
	// Its data channel listens where the vsock device sends CONNECT 1025.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	want := "\x00-data-listen\x00unix:" + ts.GuestSocket(workapi.VsockPort) + "\x00"
	if !strings.Contains(string(cmdline), want) {
		t.Errorf("agent command line %q; want it to carry %q", cmdline, want)
	}
	ts.ok("PATCH", "/vm", `{"state":"Paused"}`)
	if ts.State() != "Paused" {
		t.Errorf("state %s", ts.State())
	}
	waitFor(t, "the agent to be stopped", func() bool { return procState(pid) == "T" })
	ts.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	waitFor(t, "the agent to run again", func() bool { s := procState(pid); return s == "S" || s == "R" })

	// Ctrl+Alt+Del: the guest reboots, Firecracker exits 0.
	ts.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	select {
	case <-ts.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after SendCtrlAltDel")
	}
	if ts.ExitCode() != 0 {
		t.Errorf("exit code %d", ts.ExitCode())
	}
	if err := syscall.Kill(pid, 0); err == nil {
		waitFor(t, "the agent to die", func() bool { return syscall.Kill(pid, 0) != nil })
	}
	if _, err := ts.client.Get("http://localhost/"); err == nil {
		t.Error("the API still answers after the VM exited")
	}
	console, _ := os.ReadFile(filepath.Join(ts.dir, "console.log"))
	if !strings.Contains(string(console), "fake-agent: listening on") || !strings.Contains(string(console), "reboot: Restarting system") {
		t.Errorf("serial output: %s", console)
	}
	ts.noViolations()
}

func TestCtrlAltDelWhilePaused(t *testing.T) {
	ts := startServer(t, Options{})
	ts.configure()
	ts.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	ts.ok("PATCH", "/vm", `{"state":"Paused"}`)
	ts.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	select {
	case <-ts.Done():
		t.Fatal("a paused guest rebooted")
	case <-time.After(300 * time.Millisecond):
	}
	ts.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	select {
	case <-ts.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after resuming")
	}
}

// agentToken dials the agent through the vsock device as hearth does and
// reads the token line it greets with.
func agentToken(t *testing.T, uds string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := vmm.DialAgent(ctx, vmm.Handle{AgentSocket: uds, AgentVsockPort: AgentVsockPort})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line := readLine(t, bufio.NewReader(c), c)
	token, ok := strings.CutPrefix(line, "token=")
	if !ok {
		t.Fatalf("agent said %q", line)
	}
	return token
}

// procState is the state letter of /proc/PID/stat ("" if gone).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return ""
	}
	return string(b[i+2])
}

func TestSnapshotRoundTrip(t *testing.T) {
	self, _ := os.Executable()
	ts := startServer(t, Options{AgentPath: self})
	ts.configure()
	ts.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	snap, mem := filepath.Join(ts.dir, "snap.state"), filepath.Join(ts.dir, "snap.mem")
	ts.fails("PUT", "/snapshot/create", `{"snapshot_path":"`+snap+`","mem_file_path":"`+mem+`"}`, "must be paused")
	ts.ok("PATCH", "/vm", `{"state":"Paused"}`)
	ts.ok("PUT", "/snapshot/create", `{"snapshot_path":"`+snap+`","mem_file_path":"`+mem+`","snapshot_type":"Full"}`)
	fi, err := os.Stat(mem)
	if err != nil || fi.Size() != 64<<20 {
		t.Fatalf("memory file: %v %v", fi, err)
	}
	var st syscall.Stat_t
	syscall.Stat(mem, &st)
	if st.Blocks*512 >= fi.Size() {
		t.Errorf("memory file is not sparse (%d blocks)", st.Blocks)
	}
	ts.noViolations()
	ts.Close()

	// A fresh process restores it, on another TAP and vsock socket.
	ts2 := startServer(t, Options{AgentPath: self})
	ts2.ok("PUT", "/logger", `{"log_path":"`+filepath.Join(ts2.dir, "fc.log")+`"}`)
	ts2.ok("PUT", "/serial", `{"serial_out_path":"`+filepath.Join(ts2.dir, "console.log")+`"}`)
	uds2 := filepath.Join(ts2.dir, "v2.sock")
	ts2.ok("PUT", "/snapshot/load", `{"snapshot_path":"`+snap+`","mem_backend":{"backend_type":"File","backend_path":"`+mem+`"},"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap7"}],"vsock_override":{"uds_path":"`+uds2+`"}}`)
	if ts2.State() != "Running" {
		t.Fatalf("state after load with resume_vm: %s", ts2.State())
	}
	cfg := ts2.Config()
	if cfg.BootSource != nil || cfg.NetworkInterfaces[0].HostDevName != "tap7" || cfg.Vsock.UDSPath != uds2 || cfg.MMDSConfig.Version != "V2" {
		t.Errorf("restored config %+v", cfg)
	}
	// The data store is not in the snapshot: the new identity goes in.
	if got := ts2.ok("GET", "/mmds", ""); got != "{}" {
		t.Errorf("restored data store %s, want {}", got)
	}
	ts2.ok("PUT", "/mmds", `{"hearth":{"vm_id":"clone","token":"secret-clone"}}`)
	if token := agentToken(t, uds2); token != "secret-clone" {
		t.Errorf("restored agent read %q", token)
	}
	ts2.fails("PUT", "/boot-source", `{"kernel_image_path":"/k"}`, errPostBoot)
	ts2.noViolations()
}

func TestSnapshotLoadRules(t *testing.T) {
	ts := startServer(t, Options{})
	// Not on a process with boot resources.
	ts.ok("PUT", "/boot-source", `{"kernel_image_path":"`+ts.file("k", 1)+`"}`)
	ts.fails("PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m"}`, "not allowed after configuring boot-specific resources")
	ts.fails("PUT", "/snapshot/load", `{"snapshot_path":"/s"}`, "either `mem_backend` or `mem_file_path` is required")
	ts.fails("PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_file_path":"/m","mem_backend":{"backend_type":"File","backend_path":"/m"}}`, "too many fields")
	select {
	case <-ts.Done():
		t.Fatal("refusing a load request must not end the process")
	default:
	}

	// A load that fails ends the process.
	ts2 := startServer(t, Options{})
	ts2.ok("PUT", "/mmds", `{}`) // not a boot resource
	ts2.fails("PUT", "/snapshot/load", `{"snapshot_path":"/no/such/snap","mem_file_path":"/m"}`, "Failed to restore from snapshot")
	select {
	case <-ts2.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("a failed restore did not end the process")
	}
	if ts2.ExitCode() != 1 {
		t.Errorf("exit code %d, want 1", ts2.ExitCode())
	}
}

func TestDiffSnapshotNeedsDirtyTracking(t *testing.T) {
	ts := startServer(t, Options{})
	ts.ok("PUT", "/boot-source", `{"kernel_image_path":"`+ts.file("k", 1)+`"}`)
	ts.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	ts.ok("PATCH", "/vm", `{"state":"Paused"}`)
	ts.fails("PUT", "/snapshot/create", `{"snapshot_path":"`+filepath.Join(ts.dir, "s")+`","mem_file_path":"`+filepath.Join(ts.dir, "m")+`","snapshot_type":"Diff"}`, "dirty page tracking")
}

func TestSerialWithoutConsoleArg(t *testing.T) {
	// Without console=ttyS0 the kernel writes nothing to the serial port.
	ts := startServer(t, Options{})
	ts.ok("PUT", "/boot-source", `{"kernel_image_path":"`+ts.file("k", 1)+`","boot_args":"quiet"}`)
	ts.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if strings.Contains(ts.stdout.String(), "Linux version") {
		t.Errorf("kernel output without console=ttyS0: %s", ts.stdout.String())
	}
	ts2 := startServer(t, Options{})
	ts2.ok("PUT", "/boot-source", `{"kernel_image_path":"`+ts2.file("k", 1)+`","boot_args":"console=ttyS0"}`)
	ts2.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	if !strings.Contains(ts2.stdout.String(), "Linux version") {
		t.Errorf("no kernel output on stdout: %s", ts2.stdout.String())
	}
}

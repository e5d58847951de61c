package fctest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/test/testrun"
)

// TestMain lets the test binary stand in for the guest agent: the server
// starts AGENT -listen unix:PATH -token-source mmds -mmds-url URL.
func TestMain(m *testing.M) {
	MaybeGuestInit()
	if len(os.Args) > 2 && os.Args[1] == "-listen" {
		os.Exit(FakeAgentMain(os.Args[1:]))
	}
	os.Exit(testrun.Main(m))
}

// testServer is a Server with a client for its API socket.
type testServer struct {
	*Server
	t      *testing.T
	dir    string
	client *http.Client
	stdout *syncBuffer
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// shortTempDir is a temporary directory with a path short enough for Unix
// sockets (t.TempDir's can exceed their 108 bytes).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := testrun.TempDir("fct")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func startServer(t *testing.T, opts Options) *testServer {
	t.Helper()
	dir := shortTempDir(t)
	if opts.SocketPath == "" {
		opts.SocketPath = filepath.Join(dir, "api.sock")
	}
	out := &syncBuffer{}
	if opts.Stdout == nil {
		opts.Stdout = out
	}
	if opts.InstanceID == "" {
		opts.InstanceID = "test-vm"
	}
	s, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &testServer{Server: s, t: t, dir: dir, client: unixClient(opts.SocketPath), stdout: out}
}

func unixClient(sock string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
}

// do sends one request and checks the response against the spec.
func (ts *testServer) do(method, path, body string) (int, string) {
	ts.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		ts.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := ts.client.Do(req)
	if err != nil {
		ts.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if _, _, err := mustSpec().Match(method, path); err == nil {
		if err := ValidateResponse(method, path, resp.StatusCode, b); err != nil {
			ts.t.Errorf("the fake's response breaks the spec: %v", err)
		}
	}
	if resp.StatusCode >= 400 {
		var f struct {
			FaultMessage string `json:"fault_message"`
		}
		if err := json.Unmarshal(b, &f); err != nil || f.FaultMessage == "" {
			ts.t.Errorf("%s %s: %d without a fault_message: %s", method, path, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, string(b)
}

// ok sends a request that must succeed (204, or 200 for GET).
func (ts *testServer) ok(method, path, body string) string {
	ts.t.Helper()
	want := http.StatusNoContent
	if method == http.MethodGet {
		want = http.StatusOK
	}
	status, resp := ts.do(method, path, body)
	if status != want {
		ts.t.Fatalf("%s %s %s: %d %s, want %d", method, path, body, status, resp, want)
	}
	return resp
}

// fails sends a request that must be refused with 400 and a fault
// mentioning want.
func (ts *testServer) fails(method, path, body, want string) {
	ts.t.Helper()
	status, resp := ts.do(method, path, body)
	if status != http.StatusBadRequest || !strings.Contains(resp, want) {
		ts.t.Fatalf("%s %s %s: %d %s, want 400 mentioning %q", method, path, body, status, resp, want)
	}
}

// noViolations fails the test if any request broke the spec.
func (ts *testServer) noViolations() {
	ts.t.Helper()
	for _, r := range ts.Violations() {
		ts.t.Errorf("spec violation: %s %s %s: %s", r.Method, r.Path, r.Body, r.Violation)
	}
}

// file creates a file of size bytes in the test's directory.
func (ts *testServer) file(name string, size int64) string {
	ts.t.Helper()
	p := filepath.Join(ts.dir, name)
	f, err := os.Create(p)
	if err != nil {
		ts.t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	return p
}

// configure sets up a bootable VM with every device the driver uses.
func (ts *testServer) configure() {
	ts.t.Helper()
	kernel := ts.file("vmlinux", 1024)
	rootfs := ts.file("rootfs.ext4", 1<<20)
	ts.ok("PUT", "/logger", fmt.Sprintf(`{"log_path":%q,"level":"Info","show_level":true,"show_log_origin":false}`, filepath.Join(ts.dir, "fc.log")))
	ts.ok("PUT", "/metrics", fmt.Sprintf(`{"metrics_path":%q}`, filepath.Join(ts.dir, "metrics.json")))
	ts.ok("PUT", "/serial", fmt.Sprintf(`{"serial_out_path":%q}`, filepath.Join(ts.dir, "console.log")))
	ts.ok("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":"console=ttyS0 reboot=k panic=1"}`, kernel))
	ts.ok("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id":"rootfs","path_on_host":%q,"is_root_device":true,"is_read_only":false}`, rootfs))
	ts.ok("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:0a:58:00:05"}`)
	ts.ok("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":64,"smt":false,"track_dirty_pages":true}`)
	ts.ok("PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, filepath.Join(ts.dir, "v.sock")))
	ts.ok("PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"]}`)
	ts.ok("PUT", "/mmds", `{"hearth":{"vm_id":"test-vm","token":"secret-1"}}`)
}

// waitFor polls cond until it holds or the test times out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readLine reads one line from c with a deadline.
func readLine(t *testing.T, r *bufio.Reader, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v (got %q)", err, line)
	}
	return strings.TrimSuffix(line, "\n")
}

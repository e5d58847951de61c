package e2e

import (
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

// The daemon with vm.driver = "firecracker", run against the fake
// Firecracker (test/fakefirecracker: every API request checked against the
// v1.16 spec, answered as Firecracker does), whose guest is the real agent
// in namespaces of its own with a NIC whose frames the fake copies to and
// from the VM's TAP, as Firecracker's virtio-net does. Real Firecracker
// needs KVM; internal/vmm/firecracker runs the driver suite against it
// where it exists.

func firecrackerDaemon(t *testing.T, extraEnv ...string) *daemon {
	t.Helper()
	env := append([]string{"HEARTH_VM_DRIVER=firecracker", "HEARTH_FIRECRACKER_BINARY=" + filepath.Join(binDir, "firecracker"),
		"HEARTH_FAKEFC_AGENT=" + filepath.Join(binDir, "hearth-agent")}, extraEnv...)
	return newDaemon(t, env...)
}

// fakeFirecrackers lists the (fake) firecracker processes working in a VM
// directory under stateDir, as "PID CMDLINE".
func fakeFirecrackers(stateDir string) []string {
	out, _ := exec.Command("pgrep", "-a", "-f", "^"+filepath.Join(binDir, "firecracker")+" ").Output()
	var found []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pid, _, _ := strings.Cut(l, " ")
		if cwd, err := os.Readlink("/proc/" + pid + "/cwd"); err == nil && strings.HasPrefix(cwd, stateDir+"/") {
			found = append(found, l)
		}
	}
	return found
}

// TestFirecrackerDriverThroughTheDaemon: a VM booted by the Firecracker
// driver becomes ready only once its agent, reached over vsock with the
// token it read from MMDS, has configured the leased address; the host
// reaches it over the bridge; its kernel command line is what the driver
// sent; it survives a kill -9 of the daemon and is adopted by the next,
// which follows its Firecracker log; deleting it ends the process and
// returns every resource.
func TestFirecrackerDriverThroughTheDaemon(t *testing.T) {
	d := firecrackerDaemon(t)
	ctx := ctxT(t, 3*time.Minute)
	// A size Firecracker cannot run is refused before anything exists.
	_, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "minimal", VCPUs: 3})
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Message, "even number") {
		t.Fatalf("3 vcpus with the firecracker driver: want a 400 that says why, got %v", err)
	}
	if vms, err := d.alice.ListVMs(ctx, api.ListVMsParams{}); err != nil || len(vms) != 0 {
		t.Fatalf("a refused request left VMs: %v %v", vms, err)
	}
	v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	v, err = d.alice.WaitVM(ctx, v.ID, "ready", time.Minute)
	if err != nil {
		t.Fatalf("not ready: %v\n%s", err, tail(d.log(), 3000))
	}
	code, out := guest(t, d.alice, v.ID, "cat", "/proc/cmdline")
	if code != 0 || !strings.Contains(out, "hearth.vm="+v.ID) || !strings.Contains(out, "reboot=k") {
		t.Fatalf("guest kernel command line (%d): %q", code, out)
	}
	ip := vmIP(t, v)
	code, out = guest(t, d.alice, v.ID, "ip", "-4", "addr", "show", "eth0")
	if code != 0 || !strings.Contains(out, ip+"/") {
		t.Fatalf("the guest's eth0 does not carry its lease %s (%d): %s", ip, code, out)
	}
	// Host → VM over the bridge, through the VM's TAP and the fake's
	// frame copying: a TCP server in the guest answers the host.
	served := make(chan error, 1)
	go func() {
		// As root: the fake's guest is the host's own system, which has
		// no workspace user.
		_, err := d.alice.Exec(ctx, v.ID, api.ExecRequest{TimeoutSeconds: 30, User: "root",
			Argv: []string{"/usr/bin/busybox", "nc", "-l", "-p", "8080", "-e", "/usr/bin/busybox", "echo", "hello from " + v.ID}})
		served <- err
	}()
	var got string
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := nsDialer(d.netns)(ctx, "tcp", net.JoinHostPort(ip, "8080"))
		if err == nil {
			b, _ := io.ReadAll(c)
			c.Close()
			got = string(b)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host cannot reach %s:8080 in the guest: %v", ip, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(got, "hello from "+v.ID) {
		t.Fatalf("the guest's server answered %q", got)
	}
	if err := <-served; err != nil {
		t.Fatalf("the guest's server: %v", err)
	}
	if got := fakeFirecrackers(d.stateDir); len(got) != 1 {
		t.Fatalf("want one firecracker process, got %q", got)
	}

	// The VM outlives the daemon, and the next daemon adopts it: its
	// agent answers again over a new vsock connection.
	d.kill9()
	if got := fakeFirecrackers(d.stateDir); len(got) != 1 {
		t.Fatalf("the VM must survive the daemon: %q", got)
	}
	d.start()
	if v, err = d.alice.WaitVM(ctx, v.ID, "ready", time.Minute); err != nil {
		t.Fatalf("not ready after the restart: %v", err)
	}
	if code, out := guest(t, d.alice, v.ID, "cat", "/proc/cmdline"); code != 0 || !strings.Contains(out, "hearth.vm="+v.ID) {
		t.Fatalf("adopted guest (%d): %q", code, out)
	}
	if _, err := d.alice.DeleteVM(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.alice.WaitVM(ctx, v.ID, "destroyed", time.Minute); err != nil {
		t.Fatal(err)
	}
	// The new daemon followed the adopted VM's Firecracker log to its
	// last line.
	if l := d.log(); !strings.Contains(l, `"msg":"firecracker","vm":"`+v.ID+`"`) || !strings.Contains(l, "exit_code=0") {
		t.Errorf("the adopted VM's Firecracker log did not reach the new daemon's log up to its exit:\n%s", tail(l, 3000))
	}
	deadline = time.Now().Add(20 * time.Second)
	for len(fakeFirecrackers(d.stateDir)) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("firecracker still running after delete: %q", fakeFirecrackers(d.stateDir))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(d.stateDir, "vms", v.ID)); !os.IsNotExist(err) {
		t.Fatalf("vm directory left behind: %v", err)
	}
}

// TestFirecrackerFailuresHaveClearReasons: Firecracker refusing a request,
// and a missing firecracker binary, each fail the VM with a reason that
// says so, and leave nothing running.
func TestFirecrackerFailuresHaveClearReasons(t *testing.T) {
	cases := []struct {
		name   string
		env    []string
		reason string
	}{
		{"refused", []string{"HEARTH_FAKEFC_FAULT=PUT /boot-source=Invalid kernel image: not an ELF file"},
			"firecracker refused PUT /boot-source (400): Invalid kernel image: not an ELF file"},
		{"no binary", []string{"HEARTH_FIRECRACKER_BINARY=/nonexistent/firecracker"},
			"firecracker binary not found: /nonexistent/firecracker"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := firecrackerDaemon(t, c.env...)
			ctx := ctxT(t, 2*time.Minute)
			v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "minimal"})
			if err != nil {
				t.Fatal(err)
			}
			_, err = d.alice.WaitVM(ctx, v.ID, "ready", time.Minute)
			var ae *client.Error
			if !errors.As(err, &ae) || ae.VM == nil || ae.VM.State != "failed" {
				t.Fatalf("want the vm failed, got %v", err)
			}
			if !strings.Contains(ae.VM.FailureReason, c.reason) {
				t.Fatalf("failure reason %q, want it to contain %q", ae.VM.FailureReason, c.reason)
			}
			if got := fakeFirecrackers(d.stateDir); len(got) != 0 {
				t.Fatalf("firecracker left running: %q", got)
			}
			if _, err := d.alice.DeleteVM(ctx, v.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := d.alice.WaitVM(ctx, v.ID, "destroyed", time.Minute); err != nil {
				t.Fatal(err)
			}
		})
	}
}

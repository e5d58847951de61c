package qemu

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/workapi"
	"github.com/hearth-project/hearth/test/golden"
)

func testSpec() (vmm.Spec, vmm.Handle) {
	spec := vmm.Spec{ID: "vm-abc", Dir: "/var/lib/hearth/vms/vm-abc", VCPUs: 2, MemoryMiB: 512,
		Kernel: "/img/vmlinux", Initrd: "/img/initrd.img", Rootfs: "/img/rootfs.ext4", Token: []byte("00ff")}
	return spec, handleFor(spec.Dir)
}

func TestArgsGolden(t *testing.T) {
	for _, accel := range []string{"tcg", "kvm"} {
		t.Run(accel, func(t *testing.T) {
			d, err := New(Config{Accel: accel, TSCkHz: 2596098})
			if err != nil {
				t.Fatal(err)
			}
			spec, h := testSpec()
			golden.Check(t, "args-"+accel+".golden", strings.Join(d.Args(spec, h), "\n")+"\n")
		})
	}
}

func TestArgsNeverCarryTheToken(t *testing.T) {
	d, _ := New(Config{Accel: "tcg", TSCkHz: 1})
	spec, h := testSpec()
	spec.Token = []byte("s3cr3t-token-value")
	for _, a := range d.Args(spec, h) {
		if strings.Contains(a, "s3cr3t") {
			t.Fatalf("token on the command line: %q", a)
		}
	}
}

func TestNewAccel(t *testing.T) {
	if _, err := New(Config{Accel: "hvf"}); err == nil {
		t.Fatal("unknown accel accepted")
	}
	if _, err := New(Config{Accel: "tcg"}); err == nil {
		t.Fatal("tcg without a TSC frequency accepted")
	}
	d, err := New(Config{Accel: "auto", TSCkHz: 1, KVMProbe: func() bool { return true }})
	if err != nil || d.Capabilities().Accel != "kvm" {
		t.Fatalf("auto with kvm: %v %+v", err, d.Capabilities())
	}
	d, err = New(Config{Accel: "auto", TSCkHz: 1, KVMProbe: func() bool { return false }})
	if err != nil || d.Capabilities().Accel != "tcg" {
		t.Fatalf("auto without kvm: %v %+v", err, d.Capabilities())
	}
}

func TestVMDirOf(t *testing.T) {
	cases := []struct {
		args []string
		dir  string
		ok   bool
	}{
		{[]string{"qemu-system-x86_64", "-name", "hearth-vm-1", "-pidfile", "/state/vms/vm-1/qemu.pid"}, "vm-1", true},
		{[]string{"qemu-system-x86_64", "-name", "hearth-vm-1", "-pidfile", "/state/vms//vm-1/qemu.pid"}, "vm-1", true},
		{[]string{"qemu-system-x86_64", "-name", "hearth-vm-1", "-pidfile", "/other/vms/vm-1/qemu.pid"}, "", false},
		{[]string{"qemu-system-x86_64", "-name", "hearth-vm-1", "-pidfile", "/state/vms/qemu.pid"}, "", false},
		{[]string{"qemu-system-x86_64", "-name", "hearth-vm-1", "-pidfile", "/state/vms/vm-1/x/qemu.pid"}, "", false},
		{[]string{"qemu-system-x86_64", "-name", "hearth-vm-1", "-pidfile", "/state/vms/../vm-1/qemu.pid"}, "", false},
		{[]string{"qemu-system-x86_64", "-name", "mine", "-pidfile", "/state/vms/x/qemu.pid"}, "", false},
		{[]string{"qemu-system-x86_64", "-name", "hearth-", "-pidfile", "/state/vms/x/qemu.pid"}, "", false},
		{[]string{"qemu-system-x86_64", "-m", "1"}, "", false},
	}
	for _, c := range cases {
		dir, ok := vmDirOf(c.args, 0, "/state/vms/")
		if ok != c.ok || (ok && dir != c.dir) {
			t.Errorf("%v: got %q %v", c.args, dir, ok)
		}
	}
}

func TestHandleNamesTheDataChannel(t *testing.T) {
	spec, h := testSpec()
	if want := spec.Dir + "/data.sock"; h.DataSocket != want || h.DataVsockPort != 0 {
		t.Fatalf("data channel %q port %d; want the plain socket %s", h.DataSocket, h.DataVsockPort, want)
	}
	if h.DataSocket == h.AgentSocket {
		t.Fatal("the data channel shares the agent's socket")
	}
	d, _ := New(Config{Accel: "tcg", TSCkHz: 1})
	args := strings.Join(d.Args(spec, h), "\n")
	for _, want := range []string{
		"socket,id=data,path=" + h.DataSocket + ",server=on,wait=off",
		"virtserialport,chardev=data,name=" + workapi.PortName,
	} {
		if !strings.Contains(args, "\n"+want+"\n") {
			t.Errorf("no argument %q in\n%s", want, args)
		}
	}
}

func TestCleanupRemovesTheDataSocket(t *testing.T) {
	dir := t.TempDir()
	h := handleFor(dir)
	ln, err := net.Listen("unix", h.DataSocket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	d, _ := New(Config{Accel: "tcg", TSCkHz: 1})
	if err := d.Cleanup(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(h.DataSocket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("data socket after Cleanup: %v; want it removed", err)
	}
}

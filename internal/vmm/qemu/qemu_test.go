package qemu

import (
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/vmm"
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

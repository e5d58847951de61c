package network

import (
	"bytes"
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestQEMUAttachesToTAP checks that QEMU's -netdev tap can open a TAP that
// CreateTAP made (same type, single queue, owner root) by running a paused
// microvm in the test namespace.
func TestQEMUAttachesToTAP(t *testing.T) {
	requireRoot(t)
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 is not installed")
	}
	ns := newNetNS(t)
	nl := nlHandle(t, ns)
	h := setupHost(t, ns, Config{})
	ctx := context.Background()
	tap, err := h.CreateTAP(ctx, "vm-qemu")
	if err != nil {
		t.Fatal(err)
	}

	var stderr bytes.Buffer
	cmd := exec.Command(qemu, "-M", "microvm", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-S",
		"-netdev", "tap,id=n0,ifname="+tap+",script=no,downscript=no",
		"-device", "virtio-net-device,netdev=n0,mac="+MACFor("vm-qemu").String())
	cmd.Stderr = &stderr
	// Started from a thread in the namespace, QEMU runs there too.
	if err := inNetNS(ns, cmd.Start); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		if err := cmd.Process.Kill(); err != nil {
			t.Errorf("kill qemu: %v", err)
		}
		<-exited
	}
	t.Cleanup(stop)

	// The TAP gets carrier once a process has it open.
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("qemu exited: %v\n%s", err, stderr.String())
		default:
		}
		link, err := nl.LinkByName(tap)
		if err != nil {
			t.Fatal(err)
		}
		if link.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
			tt := link.(*netlink.Tuntap)
			t.Logf("qemu attached to %s: flags %#x, vnet_hdr %v, queues %d", tap, tt.Flags,
				tt.Flags&netlink.TUNTAP_VNET_HDR != 0, tt.Queues)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no carrier after 10s with qemu running\n%s", tap, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case err := <-exited:
		stopped = true
		t.Fatalf("qemu exited: %v\n%s", err, stderr.String())
	case <-time.After(time.Second):
	}
	stop()

	// The TAP is persistent: it outlives QEMU, still hearth's.
	if taps := must(h.TAPs(ctx))(t); taps[tap] != "vm-qemu" {
		t.Fatalf("after qemu exited, TAPs() = %v", taps)
	}
	if err := h.DeleteTAP(ctx, tap); err != nil {
		t.Fatal(err)
	}
}

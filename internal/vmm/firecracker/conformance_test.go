package firecracker

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/vmm/qemu"
	"github.com/hearth-project/hearth/internal/vmm/vmmtest"
	"github.com/hearth-project/hearth/test/testrun"
)

// TestFakeFirecrackerConformance runs the driver conformance suite against
// the fake Firecracker (every request checked against the v1.16 spec) with
// the real hearth agent as its guest, reached over the fake's vsock
// CONNECT protocol and given its token through the fake's MMDS v2. Root is
// needed: the agent runs as init of its own PID and mount namespaces, so
// its power-off cannot reach this machine.
func TestFakeFirecrackerConformance(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the fake guest's agent runs in PID and mount namespaces of its own")
	}
	needFake(t)
	t.Setenv("HEARTH_FAKEFC_AGENT", agentBin)
	vmmtest.Run(t, vmmtest.Harness{
		NewDriver: func(t *testing.T) vmm.Driver { return newFakeDriver(t, Config{}) },
		// The fake's guest is the host's own system: no workspace user.
		WorkUser:      "root",
		Spec:          func(t *testing.T, id string) vmm.Spec { s := fakeSpec(t, id); s.Token = nil; return s },
		BootTimeout:   30 * time.Second,
		ConsoleMarker: "hearth-agent",
	})
}

// TestFirecrackerConformance runs the driver conformance suite against
// real Firecracker. It needs a host with hardware KVM, and:
//
//	HEARTH_FC_KERNEL           a Firecracker guest kernel (vmlinux with virtio-mmio
//	                           command-line devices, vsock and ext4 built in)
//	HEARTH_FC_ROOTFS           a hearth image's rootfs.ext4 (hearth image build --profile minimal)
//	HEARTH_FIRECRACKER_BINARY  firecracker v1.16 (default: firecracker on PATH)
//	HEARTH_JAILER_BINARY       optional: run every VM under this jailer, as
//	                           HEARTH_JAILER_UID:HEARTH_JAILER_GID (default 65534)
//
// Each VM gets a TAP of its own in this network namespace, with no address
// and nothing routed to it.
func TestFirecrackerConformance(t *testing.T) {
	kernel, rootfs := os.Getenv("HEARTH_FC_KERNEL"), os.Getenv("HEARTH_FC_ROOTFS")
	bin := os.Getenv("HEARTH_FIRECRACKER_BINARY")
	if bin == "" {
		bin = "firecracker"
	}
	path, lookErr := exec.LookPath(bin)
	switch {
	case os.Geteuid() != 0:
		t.Skip("real Firecracker: needs root (TAP devices, /dev/kvm)")
	case !qemu.KVMUsable():
		t.Skip("real Firecracker: this host has no hardware-backed /dev/kvm; the fake's run (TestFakeFirecrackerConformance) stands in here — see the README to run this on a KVM host")
	case lookErr != nil:
		t.Skipf("real Firecracker: no firecracker binary (%v); set HEARTH_FIRECRACKER_BINARY", lookErr)
	case kernel == "" || rootfs == "":
		t.Skip("real Firecracker: set HEARTH_FC_KERNEL (a Firecracker guest vmlinux) and HEARTH_FC_ROOTFS (a hearth image's rootfs.ext4)")
	}
	cfg := Config{Binary: path, Clone: "auto", ProbeDir: os.TempDir()}
	if j := os.Getenv("HEARTH_JAILER_BINARY"); j != "" {
		cfg.Jailer = JailerConfig{Binary: j, UID: envInt(t, "HEARTH_JAILER_UID", 65534), GID: envInt(t, "HEARTH_JAILER_GID", 65534)}
	}
	vmmtest.Run(t, vmmtest.Harness{
		NewDriver: func(t *testing.T) vmm.Driver {
			d, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		Spec: func(t *testing.T, id string) vmm.Spec {
			dir, err := testrun.TempDir("fc")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(dir) })
			return vmm.Spec{Dir: filepath.Join(dir, id), VCPUs: 1, MemoryMiB: 256, Kernel: kernel, Rootfs: rootfs,
				NICs: []vmm.NIC{{TAP: newTAP(t, cfg.Jailer.UID), MAC: "02:48:00:00:00:05"}}}
		},
		BootTimeout:   30 * time.Second,
		ConsoleMarker: "hearth-agent",
	})
}

func envInt(t *testing.T, key string, def int) int {
	t.Helper()
	v := os.Getenv(key)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", key, v, err)
	}
	return n
}

// newTAP makes a TAP device for one VM, owned by uid (a jailed Firecracker
// opens it as that user), removed when the test ends.
func newTAP(t *testing.T, uid int) string {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "hfct" + hex.EncodeToString(b)
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP,
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR, Owner: uint32(uid), Group: ^uint32(0)}
	if uid == 0 {
		tap.Owner = ^uint32(0)
	}
	if err := netlink.LinkAdd(tap); err != nil {
		t.Fatalf("create tap %s: %v", name, err)
	}
	t.Cleanup(func() { _ = netlink.LinkDel(tap) })
	if err := netlink.LinkSetUp(tap); err != nil {
		t.Fatalf("tap %s up: %v", name, err)
	}
	return name
}

// TestFakeFirecrackerJailedConformance runs the suite with every VM under
// the jailer (the fake's jailer mode, which chroots, joins, limits and drops
// privileges as the real one does), as an unprivileged uid/gid.
func TestFakeFirecrackerJailedConformance(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the jailer chroots and drops privileges")
	}
	needFake(t)
	jailer := filepath.Join(filepath.Dir(fakeFC), "jailer")
	if err := os.Symlink(fakeFC, jailer); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	t.Setenv("HEARTH_FAKEFC_AGENT", agentBin)
	cfg := Config{Jailer: JailerConfig{Binary: jailer, UID: 65534, GID: 65534}}
	vmmtest.Run(t, vmmtest.Harness{
		NewDriver: func(t *testing.T) vmm.Driver { return newFakeDriver(t, cfg) },
		Spec: func(t *testing.T, id string) vmm.Spec {
			s := fakeSpec(t, id)
			s.Token = nil
			return s
		},
		BootTimeout:   30 * time.Second,
		ConsoleMarker: "hearth-agent",
		Skip: map[string]string{
			"guest_poweroff_ends_process": "the fake's guest agent runs as the jail's unprivileged user, " +
				"which cannot reboot; a real guest's agent is root in its own kernel (the unjailed run covers this)",
			"guest_cmdline": "the fake's guest agent runs in the jail, which has no /proc and no cat " +
				"(the unjailed run reads the command line the driver sent)",
			"console": "the fake's jailed guest has no /dev/ttyS0 to write (the jail has no /dev); " +
				"the unjailed run has the guest write its console",
			"process": "the fake's jailed guest is the jail, with no accounts and no shell " +
				"(the unjailed run starts a process through the data channel)",
			"file": "as process: the jail has no accounts to act as (the unjailed run writes and reads a file)",
		},
	})
}

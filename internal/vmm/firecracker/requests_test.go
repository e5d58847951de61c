package firecracker

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hearth-project/hearth/internal/agentapi"
	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/workapi"
	"github.com/hearth-project/hearth/test/golden"
)

// goldenSpec is a VM as the manager describes it.
func goldenSpec() vmm.Spec {
	return vmm.Spec{ID: "vm-abc", Dir: "/var/lib/hearth/vms/vm-abc", VCPUs: 2, MemoryMiB: 1024,
		Kernel: "/var/lib/hearth/images/minimal/vmlinux", Initrd: "/var/lib/hearth/images/minimal/initrd.img",
		Rootfs: "/var/lib/hearth/images/minimal/rootfs.ext4", Token: []byte("00112233445566778899aabbccddeeff"),
		NICs: []vmm.NIC{{TAP: "hth-abc", MAC: "02:48:00:00:00:05", Address: "10.88.0.5/24", Gateway: "10.88.0.1", DNS: []string{"10.88.0.1"}}}}
}

// render writes requests one per block: "METHOD PATH" then the body as
// indented JSON.
func render(t *testing.T, reqs []Request) string {
	t.Helper()
	var b strings.Builder
	for _, r := range reqs {
		body, err := json.MarshalIndent(r.Body, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(r.Method + " " + r.Path + "\n" + string(body) + "\n\n")
	}
	return b.String()
}

func newTestDriver(t *testing.T, cfg Config) *Driver {
	t.Helper()
	if cfg.Clone == "" {
		cfg.Clone = CloneSparse
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestStartRequestsGolden(t *testing.T) {
	d := newTestDriver(t, Config{Binary: "/usr/local/bin/firecracker"})
	golden.Check(t, "start.golden", render(t, d.Requests(goldenSpec())))
}

func TestStartRequestsJailedGolden(t *testing.T) {
	d := newTestDriver(t, Config{Binary: "/usr/local/bin/firecracker",
		Jailer: JailerConfig{Binary: "/usr/local/bin/jailer", UID: 990, GID: 990, NetNS: "/var/run/netns/hearth"}})
	spec := goldenSpec()
	golden.Check(t, "start-jailed.golden", render(t, d.Requests(spec)))
	golden.Check(t, "jailer-argv.golden", strings.Join(d.argv(spec), "\n")+"\n")
}

func TestRestoreRequestsGolden(t *testing.T) {
	d := newTestDriver(t, Config{Binary: "/usr/local/bin/firecracker"})
	spec := goldenSpec()
	spec.ID, spec.Token = "vm-restored", []byte("ffeeddccbbaa99887766554433221100")
	spec.NICs[0].TAP, spec.NICs[0].Address = "hth-def", "10.88.0.9/24"
	golden.Check(t, "restore.golden", render(t, d.RestoreRequests(spec)))
	golden.Check(t, "snapshot-create.golden", render(t, []Request{{"PUT", "/snapshot/create", d.snapshotCreate()}}))
}

func TestArgvNeverCarriesTheToken(t *testing.T) {
	for _, j := range []JailerConfig{{}, {Binary: "/usr/local/bin/jailer", UID: 990, GID: 990}} {
		d := newTestDriver(t, Config{Binary: "/usr/local/bin/firecracker", Jailer: j})
		spec := goldenSpec()
		for _, a := range d.argv(spec) {
			if strings.Contains(a, string(spec.Token)) {
				t.Fatalf("token on the command line: %q", a)
			}
		}
	}
}

func TestSpecChecks(t *testing.T) {
	d := newTestDriver(t, Config{})
	bad := map[string]func(*vmm.Spec){
		"vcpus 3":      func(s *vmm.Spec) { s.VCPUs = 3 },
		"vcpus 0":      func(s *vmm.Spec) { s.VCPUs = 0 },
		"vcpus 34":     func(s *vmm.Spec) { s.VCPUs = 34 },
		"no nic":       func(s *vmm.Spec) { s.NICs = nil },
		"id with /":    func(s *vmm.Spec) { s.ID = "vm/../x" },
		"no kernel":    func(s *vmm.Spec) { s.Kernel = "" },
		"memory 0 MiB": func(s *vmm.Spec) { s.MemoryMiB = 0 },
	}
	for name, mutate := range bad {
		spec := goldenSpec()
		spec.Dir = filepath.Join(t.TempDir(), "vm")
		mutate(&spec)
		if _, err := d.Prepare(t.Context(), spec); err == nil {
			t.Errorf("%s: prepared", name)
		}
		if _, err := os.Stat(spec.Dir); !os.IsNotExist(err) {
			t.Errorf("%s: a refused spec left %s behind", name, spec.Dir)
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"clone":            {Clone: "copy"},
		"auto without dir": {Clone: "auto"},
		"jailer as root":   {Clone: CloneSparse, Jailer: JailerConfig{Binary: "jailer"}},
		"relative netns":   {Clone: CloneSparse, Jailer: JailerConfig{Binary: "jailer", UID: 1, GID: 1, NetNS: "hearth"}},
		"tiny kept log":    {Clone: CloneSparse, LogMaxSize: 4 << 10},
		"negative rate":    {Clone: CloneSparse, LogRate: -1},
		"negative burst":   {Clone: CloneSparse, LogBurst: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestConfiguredKernelReplacesTheImages: a Firecracker guest kernel from the
// configuration boots the VM, without the image's initrd unless one is
// configured with it.
func TestConfiguredKernelReplacesTheImages(t *testing.T) {
	d := newTestDriver(t, Config{Binary: "/usr/local/bin/firecracker", Kernel: "/opt/fc/vmlinux"})
	var boot BootSource
	for _, r := range d.Requests(goldenSpec()) {
		if r.Path == "/boot-source" {
			boot = r.Body.(BootSource)
		}
	}
	if boot.KernelImagePath != "/opt/fc/vmlinux" || boot.InitrdPath != "" {
		t.Fatalf("boot source %+v", boot)
	}
}

// TestHandleNamesTheDataChannel: the data channel is the agent's vsock
// device on the work API's port, reached through the VM's directory as the
// agent's is, jailed or not.
func TestHandleNamesTheDataChannel(t *testing.T) {
	for name, j := range map[string]JailerConfig{"plain": {}, "jailed": {Binary: "/usr/local/bin/jailer", UID: 990, GID: 990}} {
		t.Run(name, func(t *testing.T) {
			d := newTestDriver(t, Config{Binary: "/usr/local/bin/firecracker", Jailer: j})
			spec := goldenSpec()
			h := d.handleFor(spec)
			want := filepath.Join(spec.Dir, fileVsock)
			if h.DataSocket != want || h.AgentSocket != want {
				t.Fatalf("data socket %q, agent socket %q; want both %q", h.DataSocket, h.AgentSocket, want)
			}
			if h.DataVsockPort != workapi.VsockPort || h.AgentVsockPort != agentapi.VsockPort || h.DataVsockPort == h.AgentVsockPort {
				t.Fatalf("data port %d, agent port %d; want %d and %d", h.DataVsockPort, h.AgentVsockPort, workapi.VsockPort, agentapi.VsockPort)
			}
		})
	}
}

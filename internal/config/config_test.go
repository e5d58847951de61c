package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultIsValid(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults must validate: %v", err)
	}
	if !strings.HasPrefix(c.Listen, "127.0.0.1:") {
		t.Fatalf("default listen %q is not loopback", c.Listen)
	}
}

func TestValidateNamesTheField(t *testing.T) {
	cases := []struct {
		field string
		mut   func(*Config)
	}{
		{"state_dir", func(c *Config) { c.StateDir = "relative" }},
		{"listen", func(c *Config) { c.Listen = "nope" }},
		{"listen", func(c *Config) { c.Listen = "127.0.0.1:99999" }},
		{"log_level", func(c *Config) { c.LogLevel = "loud" }},
		{"login.page_check", func(c *Config) { c.Login.PageCheck = "127.0.0.1:abc" }},
		{"login.page_check", func(c *Config) { c.Login.PageCheck = "10.0.0.1:9222" }},
		{"vm.driver", func(c *Config) { c.VM.Driver = "vbox" }},
		{"vm.max_vcpus", func(c *Config) { c.VM.MaxVCPUs = 0 }},
		{"vm.default_vcpus", func(c *Config) { c.VM.DefaultVCPUs = 9 }},
		{"vm.min_memory_mib", func(c *Config) { c.VM.MinMemoryMiB = 1 }},
		{"vm.max_memory_mib", func(c *Config) { c.VM.MaxMemoryMiB = 10 }},
		{"vm.default_memory_mib", func(c *Config) { c.VM.DefaultMemoryMiB = 1 << 30 }},
		{"vm.boot_timeout", func(c *Config) { c.VM.BootTimeout.Duration = 0 }},
		{"vm.boot_timeout", func(c *Config) { c.VM.BootTimeout.Duration = time.Hour }},
		{"vm.heartbeat_timeout", func(c *Config) { c.VM.HeartbeatTimeout.Duration = time.Second }},
		{"vm.roles", func(c *Config) { c.VM.Roles = map[string][]int{"Bad Role": nil} }},
		{"vm.roles.browser", func(c *Config) { c.VM.Roles["browser"] = []int{70000} }},
		{"qemu.accel", func(c *Config) { c.QEMU.Accel = "hvf" }},
		{"qemu.binary", func(c *Config) { c.QEMU.Binary = "" }},
		{"firecracker.disk_cloning", func(c *Config) { c.Firecracker.DiskCloning = "copy" }},
		{"firecracker.initrd", func(c *Config) { c.Firecracker.Initrd = "/boot/initrd.img" }},
		{"firecracker.socket_timeout", func(c *Config) { c.Firecracker.SocketTimeout.Duration = 0 }},
		{"firecracker.log_max_size", func(c *Config) { c.Firecracker.LogMaxSize = 16 << 10 }},
		{"firecracker.log_rate", func(c *Config) { c.Firecracker.LogRate = 0 }},
		{"firecracker.log_burst", func(c *Config) { c.Firecracker.LogBurst = 0 }},
		{"firecracker.jailer", func(c *Config) { c.Firecracker.Jailer = JailerConfig{Binary: "jailer"} }},
		{"firecracker.jailer.netns", func(c *Config) {
			c.Firecracker.Jailer = JailerConfig{Binary: "jailer", UID: 990, GID: 990, NetNS: "hearth"}
		}},
		{"firecracker.jailer.memory_overhead_mib", func(c *Config) {
			c.Firecracker.Jailer = JailerConfig{Binary: "jailer", UID: 990, GID: 990, MemoryOverheadMiB: -1}
		}},
		{"network.subnet", func(c *Config) { c.Network.Subnet = "172.30.0.0/31" }},
		{"network.subnet", func(c *Config) { c.Network.Subnet = "172.30.0.5/24" }},
		{"network.subnet", func(c *Config) { c.Network.Subnet = "fd00::/64" }},
		{"network.bridge", func(c *Config) { c.Network.Bridge = "a-very-long-bridge-name" }},
		{"network.tap_prefix", func(c *Config) { c.Network.TAPPrefix = "TAP" }},
		{"network.dns", func(c *Config) { c.Network.DNS = []string{"resolver"} }},
		{"network.default_egress", func(c *Config) { c.Network.DefaultEgress = "some" }},
		{"network.default_allow", func(c *Config) { c.Network.DefaultEgress = "allowlist" }},
		{"network.default_allow", func(c *Config) { c.Network.DefaultAllow = []AllowRule{{CIDR: "203.0.113.0/24"}} }},
		{"network.default_allow[1].cidr", func(c *Config) {
			c.Network.DefaultEgress = "allowlist"
			c.Network.DefaultAllow = []AllowRule{{CIDR: "203.0.113.0/24"}, {CIDR: "203.0.113.1/24"}}
		}},
		{"network.default_allow[0].protocol", func(c *Config) {
			c.Network.DefaultEgress = "allowlist"
			c.Network.DefaultAllow = []AllowRule{{CIDR: "203.0.113.0/24", Protocol: "icmp"}}
		}},
		{"network.default_allow[0].port", func(c *Config) {
			c.Network.DefaultEgress = "allowlist"
			c.Network.DefaultAllow = []AllowRule{{CIDR: "203.0.113.0/24", Port: 443}}
		}},
		{"network.deny[1]", func(c *Config) { c.Network.Deny = []string{"203.0.113.0/24", "fd00::/8"} }},
		{"network.allow_private[0]", func(c *Config) { c.Network.AllowPrivate = []string{"ten.twenty"} }},
		{"network.allow_private[0]", func(c *Config) { c.Network.AllowPrivate = []string{"10.20.0.0/8"} }},
		{"network.host_ports", func(c *Config) { c.Network.HostPorts = []string{"sctp/9"} }},
		{"viewer.public_url", func(c *Config) { c.Viewer.PublicURL = "hearth.example.com" }},
		{"viewer.public_url", func(c *Config) { c.Viewer.PublicURL = "https://hearth.example.com/?a=b" }},
		{"viewer.token_ttl", func(c *Config) { c.Viewer.TokenTTL.Duration = 0 }},
		{"viewer.max_token_ttl", func(c *Config) { c.Viewer.MaxTokenTTL.Duration = time.Minute }},
		{"viewer.ping_interval", func(c *Config) { c.Viewer.PingInterval.Duration = 0 }},
		{"viewer.idle_timeout", func(c *Config) { c.Viewer.IdleTimeout.Duration = -time.Second }},
		{"viewer.max_lifetime", func(c *Config) { c.Viewer.MaxLifetime.Duration = -time.Second }},
		{"viewer.vnc_port", func(c *Config) { c.Viewer.VNCPort = 0 }},
		{"viewer.socket_token_ttl", func(c *Config) { c.Viewer.SocketTokenTTL.Duration = time.Hour }},
		{"viewer.socket_token_ttl", func(c *Config) { c.Viewer.SocketTokenTTL.Duration = 0 }},
		{"terminal.linger", func(c *Config) { c.Terminal.Linger.Duration = 0 }},
		{"terminal.kill_grace", func(c *Config) { c.Terminal.KillGrace.Duration = time.Hour }},
		{"terminal.token_ttl", func(c *Config) { c.Terminal.TokenTTL.Duration = time.Second }},
		{"terminal.control_rate", func(c *Config) { c.Terminal.ControlRate = 0 }},
		{"terminal.write_timeout", func(c *Config) { c.Terminal.WriteTimeout.Duration = 0 }},
		{"viewer.max_viewers_per_vm", func(c *Config) { c.Viewer.MaxViewersPerVM = 0 }},
		{"viewer.max_viewers_per_link", func(c *Config) { c.Viewer.MaxViewersPerLink = 0 }},
		{"viewer.max_viewers_per_link", func(c *Config) { c.Viewer.MaxViewersPerLink = 9 }},
		{"viewer.ticket_rate_per_link", func(c *Config) { c.Viewer.TicketRatePerLink = 0 }},
		{"viewer.ticket_rate_per_client", func(c *Config) { c.Viewer.TicketRatePerClient = -1 }},
		{"login.browser_image", func(c *Config) { c.Login.BrowserImage = "" }},
		{"login.vcpus", func(c *Config) { c.Login.VCPUs = 99 }},
		{"login.memory_mib", func(c *Config) { c.Login.MemoryMiB = 1 }},
		{"login.timeout", func(c *Config) { c.Login.Timeout.Duration = time.Second }},
		{"login.guest_user", func(c *Config) { c.Login.GuestUser = "" }},
		{"login.workspace_role", func(c *Config) { c.Login.WorkspaceRole = "nope" }},
		{"login.browser", func(c *Config) { c.Login.Browser = []string{"hearth-browser"} }},
		{"login.providers_dir", func(c *Config) { c.Login.ProvidersDir = "relative/dir" }},
		{"vault.key_file", func(c *Config) { c.Vault.KeyFile = "" }},
		{"state_dir_min_free", func(c *Config) { c.StateDirMinFree = -1 }},
		{"console.max_size", func(c *Config) { c.Console.MaxSize = c.Console.HeadSize }},
		{"console.head_size", func(c *Config) { c.Console.HeadSize = -1 }},
		{"console.rate", func(c *Config) { c.Console.Rate = 10 }},
		{"console.burst", func(c *Config) { c.Console.Burst = 0 }},
		{"viewer.frame_ancestors", func(c *Config) { c.Viewer.FrameAncestors = []string{"'self'; script-src *"} }},
		{"agent.max_messages_per_second", func(c *Config) { c.Agent.MessagesPerSecond = 0 }},
		{"agent.message_burst", func(c *Config) { c.Agent.MessageBurst = 100 }},
		{"agent.max_bytes_per_second", func(c *Config) { c.Agent.BytesPerSecond = -1 }},
		{"agent.byte_burst", func(c *Config) { c.Agent.ByteBurst = 4096 }},
		{"agent.line_timeout", func(c *Config) { c.Agent.LineTimeout.Duration = time.Millisecond }},
		{"agent.max_violations", func(c *Config) { c.Agent.MaxViolations = 0 }},
		{"agent.violation_window", func(c *Config) { c.Agent.ViolationWindow.Duration = 0 }},
	}
	for _, tc := range cases {
		t.Run(tc.field, func(t *testing.T) {
			c := Default()
			c.VM.Roles = map[string][]int{"minimal": {}, "browser": {5900}}
			tc.mut(&c)
			err := c.Validate()
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("want a FieldError, got %v", err)
			}
			if !strings.Contains(err.Error(), tc.field+": ") {
				t.Fatalf("error %q does not name %s", err, tc.field)
			}
		})
	}
}

func TestValidateReportsAllProblems(t *testing.T) {
	c := Default()
	c.Listen = "x"
	c.QEMU.Accel = "y"
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "listen") || !strings.Contains(err.Error(), "qemu.accel") {
		t.Fatalf("want both problems, got %v", err)
	}
}

func TestLoadFileThenEnv(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hearth.toml")
	body := `
state_dir = "/srv/hearth"
listen = "127.0.0.1:9000"

[vm]
boot_timeout = "45s"
max_vcpus = 2
default_vcpus = 2

[vm.roles]
minimal = []
browser = [5900, 5901]

[qemu]
accel = "tcg"
`
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path, []string{"HEARTH_LISTEN=127.0.0.1:9100", "HEARTH_BOOT_TIMEOUT=30s", "HEARTH_SHUTDOWN_STOP_VMS=true", "PATH=/bin"})
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/srv/hearth" || c.Listen != "127.0.0.1:9100" || c.VM.BootTimeout.Duration != 30*time.Second ||
		c.VM.MaxVCPUs != 2 || c.QEMU.Accel != "tcg" || !c.Shutdown.StopVMs || len(c.VM.Roles["browser"]) != 2 {
		t.Fatalf("unexpected config: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.DatabasePath(); got != "/srv/hearth/hearth.db" {
		t.Fatalf("database path %q", got)
	}
}

func TestLoadRejectsUnknownKeysAndBadEnv(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hearth.toml")
	if err := os.WriteFile(path, []byte("listne = \"x\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, nil); err == nil || !strings.Contains(err.Error(), "listne") {
		t.Fatalf("want unknown key error naming listne, got %v", err)
	}
	if _, err := Load("", []string{"HEARTH_BOOT_TIMEOUT=soon"}); err == nil || !strings.Contains(err.Error(), "HEARTH_BOOT_TIMEOUT") {
		t.Fatalf("want env error naming the variable, got %v", err)
	}
	if _, err := Load(filepath.Join(dir, "missing.toml"), nil); err == nil {
		t.Fatal("missing file must be an error")
	}
}

// An operator's egress section: an allow-list default, denies and private
// exceptions, addresses taken as /32.
func TestLoadEgressSection(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hearth.toml")
	file := `[network]
default_egress = "allowlist"
default_allow = [{cidr = "203.0.113.0/24", protocol = "tcp", port = 443}, {cidr = "198.51.100.7"}]
deny = ["203.0.113.128/25"]
allow_private = ["10.20.0.0/16", "192.168.1.10"]
`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := c.Network
	want := []AllowRule{{CIDR: "203.0.113.0/24", Protocol: "tcp", Port: 443}, {CIDR: "198.51.100.7"}}
	if n.DefaultEgress != "allowlist" || !reflect.DeepEqual(n.DefaultAllow, want) ||
		!reflect.DeepEqual(n.Deny, []string{"203.0.113.128/25"}) || !reflect.DeepEqual(n.AllowPrivate, []string{"10.20.0.0/16", "192.168.1.10"}) {
		t.Fatalf("network = %+v", n)
	}
	if p, err := ParseCIDR("192.168.1.10"); err != nil || p.String() != "192.168.1.10/32" {
		t.Fatalf("ParseCIDR(address) = %v, %v", p, err)
	}
}

// The documented example must load and equal the defaults, so the docs
// cannot drift from the code.
func TestExampleFileIsTheDefaults(t *testing.T) {
	c, err := Load("../../docs/hearth.example.toml", nil)
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	if !reflect.DeepEqual(c, d) {
		t.Fatalf("docs/hearth.example.toml differs from Default():\n%+v\n%+v", c, d)
	}
}

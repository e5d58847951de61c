// Package config holds hearth's typed configuration: defaults that work on a
// fresh machine, a TOML file, HEARTH_* environment overrides and command-line
// flags, applied in that order, and a Validate whose errors name the field.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/hearth-project/hearth/internal/agentapi"
)

// Duration is a time.Duration that reads and writes as "90s" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText formats the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Config is the whole daemon configuration.
type Config struct {
	// StateDir holds the database, per-VM directories and sockets.
	StateDir string `toml:"state_dir"`
	// Listen is the API address. Loopback by default.
	Listen string `toml:"listen"`
	// Database is the SQLite file; relative paths are under StateDir.
	Database string `toml:"database"`
	// ImageDir holds built images; CacheDir holds downloads and build caches.
	ImageDir string `toml:"image_dir"`
	CacheDir string `toml:"cache_dir"`
	// LogLevel is one of debug, info, warn, error.
	LogLevel string `toml:"log_level"`
	// StateDirMinFree is the free space below which the state dir's file
	// system counts as full: /readyz answers 503, new VMs are refused
	// (503) and doctor warns, while what is running goes on. 0 disables.
	StateDirMinFree Size `toml:"state_dir_min_free"`

	API         APIConfig         `toml:"api"`
	VM          VMConfig          `toml:"vm"`
	Agent       AgentConfig       `toml:"agent"`
	QEMU        QEMUConfig        `toml:"qemu"`
	Firecracker FirecrackerConfig `toml:"firecracker"`
	Network     NetworkConfig     `toml:"network"`
	Viewer      ViewerConfig      `toml:"viewer"`
	Terminal    TerminalConfig    `toml:"terminal"`
	Login       LoginConfig       `toml:"login"`
	Vault       VaultConfig       `toml:"vault"`
	Shutdown    ShutdownConfig    `toml:"shutdown"`
	Console     ConsoleConfig     `toml:"console"`
	Events      EventsConfig      `toml:"events"`
}

// LoginConfig configures provider logins (a CLI's OAuth sign-in run in a
// browser VM).
type LoginConfig struct {
	// BrowserImage boots the login's browser VM; it must hold the
	// providers' CLIs (profile browser does).
	BrowserImage string `toml:"browser_image"`
	VCPUs        int    `toml:"vcpus"`
	MemoryMiB    int    `toml:"memory_mib"`
	// Timeout bounds a whole login; past it the login is expired.
	Timeout Duration `toml:"timeout"`
	// GuestUser runs the CLI in the browser VM; WorkspaceUser owns the
	// credentials installed into workspace VMs (role WorkspaceRole).
	GuestUser     string `toml:"guest_user"`
	WorkspaceUser string `toml:"workspace_user"`
	WorkspaceRole string `toml:"workspace_role"`
	// Browser opens a URL on the browser VM's screen.
	Browser []string `toml:"browser"`
	// SetupTimeout bounds bringing the sign-in page up on the browser
	// VM's screen; the provider's timeout (the user's time) starts after.
	SetupTimeout Duration `toml:"setup_timeout"`
	// PageCheck is the guest browser's DevTools endpoint on the guest's
	// loopback, through which the agent sees the sign-in page on screen
	// ("" = the page counts as shown once the browser command ran).
	PageCheck string `toml:"page_check"`
	// ProvidersDir holds extra provider definitions (*.yaml, the format of
	// providers/ in the source); "" = only the built-in ones.
	ProvidersDir string `toml:"providers_dir"`
	// CreateBurst logins a user may start at once, then one more every
	// CreateEvery (a token bucket per user); beyond it, a 429.
	CreateBurst int      `toml:"create_burst"`
	CreateEvery Duration `toml:"create_every"`
}

// VaultConfig says where the credential vault's master keys are.
type VaultConfig struct {
	// KeyFile holds the master keys (0600; made on first start if
	// missing); relative paths are under StateDir. HEARTH_VAULT_KEY
	// (base64 of 32 bytes) replaces it; both at once is an error.
	KeyFile string `toml:"key_file"`
}

// ViewerConfig configures browser viewers (noVNC through hearth's
// WebSocket↔VNC bridge).
type ViewerConfig struct {
	// PublicURL is the base URL browsers reach hearth at (e.g.
	// "https://hearth.example.com/prefix"); viewer links are built on it.
	// Empty: built from each request (see TrustForwardedHeaders).
	PublicURL string `toml:"public_url"`
	// TrustForwardedHeaders derives scheme, host and path prefix from
	// X-Forwarded-Proto/-Host/-Prefix (or Forwarded) when PublicURL is
	// empty. Only for a reverse proxy that sets them; off by default.
	TrustForwardedHeaders bool `toml:"trust_forwarded_headers"`
	// TokenTTL is a viewer link's default lifetime; MaxTokenTTL the most
	// a request may ask for. A viewer closes when its link expires.
	TokenTTL    Duration `toml:"token_ttl"`
	MaxTokenTTL Duration `toml:"max_token_ttl"`
	// PingInterval is the server's WebSocket ping period (keepalive).
	PingInterval Duration `toml:"ping_interval"`
	// IdleTimeout closes a viewer without traffic either way for this
	// long; MaxLifetime bounds any one connection. "0s" disables either.
	IdleTimeout Duration `toml:"idle_timeout"`
	MaxLifetime Duration `toml:"max_lifetime"`
	// VNCPort is the guest port viewers connect to. Only VMs whose role
	// waits for this port (vm.roles) can be viewed.
	VNCPort int `toml:"vnc_port"`
	// FrameAncestors are the origins allowed to embed the viewer page in
	// a frame (CSP frame-ancestors, e.g. "https://app.example.com" or
	// "'self'"); none by default.
	FrameAncestors []string `toml:"frame_ancestors"`
	// SocketTokenTTL is how long a socket token (one WebSocket, once) may
	// wait to be used: seconds, whatever the link's lifetime.
	SocketTokenTTL Duration `toml:"socket_token_ttl"`
	// MaxViewersPerLink and MaxViewersPerVM cap the viewers open at once
	// through one link and on one VM; beyond them a viewer is refused.
	MaxViewersPerLink int `toml:"max_viewers_per_link"`
	MaxViewersPerVM   int `toml:"max_viewers_per_vm"`
	// TicketRatePerLink and TicketRatePerClient bound ticket exchanges
	// (the page buying a socket token): per minute, in bursts of as many,
	// for one link and for one client address (IPv6: its /64).
	TicketRatePerLink   int `toml:"ticket_rate_per_link"`
	TicketRatePerClient int `toml:"ticket_rate_per_client"`
}

// TerminalConfig configures terminal sessions (a VM's login shell in a
// browser through hearth's WebSocket bridge) and process attaches. Their
// links follow the viewer's rules (viewer.public_url, ping_interval,
// socket_token_ttl, caps and ticket rates).
type TerminalConfig struct {
	// Linger is how long a session's shell keeps running after its last
	// socket closed; then it is hung up (SIGHUP), and killed KillGrace
	// later if it still runs.
	Linger    Duration `toml:"linger"`
	KillGrace Duration `toml:"kill_grace"`
	// TokenTTL is a terminal link's lifetime: the page reconnects until
	// then, and its socket closes then.
	TokenTTL Duration `toml:"token_ttl"`
	// ControlRate is the control messages (resize, signal, eof) a socket
	// may send a second, in bursts of twice as many.
	ControlRate int `toml:"control_rate"`
	// WriteTimeout drops a client that does not take one message of
	// output within it.
	WriteTimeout Duration `toml:"write_timeout"`
}

func (t TerminalConfig) validate(bad func(field, format string, args ...any)) {
	if t.Linger.Duration < time.Second {
		bad("terminal.linger", "must be at least 1s, got %s", t.Linger.Duration)
	}
	if t.KillGrace.Duration < time.Second || t.KillGrace.Duration > 10*time.Minute {
		bad("terminal.kill_grace", "must be 1s-10m, got %s", t.KillGrace.Duration)
	}
	if t.TokenTTL.Duration < time.Minute {
		bad("terminal.token_ttl", "must be at least 1m, got %s", t.TokenTTL.Duration)
	}
	if t.ControlRate < 1 || t.ControlRate > 1000 {
		bad("terminal.control_rate", "must be 1-1000 a second, got %d", t.ControlRate)
	}
	if t.WriteTimeout.Duration < time.Second {
		bad("terminal.write_timeout", "must be at least 1s, got %s", t.WriteTimeout.Duration)
	}
}

// NetworkConfig configures VM networking on the host.
type NetworkConfig struct {
	// Enabled gives every VM a NIC on the bridge. Off, VMs have no network.
	Enabled bool `toml:"enabled"`
	// Bridge is the host bridge; it takes the subnet's first address, which
	// is the guests' gateway.
	Bridge string `toml:"bridge"`
	Subnet string `toml:"subnet"`
	// TAPPrefix starts every TAP name hearth creates (and owns).
	TAPPrefix string `toml:"tap_prefix"`
	// DNS servers handed to guests; empty copies the host's non-loopback
	// nameservers from /etc/resolv.conf.
	DNS []string `toml:"dns"`
	// DefaultEgress is the policy of VMs that ask for none, and the most
	// a user key may ask for (admin keys may ask for more): open, none or
	// allowlist (the rules in DefaultAllow).
	DefaultEgress string `toml:"default_egress"`
	// DefaultAllow are the allow-list's rules when DefaultEgress is
	// "allowlist"; a user key may ask for any subset of them.
	DefaultAllow []AllowRule `toml:"default_allow"`
	// HostPorts are the host services VMs may reach on the bridge address,
	// as "tcp/PORT" or "udp/PORT". None by default.
	HostPorts []string `toml:"host_ports"`
	// Deny are IPv4 destinations (CIDRs or addresses) no VM reaches,
	// whatever its policy and AllowPrivate.
	Deny []string `toml:"deny"`
	// AllowPrivate are destinations no VM reaches otherwise (private
	// ranges, carrier-grade NAT, the host's own subnets) that VMs may
	// reach as their policy says. Never link-local or metadata addresses.
	AllowPrivate []string `toml:"allow_private"`
}

// AllowRule is one rule of an egress allow-list.
type AllowRule struct {
	CIDR     string `toml:"cidr"`     // IPv4 CIDR or address
	Protocol string `toml:"protocol"` // "" (any), "tcp" or "udp"
	Port     int    `toml:"port"`     // 0 = any; needs a protocol
}

// VMConfig bounds what callers may ask for and how long a boot may take.
type VMConfig struct {
	Driver           string   `toml:"driver"` // "qemu" or "firecracker"
	DefaultVCPUs     int      `toml:"default_vcpus"`
	DefaultMemoryMiB int      `toml:"default_memory_mib"`
	MaxVCPUs         int      `toml:"max_vcpus"`
	MinMemoryMiB     int      `toml:"min_memory_mib"`
	MaxMemoryMiB     int      `toml:"max_memory_mib"`
	BootTimeout      Duration `toml:"boot_timeout"`
	MaxBootTimeout   Duration `toml:"max_boot_timeout"`
	StopTimeout      Duration `toml:"stop_timeout"`
	HeartbeatEvery   Duration `toml:"heartbeat_interval"`
	// HeartbeatTimeout: a ready VM whose agent is silent this long is failed.
	HeartbeatTimeout Duration `toml:"heartbeat_timeout"`
	// Roles maps a role name to the guest TCP ports that must accept
	// connections before a VM of that role is ready.
	Roles map[string][]int `toml:"roles"`
}

// QEMUConfig configures the QEMU driver.
type QEMUConfig struct {
	Binary string `toml:"binary"`
	Img    string `toml:"qemu_img"`
	// Accel is "auto" (KVM when /dev/kvm is usable, else TCG), "kvm" or "tcg".
	Accel string `toml:"accel"`
}

// FirecrackerConfig configures the Firecracker driver (vm.driver =
// "firecracker"), which needs KVM.
type FirecrackerConfig struct {
	Binary string `toml:"binary"`
	// Kernel (an uncompressed vmlinux with virtio-mmio command-line
	// devices, virtio-blk/net, vsock and ext4 built in) boots every VM
	// instead of its image's Debian kernel, which Firecracker cannot boot;
	// Initrd goes with it and may be empty.
	Kernel string `toml:"kernel"`
	Initrd string `toml:"initrd"`
	// DiskCloning is how per-VM root drives are made from an image:
	// "auto" (reflink if the state dir's file system can, else a sparse
	// copy), "reflink" or "sparse-copy".
	DiskCloning string `toml:"disk_cloning"`
	// SocketTimeout bounds the wait for a new process's API socket.
	SocketTimeout Duration     `toml:"socket_timeout"`
	Jailer        JailerConfig `toml:"jailer"`
	// LogMaxSize bounds what is kept on disk of one VM's Firecracker log
	// and output (vms/<id>/firecracker-log/); LogRate and LogBurst bound
	// how many of one VM's Firecracker lines a second go into hearth's
	// log (the rest are counted in a periodic summary).
	LogMaxSize Size `toml:"log_max_size"`
	LogRate    int  `toml:"log_rate"`
	LogBurst   int  `toml:"log_burst"`
}

// JailerConfig runs every Firecracker VM under the jailer when Binary is
// set: chrooted inside its VM directory, as UID:GID, in cgroups sized from
// the VM, in NetNS if set (the namespace hearth's bridge and TAPs are in).
type JailerConfig struct {
	Binary            string `toml:"binary"`
	UID               int    `toml:"uid"`
	GID               int    `toml:"gid"`
	NetNS             string `toml:"netns"`
	ParentCgroup      string `toml:"parent_cgroup"`
	MemoryOverheadMiB int    `toml:"memory_overhead_mib"`
}

// ShutdownConfig says what a clean daemon stop does to running VMs.
type ShutdownConfig struct {
	// StopVMs stops every VM when the daemon exits cleanly. Off by default:
	// VMs outlive the daemon and are adopted by the next one.
	StopVMs bool `toml:"stop_vms"`
}

// Default returns a configuration that works on a fresh machine.
func Default() Config {
	return Config{
		StateDir: "/var/lib/hearth",
		Listen:   "127.0.0.1:7070",
		Database: "hearth.db",
		ImageDir: "", // StateDir/images
		CacheDir: "/var/cache/hearth",
		LogLevel: "info",
		API:      defaultAPI(),
		// Room to finish what runs: VM overlays, console logs, the
		// database and its journal.
		StateDirMinFree: 512 << 20,
		VM: VMConfig{
			Driver:           "qemu",
			DefaultVCPUs:     1,
			DefaultMemoryMiB: 256,
			MaxVCPUs:         8,
			MinMemoryMiB:     64,
			MaxMemoryMiB:     16384,
			BootTimeout:      Duration{90 * time.Second},
			MaxBootTimeout:   Duration{10 * time.Minute},
			StopTimeout:      Duration{10 * time.Second},
			HeartbeatEvery:   Duration{2 * time.Second},
			HeartbeatTimeout: Duration{30 * time.Second},
			Roles: map[string][]int{
				"minimal":   {},
				"workspace": {},
				"browser":   {5900},
			},
		},
		Agent: defaultAgent(),
		QEMU: QEMUConfig{
			Binary: "qemu-system-x86_64",
			Img:    "qemu-img",
			Accel:  "auto",
		},
		Firecracker: FirecrackerConfig{
			Binary:        "firecracker",
			DiskCloning:   "auto",
			SocketTimeout: Duration{5 * time.Second},
			Jailer:        JailerConfig{MemoryOverheadMiB: 128},
			LogMaxSize:    1 << 20,
			LogRate:       10,
			LogBurst:      50,
		},
		Network: NetworkConfig{
			Enabled:       true,
			Bridge:        "hearth0",
			Subnet:        "172.30.0.0/24",
			TAPPrefix:     "hth",
			DNS:           []string{},
			DefaultEgress: "open",
			DefaultAllow:  []AllowRule{},
			HostPorts:     []string{},
			Deny:          []string{},
			AllowPrivate:  []string{},
		},
		Login: LoginConfig{
			BrowserImage:  "browser",
			VCPUs:         2,
			MemoryMiB:     1024,
			Timeout:       Duration{15 * time.Minute},
			GuestUser:     "hearth",
			WorkspaceUser: "hearth",
			WorkspaceRole: "workspace",
			Browser:       []string{"/usr/local/bin/hearth-browser"},
			SetupTimeout:  Duration{5 * time.Minute},
			PageCheck:     "127.0.0.1:9222",
			CreateBurst:   5,
			CreateEvery:   Duration{time.Minute},
		},
		Vault:   VaultConfig{KeyFile: "vault.key"},
		Console: ConsoleConfig{MaxSize: 16 << 20, HeadSize: 1 << 20, Rate: 128 << 10, Burst: 1 << 20},
		Events:  defaultEvents(),
		Viewer: ViewerConfig{
			TokenTTL:       Duration{15 * time.Minute},
			MaxTokenTTL:    Duration{2 * time.Hour},
			PingInterval:   Duration{20 * time.Second},
			IdleTimeout:    Duration{30 * time.Minute},
			MaxLifetime:    Duration{8 * time.Hour},
			VNCPort:        5900,
			FrameAncestors: []string{},

			SocketTokenTTL:      Duration{30 * time.Second},
			MaxViewersPerLink:   4,
			MaxViewersPerVM:     8,
			TicketRatePerLink:   20,
			TicketRatePerClient: 60,
		},
		Terminal: TerminalConfig{
			Linger:       Duration{15 * time.Minute},
			KillGrace:    Duration{10 * time.Second},
			TokenTTL:     Duration{8 * time.Hour},
			ControlRate:  20,
			WriteTimeout: Duration{30 * time.Second},
		},
	}
}

// Load builds the configuration: defaults, then the file at path (if path is
// non-empty), then environment overrides from env (os.Environ form).
func Load(path string, env []string) (Config, error) {
	c := Default()
	if path != "" {
		md, err := toml.DecodeFile(path, &c)
		if err != nil {
			return Config{}, fmt.Errorf("read config %s: %w", path, err)
		}
		if un := md.Undecoded(); len(un) > 0 {
			keys := make([]string, len(un))
			for i, k := range un {
				keys[i] = k.String()
			}
			return Config{}, fmt.Errorf("read config %s: unknown keys: %s", path, strings.Join(keys, ", "))
		}
	}
	if err := c.applyEnv(env); err != nil {
		return Config{}, err
	}
	return c, nil
}

// applyEnv applies HEARTH_* overrides.
func (c *Config) applyEnv(env []string) error {
	vars := map[string]*string{
		"HEARTH_STATE_DIR":           &c.StateDir,
		"HEARTH_LISTEN":              &c.Listen,
		"HEARTH_DATABASE":            &c.Database,
		"HEARTH_IMAGE_DIR":           &c.ImageDir,
		"HEARTH_CACHE_DIR":           &c.CacheDir,
		"HEARTH_LOG_LEVEL":           &c.LogLevel,
		"HEARTH_VM_DRIVER":           &c.VM.Driver,
		"HEARTH_QEMU_BINARY":         &c.QEMU.Binary,
		"HEARTH_QEMU_ACCEL":          &c.QEMU.Accel,
		"HEARTH_FIRECRACKER_BINARY":  &c.Firecracker.Binary,
		"HEARTH_FIRECRACKER_KERNEL":  &c.Firecracker.Kernel,
		"HEARTH_JAILER_BINARY":       &c.Firecracker.Jailer.Binary,
		"HEARTH_NETWORK_BRIDGE":      &c.Network.Bridge,
		"HEARTH_NETWORK_SUBNET":      &c.Network.Subnet,
		"HEARTH_VIEWER_PUBLIC_URL":   &c.Viewer.PublicURL,
		"HEARTH_LOGIN_BROWSER_IMAGE": &c.Login.BrowserImage,
		"HEARTH_PROVIDERS_DIR":       &c.Login.ProvidersDir,
		"HEARTH_VAULT_KEY_FILE":      &c.Vault.KeyFile,
	}
	sizes := map[string]*Size{
		"HEARTH_STATE_DIR_MIN_FREE": &c.StateDirMinFree,
		"HEARTH_CONSOLE_MAX_SIZE":   &c.Console.MaxSize,
		"HEARTH_CONSOLE_HEAD_SIZE":  &c.Console.HeadSize,
		"HEARTH_CONSOLE_RATE":       &c.Console.Rate,
		"HEARTH_CONSOLE_BURST":      &c.Console.Burst,
	}
	durations := map[string]*Duration{
		"HEARTH_BOOT_TIMEOUT":        &c.VM.BootTimeout,
		"HEARTH_STOP_TIMEOUT":        &c.VM.StopTimeout,
		"HEARTH_LOGIN_SETUP_TIMEOUT": &c.Login.SetupTimeout,
	}
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, "HEARTH_") {
			continue
		}
		if p, ok := vars[k]; ok {
			*p = v
			continue
		}
		if p, ok := durations[k]; ok {
			if err := p.UnmarshalText([]byte(v)); err != nil {
				return fmt.Errorf("environment %s: %w", k, err)
			}
			continue
		}
		if p, ok := sizes[k]; ok {
			if err := p.UnmarshalText([]byte(v)); err != nil {
				return fmt.Errorf("environment %s: %w", k, err)
			}
			continue
		}
		bools := map[string]*bool{
			"HEARTH_SHUTDOWN_STOP_VMS":              &c.Shutdown.StopVMs,
			"HEARTH_NETWORK_ENABLED":                &c.Network.Enabled,
			"HEARTH_VIEWER_TRUST_FORWARDED_HEADERS": &c.Viewer.TrustForwardedHeaders,
		}
		if p, ok := bools[k]; ok {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("environment %s: %w", k, err)
			}
			*p = b
		}
	}
	return nil
}

// DatabasePath is the absolute path of the SQLite file.
func (c Config) DatabasePath() string { return c.under(c.Database) }

// VaultKeyPath is the absolute path of the vault's key file.
func (c Config) VaultKeyPath() string { return c.under(c.Vault.KeyFile) }

// ImagesPath is the directory that holds built images.
func (c Config) ImagesPath() string {
	if c.ImageDir == "" {
		return filepath.Join(c.StateDir, "images")
	}
	return c.under(c.ImageDir)
}

// VMsPath is the directory that holds one directory per VM.
func (c Config) VMsPath() string { return filepath.Join(c.StateDir, "vms") }

func (c Config) under(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.StateDir, p)
}

// FieldError is a validation failure of one named field.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Validate checks every field and reports all problems, each naming its field.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		bad("state_dir", "must be an absolute path, got %q", c.StateDir)
	}
	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "must be host:port, got %q", c.Listen)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		bad("listen", "port must be 0-65535, got %q", port)
	}
	if c.Database == "" {
		bad("database", "must not be empty")
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	v := c.VM
	switch v.Driver {
	case "qemu", "firecracker":
	default:
		bad("vm.driver", "unknown driver %q (available: qemu, firecracker)", v.Driver)
	}
	fc := c.Firecracker
	switch fc.DiskCloning {
	case "auto", "reflink", "sparse-copy":
	default:
		bad("firecracker.disk_cloning", "must be auto, reflink or sparse-copy, got %q", fc.DiskCloning)
	}
	if fc.Initrd != "" && fc.Kernel == "" {
		bad("firecracker.initrd", "needs firecracker.kernel")
	}
	if fc.SocketTimeout.Duration <= 0 {
		bad("firecracker.socket_timeout", "must be positive")
	}
	if fc.LogMaxSize < 32<<10 {
		bad("firecracker.log_max_size", "must be at least 32KiB, got %s", fc.LogMaxSize)
	}
	if fc.LogRate < 1 {
		bad("firecracker.log_rate", "must be at least 1 (line per second), got %d", fc.LogRate)
	}
	if fc.LogBurst < 1 {
		bad("firecracker.log_burst", "must be at least 1, got %d", fc.LogBurst)
	}
	if j := fc.Jailer; j.Binary != "" {
		if j.UID <= 0 || j.GID <= 0 {
			bad("firecracker.jailer", "uid and gid must be an unprivileged user's (not 0), got %d:%d", j.UID, j.GID)
		}
		if j.NetNS != "" && !filepath.IsAbs(j.NetNS) {
			bad("firecracker.jailer.netns", "must be an absolute path, got %q", j.NetNS)
		}
		if j.MemoryOverheadMiB < 0 {
			bad("firecracker.jailer.memory_overhead_mib", "must not be negative")
		}
	}
	if v.MaxVCPUs < 1 || v.MaxVCPUs > 64 {
		bad("vm.max_vcpus", "must be 1-64, got %d", v.MaxVCPUs)
	}
	if v.DefaultVCPUs < 1 || v.DefaultVCPUs > v.MaxVCPUs {
		bad("vm.default_vcpus", "must be 1-%d (vm.max_vcpus), got %d", v.MaxVCPUs, v.DefaultVCPUs)
	}
	if v.MinMemoryMiB < 32 {
		bad("vm.min_memory_mib", "must be at least 32, got %d", v.MinMemoryMiB)
	}
	if v.MaxMemoryMiB < v.MinMemoryMiB {
		bad("vm.max_memory_mib", "must be at least vm.min_memory_mib (%d), got %d", v.MinMemoryMiB, v.MaxMemoryMiB)
	}
	if v.DefaultMemoryMiB < v.MinMemoryMiB || v.DefaultMemoryMiB > v.MaxMemoryMiB {
		bad("vm.default_memory_mib", "must be %d-%d, got %d", v.MinMemoryMiB, v.MaxMemoryMiB, v.DefaultMemoryMiB)
	}
	positive := map[string]Duration{
		"vm.boot_timeout":       v.BootTimeout,
		"vm.max_boot_timeout":   v.MaxBootTimeout,
		"vm.stop_timeout":       v.StopTimeout,
		"vm.heartbeat_interval": v.HeartbeatEvery,
		"vm.heartbeat_timeout":  v.HeartbeatTimeout,
	}
	for _, name := range []string{"vm.boot_timeout", "vm.max_boot_timeout", "vm.stop_timeout", "vm.heartbeat_interval", "vm.heartbeat_timeout"} {
		if positive[name].Duration <= 0 {
			bad(name, "must be positive, got %s", positive[name].Duration)
		}
	}
	if v.BootTimeout.Duration > v.MaxBootTimeout.Duration {
		bad("vm.boot_timeout", "must not exceed vm.max_boot_timeout (%s), got %s", v.MaxBootTimeout.Duration, v.BootTimeout.Duration)
	}
	if v.HeartbeatTimeout.Duration <= 2*v.HeartbeatEvery.Duration {
		bad("vm.heartbeat_timeout", "must exceed twice vm.heartbeat_interval (%s), got %s", v.HeartbeatEvery.Duration, v.HeartbeatTimeout.Duration)
	}
	if len(v.Roles) == 0 {
		bad("vm.roles", "must define at least one role")
	}
	c.Agent.validate(bad)
	for role, ports := range v.Roles {
		if !validName(role) {
			bad("vm.roles", "role name %q must be 1-32 characters of a-z, 0-9, - and _", role)
		}
		for _, p := range ports {
			if p < 1 || p > 65535 {
				bad("vm.roles."+role, "port %d out of range 1-65535", p)
			}
		}
	}
	switch c.QEMU.Accel {
	case "auto", "kvm", "tcg":
	default:
		bad("qemu.accel", "must be auto, kvm or tcg, got %q", c.QEMU.Accel)
	}
	if c.QEMU.Binary == "" {
		bad("qemu.binary", "must not be empty")
	}
	if c.QEMU.Img == "" {
		bad("qemu.qemu_img", "must not be empty")
	}
	c.API.validate(bad)
	if c.StateDirMinFree < 0 {
		bad("state_dir_min_free", "must not be negative, got %s", c.StateDirMinFree)
	}
	c.Console.validate(bad)
	c.Network.validate(bad)
	c.Viewer.validate(bad)
	c.Terminal.validate(bad)
	c.Login.validate(bad, c.VM)
	c.Events.validate(bad)
	if c.Vault.KeyFile == "" {
		bad("vault.key_file", "must not be empty")
	}
	return errors.Join(errs...)
}

func (l LoginConfig) validate(bad func(field, format string, args ...any), v VMConfig) {
	if l.BrowserImage == "" {
		bad("login.browser_image", "must not be empty")
	}
	if l.VCPUs < 1 || l.VCPUs > v.MaxVCPUs {
		bad("login.vcpus", "must be 1-%d (vm.max_vcpus), got %d", v.MaxVCPUs, l.VCPUs)
	}
	if l.MemoryMiB < v.MinMemoryMiB || l.MemoryMiB > v.MaxMemoryMiB {
		bad("login.memory_mib", "must be %d-%d, got %d", v.MinMemoryMiB, v.MaxMemoryMiB, l.MemoryMiB)
	}
	if l.Timeout.Duration < time.Minute || l.Timeout.Duration > time.Hour {
		bad("login.timeout", "must be 1m-1h, got %s", l.Timeout.Duration)
	}
	for field, u := range map[string]string{"login.guest_user": l.GuestUser, "login.workspace_user": l.WorkspaceUser} {
		if u == "" || strings.ContainsAny(u, "/: ") {
			bad(field, "must be a user name, got %q", u)
		}
	}
	if _, ok := v.Roles[l.WorkspaceRole]; !ok {
		bad("login.workspace_role", "must be one of vm.roles, got %q", l.WorkspaceRole)
	}
	if len(l.Browser) == 0 || !filepath.IsAbs(l.Browser[0]) {
		bad("login.browser", "must start with an absolute path, got %q", l.Browser)
	}
	if l.ProvidersDir != "" && !filepath.IsAbs(l.ProvidersDir) {
		bad("login.providers_dir", "must be an absolute path, got %q", l.ProvidersDir)
	}
	if l.SetupTimeout.Duration < 10*time.Second || l.SetupTimeout.Duration > l.Timeout.Duration {
		bad("login.setup_timeout", "must be 10s-login.timeout (%s), got %s", l.Timeout.Duration, l.SetupTimeout.Duration)
	}
	if l.PageCheck != "" && !agentapi.LoopbackAddrPort(l.PageCheck) {
		bad("login.page_check", "must be a loopback HOST:PORT in the guest (e.g. 127.0.0.1:9222) or empty, got %q", l.PageCheck)
	}
	if l.CreateBurst < 1 {
		bad("login.create_burst", "must be at least 1, got %d", l.CreateBurst)
	}
	if l.CreateEvery.Duration < time.Second {
		bad("login.create_every", "must be at least 1s, got %s", l.CreateEvery.Duration)
	}
}

func (v ViewerConfig) validate(bad func(field, format string, args ...any)) {
	if v.PublicURL != "" {
		u, err := url.Parse(v.PublicURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			bad("viewer.public_url", "must be an http or https URL with a host and no query, e.g. https://hearth.example.com, got %q", v.PublicURL)
		}
	}
	if v.TokenTTL.Duration < time.Second {
		bad("viewer.token_ttl", "must be at least 1s, got %s", v.TokenTTL.Duration)
	}
	if v.MaxTokenTTL.Duration < v.TokenTTL.Duration {
		bad("viewer.max_token_ttl", "must be at least viewer.token_ttl (%s), got %s", v.TokenTTL.Duration, v.MaxTokenTTL.Duration)
	}
	if v.PingInterval.Duration < time.Second {
		bad("viewer.ping_interval", "must be at least 1s (idle viewers need keepalive), got %s", v.PingInterval.Duration)
	}
	if v.IdleTimeout.Duration < 0 {
		bad("viewer.idle_timeout", "must not be negative, got %s", v.IdleTimeout.Duration)
	}
	if v.MaxLifetime.Duration < 0 {
		bad("viewer.max_lifetime", "must not be negative, got %s", v.MaxLifetime.Duration)
	}
	if v.VNCPort < 1 || v.VNCPort > 65535 {
		bad("viewer.vnc_port", "must be 1-65535, got %d", v.VNCPort)
	}
	if v.SocketTokenTTL.Duration < time.Second || v.SocketTokenTTL.Duration > 5*time.Minute {
		bad("viewer.socket_token_ttl", "must be 1s-5m (a socket token is used at once), got %s", v.SocketTokenTTL.Duration)
	}
	if v.MaxViewersPerVM < 1 || v.MaxViewersPerVM > 1000 {
		bad("viewer.max_viewers_per_vm", "must be 1-1000, got %d", v.MaxViewersPerVM)
	}
	if v.MaxViewersPerLink < 1 || v.MaxViewersPerLink > max(1, v.MaxViewersPerVM) {
		bad("viewer.max_viewers_per_link", "must be 1-%d (viewer.max_viewers_per_vm), got %d", max(1, v.MaxViewersPerVM), v.MaxViewersPerLink)
	}
	if v.TicketRatePerLink < 1 || v.TicketRatePerLink > 10000 {
		bad("viewer.ticket_rate_per_link", "must be 1-10000 tickets a minute, got %d", v.TicketRatePerLink)
	}
	if v.TicketRatePerClient < 1 || v.TicketRatePerClient > 100000 {
		bad("viewer.ticket_rate_per_client", "must be 1-100000 tickets a minute, got %d", v.TicketRatePerClient)
	}
	for _, a := range v.FrameAncestors {
		if a == "'self'" {
			continue
		}
		if a == "" || strings.ContainsAny(a, " ;,'\"") {
			bad("viewer.frame_ancestors", "%q is not a CSP source such as https://app.example.com", a)
		}
	}
}

func (n NetworkConfig) validate(bad func(field, format string, args ...any)) {
	if !n.Enabled {
		return
	}
	if len(n.Bridge) == 0 || len(n.Bridge) > 15 || strings.ContainsAny(n.Bridge, " /") {
		bad("network.bridge", "must be an interface name of 1-15 characters, got %q", n.Bridge)
	}
	if p, err := netip.ParsePrefix(n.Subnet); err != nil || !p.Addr().Is4() || p.Bits() > 30 || p.Bits() < 16 {
		bad("network.subnet", "must be an IPv4 CIDR from /16 to /30, got %q", n.Subnet)
	} else if p.Masked() != p {
		bad("network.subnet", "must be a network address (%s), got %q", p.Masked(), n.Subnet)
	}
	if len(n.TAPPrefix) < 2 || len(n.TAPPrefix) > 5 || !validName(n.TAPPrefix) {
		bad("network.tap_prefix", "must be 2-5 characters of a-z and 0-9, got %q", n.TAPPrefix)
	}
	for _, d := range n.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			bad("network.dns", "%q is not an IP address", d)
		}
	}
	switch n.DefaultEgress {
	case "open", "none":
		if len(n.DefaultAllow) > 0 {
			bad("network.default_allow", "only with default_egress = \"allowlist\", got %q", n.DefaultEgress)
		}
	case "allowlist":
		if len(n.DefaultAllow) == 0 {
			bad("network.default_allow", "default_egress = \"allowlist\" needs at least one rule (or use \"none\")")
		}
	default:
		bad("network.default_egress", "must be open, none or allowlist, got %q", n.DefaultEgress)
	}
	for i, r := range n.DefaultAllow {
		field := fmt.Sprintf("network.default_allow[%d]", i)
		if _, err := ParseCIDR(r.CIDR); err != nil {
			bad(field+".cidr", "%v", err)
		}
		if r.Protocol != "" && r.Protocol != "tcp" && r.Protocol != "udp" {
			bad(field+".protocol", "must be empty (any), tcp or udp, got %q", r.Protocol)
		}
		if r.Port < 0 || r.Port > 65535 || r.Port != 0 && r.Protocol == "" {
			bad(field+".port", "must be 1-65535 with a protocol, or 0 (any), got %d", r.Port)
		}
	}
	for _, hp := range n.HostPorts {
		if _, _, err := ParseHostPort(hp); err != nil {
			bad("network.host_ports", "%v", err)
		}
	}
	for i, d := range n.Deny {
		if _, err := ParseCIDR(d); err != nil {
			bad(fmt.Sprintf("network.deny[%d]", i), "%v", err)
		}
	}
	for i, a := range n.AllowPrivate {
		if _, err := ParseCIDR(a); err != nil {
			bad(fmt.Sprintf("network.allow_private[%d]", i), "%v", err)
		}
	}
}

// ParseCIDR parses an IPv4 CIDR ("10.20.0.0/16") or address ("10.20.0.5",
// meaning /32); host bits must be zero.
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		a, aerr := netip.ParseAddr(s)
		if aerr != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 CIDR or address", s)
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	switch {
	case !p.Addr().Is4():
		return netip.Prefix{}, fmt.Errorf("%q is not IPv4", s)
	case p != p.Masked():
		return netip.Prefix{}, fmt.Errorf("%q has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

// ParseHostPort parses "tcp/8080" or "udp/53".
func ParseHostPort(s string) (proto string, port uint16, err error) {
	proto, num, ok := strings.Cut(s, "/")
	n, perr := strconv.Atoi(num)
	if !ok || (proto != "tcp" && proto != "udp") || perr != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("%q must look like tcp/8080 or udp/53", s)
	}
	return proto, uint16(n), nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// EnsureDirs creates the state directories with private permissions.
func (c Config) EnsureDirs() error {
	for _, d := range []string{c.StateDir, c.VMsPath(), c.ImagesPath()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	return nil
}

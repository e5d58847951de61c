// Package agent is the guest side of the hearth agent protocol
// (internal/agentapi). It runs inside every VM as cmd/hearth-agent: it finds
// the virtio-serial port named PortName, reads the per-VM token delivered at
// boot, and serves the protocol for as long as the VM runs, surviving host
// disconnects and reconnects. On the host's word it configures the guest's
// network (through netlink, no DHCP) and runs commands (exec).
package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// PortName is the name of the agent's virtio-serial port
// (-device virtserialport,name=hearth.agent).
const PortName = "hearth.agent"

const (
	virtioPortsDir       = "/sys/class/virtio-ports"
	devDir               = "/dev"
	defaultRetryInterval = 150 * time.Millisecond
	setupRetryInterval   = time.Second
)

// DefaultTokenSources are where the token is looked for, in order: QEMU
// fw_cfg, a file written by an init step, and the kernel command line (a
// development fallback: it is readable by every process in the guest).
var DefaultTokenSources = []string{
	"/sys/firmware/qemu_fw_cfg/by_name/opt/hearth/token/raw",
	"/run/hearth/token",
	"cmdline:/proc/cmdline",
}

// Options configure the agent. The zero value is usable.
type Options struct {
	// Port is the path of the agent's port device. Empty means the
	// virtio-serial port called PortName, found under /sys/class/virtio-ports.
	Port string
	// TokenSources are where to read the token from; the first that exists
	// is used. "cmdline:PATH" means the hearth.token= parameter of the kernel
	// command line in file PATH; anything else is a file holding the token
	// as written by agentapi.FormatToken. Nil means DefaultTokenSources.
	TokenSources []string
	// Version is the agent version reported in hello.
	Version string
	// PowerOff is called once a shutdown request has been answered. Nil
	// means sync filesystems and power the machine off.
	PowerOff func() error
	// Logger receives the agent's logs, which never contain the token. Nil
	// means plain text lines on stderr (the guest's serial console).
	Logger *slog.Logger
	// RetryInterval is how long to wait before reading the port again while
	// no host is connected. Zero means 150ms.
	RetryInterval time.Duration

	// For tests: how the network is configured (nil means netlink in the
	// agent's network namespace), how long to wait for the NIC (zero means
	// 10s) and where resolv.conf is (empty means /etc/resolv.conf).
	netOps      netOps
	linkTimeout time.Duration
	resolvConf  string
}

func (o Options) withDefaults() Options {
	if o.TokenSources == nil {
		o.TokenSources = DefaultTokenSources
	}
	if o.Version == "" {
		o.Version = "dev"
	}
	if o.PowerOff == nil {
		o.PowerOff = powerOff
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if o.RetryInterval <= 0 {
		o.RetryInterval = defaultRetryInterval
	}
	if o.netOps == nil {
		o.netOps = defaultNetOps()
	}
	if o.linkTimeout <= 0 {
		o.linkTimeout = defaultLinkTimeout
	}
	if o.resolvConf == "" {
		o.resolvConf = defaultResolvConf
	}
	return o
}

// Run is the agent: it reads the token, opens the port and serves the
// protocol until ctx is done, then returns ctx.Err(). A missing token or
// port is waited for (retrying every second), so Run only returns early
// for a token source that exists but holds no valid token.
func Run(ctx context.Context, opts Options) error {
	opts = opts.withDefaults()
	log := opts.Logger

	token, err := awaitToken(ctx, opts)
	if err != nil {
		return err
	}
	var lastErr string
	for {
		err := serveDevice(ctx, token, opts)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if msg := err.Error(); msg != lastErr {
			log.Warn("agent port unavailable, retrying", "err", err)
			lastErr = msg
		}
		if err := sleep(ctx, setupRetryInterval); err != nil {
			return err
		}
	}
}

// awaitToken reads the token, waiting for a source to appear (fw_cfg may
// show up only once its driver has loaded).
func awaitToken(ctx context.Context, opts Options) ([]byte, error) {
	logged := false
	for {
		token, src, err := readToken(opts.TokenSources)
		if err == nil {
			opts.Logger.Info("token loaded", "source", src)
			return token, nil
		}
		if src != "" {
			return nil, err // the source exists but is unusable
		}
		if !logged {
			opts.Logger.Warn("no token yet, waiting", "err", err)
			logged = true
		}
		if err := sleep(ctx, setupRetryInterval); err != nil {
			return nil, err
		}
	}
}

// serveDevice opens the agent port and serves it until ctx is done or the
// device fails.
func serveDevice(ctx context.Context, token []byte, opts Options) error {
	path := opts.Port
	if path == "" {
		var err error
		if path, err = findPort(virtioPortsDir, devDir, PortName); err != nil {
			return err
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open agent port: %w", err)
	}
	defer f.Close()
	stop := context.AfterFunc(ctx, func() { f.Close() }) // unblocks I/O on shutdown
	defer stop()

	opts.Logger.Info("agent port open", "path", path)
	return servePort(ctx, f, token, opts)
}

// sleep waits for d or until ctx is done, returning ctx.Err() in that case.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

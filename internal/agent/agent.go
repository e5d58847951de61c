// Package agent is the guest side of the hearth agent protocol
// (internal/agentapi). It runs inside every VM as cmd/hearth-agent: it finds
// its channel to the host (the virtio-serial port named PortName under QEMU,
// a vsock listener under Firecracker), reads the per-VM token delivered at
// boot (QEMU fw_cfg, Firecracker's MMDS, a file or the kernel command line),
// and serves the protocol for as long as the VM runs, surviving host
// disconnects and reconnects. On the host's word it configures the guest's
// network (through netlink, no DHCP) and runs commands (exec).
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/hearth-project/hearth/internal/agent/procs"
)

// PortName is the name of the agent's virtio-serial port
// (-device virtserialport,name=hearth.agent).
const PortName = "hearth.agent"

const (
	virtioPortsDir       = "/sys/class/virtio-ports"
	defaultDevDir        = "/dev"
	defaultVsockDev      = "/dev/vsock"
	defaultRetryInterval = 150 * time.Millisecond
	setupRetryInterval   = time.Second
)

// DefaultTokenSources are where the token is looked for with a
// virtio-serial port (QEMU), in order: QEMU fw_cfg, a file written by an
// init step, and the kernel command line (a development fallback: it is
// readable by every process in the guest).
var DefaultTokenSources = []string{
	"/sys/firmware/qemu_fw_cfg/by_name/opt/hearth/token/raw",
	"/run/hearth/token",
	"cmdline:/proc/cmdline",
}

// VsockTokenSources are where the token is looked for with a listener
// (vsock under Firecracker, or a Unix socket standing in for it), in
// order: Firecracker's MMDS, a file written by an init step, and the
// kernel command line.
var VsockTokenSources = []string{
	mmdsSource,
	"/run/hearth/token",
	"cmdline:/proc/cmdline",
}

// Options configure the agent. The zero value is usable.
type Options struct {
	// Port is the path of the agent's virtio-serial port device. Empty
	// means the port called PortName, found under /sys/class/virtio-ports.
	Port string
	// DataListen, when set, makes the agent serve the data channel (the
	// work API, internal/workapi) on a listener, with Listen's syntax
	// ("vsock" alone meaning workapi.VsockPort). Empty means the
	// virtio-serial port workapi.PortName when the control channel is a
	// port, vsock port workapi.VsockPort when it is vsock, and no data
	// channel when it is a Unix socket.
	DataListen string
	// Listen, when set, makes the agent listen for the host rather than
	// open a virtio-serial port: "vsock:PORT" on a vsock port (any CID), as
	// under Firecracker, or "unix:PATH" on a Unix socket, for development
	// and test harnesses standing in for vsock. Empty means the port (Port,
	// if set), or else whichever channel the guest has: the virtio-serial
	// port called PortName, or vsock port agentapi.VsockPort if the guest
	// has a vsock device, checked every second until one appears. Port and
	// Listen cannot both be set.
	Listen string
	// TokenSources are where to read the token from; the first that exists
	// is used. "mmds" means Firecracker's metadata service (version 2) at
	// MMDSURL, "mmds:URL" the one at URL; an MMDS that is unreachable or
	// does not have the token (404) counts as not existing. "cmdline:PATH"
	// means the hearth.token= parameter of the kernel command line in file
	// PATH; anything else is a file holding the token as written by
	// agentapi.FormatToken. Nil means DefaultTokenSources with a
	// virtio-serial port and VsockTokenSources with a listener.
	//
	// With a virtio-serial port the token is read once, at start. With a
	// listener it is read again for every host connection: a guest
	// restored from a snapshot then proves the token of the VM it has
	// become, never that of the VM the snapshot was taken from.
	TokenSources []string
	// MMDSURL is the base URL of the "mmds" token source, e.g.
	// http://127.0.0.1:8080. Empty means http://169.254.169.254 (the
	// agent then adds the address and route needed to reach it, and
	// removes them once the token is read), except with a Unix-socket
	// listener, which runs outside a VM: there "mmds" then counts as
	// missing.
	MMDSURL string
	// Version is the agent version reported in hello.
	Version string
	// PowerOff is called once a shutdown request has been answered. Nil
	// means sync filesystems and power the machine off (reboot it over
	// vsock: Firecracker ends when its guest reboots).
	PowerOff func() error
	// Logger receives the agent's logs, which never contain the token. Nil
	// means plain text lines on stderr (the guest's serial console).
	Logger *slog.Logger
	// RetryInterval is how long to wait before reading the port again while
	// no host is connected. Zero means 150ms.
	RetryInterval time.Duration
	// WrapChannel, if set, wraps every channel to the host before the
	// protocol is served on it. It exists for test builds of the agent
	// that misbehave on purpose (test/hostileagent); the wrapper should
	// keep the channel's SetDeadline. Nil means none.
	WrapChannel func(io.ReadWriter) io.ReadWriter

	// For tests: how the network is configured (nil means netlink in the
	// agent's network namespace), how long to wait for the NIC (zero means
	// 10s) and where resolv.conf is (empty means /etc/resolv.conf).
	netOps      netOps
	linkTimeout time.Duration
	resolvConf  string
	// For tests: where virtio-serial ports are listed and their devices
	// are, the vsock device, and how MMDS is dialled (nil means
	// directly, see defaultMMDSDial).
	portsDir string
	devDir   string
	vsockDev string
	mmdsDial dialFunc

	// For tests: how processes are run (the zero value is the guest's
	// defaults).
	procs procs.Config

	// inGuest says the agent runs in a VM; Run sets it unless the channel
	// is a Unix socket. Only in a VM does the mmds source use its default
	// address, and change the network to reach it.
	inGuest bool
}

func (o Options) withDefaults() Options {
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
	if o.portsDir == "" {
		o.portsDir = virtioPortsDir
	}
	if o.devDir == "" {
		o.devDir = defaultDevDir
	}
	if o.vsockDev == "" {
		o.vsockDev = defaultVsockDev
	}
	return o
}

// Validate reports options that can never work: Port and Listen both
// set, an invalid Listen, or an invalid MMDS URL. Run checks them first.
func (o Options) Validate() error {
	if o.Port != "" && o.Listen != "" {
		return errors.New("agent: a port and a listen address are exclusive")
	}
	if o.Listen != "" {
		if _, err := parseListen(o.Listen); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	if o.DataListen != "" {
		if _, err := parseDataListen(o.DataListen); err != nil {
			return fmt.Errorf("agent: data channel: %w", err)
		}
	}
	if o.MMDSURL != "" {
		if _, err := parseMMDSURL(o.MMDSURL); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	if err := checkTokenSources(o.TokenSources); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

// Run is the agent: it finds its channel, reads the token and serves the
// protocol, and the work API on the data channel, until ctx is done, then
// kills the processes it started and returns ctx.Err(). A missing channel
// or token is waited for (retrying every second), so Run only returns
// early for invalid options or a token source that exists but holds no
// valid token.
func Run(ctx context.Context, opts Options) error {
	ownPowerOff := opts.PowerOff != nil
	opts = opts.withDefaults()
	if err := opts.Validate(); err != nil {
		return err
	}
	ch, err := awaitChannel(ctx, opts)
	if err != nil {
		return err
	}
	opts.inGuest = ch.network != "unix"
	if ch.network == "vsock" && !ownPowerOff {
		// A vsock guest runs under Firecracker, which has no power
		// management: a reboot (reboot=k) is what ends its process.
		opts.PowerOff = reboot
	}
	if opts.TokenSources == nil {
		opts.TokenSources = VsockTokenSources
		if ch.network == "" {
			opts.TokenSources = DefaultTokenSources
		}
	}
	stopData := startData(ctx, ch, opts)
	defer stopData()
	if ch.network == "" {
		return runPort(ctx, opts)
	}
	return runListener(ctx, ch, opts)
}

// startData serves the data channel that goes with control channel ch,
// if there is one, with a process manager of its own; the function it
// returns stops serving and kills the processes.
func startData(ctx context.Context, ch channel, opts Options) (stop func()) {
	dch, ok, err := dataChannel(ch, opts)
	if err != nil || !ok {
		return func() {}
	}
	pc := opts.procs
	pc.Logger = opts.Logger.With("channel", "data")
	m := procs.NewManager(pc)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := newDataServer(opts, workMux(m)).run(ctx, dch)
		if ctx.Err() == nil {
			opts.Logger.Error("data channel failed", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
		m.Close()
	}
}

// runPort serves the virtio-serial port with the token read at start.
func runPort(ctx context.Context, opts Options) error {
	if opts.TokenSources == nil {
		opts.TokenSources = DefaultTokenSources
	}
	token, _, err := awaitToken(ctx, opts)
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
			opts.Logger.Warn("agent port unavailable, retrying", "err", err)
			lastErr = msg
		}
		if err := sleep(ctx, setupRetryInterval); err != nil {
			return err
		}
	}
}

// tokenError is a token source that exists but holds no valid token.
type tokenError struct{ error }

func (e tokenError) Unwrap() error { return e.error }

// awaitToken reads the token and returns it with its source, waiting for
// a source to appear (fw_cfg may show up only once its driver has loaded,
// MMDS once the host has filled it in). An error is a tokenError or ctx's.
func awaitToken(ctx context.Context, opts Options) ([]byte, string, error) {
	logged := false
	for {
		token, src, err := readToken(ctx, opts)
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		if err == nil {
			opts.Logger.Info("token loaded", "source", src)
			return token, src, nil
		}
		if src != "" {
			return nil, "", tokenError{err} // the source exists but is unusable
		}
		if !logged {
			opts.Logger.Warn("no token yet, waiting", "err", err)
			logged = true
		}
		if err := sleep(ctx, setupRetryInterval); err != nil {
			return nil, "", err
		}
	}
}

// serveDevice opens the agent port and serves it until ctx is done or the
// device fails.
func serveDevice(ctx context.Context, token []byte, opts Options) error {
	path := opts.Port
	if path == "" {
		var err error
		if path, err = findPort(opts.portsDir, opts.devDir, PortName); err != nil {
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

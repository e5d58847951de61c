// Package app is the only place that wires hearth's subsystems together:
// it builds them from the configuration, runs the daemon (Serve) and owns
// its shutdown order. It also provides the host-level operations that work
// on this host's state directly, with the daemon stopped if need be:
// Doctor, SetupHost, RotateVault, CreateAPIKeyLocal and the image
// operations. The command line (internal/cli) is its only importer.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/api"
	"github.com/hearth-project/hearth/internal/auth"
	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/login"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vmm"
	"github.com/hearth-project/hearth/internal/vmm/firecracker"
	"github.com/hearth-project/hearth/internal/vmm/qemu"
)

// Version is set at build time with -ldflags "-X .../internal/app.Version=...".
var Version = "dev"

func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // validated by config.Validate
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

// newDriver builds the configured VMM driver.
func newDriver(cfg config.Config, log *slog.Logger) (vmm.Driver, error) {
	switch cfg.VM.Driver {
	case "qemu":
		khz, err := qemu.HostTSCkHz()
		if err != nil {
			khz = 0 // only needed under TCG; New says so if it is
		}
		return qemu.New(qemu.Config{Binary: cfg.QEMU.Binary, ImgTool: cfg.QEMU.Img, Accel: cfg.QEMU.Accel, TSCkHz: khz})
	case "firecracker":
		return firecracker.New(firecrackerConfig(cfg, log))
	default:
		return nil, fmt.Errorf("unknown vm driver %q", cfg.VM.Driver)
	}
}

func firecrackerConfig(cfg config.Config, log *slog.Logger) firecracker.Config {
	fc, j := cfg.Firecracker, cfg.Firecracker.Jailer
	return firecracker.Config{
		Binary:        fc.Binary,
		Kernel:        fc.Kernel,
		Initrd:        fc.Initrd,
		Clone:         fc.DiskCloning,
		ProbeDir:      cfg.VMsPath(),
		SocketTimeout: fc.SocketTimeout.Duration,
		Logger:        log,
		LogMaxSize:    int64(fc.LogMaxSize),
		LogRate:       fc.LogRate,
		LogBurst:      fc.LogBurst,
		Jailer: firecracker.JailerConfig{Binary: j.Binary, UID: j.UID, GID: j.GID, NetNS: j.NetNS,
			ParentCgroup: j.ParentCgroup, MemoryOverheadMiB: j.MemoryOverheadMiB},
	}
}

func vmConfig(cfg config.Config) vm.Config {
	return vm.Config{
		VMsDir:            cfg.VMsPath(),
		Roles:             cfg.VM.Roles,
		DefaultVCPUs:      cfg.VM.DefaultVCPUs,
		MaxVCPUs:          cfg.VM.MaxVCPUs,
		DefaultMemoryMiB:  cfg.VM.DefaultMemoryMiB,
		MinMemoryMiB:      cfg.VM.MinMemoryMiB,
		MaxMemoryMiB:      cfg.VM.MaxMemoryMiB,
		BootTimeout:       cfg.VM.BootTimeout.Duration,
		MaxBootTimeout:    cfg.VM.MaxBootTimeout.Duration,
		StopTimeout:       cfg.VM.StopTimeout.Duration,
		HeartbeatInterval: cfg.VM.HeartbeatEvery.Duration,
		HeartbeatTimeout:  cfg.VM.HeartbeatTimeout.Duration,
		StopOnShutdown:    cfg.Shutdown.StopVMs,

		AgentLimits:          agentLimits(cfg.Agent),
		AgentMaxViolations:   cfg.Agent.MaxViolations,
		AgentViolationWindow: cfg.Agent.ViolationWindow.Duration,
		MinFree:              int64(cfg.StateDirMinFree),
		Console: vm.ConsoleConfig{Limits: consolelog.Limits{Max: int64(cfg.Console.MaxSize), Head: int64(cfg.Console.HeadSize)},
			Rate: int64(cfg.Console.Rate), Burst: int64(cfg.Console.Burst)},
	}
}

// Serve runs the daemon until ctx ends or a termination signal arrives.
// Shutdown order is the reverse of start: stop accepting requests, stop
// supervising VMs (which keep running unless configured otherwise), close
// the store.
func Serve(ctx context.Context, cfg config.Config, stdout io.Writer) error {
	log := newLogger(stdout, cfg.LogLevel)
	if err := cfg.EnsureDirs(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	st, err := sqlite.Open(ctx, cfg.DatabasePath())
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer st.Close()
	// Retention runs under its own context, ended (and waited for) before
	// the store closes.
	pruneCtx, stopPruning := context.WithCancel(context.Background())
	pruned := make(chan struct{})
	go func() { defer close(pruned); newPruner(cfg, st, log).Run(pruneCtx) }()
	defer func() { stopPruning(); <-pruned }()

	drv, err := newDriver(cfg, log)
	if err != nil {
		return err
	}
	if drv.Name() == "firecracker" && !qemu.KVMUsable() {
		log.Warn("the firecracker driver needs hardware KVM, which this host lacks: VMs will fail to start (hearth doctor)")
	}
	netw, closeNet, err := newNetworker(cfg, st, log)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	defer closeNet()
	var mgr *vm.Manager
	viewers, err := newViewers(cfg, st, &mgr, log)
	if err != nil {
		return err
	}
	terminals, err := newTerminals(cfg, st, &mgr, log)
	if err != nil {
		return err
	}
	vlt, err := openVault(cfg, st, true, log)
	if err != nil {
		return fmt.Errorf("vault: %w", err)
	}
	forget := cfg.Viewer.MaxTokenTTL.Duration
	var logins *login.Service
	mgr = vm.New(vmConfig(cfg), vm.Deps{Store: st, Driver: drv, Agents: vm.AgentAPIDialer{}, Network: netw, Log: log,
		OnTransition: func(v store.VM) {
			viewers.OnTransition(v, forget)
			terminals.OnTransition(v, max(forget, cfg.Terminal.TokenTTL.Duration))
			logins.OnVMReady(v) // installs the user's credentials into a workspace that became ready
		}})
	if logins, err = newLogins(cfg, st, mgr, vlt, viewers, log); err != nil {
		return err
	}
	images := imageRegistry(cfg, st)
	builds, err := newImageBuilds(cfg, images, log)
	if err != nil {
		return err
	}
	vopts := viewerOptions(cfg)
	if vopts.AssetsErr != nil {
		log.Warn("viewer page unavailable", "err", vopts.AssetsErr)
	}
	topts := terminalOptions(cfg)
	if topts.AssetsErr != nil {
		log.Warn("terminal page unavailable", "err", topts.AssetsErr)
	}

	if n, err := raiseOpenFiles(openFilesWanted(cfg.API)); err != nil || n < openFilesWanted(cfg.API) {
		log.Warn("open-files limit below what api.max_connections needs (hearth doctor)", "limit", n,
			"want", openFilesWanted(cfg.API), "err", err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	var ready atomic.Bool
	// Requests get their own base context, cancelled when shutdown begins
	// so streams (SSE, console follow) end instead of holding it up.
	baseCtx, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	verifier := &auth.Verifier{Keys: st, Now: time.Now, Log: log.With("component", "auth")}
	srv, conns := newHTTPServer(cfg.API, (&api.Server{VMs: mgr, Store: st, Verifier: verifier,
		Log: log, Version: Version, Ready: ready.Load, Viewers: viewers, ViewerOptions: vopts, Logins: logins,
		Terminals: terminals, TerminalOptions: topts,
		Images: images, Builds: builds, Providers: logins.Providers(), WorkspaceUser: cfg.Login.WorkspaceUser,
		WriteTimeout: cfg.API.WriteTimeout.Duration, ReadTimeout: cfg.API.ReadTimeout.Duration, MaxStreams: cfg.Events.MaxStreamsPerUser}).Handler(), log)
	srv.BaseContext = func(net.Listener) context.Context { return baseCtx }
	srv.RegisterOnShutdown(cancelBase)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(conns.Listener(ln)) }()
	log.Info("hearth listening", "addr", ln.Addr().String(), "version", Version, "driver", drv.Name(),
		"accel", drv.Capabilities().Accel, "state_dir", cfg.StateDir)

	// Reconcile after the listener is up: /healthz answers at once, /readyz
	// once every VM the store knows has been adopted or cleaned up.
	if err := mgr.Start(ctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("reconcile vms: %w", err)
	}
	if err := logins.Recover(ctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("recover logins: %w", err)
	}
	ready.Store(true)
	log.Info("hearth ready")

	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	_ = verifier.Close(sctx) // last-used times still queued
	// Image builds in progress are cancelled (their work directories
	// removed by the builder) before the store they register in closes.
	if err := builds.Shutdown(sctx); err != nil {
		log.Warn("image builds", "err", err)
	}
	// Logins in progress end (failed: hearth is shutting down) and ask for
	// their browser VMs to go.
	if err := logins.Shutdown(sctx); err != nil {
		log.Warn("logins", "err", err)
	}
	// Viewer sockets are hijacked connections the HTTP server no longer
	// tracks: close them with "server shutting down" (1001).
	if err := viewers.Shutdown(sctx); err != nil {
		log.Warn("viewers", "err", err)
	}
	if err := terminals.Shutdown(sctx); err != nil {
		log.Warn("terminals", "err", err)
	}
	if err := mgr.Shutdown(sctx); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

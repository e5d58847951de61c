// Command hearth-agent is the hearth guest agent. It runs inside every VM,
// authenticates to the host with the per-VM token delivered at boot,
// configures the guest network the host asks for, reports when the VM's
// required ports accept connections, sends heartbeats and answers host
// requests (ping, exec, login, write_file, shutdown).
//
// Its channel to the host is, by default, whichever the guest has: the
// virtio-serial port named hearth.agent (QEMU), else vsock port 1024
// (Firecracker), where it accepts one host connection at a time. With
// -listen it listens on a given vsock port or, for development and test
// harnesses standing in for Firecracker's vsock, on a Unix socket.
//
// Alongside, it serves the work API (processes and files run as a guest
// user, internal/workapi) on a data channel: the virtio-serial port named
// hearth.data with a virtio-serial agent port, vsock port 1025 with vsock,
// or what -data-listen says (none with -listen unix:... unless given).
//
// The token is read from the first source that exists. With virtio-serial
// the defaults are QEMU fw_cfg, /run/hearth/token and hearth.token= on the
// kernel command line, read once; with a listener they are Firecracker's
// MMDS (version 2, at 169.254.169.254 or -mmds-url), /run/hearth/token and
// the kernel command line, read again for every host connection, so that
// a VM restored from a snapshot proves its own token.
//
// Usage:
//
//	hearth-agent [-listen vsock:PORT|unix:PATH] [-port DEVICE] [-data-listen vsock:PORT|unix:PATH]
//	             [-token-source SRC[,SRC...]]... [-token-file FILE] [-mmds-url URL]
//
// A token source is "mmds", "mmds:URL", "cmdline:PATH" or a file path.
//
// Build it static: CGO_ENABLED=0 go build -ldflags "-X main.version=..." ./cmd/hearth-agent
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hearth-project/hearth/internal/agent"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run())
}

func run() int {
	opts, showVersion, err := agent.ParseFlags("hearth-agent", os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "hearth-agent:", err)
		return 2
	}
	if showVersion {
		fmt.Println(version)
		return 0
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts.Version = version
	opts.Logger = logger
	logger.Info("hearth-agent starting", "version", version)
	if err := agent.Run(ctx, opts); err != nil && !errors.Is(err, context.Canceled) {
		logger.Error("hearth-agent failed", "err", err)
		return 1
	}
	return 0
}

// Command hearth-agent is the hearth guest agent. It runs inside every VM,
// authenticates to the host over the hearth.agent virtio-serial port with
// the per-VM token delivered at boot, configures the guest network the host
// asks for, reports when the VM's required ports accept connections, sends
// heartbeats and answers host requests (ping, exec, shutdown).
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
	port := flag.String("port", "", "agent port device (default: the virtio-serial port named "+agent.PortName+")")
	tokenFile := flag.String("token-file", "", "read the token from this file only (default: QEMU fw_cfg, /run/hearth/token, then hearth.token= on the kernel command line)")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()

	if *showVersion {
		fmt.Println(version)
		return 0
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := agent.Options{Port: *port, Version: version, Logger: logger}
	if *tokenFile != "" {
		opts.TokenSources = []string{*tokenFile}
	}
	logger.Info("hearth-agent starting", "version", version)
	if err := agent.Run(ctx, opts); err != nil && !errors.Is(err, context.Canceled) {
		logger.Error("hearth-agent failed", "err", err)
		return 1
	}
	return 0
}

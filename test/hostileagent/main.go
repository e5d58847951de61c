// Command hostileagent is the hearth guest agent made hostile, for tests
// and benchmarks of how the host bounds a guest: it is hearth-agent (same
// flags, same channels, same token sources; it authenticates with the VM's
// token and configures the network), with its channel wrapped by package
// hostile, which breaks the protocol as the mode says once the agent is
// ready. The mode (see package hostile: heartbeat-flood, oversize,
// malformed, bad-port, stall, hangup, evil-text, console, combined with
// commas) comes from, in order: the environment variable HEARTH_HOSTILE
// (the fake Firecracker passes its environment to its guest), the file
// /etc/hearth/hostile (baked into an image), or the mode it was built
// with (-ldflags "-X main.mode=...").
//
//	hostileagent [-listen vsock:PORT|unix:PATH] [-port DEVICE]
//	             [-token-source SRC[,SRC...]]... [-token-file FILE] [-mmds-url URL] [-version]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/hearth-project/hearth/internal/agent"
	"github.com/hearth-project/hearth/test/hostileagent/hostile"
)

// mode is the built-in mode, set with -ldflags "-X main.mode=...".
var mode = ""

// version is what the hostile agent reports as its version.
const version = "hostile"

// modeFile is where an image carries the mode.
const modeFile = "/etc/hearth/hostile"

func main() {
	os.Exit(run())
}

func run() int {
	// hearth-agent's flags: the fake Firecracker and images start the
	// agent with them.
	opts, showVersion, err := agent.ParseFlags("hostileagent", os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostileagent:", err)
		return 2
	}
	if showVersion {
		fmt.Println(version)
		return 0
	}
	m := mode
	if b, err := os.ReadFile(modeFile); err == nil {
		m = strings.TrimSpace(string(b))
	}
	if v := os.Getenv("HEARTH_HOSTILE"); v != "" {
		m = v
	}
	modes, err := hostile.Modes(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostileagent:", err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	logger.Info("hearth-agent starting, hostile", "mode", m)
	opts.Version = version
	opts.Logger = logger
	opts.WrapChannel = hostile.New(modes).Wrap
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, opts); err != nil && !errors.Is(err, context.Canceled) {
		logger.Error("hostileagent failed", "err", err)
		return 1
	}
	return 0
}

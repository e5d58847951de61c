package app

import (
	"fmt"
	"log/slog"
	"net/http"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/config"
	"github.com/hearth-project/hearth/internal/httplimit"
)

// fdReserve is the descriptors kept for everything but API connections:
// the store, VM sockets and consoles, netlink, logs.
const fdReserve = 1024

// newHTTPServer builds the API's HTTP server with the [api] limits; serve
// it with srv.Serve(conns.Listener(ln)).
func newHTTPServer(a config.APIConfig, h http.Handler, log *slog.Logger) (*http.Server, *httplimit.Limiter) {
	return httplimit.Config{
		ReadHeaderTimeout: a.ReadHeaderTimeout.Duration,
		ReadTimeout:       a.ReadTimeout.Duration,
		WriteTimeout:      a.WriteTimeout.Duration,
		IdleTimeout:       a.IdleTimeout.Duration,
		MaxHeaderBytes:    a.MaxHeaderBytes,
		MaxConns:          a.MaxConnections,
		MaxConnsPerClient: a.MaxConnectionsPerClient,
	}.Server(h, log)
}

// openFilesWanted is the RLIMIT_NOFILE that fits api.max_connections.
func openFilesWanted(a config.APIConfig) uint64 { return uint64(a.MaxConnections) + fdReserve }

// raiseOpenFiles raises the soft open-files limit to want (and the hard
// one too, where the process may) and returns the soft limit it ends
// with; an error says why it stays below want.
func raiseOpenFiles(want uint64) (uint64, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("read the open-files limit: %w", err)
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	if lim.Max < want {
		raised := unix.Rlimit{Cur: want, Max: want}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &raised); err == nil {
			return want, nil
		}
		// Not allowed to raise the hard limit: go as far as it allows.
		want = lim.Max
	}
	lim.Cur = want
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("raise the open-files limit to %d: %w", want, err)
	}
	return lim.Cur, nil
}

// checkOpenFiles reports whether the open-files limit fits
// api.max_connections (serve raises the soft limit up to the hard one,
// and the hard one too when it runs as root).
func checkOpenFiles(cfg config.Config) Check {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return warn("open files", "cannot read RLIMIT_NOFILE: "+err.Error(), "")
	}
	want := openFilesWanted(cfg.API)
	detail := fmt.Sprintf("limit %d (hard %d); api.max_connections %d needs %d", lim.Cur, lim.Max, cfg.API.MaxConnections, want)
	if lim.Max >= want {
		return ok("open files", detail)
	}
	if canRaiseHardLimits() {
		return ok("open files", detail+"; hearth serve raises the hard limit (CAP_SYS_RESOURCE)")
	}
	return warn("open files", detail+": a flood of connections could exhaust descriptors",
		fmt.Sprintf("raise the hard limit (systemd: LimitNOFILE=%d) or lower api.max_connections", want))
}

// canRaiseHardLimits reports whether this process has CAP_SYS_RESOURCE.
func canRaiseHardLimits() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_SYS_RESOURCE/32].Effective&(1<<(unix.CAP_SYS_RESOURCE%32)) != 0
}

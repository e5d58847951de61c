package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/internal/viewer"
)

// serveHearthCmd is the hidden subcommand that runs hearth's side in its own
// process, so that /proc shows its CPU and memory alone.
const serveHearthCmd = "serve-hearth"

// serveHearth accepts viewers on a loopback port the way hearth does — a
// WebSocket with the "binary" subprotocol, compression off — dials the VNC
// server and runs viewer.Bridge with the keepalive and idle limit of
// hearth's default configuration. It prints
// "listening ADDR" once ready and runs until SIGTERM or SIGINT.
func serveHearth(args []string) error {
	fs := flag.NewFlagSet(serveHearthCmd, flag.ContinueOnError)
	vncAddr := fs.String("vnc", "", "VNC server address")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	bufSize := fs.Int("buffer", 0, "viewer.Options.BufferSize (0: hearth's default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ws, err := viewer.Accept(w, r, nil, *bufSize) // as hearth's viewer socket does
			if err != nil {
				return
			}
			var d net.Dialer
			vnc, err := d.DialContext(r.Context(), "tcp", *vncAddr)
			if err != nil {
				ws.Close(viewer.ReasonVNCUnreachable.Code, viewer.ReasonVNCUnreachable.Text)
				return
			}
			_, _ = viewer.Bridge(ctx, ws, vnc, viewer.Options{
				PingInterval: 20 * time.Second,
				IdleTimeout:  30 * time.Minute,
				BufferSize:   *bufSize,
			})
		}),
	}
	fmt.Printf("listening %s\n", ln.Addr())
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// Command fakeauth runs the fake OAuth authorization server of package
// fakeauth (test/fakeauth/fakeauth) for hearth's provider login tests.
//
//	fakeauth [-listen 127.0.0.1:0] [-client-id fake] [-token-lifetime 1h]
//
// It prints "fakeauth: listening on http://HOST:PORT" once it accepts
// connections, and stops on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hearth-project/hearth/test/fakeauth/fakeauth"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	clientID := flag.String("client-id", "fake", "the only client_id accepted")
	lifetime := flag.Duration("token-lifetime", time.Hour, "access tokens' expires_in")
	flag.Parse()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakeauth: %v\n", err)
		os.Exit(1)
	}
	srv := &http.Server{
		Handler:           fakeauth.New(fakeauth.Options{ClientID: *clientID, TokenLifetime: *lifetime}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	fmt.Printf("fakeauth: listening on http://%s\n", ln.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(os.Stderr, "fakeauth: %v\n", err)
			os.Exit(1)
		}
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}
}

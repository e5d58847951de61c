package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/agentapi"
)

// testVsockListener listens on a free vsock port, or skips the test where
// the machine has no vsock (the host side cannot be tested here either
// way: a guest cannot connect to its own listener without the loopback
// transport).
func testVsockListener(t *testing.T) *vsockListener {
	t.Helper()
	l, err := listenVsock(vsockPortAny)
	if err != nil {
		t.Skipf("no usable AF_VSOCK here: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestVsockListener checks that the listener binds, blocks in Accept, and
// that Close ends a blocked Accept with net.ErrClosed.
func TestVsockListener(t *testing.T) {
	l := testVsockListener(t)
	addr := l.Addr().(vsockAddr)
	if addr.port == vsockPortAny || l.Addr().Network() != "vsock" || l.Addr().String() != "any:"+strconv.FormatUint(uint64(addr.port), 10) {
		t.Fatalf("Addr() = %v", l.Addr())
	}
	// The port is taken.
	if l2, err := listenVsock(addr.port); err == nil {
		l2.Close()
		t.Fatalf("listened twice on vsock port %d", addr.port)
	}

	accepted := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Close()
		}
		accepted <- err
	}()
	select {
	case err := <-accepted:
		t.Fatalf("Accept returned without a connection: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-accepted:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end Accept")
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed listener = %v", err)
	}
	if err := l.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close = %v", err)
	}
}

// TestVsockServeStops checks that serving a vsock listener ends, with the
// listener closed, once ctx is done.
func TestVsockServeStops(t *testing.T) {
	t.Cleanup(checkGoroutines(t))
	token := newToken(t)
	opts, _ := testOptions(t, token)
	opts = opts.withDefaults()
	l := testVsockListener(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveListener(ctx, l, &opts) }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("serveListener = %v, want Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serveListener ignored ctx")
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("listener still open: %v", err)
	}
}

// TestRunVsock runs the agent with -listen vsock:PORT until ctx is done.
func TestRunVsock(t *testing.T) {
	t.Cleanup(checkGoroutines(t))
	token := newToken(t)
	opts, logs := testOptions(t, token)
	l := testVsockListener(t)
	port := l.Addr().(vsockAddr).port
	l.Close()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(agentapi.FormatToken(token)), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.TokenSources = []string{tokenFile}
	opts.Listen = "vsock:" + strconv.FormatUint(uint64(port), 10)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, opts) }()
	logs.waitFor(t, `"agent listening" addr=`+opts.Listen)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run ignored ctx")
	}
}

func TestVsockAddr(t *testing.T) {
	if s := (vsockAddr{cid: 3, port: 1024}).String(); s != "3:1024" {
		t.Fatalf("String() = %q", s)
	}
}

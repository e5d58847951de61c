package agentapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"
)

// dialRetryInterval is how often Dial retries.
const dialRetryInterval = 50 * time.Millisecond

// Dial connects to the agent socket of a VM (the host end of its
// virtio-serial port). The socket may not exist yet while the VMM starts,
// so Dial retries every 50ms until it connects or ctx is done.
func Dial(ctx context.Context, socketPath string) (net.Conn, error) {
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", socketPath)
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("agentapi: dial %s: %w (last error: %v)", socketPath, ctx.Err(), err)
		}
		t := time.NewTimer(dialRetryInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("agentapi: dial %s: %w (last error: %v)", socketPath, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// aLongTimeAgo is a deadline in the past, used to interrupt blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// watchContext applies ctx's deadline and cancellation to a connection
// through setDeadline (SetDeadline, SetReadDeadline or SetWriteDeadline)
// until the returned function is called, which clears the deadline again.
func watchContext(ctx context.Context, setDeadline func(time.Time) error) (stop func()) {
	if d, ok := ctx.Deadline(); ok {
		_ = setDeadline(d)
	}
	fired := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		_ = setDeadline(aLongTimeAgo)
		close(fired)
	})
	return func() {
		if !stopAfter() {
			<-fired
		}
		_ = setDeadline(time.Time{})
	}
}

// ctxErr returns err, or ctx's error wrapping err's text if ctx is done (a
// deadline set by watchContext makes I/O fail with a timeout error).
func ctxErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	// The connection's deadline can pass just before ctx notices its own.
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) && errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}

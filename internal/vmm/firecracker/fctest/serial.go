package fctest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/tokenbucket"
)

// dropWriter writes the way Firecracker writes its serial output, its
// log and its metrics: to a descriptor in non-blocking mode, dropping
// what cannot be written at once (a full pipe whose reader is slow or
// gone) instead of waiting. Firecracker's UART writes each byte the guest
// sends and counts the ones that fail; the guest never waits.
type dropWriter struct {
	mu      sync.Mutex
	fd      int
	lost    int64
	onError func(error) // told of a failed write, at most as often as Firecracker's rate-limited error log
	limiter tokenbucket.Bucket
}

// newDropWriter writes to fd. Failed writes are told to onError as often
// as Firecracker's rate-limited log macros let an error through (v1.16:
// 10 messages, then one per 500 ms).
func newDropWriter(fd int) *dropWriter {
	return &dropWriter{fd: fd, limiter: tokenbucket.New(2, 10)}
}

// openDropFile opens path as Firecracker's open_file_nonblock does (v1.16,
// src/vmm/src/utils/mod.rs): created if missing, read-write, non-blocking.
// Read-write means a FIFO opens without waiting for a reader, and writes
// never fail for want of one: they fill the pipe, then fail with EAGAIN.
func openDropFile(path string) (*dropWriter, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_NONBLOCK|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return newDropWriter(fd), nil
}

// NonBlockingStdout puts the process's standard output into non-blocking
// mode, as Firecracker does when it writes the serial console there (a
// restored VM's), and returns a writer of it that drops what a full pipe
// cannot take. Only a fake Firecracker process's main may call it: the
// mode belongs to the open file, which the process shares with whoever
// else writes it.
func NonBlockingStdout() io.Writer {
	if err := unix.SetNonblock(1, true); err != nil {
		return os.Stdout
	}
	return newDropWriter(1)
}

// Write implements io.Writer. It never fails: a write the descriptor
// cannot take is counted as lost, as Firecracker's UART does.
func (w *dropWriter) Write(p []byte) (int, error) {
	w.writeAll(p)
	return len(p), nil
}

// writeAll writes p as Rust's write_all does on a non-blocking
// descriptor: as much as the descriptor takes, then (on EAGAIN, a full
// pipe) the rest is dropped. It returns how many bytes were dropped.
func (w *dropWriter) writeAll(p []byte) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	rest := p
	for len(rest) > 0 {
		n, err := unix.Write(w.fd, rest)
		if n > 0 {
			rest = rest[n:]
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			w.lost += int64(len(rest))
			if w.onError != nil && w.limiter.Take(time.Now(), 1) {
				w.onError(err)
			}
			return len(rest)
		}
	}
	return 0
}

// Lost is how many bytes could not be written.
func (w *dropWriter) Lost() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lost
}

func (w *dropWriter) Close() error {
	if w.fd <= 2 {
		return nil
	}
	return unix.Close(w.fd)
}

// serialErrorf is Firecracker's message for a byte its UART could not
// write.
func serialErrorf(err error) string {
	return fmt.Sprintf("Failed the write to serial: IOError(%v)", err)
}

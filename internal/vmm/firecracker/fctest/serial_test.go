package fctest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The serial output is written as Firecracker writes it: a FIFO opens
// without a reader, a full pipe drops what it cannot take instead of
// holding the guest up, errors are logged at Firecracker's limited rate,
// and a reader that comes later gets what the pipe held and what follows.
func TestSerialOutputDropsWhatAFullPipeCannotTake(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "console.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := openDropFile(fifo)
	if err != nil {
		t.Fatalf("opening a FIFO nobody reads: %v", err)
	}
	defer w.Close()
	var errs int
	w.onError = func(error) { errs++ }
	chunk := bytes.Repeat([]byte("flood\n"), 1000)
	start := time.Now()
	var offered int
	for offered < 1<<20 {
		n, err := w.Write(chunk)
		if err != nil || n != len(chunk) {
			t.Fatalf("Write = %d, %v; want all of it taken (written or dropped)", n, err)
		}
		offered += n
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("writing %d bytes into a full pipe took %v: the writer waited for a reader", offered, took)
	}
	lost := w.Lost()
	if lost < int64(offered)-(1<<20) || lost > int64(offered)-(4<<10) {
		t.Fatalf("%d of %d bytes lost; want all but a pipe's worth", lost, offered)
	}
	if errs == 0 || errs > 10 {
		t.Fatalf("%d write errors reported for %d lost bytes; want a few, as Firecracker's rate-limited log", errs, lost)
	}

	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	held := drain(t, r)
	if int64(len(held)) != int64(offered)-lost {
		t.Fatalf("the reader got %d bytes; %d were written", len(held), int64(offered)-lost)
	}
	w.Write([]byte("after\n"))
	if got := drain(t, r); string(got) != "after\n" {
		t.Fatalf("then %q", got)
	}
	if !strings.HasPrefix(serialErrorf(syscall.EAGAIN), "Failed the write to serial") {
		t.Fatal(serialErrorf(syscall.EAGAIN))
	}
}

func drain(t *testing.T, f *os.File) []byte {
	t.Helper()
	var out []byte
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		_ = f.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := f.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return out
		}
	}
	return out
}

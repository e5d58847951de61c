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

// Firecracker's log and metrics may be named pipes (its documentation
// recommends them) and are written as the serial output is: a pipe nobody
// reads fills, then whole lines are lost and counted, a FlushMetrics that
// cannot write fails, and neither the API nor the guest ever waits.
func TestLogAndMetricsFIFOsNobodyReadsNeverHoldFirecrackerUp(t *testing.T) {
	ts := startServer(t, Options{LogFlood: 500 * time.Millisecond})
	logs, metrics := filepath.Join(ts.dir, "log.fifo"), filepath.Join(ts.dir, "metrics.fifo")
	for _, p := range []string{logs, metrics} {
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ts.ok("PUT", "/logger", `{"log_path":"`+logs+`","level":"Info","show_level":true}`)
	ts.ok("PUT", "/metrics", `{"metrics_path":"`+metrics+`"}`)
	kernel := ts.file("vmlinux", 1024)
	ts.ok("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`","boot_args":"reboot=k"}`)
	start := time.Now()
	ts.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	// The flood fills both pipes; the API still answers at once, and a
	// flush that finds its pipe full fails as Firecracker's does.
	var failed int
	for range 200 {
		if code, _ := ts.do("PUT", "/actions", `{"action_type":"FlushMetrics"}`); code == 400 {
			failed++
		}
	}
	if failed == 0 {
		t.Error("200 FlushMetrics into a full pipe all succeeded")
	}
	r, err := os.OpenFile(logs, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var got []byte
	waitFor(t, "the flood's last line", func() bool {
		got = append(got, drain(t, r)...)
		return bytes.Contains(got, []byte("fctest: log flood done"))
	})
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the flood took %v: Firecracker waited for a reader", took)
	}
	last := string(got[bytes.LastIndex(got, []byte("fctest: log flood done")):])
	if strings.Contains(last, "(0 lost)") {
		t.Errorf("want lines and metrics lost to the full pipes: %q", last)
	}
	// What went out went out in whole lines.
	for _, l := range strings.Split(strings.TrimSuffix(string(got), "\n"), "\n") {
		if !strings.Contains(l, "[test-vm:") {
			t.Fatalf("a partial line in the log: %q", l)
		}
	}
	if ts.log.missedLines() == 0 {
		t.Error("no missed log lines counted")
	}
}

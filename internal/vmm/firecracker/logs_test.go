package firecracker

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearth-project/hearth/internal/tokenbucket"
	"github.com/hearth-project/hearth/internal/vmm"
)

// stopFollowing is what a daemon's exit does to a VM's follower: reading
// stops, and the pipes keep what they hold for the next daemon.
func stopFollowing(t *testing.T, dir string) {
	t.Helper()
	f := followerOf(dir)
	if f == nil {
		t.Fatalf("%s is not followed", dir)
	}
	f.abandon()
	select {
	case <-f.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the follower did not stop")
	}
}

// logBytes is what the files holding h's Firecracker log, metrics and
// output take on disk, or their length if more: the kept log, the FIFOs,
// and the files an older hearth had Firecracker write.
func logBytes(t *testing.T, h vmm.Handle) int64 {
	t.Helper()
	var n int64
	count := func(path string) {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err == nil {
			n += max(st.Blocks*512, st.Size)
		}
	}
	root := vmRoot(h)
	for _, name := range []string{fileLogFIFO, fileMetricsFIFO, fileOutFIFO, fileLog, fileMetrics, fileOut} {
		count(filepath.Join(root, name))
	}
	_ = filepath.WalkDir(keptLogDir(h), func(path string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			count(path)
		}
		return nil
	})
	return n
}

var floodDone = regexp.MustCompile(`fctest: log flood done: (\d+) lines \((\d+) lost\), (\d+) metrics \((\d+) lost\)`)

// TestFloodedFirecrackerLogStaysBounded: a guest makes its Firecracker
// write log lines and metrics as fast as they are taken, and the host
// asks for metrics again and again. What the VM's directory (and jail)
// holds of them stays within the bound the whole time; hearth's log gets
// no more of the VM's lines than its rate allows, plus summaries of how
// many it left out; the kept log still has the last lines, so the VM's
// exit is explained; and another VM's lines are not held back by the
// flood.
func TestFloodedFirecrackerLogStaysBounded(t *testing.T) {
	t.Run("direct", func(t *testing.T) { testFlood(t, JailerConfig{}) })
	t.Run("jailed", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root: the jailer chroots and drops privileges")
		}
		needFake(t)
		jailer := filepath.Join(filepath.Dir(fakeFC), "jailer")
		if err := os.Symlink(fakeFC, jailer); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
		testFlood(t, JailerConfig{Binary: jailer, UID: 65534, GID: 65534})
	})
}

func testFlood(t *testing.T, jail JailerConfig) {
	const (
		maxSize = 64 << 10
		rate    = 5
		burst   = 10
		flood   = 2 * time.Second
	)
	var logs syncBuffer
	d := newFakeDriver(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		LogMaxSize: maxSize, LogRate: rate, LogBurst: burst, Jailer: jail})
	ctx := t.Context()
	begin := time.Now()

	hq := startVM(t, d, fakeSpec(t, "vm-quiet1"))

	t.Setenv("HEARTH_FAKEFC_LOG_FLOOD", flood.String())
	h := startVM(t, d, fakeSpec(t, "vm-flood1"))
	exited, err := d.Watch(h)
	if err != nil {
		t.Fatal(err)
	}
	// The host flushes metrics over and over meanwhile; a flush into a
	// full pipe fails, as Firecracker's does.
	flushed := make(chan int)
	go func() {
		c, ok := NewClient(h.ControlSocket, 5*time.Second), 0
		for range 300 {
			if c.Action(ctx, ActionFlushMetrics) == nil {
				ok++
			}
		}
		flushed <- ok
	}()

	var peak int64
	var done []string
	deadline := time.Now().Add(2 * time.Minute)
	for done == nil {
		peak = max(peak, logBytes(t, h))
		if kept, err := keptLines(h, maxSize); err == nil {
			for _, l := range kept {
				if m := floodDone.FindStringSubmatch(l); m != nil {
					done = m
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the flood's last line never reached the kept log; the VM's log files hold %d bytes\n%s", logBytes(t, h), lastBytes(logs.String(), 2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("flood: %s log lines (%s lost to full pipes), %s metrics (%s lost); %d FlushMetrics of 300 succeeded", done[1], done[2], done[3], done[4], <-flushed)

	// The quiet VM's lines all reached hearth's log meanwhile.
	c := NewClient(hq.ControlSocket, 5*time.Second)
	if err := c.Action(ctx, ActionFlushMetrics); err != nil {
		t.Fatal(err)
	}
	waitLog(t, &logs, `vm=vm-quiet1 line="`, `The API server received a PUT request on \"/actions\".`)

	if err := d.Stop(ctx, h, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("Watch did not see the process end")
	}
	if why := d.ExitReason(h); !strings.Contains(why, "exit_code=0") {
		t.Errorf("exit reason after a flood and a reboot: %q", why)
	}
	peak = max(peak, logBytes(t, h))
	if err := d.Cleanup(ctx, h); err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(begin)
	if peak > maxSize {
		t.Errorf("the VM's Firecracker log files took %d bytes; the bound is %d", peak, maxSize)
	}

	var forwarded, summaries, leftOut int
	for _, l := range strings.Split(logs.String(), "\n") {
		switch {
		case !strings.Contains(l, "vm=vm-flood1"):
		case strings.Contains(l, "msg=firecracker "), strings.Contains(l, `msg="firecracker metrics"`):
			forwarded++
		case strings.Contains(l, `msg="firecracker log lines left out of hearth's log"`):
			summaries++
			if m := regexp.MustCompile(`lines=(\d+)`).FindStringSubmatch(l); m != nil {
				leftOut += atoi(m[1])
			}
		}
	}
	if most := burst + int(elapsed.Seconds()*rate) + 1; forwarded > most {
		t.Errorf("%d of the flooding VM's lines reached hearth's log in %v; at %d a second after %d, want at most %d", forwarded, elapsed.Round(time.Millisecond), rate, burst, most)
	}
	if most := int(elapsed/summaryEvery) + 2; summaries == 0 || summaries > most {
		t.Errorf("%d summaries of left-out lines in %v; want 1 to %d", summaries, elapsed.Round(time.Millisecond), most)
	}
	// Every line that reached the pipes was either forwarded or counted.
	if got, want := forwarded+leftOut, atoi(done[1])-atoi(done[2])+atoi(done[3])-atoi(done[4]); got < want {
		t.Errorf("%d lines forwarded or counted as left out; the flood got %d into the pipes", got, want)
	}
	t.Logf("in %v: peak %d bytes on disk (bound %d); %d lines in hearth's log, %d left out, %d summaries",
		elapsed.Round(time.Millisecond), peak, maxSize, forwarded, leftOut, summaries)
}

// TestAdoptedVMKeepsBeingFollowed: after the daemon that started a VM goes
// away, what its Firecracker writes is held in the pipes; the next daemon
// reads it, goes on with the same kept log, and forwards what follows,
// up to the exit, which it explains.
func TestAdoptedVMKeepsBeingFollowed(t *testing.T) {
	var logs1, logs2 syncBuffer
	d1 := newFakeDriver(t, Config{Logger: slog.New(slog.NewTextHandler(&logs1, nil))})
	ctx := t.Context()
	h := startVM(t, d1, fakeSpec(t, "vm-adopt1"))
	if _, err := d1.Watch(h); err != nil { // as the daemon's supervisor does
		t.Fatal(err)
	}
	waitLog(t, &logs1, `vm=vm-adopt1 line="`, `PUT request on \"/actions\"`)
	stopFollowing(t, h.Dir) // the first daemon is gone

	// Firecracker logs each request: these lines wait in the pipe.
	c := NewClient(h.ControlSocket, 5*time.Second)
	for range 3 {
		if err := c.Action(ctx, ActionFlushMetrics); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Get(ctx, "/machine-config", nil); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs1.String(), `GET request on \"/machine-config\"`) {
		t.Fatal("the stopped follower still forwards")
	}

	d2 := newFakeDriver(t, Config{Logger: slog.New(slog.NewTextHandler(&logs2, nil))})
	exited, err := d2.Watch(h)
	if err != nil {
		t.Fatal(err)
	}
	waitLog(t, &logs2, `vm=vm-adopt1 line="`, `GET request on \"/machine-config\"`)
	if err := c.Put(ctx, "/mmds", map[string]string{"after": "adoption"}); err != nil {
		t.Fatal(err)
	}
	waitLog(t, &logs2, `vm=vm-adopt1 line="`, `PUT request on \"/mmds\"`)
	if err := d2.Stop(ctx, h, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Fatal("Watch did not see the process end")
	}
	if why := d2.ExitReason(h); !strings.Contains(why, "exit_code=0") {
		t.Errorf("exit reason after adoption: %q", why)
	}
	waitLog(t, &logs2, `vm=vm-adopt1 line="`, `exit_code=0`)
	// One kept log, both daemons' lines in order, the start line first.
	kept, err := keptLines(h, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(kept, "\n")
	order := []string{"Running Firecracker", `"/actions"`, `"/machine-config"`, `"/mmds"`, "exit_code=0"}
	at := 0
	for _, want := range order {
		i := strings.Index(all[at:], want)
		if i < 0 {
			t.Fatalf("kept log lacks %q after offset %d:\n%s", want, at, all)
		}
		at += i
	}
	if err := d2.Cleanup(ctx, h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(keptLogDir(h)); err != nil {
		t.Errorf("Cleanup removed the kept log: %v", err)
	}
}

// TestOlderHearthsLogFilesAreFreedBehindTheReader: a VM an older hearth
// started has Firecracker write regular files for its whole life; the
// follower forwards what is appended, skips what it cannot read in time,
// and frees the disk blocks of what it has read but the last few KiB,
// which ExitReason still reads.
func TestOlderHearthsLogFilesAreFreedBehindTheReader(t *testing.T) {
	var logs syncBuffer
	d := newTestDriver(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	dir := filepath.Join(t.TempDir(), "vm-old1")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fileLog)
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteString("before the daemon watched\n"); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(w.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); errors.Is(err, unix.EOPNOTSUPP) {
		t.Skipf("%s cannot punch holes", dir)
	}
	exited := make(chan struct{})
	h := vmm.Handle{Dir: dir}
	d.follow(h, exited)
	t.Cleanup(func() {
		if f := followerOf(dir); f != nil {
			stopFollowing(t, dir)
		}
	})
	line := strings.Repeat("x", 100)
	chunk := strings.Repeat("[vm-old1:fc_vcpu 0:ERROR] "+line+"\n", 10000) // 1.3 MB
	for range 8 {
		if _, err := w.WriteString(chunk); err != nil {
			t.Fatal(err)
		}
		time.Sleep(followInterval / 2)
	}
	if _, err := w.WriteString("the last line\n"); err != nil {
		t.Fatal(err)
	}
	waitLog(t, &logs, `vm=vm-old1 line="`, "the last line")
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if disk := st.Blocks * 512; disk > 2*(legacySkip+legacyKeep) || st.Size < 8*int64(len(chunk)) {
		t.Errorf("the file is %d bytes long and takes %d on disk; want at most %d taken", st.Size, disk, 2*(legacySkip+legacyKeep))
	}
	if _, err := w.WriteString("2026-01-01T00:00:00.000000000 [vm-old1:main] Firecracker exiting successfully. exit_code=0\n"); err != nil {
		t.Fatal(err)
	}
	close(exited)
	waitLog(t, &logs, `vm=vm-old1 line="`, "exit_code=0")
	if why := d.ExitReason(h); !strings.Contains(why, "exit_code=0") {
		t.Errorf("exit reason: %q", why)
	}
	if got := logs.String(); strings.Contains(got, "before the daemon watched") {
		t.Errorf("forwarded what an earlier daemon had:\n%s", got)
	}
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

// waitLog waits until a line of logs has every one of parts.
func waitLog(t *testing.T, logs *syncBuffer, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, l := range strings.Split(logs.String(), "\n") {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(l, p)
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line with %q in hearth's log:\n%s", parts, lastBytes(logs.String(), 3000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func TestMountUnder(t *testing.T) {
	if m, err := mountUnder(t.TempDir()); err != nil || m != "" {
		t.Fatalf("a fresh temp dir has a mount under it: %q %v", m, err)
	}
	if m, err := mountUnder("/proc"); err != nil || m != "/proc" {
		t.Fatalf("mountUnder(/proc) = %q %v", m, err)
	}
}

// TestLongLines: a metrics line of many KiB (Firecracker's are) is
// forwarded whole; a log line longer than maxLogLine is cut, and what
// follows its end is a line of its own.
func TestLongLines(t *testing.T) {
	var logs syncBuffer
	f := &follower{vm: "vm-long1", log: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		bucket: tokenbucket.New(100, 100)}
	metrics := `{"utc_timestamp_ms":1,"devices":"` + strings.Repeat("m", 20<<10) + `"}` + "\n"
	m := &source{kind: srcMetrics}
	f.take(m, []byte(metrics[:5000]))
	f.take(m, []byte(metrics[5000:]))
	l := &source{kind: srcLog}
	f.take(l, []byte(strings.Repeat("x", 3*maxLogLine)))
	f.take(l, []byte("y\nnext\n"))
	got := logs.String()
	if !strings.Contains(got, `msg="firecracker metrics" vm=vm-long1`) || !strings.Contains(got, strings.Repeat("m", 20<<10)) {
		t.Errorf("a 20 KiB metrics line was not forwarded whole")
	}
	if !strings.Contains(got, `line=`+strings.Repeat("x", maxLogLine)+"\n") || strings.Contains(got, "xy") {
		t.Errorf("a long log line was not cut at %d bytes", maxLogLine)
	}
	if !strings.Contains(got, "line=next\n") {
		t.Errorf("the line after a cut one is lost:\n%s", lastBytes(got, 500))
	}
}

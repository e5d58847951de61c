package vm_test

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/consolelog"
	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vmm"
)

func (e *env) handle(id string) vmm.Handle {
	e.t.Helper()
	v, err := e.st.GetVM(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	h, err := vmm.UnmarshalHandle(v.Handle)
	if err != nil {
		e.t.Fatal(err)
	}
	return h
}

func consoleText(t *testing.T, dir string) string {
	t.Helper()
	b, err := io.ReadAll(consolelog.NewReader(dir, 0))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A daemon that goes away stops reading; the next one reads the same
// console again, into the same log, from where it ended.
func TestConsoleRecordedAcrossRestarts(t *testing.T) {
	e := newEnv(t)
	m := e.manager()
	v, err := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	v = waitFor(t, m, v.ID, store.StateReady)
	dir := vm.ConsolePath(v)
	if dir != filepath.Join(v.Dir, "console") {
		t.Fatalf("console kept at %s; want the VM directory's console log", dir)
	}
	h := e.handle(v.ID)
	e.driver.WriteConsole(h, []byte("before the restart\n"))
	eventually(t, func() bool { return strings.Contains(consoleText(t, dir), "before the restart") }, "console not recorded")
	if err := m.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// While no daemon reads, the guest writes (a FIFO keeps a pipe's
	// worth; QEMU would discard it).
	e.driver.WriteConsole(h, []byte("while hearth was away\n"))
	m2 := e.manager()
	waitFor(t, m2, v.ID, store.StateReady)
	e.driver.WriteConsole(h, []byte("after the restart\n"))
	eventually(t, func() bool { return strings.Contains(consoleText(t, dir), "after the restart") }, "console not recorded after the restart")
	want := "fake kernel booting\nfake init\nbefore the restart\nwhile hearth was away\nafter the restart\n"
	if got := consoleText(t, dir); got != want {
		t.Fatalf("console after a restart:\n%q\nwant\n%q", got, want)
	}
}

// A guest flooding its console is read no faster than the configured
// rate, its log stays within its bound, and another VM's console is
// recorded meanwhile as promptly as ever.
func TestConsoleFloodIsRateLimitedAndBounded(t *testing.T) {
	e := newEnv(t)
	const rate, burst = 256 << 10, 64 << 10
	lim := consolelog.Limits{Max: 128 << 10, Head: 16 << 10}
	m := e.managerWith(func(c *vm.Config) { c.Console = vm.ConsoleConfig{Limits: lim, Rate: rate, Burst: burst} })
	ctx := context.Background()
	var vms [2]store.VM
	for i := range vms {
		v, err := m.Create(ctx, vm.CreateRequest{UserID: "alice", Image: "minimal"})
		if err != nil {
			t.Fatal(err)
		}
		vms[i] = waitFor(t, m, v.ID, store.StateReady)
	}
	flooder, quiet := vms[0], vms[1]
	fdir, qdir := vm.ConsolePath(flooder), vm.ConsolePath(quiet)
	eventually(t, func() bool {
		i, _ := consolelog.Stat(fdir)
		return i.Size == 30
	}, "boot lines not recorded")
	fh, qh := e.handle(flooder.ID), e.handle(quiet.ID)

	start := time.Now()
	stop := make(chan struct{})
	var offered atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		chunk := []byte(strings.Repeat("flood flood flood flood flood flood flood flood flood flood\n", 64))
		for {
			select {
			case <-stop:
				return
			default:
			}
			// What the pipe cannot take is dropped, as Firecracker does.
			offered.Add(int64(e.driver.WriteConsole(fh, chunk)))
		}
	}()
	// The quiet VM's lines arrive promptly throughout.
	var worst time.Duration
	for i := range 5 {
		time.Sleep(200 * time.Millisecond)
		line := "quiet line " + string(rune('a'+i)) + "\n"
		sent := time.Now()
		e.driver.WriteConsole(qh, []byte(line))
		eventually(t, func() bool { return strings.Contains(consoleText(t, qdir), line) }, "the quiet VM's console is not recorded during the flood")
		worst = max(worst, time.Since(sent))
	}
	close(stop)
	wg.Wait()
	info, err := consolelog.Stat(fdir)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start) // after Stat: all that was read is within it
	read := info.Size - 30
	limit := int64(burst + consolelog.ReadSize + rate*took.Seconds())
	t.Logf("flood of %v: the guest's writes took %d bytes into the pipe, the daemon read %d (limit %d); disk %d (bound %d); "+
		"the quiet VM's slowest line took %v", took.Round(time.Millisecond), offered.Load(), read, limit, info.Disk, lim.Max, worst)
	if read > limit {
		t.Fatalf("read %d bytes of the flood in %v; the rate allows %d", read, took, limit)
	}
	if read < burst {
		t.Fatalf("read only %d bytes of the flood in %v", read, took)
	}
	if info.Disk > lim.Max {
		t.Fatalf("the flooding VM's console holds %d bytes on disk; bound %d", info.Disk, lim.Max)
	}
	if worst > 2*time.Second {
		t.Fatalf("a line of the quiet VM took %v to be recorded during the flood", worst)
	}
}

// A VM's last words before its process ends are in its failure's console
// tail.
func TestFailedVMsLastWordsAreKept(t *testing.T) {
	e := newEnv(t)
	m := e.manager()
	v, err := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, m, v.ID, store.StateReady)
	h := e.handle(v.ID)
	e.driver.WriteConsole(h, []byte("Kernel panic - not syncing: the last words\n"))
	e.driver.Kill(h.PID)
	got := waitFor(t, m, v.ID, store.StateFailed)
	if tail := vm.ConsoleTail(got, 4096); !strings.Contains(tail, "the last words") {
		t.Fatalf("console tail of the failed VM: %q", tail)
	}
}

func TestCreateRefusedWhenDiskIsLow(t *testing.T) {
	e := newEnv(t)
	m := e.managerWith(func(c *vm.Config) { c.MinFree = 1 << 60 })
	_, err := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(errdefs.Public(err), "low disk space") {
		t.Fatalf("create with low disk space: %v", err)
	}
	if vms, _ := e.st.ListVMs(context.Background(), store.VMFilter{IncludeDestroyed: true}); len(vms) != 0 {
		t.Fatalf("a refused create left %d vms", len(vms))
	}
	if err := m.CheckDiskSpace(); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("CheckDiskSpace = %v", err)
	}
}

package e2e

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-project/hearth/api"
	"github.com/hearth-project/hearth/internal/client"
)

const bootWait = 3 * time.Minute // generous: CI may have no KVM and two busy cores

// TestConcurrentVMsReachReadyAndDeleteReturnsEverything boots three real
// guests at once; each is ready only when its agent says so, and deleting
// them leaves no process, socket, overlay or directory.
func TestConcurrentVMsReachReadyAndDeleteReturnsEverything(t *testing.T) {
	d := newDaemon(t)
	ctx := ctxT(t, 5*time.Minute)
	vms := make([]api.VM, 3)
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for i := range vms {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "minimal", MemoryMiB: 192})
			if err != nil {
				errs <- err
				return
			}
			if v, err = d.alice.WaitVM(ctx, v.ID, "ready", bootWait); err != nil {
				errs <- err
				return
			}
			vms[i] = v
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		var ae *client.Error
		if errors.As(err, &ae) && ae.VM != nil && ae.VM.ConsoleTail != nil {
			t.Logf("console tail:\n%s", *ae.VM.ConsoleTail)
		}
		t.Fatalf("vm did not become ready: %v", err)
	}
	for _, v := range vms {
		if v.State != "ready" || v.Agent.Version == "" || v.Agent.GuestBootAt.IsZero() {
			t.Fatalf("ready vm without agent facts: %+v", v)
		}
		// The console is the guest's own: the kernel and the agent wrote it.
		rc, err := d.alice.Console(ctx, v.ID, 0, false)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if !strings.Contains(string(b), "hearth-agent") {
			t.Fatalf("console of %s does not show the agent:\n%s", v.ID, tail(string(b), 2000))
		}
	}
	pids := qemuPIDs(d.stateDir)
	if len(pids) != 3 {
		t.Fatalf("want 3 qemu processes, found %d", len(pids))
	}
	for _, v := range vms {
		if _, err := d.alice.DeleteVM(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range vms {
		got, err := d.alice.WaitVM(ctx, v.ID, "destroyed", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if got.DestroyedAt.IsZero() {
			t.Fatalf("destroyed vm without destroyed_at: %+v", got)
		}
	}
	if left := qemuPIDs(d.stateDir); len(left) != 0 {
		t.Fatalf("qemu still running after delete: %v", left)
	}
	entries, err := os.ReadDir(filepath.Join(d.stateDir, "vms"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Fatalf("vm directories left after delete: %d", len(entries))
	}
}

// TestAdoptionAfterKill9: the daemon dies hard while VMs run; the next one
// adopts the live VM (still ready, agent still answering) and fails and
// cleans up the VM whose process died in between.
func TestAdoptionAfterKill9(t *testing.T) {
	d := newDaemon(t)
	ctx := ctxT(t, 6*time.Minute)
	var live, dead api.VM
	for _, p := range []*api.VM{&live, &dead} {
		v, err := d.admin.CreateVM(ctx, api.CreateVM{Image: "minimal", User: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		*p = v
	}
	for _, p := range []*api.VM{&live, &dead} {
		v, err := d.admin.WaitVM(ctx, p.ID, "ready", bootWait)
		if err != nil {
			t.Fatal(err)
		}
		*p = v
	}
	d.kill9()
	pids := qemuPIDs(d.stateDir)
	if len(pids) != 2 {
		t.Fatalf("VMs must survive the daemon: %d qemu processes", len(pids))
	}
	// Kill one VM's QEMU while no daemon watches.
	var deadPID int
	for _, p := range pids {
		if b, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/cmdline"); strings.Contains(string(b), dead.ID) {
			deadPID = p
		}
	}
	if deadPID == 0 {
		t.Fatal("cannot find the qemu of " + dead.ID)
	}
	if err := syscall.Kill(deadPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	restartAt := time.Now()
	d.start()

	got, err := d.admin.WaitVM(ctx, dead.ID, "failed", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got.FailureReason, "not running") {
		t.Fatalf("dead vm reason: %q", got.FailureReason)
	}
	// Its overlay and sockets are released.
	deadDir := filepath.Join(d.stateDir, "vms", dead.ID)
	waitGone(t, filepath.Join(deadDir, "disk.qcow2"))
	waitGone(t, filepath.Join(deadDir, "agent.sock"))
	waitGone(t, filepath.Join(deadDir, "data.sock"))

	// The live one is still ready and its agent heartbeats reach the new daemon.
	deadline := time.Now().Add(time.Minute)
	for {
		v, err := d.admin.GetVM(ctx, live.ID)
		if err != nil {
			t.Fatal(err)
		}
		if v.State != "ready" {
			t.Fatalf("adopted vm is %s (%s)", v.State, v.FailureReason)
		}
		if v.Agent.LastHeartbeatAt.After(restartAt) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat from the adopted vm since the restart")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := len(qemuPIDs(d.stateDir)); n != 1 {
		t.Fatalf("want exactly the adopted qemu running, found %d", n)
	}
	// And it still obeys: delete works through the new daemon.
	if _, err := d.admin.DeleteVM(ctx, live.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := d.admin.WaitVM(ctx, live.ID, "destroyed", time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := len(qemuPIDs(d.stateDir)); n != 0 {
		t.Fatalf("qemu left after deleting the adopted vm: %d", n)
	}
}

// TestCleanShutdownLeavesVMsRunning: SIGTERM stops the daemon, not the VMs.
func TestCleanShutdownLeavesVMsRunning(t *testing.T) {
	d := newDaemon(t)
	ctx := ctxT(t, 4*time.Minute)
	v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.alice.WaitVM(ctx, v.ID, "ready", bootWait); err != nil {
		t.Fatal(err)
	}
	d.stop()
	if n := len(qemuPIDs(d.stateDir)); n != 1 {
		t.Fatalf("clean shutdown must leave the vm running: %d qemu", n)
	}
	d.start()
	got, err := d.alice.GetVM(ctx, v.ID)
	if err != nil || got.State != "ready" {
		t.Fatalf("after restart: %v %s", err, got.State)
	}
}

// TestGuestThatNeverBecomesReadyFails: the browser role needs port 5900,
// which nothing in the minimal image serves; the VM fails at its deadline
// with the reason and the console tail, and its process is gone.
func TestGuestThatNeverBecomesReadyFails(t *testing.T) {
	d := newDaemon(t)
	ctx := ctxT(t, 4*time.Minute)
	v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "minimal", Role: "browser", BootTimeoutSeconds: 20})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.alice.WaitVM(ctx, v.ID, "ready", 2*time.Minute)
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != 409 || ae.VM == nil {
		t.Fatalf("want 409 with the vm, got %v", err)
	}
	if ae.VM.State != "failed" || !strings.Contains(ae.VM.FailureReason, "5900") {
		t.Fatalf("failure: %s %q", ae.VM.State, ae.VM.FailureReason)
	}
	if ae.VM.ConsoleTail == nil || !strings.Contains(*ae.VM.ConsoleTail, "hearth-agent") {
		t.Fatalf("console tail missing or without the guest's output: %v", ae.VM.ConsoleTail)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(qemuPIDs(d.stateDir)) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("failed vm's qemu still running")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAPIAuthAgainstTheDaemon: 401 without or with a wrong key; another
// user's VM is 404.
func TestAPIAuthAgainstTheDaemon(t *testing.T) {
	d := newDaemon(t)
	ctx := ctxT(t, 4*time.Minute)
	v, err := d.alice.CreateVM(ctx, api.CreateVM{Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	anon := d.client("")
	wrong := d.client("hearth_aaaaaaaaaaaaaaaa_" + strings.Repeat("b", 52))
	for name, c := range map[string]*client.Client{"missing": anon, "wrong": wrong} {
		_, err := c.GetVM(ctx, v.ID)
		if ae := (*client.Error)(nil); !errors.As(err, &ae) || ae.Status != 401 {
			t.Errorf("%s key: %v", name, err)
		}
	}
	_, err = d.bob.GetVM(ctx, v.ID)
	if ae := (*client.Error)(nil); !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("bob reading alice's vm: %v", err)
	}
	_, err = d.bob.DeleteVM(ctx, v.ID)
	if ae := (*client.Error)(nil); !errors.As(err, &ae) || ae.Status != 404 {
		t.Errorf("bob deleting alice's vm: %v", err)
	}
	if err := anon.Healthz(context.Background()); err != nil {
		t.Errorf("healthz needs no key: %v", err)
	}
	if _, err := d.alice.WaitVM(ctx, v.ID, "ready", bootWait); err != nil {
		t.Fatal(err)
	}
}

func waitGone(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still exists", path)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

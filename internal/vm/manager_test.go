package vm_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vm/vmfake"
	"github.com/hearth-project/hearth/internal/vmm"
)

type env struct {
	t      *testing.T
	st     store.Store
	driver *vmfake.Driver
	agents *vmfake.Agents
	net    *vmfake.Network
	dir    string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	st, err := sqlite.Open(context.Background(), dir+"/hearth.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	if err := st.CreateUser(ctx, store.User{ID: "alice", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutImage(ctx, store.Image{ID: "0123456789abcdef", Name: "minimal", Role: "minimal",
		KernelPath: "/k", InitrdPath: "/i", RootfsPath: "/r", CreatedAt: time.Now(), Status: store.ImageVerified}); err != nil {
		t.Fatal(err)
	}
	for _, im := range []store.Image{
		{ID: "badc0ffee0001234", Name: "unchecked", Role: "minimal", CreatedAt: time.Now(), Status: store.ImageUnverified},
		{ID: "deadbeef00001234", Name: "broken", Role: "minimal", CreatedAt: time.Now(), Status: store.ImageFailed},
	} {
		if err := st.PutImage(ctx, im); err != nil {
			t.Fatal(err)
		}
	}
	d := vmfake.NewDriver()
	return &env{t: t, st: st, driver: d, agents: &vmfake.Agents{}, net: vmfake.NewNetwork(), dir: dir}
}

func (e *env) config() vm.Config {
	return vm.Config{
		VMsDir: e.dir + "/vms", Roles: map[string][]int{"minimal": {}, "browser": {5900}},
		DefaultVCPUs: 1, MaxVCPUs: 4, DefaultMemoryMiB: 128, MinMemoryMiB: 64, MaxMemoryMiB: 1024,
		BootTimeout: 5 * time.Second, MaxBootTimeout: time.Minute, StopTimeout: time.Second,
		HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 2 * time.Second,
	}
}

// deps are e's fakes over e's store, logging nowhere.
func (e *env) deps() vm.Deps {
	return vm.Deps{Store: e.st, Driver: e.driver, Agents: e.agents, Network: e.net, Log: slog.New(slog.DiscardHandler)}
}

// startManager starts a manager and shuts it down when the test ends.
func startManager(t *testing.T, cfg vm.Config, deps vm.Deps) *vm.Manager {
	t.Helper()
	m := vm.New(cfg, deps)
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown(context.Background()) })
	return m
}

// manager starts a manager of e's fakes.
func (e *env) manager() *vm.Manager { return startManager(e.t, e.config(), e.deps()) }

// managerWith starts a manager of e's fakes with its configuration
// changed by tweak.
func (e *env) managerWith(tweak func(*vm.Config)) *vm.Manager {
	cfg := e.config()
	tweak(&cfg)
	return startManager(e.t, cfg, e.deps())
}

func waitFor(t *testing.T, m *vm.Manager, id string, s store.State) store.VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := m.Wait(ctx, id, s)
	if err != nil {
		t.Fatalf("wait %s for %s: %v (state %s, reason %q)", id, s, err, v.State, v.FailureReason)
	}
	return v
}

func TestCreateReadyDelete(t *testing.T) {
	e := newEnv(t)
	m := e.manager()
	ctx := context.Background()
	v, err := m.Create(ctx, vm.CreateRequest{UserID: "alice", Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	if v.State != store.StatePending || v.VCPUs != 1 || v.MemoryMiB != 128 || v.Role != "minimal" {
		t.Fatalf("unexpected new vm: %+v", v)
	}
	v = waitFor(t, m, v.ID, store.StateReady)
	if v.AgentVersion != "fake-1" || v.ReadyAt.IsZero() {
		t.Fatalf("ready vm lacks agent facts: %+v", v)
	}
	if _, err := m.Delete(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	v = waitFor(t, m, v.ID, store.StateDestroyed)
	if _, err := os.Stat(v.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm dir still there: %v", err)
	}
	if n := e.driver.Running(); n != 0 {
		t.Fatalf("%d processes left", n)
	}
	if e.agents.Shutdowns() != 1 {
		t.Fatalf("graceful shutdown through the agent not asked: %d", e.agents.Shutdowns())
	}
	// Idempotent: deleting again answers with the destroyed VM.
	again, err := m.Delete(ctx, v.ID)
	if err != nil || again.State != store.StateDestroyed {
		t.Fatalf("second delete: %v %s", err, again.State)
	}
	// The event log tells the whole story in order.
	evs, err := e.st.ListEvents(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var seq []string
	for _, ev := range evs {
		seq = append(seq, string(ev.ToState))
	}
	want := "pending booting ready stopping stopped destroyed"
	if got := strings.Join(seq, " "); got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
}

func TestInvalidRequestsLeaveNothing(t *testing.T) {
	e := newEnv(t)
	m := e.manager()
	cases := []struct {
		name string
		req  vm.CreateRequest
		msg  string
	}{
		{"vcpus too many", vm.CreateRequest{UserID: "alice", Image: "minimal", VCPUs: 99}, "vcpus must be between 1 and 4"},
		{"vcpus negative", vm.CreateRequest{UserID: "alice", Image: "minimal", VCPUs: -1}, "vcpus"},
		{"memory too small", vm.CreateRequest{UserID: "alice", Image: "minimal", MemoryMiB: 1}, "memory_mib must be between 64 and 1024"},
		{"memory too big", vm.CreateRequest{UserID: "alice", Image: "minimal", MemoryMiB: 1 << 20}, "memory_mib"},
		{"unknown image", vm.CreateRequest{UserID: "alice", Image: "nope"}, `unknown image "nope"`},
		{"no image", vm.CreateRequest{UserID: "alice"}, "image is required"},
		{"unknown role", vm.CreateRequest{UserID: "alice", Image: "minimal", Role: "db"}, `unknown role "db"`},
		{"unknown user", vm.CreateRequest{UserID: "bob", Image: "minimal"}, `unknown user "bob"`},
		{"boot timeout too long", vm.CreateRequest{UserID: "alice", Image: "minimal", BootTimeout: time.Hour}, "boot_timeout_seconds"},
		{"unverified image", vm.CreateRequest{UserID: "alice", Image: "unchecked"}, "image unchecked (badc0ffee000) is unverified"},
		{"failed image", vm.CreateRequest{UserID: "alice", Image: "broken"}, "image broken (deadbeef0000) is failed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := m.Create(context.Background(), c.req)
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("want ErrInvalid, got %v", err)
			}
			if !strings.Contains(errdefs.Public(err), c.msg) {
				t.Fatalf("message %q does not say %q", errdefs.Public(err), c.msg)
			}
		})
	}
	vms, err := e.st.ListVMs(context.Background(), store.VMFilter{IncludeDestroyed: true})
	if err != nil || len(vms) != 0 {
		t.Fatalf("invalid requests left %d vms (%v)", len(vms), err)
	}
	if entries, _ := os.ReadDir(e.dir + "/vms"); len(entries) != 0 {
		t.Fatalf("invalid requests left %d vm dirs", len(entries))
	}
}

func TestSilentGuestFailsWithConsoleTail(t *testing.T) {
	e := newEnv(t)
	e.agents.SetBehaviour(vmfake.GuestSilent)
	m := e.manager()
	v, err := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal", BootTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := m.Wait(ctx, v.ID, store.StateReady)
	if !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("waiting for ready on a failing vm: want conflict, got %v", err)
	}
	if got.State != store.StateFailed || !strings.Contains(got.FailureReason, "agent never connected") {
		t.Fatalf("state %s reason %q", got.State, got.FailureReason)
	}
	if tail := vm.ConsoleTail(got, 4096); !strings.Contains(tail, "fake init") {
		t.Fatalf("console tail lost: %q", tail)
	}
	// Failure is reported first; the release of the process follows at once.
	eventually(t, func() bool { return e.driver.Running() == 0 }, "failed vm's process still running")
	if _, err := m.Delete(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, m, v.ID, store.StateDestroyed)
}

func eventually(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal(msg)
}

func TestPortsNeverReady(t *testing.T) {
	e := newEnv(t)
	e.agents.SetBehaviour(vmfake.GuestPortsStuck)
	m := e.manager()
	v, err := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal", Role: "browser", BootTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	v = waitFor(t, m, v.ID, store.StateFailed)
	if !strings.Contains(v.FailureReason, "port(s) 5900 never accepted connections") {
		t.Fatalf("reason %q", v.FailureReason)
	}
}

func TestWrongTokenIsNamed(t *testing.T) {
	e := newEnv(t)
	e.agents.SetBehaviour(vmfake.GuestBadProof)
	m := e.manager()
	v, _ := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal", BootTimeout: time.Second})
	v = waitFor(t, m, v.ID, store.StateFailed)
	if !strings.Contains(v.FailureReason, "could not prove the vm's token") {
		t.Fatalf("reason %q", v.FailureReason)
	}
}

func TestStartFailureIsFailedAndCleaned(t *testing.T) {
	e := newEnv(t)
	e.driver.FailOn = "start"
	m := e.manager()
	v, err := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	v = waitFor(t, m, v.ID, store.StateFailed)
	if !strings.Contains(v.FailureReason, "qemu failed to start") {
		t.Fatalf("reason %q", v.FailureReason)
	}
	eventually(t, func() bool {
		_, err := os.Stat(v.Dir + "/disk")
		return errors.Is(err, os.ErrNotExist)
	}, "disk left behind after a failed start")
}

func TestCrashAfterReady(t *testing.T) {
	e := newEnv(t)
	m := e.manager()
	v, _ := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	v = waitFor(t, m, v.ID, store.StateReady)
	h, _ := vmm.UnmarshalHandle(v.Handle)
	e.driver.Kill(h.PID)
	v = waitFor(t, m, v.ID, store.StateFailed)
	if v.FailureReason != "vm process exited unexpectedly" {
		t.Fatalf("reason %q", v.FailureReason)
	}
}

func TestCrashReasonFromTheDriver(t *testing.T) {
	e := newEnv(t)
	e.driver.ExitWhy = "KVM error: out of memory"
	m := e.manager()
	v, _ := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	v = waitFor(t, m, v.ID, store.StateReady)
	h, _ := vmm.UnmarshalHandle(v.Handle)
	e.driver.Kill(h.PID)
	v = waitFor(t, m, v.ID, store.StateFailed)
	if v.FailureReason != "vm process exited unexpectedly: KVM error: out of memory" {
		t.Fatalf("reason %q", v.FailureReason)
	}
}

func TestAdoptAfterRestart(t *testing.T) {
	e := newEnv(t)
	m1 := e.manager()
	ctx := context.Background()
	a, _ := m1.Create(ctx, vm.CreateRequest{UserID: "alice", Image: "minimal"})
	b, _ := m1.Create(ctx, vm.CreateRequest{UserID: "alice", Image: "minimal"})
	waitFor(t, m1, a.ID, store.StateReady)
	b = waitFor(t, m1, b.ID, store.StateReady)
	if err := m1.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if e.driver.Running() != 2 {
		t.Fatal("manager shutdown must leave VMs running")
	}
	// B dies while no manager runs.
	hb, _ := vmm.UnmarshalHandle(b.Handle)
	e.driver.Kill(hb.PID)
	startsBefore := e.driver.Started

	m2 := e.manager()
	b = waitFor(t, m2, b.ID, store.StateFailed)
	if !strings.Contains(b.FailureReason, "while hearth was not running") {
		t.Fatalf("reason %q", b.FailureReason)
	}
	got, err := m2.Get(ctx, a.ID)
	if err != nil || got.State != store.StateReady {
		t.Fatalf("adopted vm: %v %s", err, got.State)
	}
	// Heartbeats flow through the new manager's session.
	before := got.LastHeartbeatAt
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		got, _ = m2.Get(ctx, a.ID)
		if got.LastHeartbeatAt.After(before) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !got.LastHeartbeatAt.After(before) {
		t.Fatal("no heartbeat after adoption")
	}
	if e.driver.Started != startsBefore {
		t.Fatal("adoption must re-attach, not start VMs again")
	}
}

func TestConcurrentCreates(t *testing.T) {
	e := newEnv(t)
	m := e.manager()
	var wg sync.WaitGroup
	ids := make([]string, 10)
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			v, err := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = v.ID
		}(i)
	}
	wg.Wait()
	for _, id := range ids {
		waitFor(t, m, id, store.StateReady)
	}
	for _, id := range ids {
		if _, err := m.Delete(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		waitFor(t, m, id, store.StateDestroyed)
	}
	if e.driver.Running() != 0 {
		t.Fatal("processes left")
	}
}

func TestDeleteWhilePending(t *testing.T) {
	e := newEnv(t)
	e.agents.SetBehaviour(vmfake.GuestSilent)
	m := e.manager()
	v, _ := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	if _, err := m.Delete(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, m, v.ID, store.StateDestroyed)
	if e.driver.Running() != 0 {
		t.Fatal("process left")
	}
}

func TestStrayDirectoriesRemoved(t *testing.T) {
	e := newEnv(t)
	if err := os.MkdirAll(e.dir+"/vms/vm-stray", 0o700); err != nil {
		t.Fatal(err)
	}
	e.manager()
	if _, err := os.Stat(e.dir + "/vms/vm-stray"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("stray vm dir survived reconciliation")
	}
}

func TestWaitTimeout(t *testing.T) {
	e := newEnv(t)
	e.agents.SetBehaviour(vmfake.GuestSilent)
	m := e.manager()
	v, _ := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := m.Wait(ctx, v.ID, store.StateReady)
	if !errors.Is(err, errdefs.ErrTimeout) {
		t.Fatalf("want timeout, got %v", err)
	}
}

func TestShutdownWithStopOnShutdownStopsVMs(t *testing.T) {
	e := newEnv(t)
	m := e.manager()
	v, _ := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	waitFor(t, m, v.ID, store.StateReady)
	// A second manager over the same store, configured to stop VMs on exit,
	// adopts the VM; shutting it down destroys the VM.
	if err := m.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	m2 := e.managerWith(func(c *vm.Config) { c.StopOnShutdown = true })
	waitFor(t, m2, v.ID, store.StateReady)
	if err := m2.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.driver.Running() != 0 {
		t.Fatal("stop_vms: VM still running after shutdown")
	}
	got, err := e.st.GetVM(context.Background(), v.ID)
	if err != nil || got.State != store.StateDestroyed {
		t.Fatalf("after stop-on-shutdown: %v %s", err, got.State)
	}
}

// A delete that arrives after Shutdown (a login finishing as the daemon
// stops) starts no supervisor that would outlive the shutdown: the VM is
// left running, recorded as stopping, and the next manager destroys it.
func TestDeleteAfterShutdownIsLeftToTheNextManager(t *testing.T) {
	e := newEnv(t)
	m := e.manager()
	v, _ := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	waitFor(t, m, v.ID, store.StateReady)
	if err := m.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := m.Delete(context.Background(), v.ID)
	if err != nil || got.State != store.StateStopping {
		t.Fatalf("delete after shutdown: %v %s", err, got.State)
	}
	if e.driver.Running() != 1 {
		t.Fatalf("a supervisor ran after shutdown: %d VMs running", e.driver.Running())
	}
	m2 := e.manager()
	waitFor(t, m2, v.ID, store.StateDestroyed)
	if e.driver.Running() != 0 {
		t.Fatal("the next manager did not finish the delete")
	}
}

// OnTransition sees every state change; GuestAddr answers only for a ready
// VM whose role waits for the port.
func TestTransitionHookAndGuestAddr(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.st.PutImage(ctx, store.Image{ID: "b0b0b0b0b0b0b0b0", Name: "browser", Role: "browser",
		KernelPath: "/k", InitrdPath: "/i", RootfsPath: "/r", CreatedAt: time.Now(), Status: store.ImageVerified}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string][]string{}
	deps := e.deps()
	deps.OnTransition = func(v store.VM) {
		mu.Lock()
		defer mu.Unlock()
		seen[v.ID] = append(seen[v.ID], string(v.State))
	}
	m := startManager(t, e.config(), deps)

	b, err := m.Create(ctx, vm.CreateRequest{UserID: "alice", Image: "browser"})
	if err != nil {
		t.Fatal(err)
	}
	mini, err := m.Create(ctx, vm.CreateRequest{UserID: "alice", Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	b = waitFor(t, m, b.ID, store.StateReady)
	waitFor(t, m, mini.ID, store.StateReady)
	att, _ := vm.DecodeAttachment(b.Network)
	ip, _, _ := strings.Cut(att.Address, "/")
	if addr, err := m.GuestAddr(ctx, b.ID, 5900); err != nil || addr != ip+":5900" {
		t.Fatalf("GuestAddr(browser) = %q, %v; want %s:5900", addr, err, ip)
	}
	if _, err := m.GuestAddr(ctx, mini.ID, 5900); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("GuestAddr(minimal, 5900) = %v, want conflict (role does not serve it)", err)
	}
	if _, err := m.GuestAddr(ctx, "nosuchvm", 5900); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("GuestAddr(unknown) = %v, want not found", err)
	}
	if _, err := m.Delete(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.GuestAddr(ctx, b.ID, 5900); !errors.Is(err, errdefs.ErrConflict) && !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("GuestAddr(deleted) = %v, want conflict or not found", err)
	}
	waitFor(t, m, b.ID, store.StateDestroyed)
	if _, err := m.GuestAddr(ctx, b.ID, 5900); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("GuestAddr(destroyed) = %v, want not found", err)
	}
	// The hook runs right after the event is published, so a waiter may
	// see "destroyed" a moment before the hook does.
	eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(seen[b.ID], " ") == "booting ready stopping stopped destroyed"
	}, "the hook saw every transition of the browser vm in order")
}

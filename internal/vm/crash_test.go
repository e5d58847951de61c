package vm_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/vm"
	"github.com/hearth-project/hearth/internal/vm/vmfake"
	"github.com/hearth-project/hearth/internal/vmm"
)

// managerOn starts a manager of e's driver, agents and network on st.
func (e *env) managerOn(st store.Store) *vm.Manager {
	deps := e.deps()
	deps.Store = st
	return startManager(e.t, e.config(), deps)
}

// booting creates a VM whose guest never answers and returns it once its
// process is recorded.
func booting(t *testing.T, e *env, m *vm.Manager) store.VM {
	t.Helper()
	v, err := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal", BootTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var h vmm.Handle
	eventually(t, func() bool {
		v, err = e.st.GetVM(context.Background(), v.ID)
		if err != nil {
			return false
		}
		h, err = vmm.UnmarshalHandle(v.Handle)
		return err == nil && h.PID > 0
	}, "the vm's process was never recorded")
	return v
}

// TestProcessNotInItsHandleIsEndedOnStart: a daemon killed after starting
// a VM's process but before recording its PID leaves a process the handle
// does not name; the next manager finds it by the VM's directory, ends it
// and fails the VM, saying why.
func TestProcessNotInItsHandleIsEndedOnStart(t *testing.T) {
	e := newEnv(t)
	e.agents.SetBehaviour(vmfake.GuestSilent)
	m1 := e.manager()
	v := booting(t, e, m1)
	if err := m1.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The record as it was before Start returned: a handle without a PID.
	if _, _, err := e.st.UpdateVM(context.Background(), v.ID, "", func(x *store.VM) error {
		h, err := vmm.UnmarshalHandle(x.Handle)
		h.PID, h.PIDStart = 0, 0
		x.Handle = h.Marshal()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if e.driver.Running() != 1 {
		t.Fatal("the vm's process must outlive the manager")
	}
	m2 := e.manager()
	got := waitFor(t, m2, v.ID, store.StateFailed)
	if got.FailureReason != "hearth stopped while it was starting the vm process" {
		t.Fatalf("reason %q", got.FailureReason)
	}
	eventually(t, func() bool { return e.driver.Running() == 0 }, "the unrecorded process still runs")
	eventually(t, func() bool { return e.net.Held() == 0 }, "the failed vm still holds its network")
}

// TestStrayProcessesEndedOnStart: processes working for a VM directory the
// store does not know, or for a destroyed VM, are ended when a manager
// starts; a process of another VMs directory (another hearth's) is not.
func TestStrayProcessesEndedOnStart(t *testing.T) {
	e := newEnv(t)
	m1 := e.manager()
	v, err := m1.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, m1, v.ID, store.StateReady)
	if _, err := m1.Delete(context.Background(), v.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, m1, v.ID, store.StateDestroyed)
	if err := m1.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	start := func(dir string) vmm.Handle {
		spec := vmm.Spec{Dir: dir}
		h, err := e.driver.Prepare(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.driver.Start(context.Background(), spec, &h); err != nil {
			t.Fatal(err)
		}
		return h
	}
	stray := start(filepath.Join(e.dir, "vms", "vm-stray"))
	ofDestroyed := start(v.Dir)
	elsewhere := start(filepath.Join(e.dir, "other-hearth", "vms", "vm-x"))

	e.manager()
	if e.driver.Alive(stray) || e.driver.Alive(ofDestroyed) {
		t.Fatalf("strays still run after start: unknown vm %v, destroyed vm %v", e.driver.Alive(stray), e.driver.Alive(ofDestroyed))
	}
	if !e.driver.Alive(elsewhere) {
		t.Fatal("a process under another vms directory was ended")
	}
}

var errInjected = errors.New("injected store failure")

// faultyStore fails the VM writes a test picks: fail sees the record as it
// is and as the write would leave it, and returns how the write goes.
type faultyStore struct {
	store.Store
	mu     sync.Mutex
	fail   func(before, after store.VM) bool
	failed int
}

func (s *faultyStore) UpdateVM(ctx context.Context, id, msg string, fn func(*store.VM) error) (store.VM, *store.Event, error) {
	return s.Store.UpdateVM(ctx, id, msg, func(v *store.VM) error {
		before := *v
		if err := fn(v); err != nil {
			return err
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.fail != nil && s.fail(before, *v) {
			s.failed++
			return errInjected
		}
		return nil
	})
}

func (s *faultyStore) setFail(f func(before, after store.VM) bool) {
	s.mu.Lock()
	s.fail = f
	s.mu.Unlock()
}

func (s *faultyStore) failures() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed
}

func pidOf(v store.VM) int {
	h, _ := vmm.UnmarshalHandle(v.Handle)
	return h.PID
}

// TestFailedStoreWritesNeverStrandAVM: a write the store fails never
// replaces the supervisor's record of the VM, so the VM goes on to a state
// that matches its process; and a VM whose failure cannot be written has
// its process stopped at once and is marked failed once the store takes
// the write.
func TestFailedStoreWritesNeverStrandAVM(t *testing.T) {
	cases := []struct {
		name  string
		guest vmfake.Behaviour
		// fail picks the writes that fail (each one once, unless always).
		fail   func(before, after store.VM) bool
		always bool
		// then checks the outcome.
		then func(t *testing.T, e *env, fs *faultyStore, m *vm.Manager, id string)
	}{
		{
			name: "agent facts", guest: vmfake.GuestReady,
			fail: func(b, a store.VM) bool { return b.AgentVersion == "" && a.AgentVersion != "" },
			then: func(t *testing.T, e *env, fs *faultyStore, m *vm.Manager, id string) {
				v := waitFor(t, m, id, store.StateReady)
				e.driver.Kill(pidOf(v)) // still supervised: the crash is seen
				waitFor(t, m, id, store.StateFailed)
			},
		},
		{
			name: "heartbeat", guest: vmfake.GuestReady,
			fail: func(b, a store.VM) bool {
				return b.State == store.StateReady && a.State == store.StateReady && a.LastHeartbeatAt.After(b.LastHeartbeatAt)
			},
			then: func(t *testing.T, e *env, fs *faultyStore, m *vm.Manager, id string) {
				v := waitFor(t, m, id, store.StateReady)
				eventually(t, func() bool { return fs.failures() > 0 }, "no heartbeat write was attempted")
				e.driver.Kill(pidOf(v))
				waitFor(t, m, id, store.StateFailed)
			},
		},
		{
			name: "handle after start", guest: vmfake.GuestReady, always: true,
			fail: func(b, a store.VM) bool { return pidOf(b) == 0 && pidOf(a) > 0 },
			then: func(t *testing.T, e *env, fs *faultyStore, m *vm.Manager, id string) {
				v := waitFor(t, m, id, store.StateFailed)
				if !strings.Contains(v.FailureReason, "record handle") {
					t.Fatalf("reason %q", v.FailureReason)
				}
				eventually(t, func() bool { return e.driver.Running() == 0 }, "process left running")
			},
		},
		{
			name: "mark failed", guest: vmfake.GuestSilent, always: true,
			fail: func(b, a store.VM) bool { return a.State == store.StateFailed },
			then: func(t *testing.T, e *env, fs *faultyStore, m *vm.Manager, id string) {
				eventually(t, func() bool { return fs.failures() > 0 }, "the vm was never failed")
				// While the store refuses, the process is stopped at once.
				eventually(t, func() bool { return e.driver.Running() == 0 }, "process left running while the vm cannot be failed")
				fs.setFail(nil) // the store recovers: the failure is written
				waitFor(t, m, id, store.StateFailed)
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.agents.SetBehaviour(c.guest)
			fs := &faultyStore{Store: e.st}
			fs.setFail(func(b, a store.VM) bool {
				return c.fail(b, a) && (c.always || fs.failed == 0)
			})
			m := e.managerOn(fs)
			v, err := m.Create(context.Background(), vm.CreateRequest{UserID: "alice", Image: "minimal", BootTimeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			c.then(t, e, fs, m, v.ID)
			if fs.failures() == 0 {
				t.Fatal("no write failed: the case tested nothing")
			}
		})
	}
}

package storetest

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

func testVMs(t *testing.T, s store.Store) {
	ctx := t.Context()
	vm := newVM("vm-1", "u-1", store.StateReady, at(0))
	// A time in another zone must come back as the same instant.
	vm.BootDeadline = time.Date(2025, 3, 4, 12, 0, 0, 5000, time.FixedZone("IST", 5*3600+1800))
	must(t, s.CreateVM(ctx, vm), "create vm")
	got, err := s.GetVM(ctx, vm.ID)
	must(t, err, "get vm")
	equal(t, "get vm", got, vm, normVM)

	dup := newVM("vm-1", "u-2", store.StatePending, at(1))
	mustFail(t, s.CreateVM(ctx, dup), store.ErrConflict, "create a duplicate vm")
	got, err = s.GetVM(ctx, vm.ID)
	must(t, err, "get vm after the duplicate")
	equal(t, "vm after a rejected duplicate", got, vm, normVM)

	_, err = s.GetVM(ctx, "vm-nobody")
	mustFail(t, err, store.ErrNotFound, "get a missing vm")

	bad := newVM("vm-bad", "u-1", store.State("exploded"), at(0))
	mustFail(t, s.CreateVM(ctx, bad), errdefs.ErrInvalid, "create a vm in an unknown state")

	must(t, s.DeleteVM(ctx, vm.ID), "delete vm")
	_, err = s.GetVM(ctx, vm.ID)
	mustFail(t, err, store.ErrNotFound, "get a deleted vm")
	mustFail(t, s.DeleteVM(ctx, vm.ID), store.ErrNotFound, "delete a vm twice")
}

func testListVMs(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Created out of order; vm-b1 and vm-b2 share a creation time.
	for _, vm := range []store.VM{
		newVM("vm-d", "u-1", store.StateDestroyed, at(3)),
		newVM("vm-c", "u-2", store.StatePending, at(2)),
		newVM("vm-b2", "u-1", store.StateStopped, at(1)),
		newVM("vm-b1", "u-2", store.StateReady, at(1)),
		newVM("vm-a", "u-1", store.StateReady, at(0)),
		newVM("vm-e", "u-1", store.StateFailed, at(4)),
	} {
		must(t, s.CreateVM(ctx, vm), "create "+vm.ID)
	}

	for _, tc := range []struct {
		filter store.VMFilter
		want   []string
	}{
		{store.VMFilter{}, []string{"vm-a", "vm-b1", "vm-b2", "vm-c", "vm-e"}},
		{store.VMFilter{IncludeDestroyed: true}, []string{"vm-a", "vm-b1", "vm-b2", "vm-c", "vm-d", "vm-e"}},
		{store.VMFilter{UserID: "u-1"}, []string{"vm-a", "vm-b2", "vm-e"}},
		{store.VMFilter{UserID: "u-1", IncludeDestroyed: true}, []string{"vm-a", "vm-b2", "vm-d", "vm-e"}},
		{store.VMFilter{UserID: "u-nobody", IncludeDestroyed: true}, nil},
		{store.VMFilter{States: []store.State{store.StateReady}}, []string{"vm-a", "vm-b1"}},
		{store.VMFilter{States: []store.State{store.StateStopped, store.StateFailed}}, []string{"vm-b2", "vm-e"}},
		{store.VMFilter{States: []store.State{store.StateDestroyed}}, []string{"vm-d"}},
		{store.VMFilter{States: []store.State{store.StateReady, store.StateDestroyed}}, []string{"vm-a", "vm-b1", "vm-d"}},
		{store.VMFilter{UserID: "u-2", States: []store.State{store.StateReady}}, []string{"vm-b1"}},
		{store.VMFilter{States: []store.State{store.StateBooting}}, nil},
	} {
		vms, err := s.ListVMs(ctx, tc.filter)
		must(t, err, "list vms with "+describe(tc.filter))
		if got := vmIDs(vms); !slices.Equal(got, tc.want) {
			t.Errorf("list vms with %s = %q, want %q", describe(tc.filter), got, tc.want)
		}
	}

	// Listed VMs carry every field.
	vms, err := s.ListVMs(ctx, store.VMFilter{UserID: "u-2", States: []store.State{store.StatePending}})
	must(t, err, "list vm-c")
	if len(vms) != 1 {
		t.Fatalf("listed %d vms, want 1", len(vms))
	}
	equal(t, "listed vm", vms[0], newVM("vm-c", "u-2", store.StatePending, at(2)), normVM)
}

// checkStamp fails unless stamp lies within [before, after], give or take the
// rounding a backend may apply.
func checkStamp(t *testing.T, what string, stamp, before, after time.Time) {
	t.Helper()
	if stamp.Before(before.Add(-clockSlack)) || stamp.After(after.Add(clockSlack)) {
		t.Fatalf("%s = %v, want between %v and %v", what, stamp, before, after)
	}
}

func testUpdateVM(t *testing.T, s store.Store) {
	ctx := t.Context()
	vm := newVM("vm-1", "u-1", store.StatePending, at(0))
	must(t, s.CreateVM(ctx, vm), "create vm")

	// A state change returns and records a vm.state event.
	before := time.Now()
	got, ev, err := s.UpdateVM(ctx, vm.ID, "booting now", func(v *store.VM) error {
		v.State = store.StateBooting
		v.Handle = []byte(`{"pid":42}`)
		return nil
	})
	after := time.Now()
	must(t, err, "update state")
	checkStamp(t, "UpdatedAt", got.UpdatedAt, before, after)
	want := vm
	want.State = store.StateBooting
	want.Handle = []byte(`{"pid":42}`)
	want.UpdatedAt = got.UpdatedAt
	equal(t, "updated vm", got, want, normVM)
	stored, err := s.GetVM(ctx, vm.ID)
	must(t, err, "get updated vm")
	equal(t, "stored vm", stored, got, normVM)

	if ev == nil {
		t.Fatal("state change returned no event")
	}
	wantEv := store.Event{
		ID: ev.ID, At: got.UpdatedAt, Type: "vm.state", VMID: vm.ID, UserID: vm.UserID,
		FromState: store.StatePending, ToState: store.StateBooting, Message: "booting now",
	}
	equal(t, "returned event", *ev, wantEv, normEvent)
	events, err := s.ListEvents(ctx, 0, 0)
	must(t, err, "list events")
	equal(t, "logged events", events, []store.Event{wantEv}, normEvents)

	// No state change: no event, but UpdatedAt still moves.
	got2, ev2, err := s.UpdateVM(ctx, vm.ID, "heartbeat", func(v *store.VM) error {
		v.AgentVersion = "0.2.0"
		v.LastHeartbeatAt = at(100)
		return nil
	})
	must(t, err, "update without a state change")
	if ev2 != nil {
		t.Fatalf("update without a state change returned event %+v", *ev2)
	}
	if got2.UpdatedAt.Before(got.UpdatedAt) {
		t.Fatalf("UpdatedAt went back from %v to %v", got.UpdatedAt, got2.UpdatedAt)
	}
	want.AgentVersion, want.LastHeartbeatAt, want.UpdatedAt = "0.2.0", at(100), got2.UpdatedAt
	equal(t, "vm after a heartbeat", got2, want, normVM)
	stored, err = s.GetVM(ctx, vm.ID)
	must(t, err, "get vm after a heartbeat")
	equal(t, "stored vm after a heartbeat", stored, want, normVM)
	if n := eventCount(t, s); n != 1 {
		t.Fatalf("%d events after an update without a state change, want 1", n)
	}
}

var errBoom = errors.New("boom")

func testUpdateVMFnError(t *testing.T, s store.Store) {
	ctx := t.Context()
	vm := newVM("vm-1", "u-1", store.StatePending, at(0))
	must(t, s.CreateVM(ctx, vm), "create vm")

	got, ev, err := s.UpdateVM(ctx, vm.ID, "never", func(v *store.VM) error {
		v.State = store.StateReady
		v.VCPUs = 99
		v.Handle[0] = 'X' // mutating the slice in place must not leak either
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("update with a failing fn: got error %v, want %v", err, errBoom)
	}
	if ev != nil {
		t.Fatalf("failed update returned event %+v", *ev)
	}
	if got.ID != "" {
		t.Fatalf("failed update returned vm %+v, want the zero VM", got)
	}
	stored, err := s.GetVM(ctx, vm.ID)
	must(t, err, "get vm")
	equal(t, "vm after a failed update", stored, vm, normVM)
	if n := eventCount(t, s); n != 0 {
		t.Fatalf("%d events after a failed update, want 0", n)
	}
}

func testUpdateVMImmutableID(t *testing.T, s store.Store) {
	ctx := t.Context()
	vm := newVM("vm-1", "u-1", store.StatePending, at(0))
	must(t, s.CreateVM(ctx, vm), "create vm")

	_, ev, err := s.UpdateVM(ctx, vm.ID, "rename", func(v *store.VM) error {
		v.ID = "vm-2"
		v.State = store.StateBooting
		return nil
	})
	mustFail(t, err, errdefs.ErrInvalid, "update that changes the id")
	if ev != nil {
		t.Fatalf("rejected update returned event %+v", *ev)
	}
	stored, err := s.GetVM(ctx, vm.ID)
	must(t, err, "get vm")
	equal(t, "vm after a rejected rename", stored, vm, normVM)
	_, err = s.GetVM(ctx, "vm-2")
	mustFail(t, err, store.ErrNotFound, "get the would-be renamed vm")
	if n := eventCount(t, s); n != 0 {
		t.Fatalf("%d events after a rejected update, want 0", n)
	}

	_, _, err = s.UpdateVM(ctx, vm.ID, "bad state", func(v *store.VM) error {
		v.State = store.State("exploded")
		return nil
	})
	mustFail(t, err, errdefs.ErrInvalid, "update to an unknown state")
}

func testUpdateVMNotFound(t *testing.T, s store.Store) {
	called := false
	_, ev, err := s.UpdateVM(t.Context(), "vm-nobody", "", func(*store.VM) error {
		called = true
		return nil
	})
	mustFail(t, err, store.ErrNotFound, "update a missing vm")
	if called {
		t.Fatal("fn was called for a missing vm")
	}
	if ev != nil {
		t.Fatalf("update of a missing vm returned event %+v", *ev)
	}
}

// testConcurrentUpdateVM has many goroutines update one VM at once, each
// incrementing VCPUs and flipping the state, while others read it. No update
// may be lost and the events must form one unbroken chain of transitions.
func testConcurrentUpdateVM(t *testing.T, s store.Store) {
	const writers, readers = 50, 4
	ctx := t.Context()
	vm := newVM("vm-1", "u-1", store.StateReady, at(0))
	vm.VCPUs = 0
	must(t, s.CreateVM(ctx, vm), "create vm")

	flip := map[store.State]store.State{store.StateReady: store.StateStopped, store.StateStopped: store.StateReady}
	var writersWG, readersWG sync.WaitGroup
	done := make(chan struct{})
	for range readers {
		readersWG.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if _, err := s.GetVM(ctx, vm.ID); err != nil {
					t.Errorf("concurrent get: %v", err)
					return
				}
				if _, err := s.ListVMs(ctx, store.VMFilter{}); err != nil {
					t.Errorf("concurrent list: %v", err)
					return
				}
			}
		})
	}
	for range writers {
		writersWG.Go(func() {
			_, _, err := s.UpdateVM(ctx, vm.ID, "flip", func(v *store.VM) error {
				v.VCPUs++
				v.State = flip[v.State]
				return nil
			})
			if err != nil {
				t.Errorf("concurrent update: %v", err)
			}
		})
	}
	writersWG.Wait()
	close(done)
	readersWG.Wait()
	if t.Failed() {
		t.FailNow()
	}

	got, err := s.GetVM(ctx, vm.ID)
	must(t, err, "get vm")
	if got.VCPUs != writers {
		t.Fatalf("VCPUs = %d after %d concurrent increments: updates were lost", got.VCPUs, writers)
	}
	events, err := s.ListEvents(ctx, 0, 0)
	must(t, err, "list events")
	if len(events) != writers {
		t.Fatalf("%d events after %d state changes", len(events), writers)
	}
	prev := store.StateReady
	for i, e := range events {
		if e.FromState != prev || e.ToState != flip[prev] {
			t.Fatalf("event %d is %s -> %s, want %s -> %s", i, e.FromState, e.ToState, prev, flip[prev])
		}
		prev = e.ToState
	}
	if got.State != prev {
		t.Fatalf("vm state %s, last event says %s", got.State, prev)
	}
}

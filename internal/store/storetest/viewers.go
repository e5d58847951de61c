package storetest

import (
	"sync"
	"testing"

	"github.com/hearth-project/hearth/internal/store"
)

func testViewerEpochs(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, id := range []string{"vm-a", "vm-b"} {
		must(t, s.CreateVM(ctx, newVM(id, "u-1", store.StateReady, at(0))), "create "+id)
	}
	epoch := func(id string) uint64 {
		t.Helper()
		e, err := s.ViewerEpoch(ctx, id)
		must(t, err, "viewer epoch of "+id)
		return e
	}
	if e := epoch("vm-a"); e != 0 {
		t.Fatalf("fresh vm's epoch = %d, want 0", e)
	}
	for want := uint64(1); want <= 3; want++ {
		e, err := s.BumpViewerEpoch(ctx, "vm-a")
		must(t, err, "bump vm-a")
		if e != want || epoch("vm-a") != want {
			t.Fatalf("bump %d: got %d, stored %d", want, e, epoch("vm-a"))
		}
	}
	if e := epoch("vm-b"); e != 0 {
		t.Fatalf("another vm's epoch moved to %d", e)
	}
	if e := epoch("no-such-vm"); e != 0 {
		t.Fatalf("unknown vm's epoch = %d, want 0", e)
	}
	_, err := s.BumpViewerEpoch(ctx, "no-such-vm")
	mustFail(t, err, store.ErrNotFound, "bump an unknown vm")
	// A destroyed VM keeps its epoch (its links stay refused); deleting
	// the row forgets it.
	_, _, err = s.UpdateVM(ctx, "vm-a", "destroyed", func(v *store.VM) error { v.State = store.StateDestroyed; return nil })
	must(t, err, "destroy vm-a")
	if e := epoch("vm-a"); e != 3 {
		t.Fatalf("destroyed vm's epoch = %d, want 3", e)
	}
	must(t, s.DeleteVM(ctx, "vm-a"), "delete vm-a")
	must(t, s.CreateVM(ctx, newVM("vm-a", "u-1", store.StateReady, at(5))), "create vm-a again")
	if e := epoch("vm-a"); e != 0 {
		t.Fatalf("epoch outlived its vm's row: %d", e)
	}
}

// Concurrent revocations each get their own epoch.
func testConcurrentBumpViewerEpoch(t *testing.T, s store.Store) {
	ctx := t.Context()
	must(t, s.CreateVM(ctx, newVM("vm-a", "u-1", store.StateReady, at(0))), "create vm-a")
	const n = 16
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		seen = map[uint64]bool{}
	)
	for range n {
		wg.Go(func() {
			e, err := s.BumpViewerEpoch(ctx, "vm-a")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			seen[e] = true
			mu.Unlock()
		})
	}
	wg.Wait()
	e, err := s.ViewerEpoch(ctx, "vm-a")
	must(t, err, "viewer epoch")
	if len(seen) != n || e != n {
		t.Fatalf("%d distinct epochs handed out, stored %d; want %d", len(seen), e, n)
	}
}

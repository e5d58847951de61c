package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/hearth-project/hearth/internal/store"
)

func testLeases(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, id := range []string{"vm-a", "vm-b"} {
		must(t, s.CreateVM(ctx, newVM(id, "u-1", store.StateBooting, at(0))), "create "+id)
	}
	a := store.Lease{IP: "172.30.0.2", VMID: "vm-a", CreatedAt: at(1)}
	must(t, s.CreateLease(ctx, a), "lease to vm-a")
	got, err := s.GetLease(ctx, "vm-a")
	must(t, err, "get lease")
	if got.IP != a.IP || got.VMID != a.VMID || !got.CreatedAt.Equal(a.CreatedAt) {
		t.Fatalf("get lease: got %+v, want %+v", got, a)
	}
	mustFail(t, s.CreateLease(ctx, store.Lease{IP: "172.30.0.2", VMID: "vm-b", CreatedAt: at(2)}), store.ErrConflict,
		"lease a held address")
	mustFail(t, s.CreateLease(ctx, store.Lease{IP: "172.30.0.3", VMID: "vm-a", CreatedAt: at(2)}), store.ErrConflict,
		"a second lease for one vm")
	_, err = s.GetLease(ctx, "vm-b")
	mustFail(t, err, store.ErrNotFound, "vm-b holds nothing")
	must(t, s.CreateLease(ctx, store.Lease{IP: "172.30.0.10", VMID: "vm-b", CreatedAt: at(3)}), "lease to vm-b")
	ls, err := s.ListLeases(ctx)
	must(t, err, "list leases")
	if len(ls) != 2 {
		t.Fatalf("list leases: %d, want 2", len(ls))
	}
	must(t, s.DeleteLease(ctx, "vm-a"), "release vm-a")
	must(t, s.DeleteLease(ctx, "vm-a"), "release vm-a again")
	// Released: the address can be leased again.
	must(t, s.CreateLease(ctx, store.Lease{IP: "172.30.0.2", VMID: "vm-a", CreatedAt: at(4)}), "re-lease")
}

// Many goroutines race for a small pool: every address ends with exactly
// one holder and every VM with at most one address.
func testConcurrentLeases(t *testing.T, s store.Store) {
	ctx := t.Context()
	const vms, addrs = 20, 8
	for i := range vms {
		must(t, s.CreateVM(ctx, newVM(fmt.Sprintf("vm-%02d", i), "u-1", store.StateBooting, at(i))), "create vm")
	}
	var wg sync.WaitGroup
	errs := make(chan error, vms*addrs)
	for i := range vms {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for a := range addrs {
				err := s.CreateLease(ctx, store.Lease{IP: fmt.Sprintf("10.9.0.%d", a+2), VMID: fmt.Sprintf("vm-%02d", i), CreatedAt: at(0)})
				if err == nil {
					return
				}
				if !errors.Is(err, store.ErrConflict) {
					errs <- err
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ls, err := s.ListLeases(ctx)
	must(t, err, "list leases")
	if len(ls) != addrs {
		t.Fatalf("%d leases, want %d (the pool is full)", len(ls), addrs)
	}
	ips, holders := map[string]bool{}, map[string]bool{}
	for _, l := range ls {
		if ips[l.IP] || holders[l.VMID] {
			t.Fatalf("duplicate in %+v", ls)
		}
		ips[l.IP], holders[l.VMID] = true, true
	}
}

package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
	"github.com/hearth-project/hearth/internal/store/sqlite"
)

func newStore(t *testing.T, vms int) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), t.TempDir()+"/h.db")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for i := range vms {
		if err := st.CreateVM(context.Background(), store.VM{ID: fmt.Sprintf("vm-%d", i), State: store.StateBooting, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func TestAllocateSkipsReservedAndIsIdempotent(t *testing.T) {
	st := newStore(t, 10)
	a, err := New(st, netip.MustParsePrefix("172.30.0.0/29"), netip.MustParseAddr("172.30.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Size() != 5 {
		t.Fatalf("size %d, want 5 (.2-.6)", a.Size())
	}
	ctx := context.Background()
	got := map[string]bool{}
	for i := range 5 {
		ip, err := a.Allocate(ctx, fmt.Sprintf("vm-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if ip.String() == "172.30.0.0" || ip.String() == "172.30.0.1" || ip.String() == "172.30.0.7" || got[ip.String()] {
			t.Fatalf("bad address %s (have %v)", ip, got)
		}
		got[ip.String()] = true
		again, err := a.Allocate(ctx, fmt.Sprintf("vm-%d", i))
		if err != nil || again != ip {
			t.Fatalf("allocate is not idempotent: %s then %s (%v)", ip, again, err)
		}
	}
	_, err = a.Allocate(ctx, "vm-5")
	if !errors.Is(err, errdefs.ErrUnavailable) || errdefs.Public(err) == "" {
		t.Fatalf("full pool: want a public ErrUnavailable, got %v", err)
	}
	if err := a.Release(ctx, "vm-2"); err != nil {
		t.Fatal(err)
	}
	ip, err := a.Allocate(ctx, "vm-5")
	if err != nil || !got[ip.String()] {
		t.Fatalf("after a release the freed address is handed out: %s %v", ip, err)
	}
}

func TestRoundRobinDoesNotReuseAtOnce(t *testing.T) {
	st := newStore(t, 3)
	a, _ := New(st, netip.MustParsePrefix("10.0.0.0/24"), netip.MustParseAddr("10.0.0.1"))
	ctx := context.Background()
	first, _ := a.Allocate(ctx, "vm-0")
	_ = a.Release(ctx, "vm-0")
	second, _ := a.Allocate(ctx, "vm-1")
	if second == first {
		t.Fatalf("released address %s reused at once", first)
	}
}

func TestConcurrentAllocatorsNeverDuplicate(t *testing.T) {
	st := newStore(t, 40)
	ctx := context.Background()
	// Two allocators over one store, as two daemons (or a restart) would be.
	a1, _ := New(st, netip.MustParsePrefix("10.1.0.0/24"), netip.MustParseAddr("10.1.0.1"))
	a2, _ := New(st, netip.MustParsePrefix("10.1.0.0/24"), netip.MustParseAddr("10.1.0.1"))
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[netip.Addr]string{}
	for i := range 40 {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			a := a1
			if i%2 == 1 {
				a = a2
			}
			id := fmt.Sprintf("vm-%d", i)
			ip, err := a.Allocate(ctx, id)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if other, dup := seen[ip]; dup {
				t.Errorf("%s given to %s and %s", ip, other, id)
			}
			seen[ip] = id
		}(i)
	}
	wg.Wait()
	if len(seen) != 40 {
		t.Fatalf("%d addresses for 40 vms", len(seen))
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(nil, netip.MustParsePrefix("10.0.0.0/31"), netip.MustParseAddr("10.0.0.1")); err == nil {
		t.Fatal("/31 accepted")
	}
	if _, err := New(nil, netip.MustParsePrefix("10.0.0.0/24"), netip.MustParseAddr("10.0.1.1")); err == nil {
		t.Fatal("gateway outside subnet accepted")
	}
}

package vm

import (
	"fmt"
	"slices"
	"testing"

	"github.com/hearth-project/hearth/internal/store"
)

// drain returns the IDs of the events waiting on s.
func drain(s *Subscription) []int64 {
	var ids []int64
	for {
		select {
		case e, ok := <-s.C:
			if !ok {
				return ids
			}
			ids = append(ids, e.ID)
		default:
			return ids
		}
	}
}

// TestBusWakesOnlyMatchingSubscribers: an event reaches exactly the
// subscribers whose filter matches it, however many others there are.
func TestBusWakesOnlyMatchingSubscribers(t *testing.T) {
	b := NewBus()
	events := []store.Event{
		{ID: 1, UserID: "alice", VMID: "vm-a"},
		{ID: 2, UserID: "alice", LoginID: "lgn-a"},
		{ID: 3, UserID: "bob", VMID: "vm-b"},
		{ID: 4, UserID: "bob", LoginID: "lgn-b"},
		{ID: 5, UserID: "bob", VMID: "vm-a"}, // another user's event for alice's VM id: only a VM filter sees it
		{ID: 6},                              // no user
	}
	filters := []store.EventFilter{
		{},
		{UserID: "alice"},
		{UserID: "bob"},
		{UserID: "carol"},
		{LoginID: "lgn-a"},
		{LoginID: "lgn-a", UserID: "bob"},
		{VMID: "vm-a"},
		{VMID: "vm-a", UserID: "alice"},
	}
	subs := make([]*Subscription, len(filters))
	for i, f := range filters {
		subs[i] = b.Subscribe(len(events), f)
	}
	for _, e := range events {
		b.Publish(e)
	}
	for i, f := range filters {
		var want []int64
		for _, e := range events {
			if f.Matches(e) {
				want = append(want, e.ID)
			}
		}
		if got := drain(subs[i]); !slices.Equal(got, want) {
			t.Errorf("subscriber %+v got events %v, want %v", f, got, want)
		}
	}
	for _, s := range subs {
		s.Close()
	}
	if n := b.Subscribers(); n != 0 {
		t.Fatalf("%d subscriptions left after closing all", n)
	}
}

// TestBusIdleSubscribersCostNothing: a thousand idle subscribers of one
// user neither receive another user's events nor fall behind and get
// dropped because of them.
func TestBusIdleSubscribersCostNothing(t *testing.T) {
	b := NewBus()
	var idle []*Subscription
	for range 1000 {
		idle = append(idle, b.Subscribe(1, store.EventFilter{UserID: "alice"}))
	}
	bob := b.Subscribe(100, store.EventFilter{UserID: "bob"})
	for i := range 100 {
		b.Publish(store.Event{ID: int64(i + 1), UserID: "bob", VMID: fmt.Sprintf("vm-%d", i)})
	}
	if got := drain(bob); len(got) != 100 {
		t.Fatalf("bob's subscriber got %d of 100 events", len(got))
	}
	for _, s := range idle {
		select {
		case e, ok := <-s.C:
			if !ok {
				t.Fatal("an idle subscriber of alice was dropped by bob's events")
			}
			t.Fatalf("alice's subscriber got bob's event %+v", e)
		default:
		}
	}
	if n := b.Subscribers(); n != 1001 {
		t.Fatalf("%d subscriptions open, want 1001", n)
	}
}

// TestBusDropsSlowSubscriber: a full subscriber is closed (it resumes
// from the store), and the others still get the event.
func TestBusDropsSlowSubscriber(t *testing.T) {
	b := NewBus()
	slow := b.Subscribe(1, store.EventFilter{UserID: "alice"})
	fast := b.Subscribe(10, store.EventFilter{UserID: "alice"})
	for i := range 3 {
		b.Publish(store.Event{ID: int64(i + 1), UserID: "alice"})
	}
	if got := drain(slow); !slices.Equal(got, []int64{1}) {
		t.Fatalf("slow subscriber got %v, want [1] and then closed", got)
	}
	if _, ok := <-slow.C; ok {
		t.Fatal("slow subscriber not closed")
	}
	if got := drain(fast); !slices.Equal(got, []int64{1, 2, 3}) {
		t.Fatalf("fast subscriber got %v", got)
	}
	slow.Close() // closing twice is harmless
	fast.Close()
	if n := b.Subscribers(); n != 0 {
		t.Fatalf("%d subscriptions left", n)
	}
}

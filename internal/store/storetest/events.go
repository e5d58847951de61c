package storetest

import (
	"fmt"
	"testing"

	"github.com/hearth-project/hearth/internal/store"
)

func testEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	events, err := s.ListEvents(ctx, 0, 0)
	must(t, err, "list events of an empty store")
	if len(events) != 0 {
		t.Fatalf("empty store lists %d events", len(events))
	}

	var appended []store.Event
	for i := range 5 {
		in := store.Event{
			ID:        1000 + int64(i), // ignored: the store assigns IDs
			At:        at(i),
			Type:      "vm.state",
			VMID:      fmt.Sprintf("vm-%d", i),
			UserID:    "u-1",
			LoginID:   fmt.Sprintf("login-%d", i%2), // login events name their login
			FromState: store.StatePending,
			ToState:   store.StateBooting,
			Message:   fmt.Sprintf("event %d", i),
		}
		out, err := s.AppendEvent(ctx, in)
		must(t, err, "append event")
		if len(appended) > 0 && out.ID <= appended[len(appended)-1].ID {
			t.Fatalf("event id %d after %d: ids must strictly increase", out.ID, appended[len(appended)-1].ID)
		}
		in.ID = out.ID
		equal(t, "appended event", out, in, normEvent)
		appended = append(appended, out)
	}

	events, err = s.ListEvents(ctx, 0, 0)
	must(t, err, "list all events")
	equal(t, "all events", events, appended, normEvents)
	events, err = s.ListEvents(ctx, 0, -1)
	must(t, err, "list events with a negative limit")
	equal(t, "events with a negative limit", events, appended, normEvents)

	// Page through two at a time.
	var paged []store.Event
	after := int64(0)
	for page := 0; ; page++ {
		events, err := s.ListEvents(ctx, after, 2)
		must(t, err, "list a page of events")
		if len(events) > 2 {
			t.Fatalf("page %d has %d events, limit 2", page, len(events))
		}
		if len(events) == 0 {
			break
		}
		paged = append(paged, events...)
		after = events[len(events)-1].ID
		if page > len(appended) {
			t.Fatal("paging does not end")
		}
	}
	equal(t, "paged events", paged, appended, normEvents)

	events, err = s.ListEvents(ctx, appended[2].ID, 0)
	must(t, err, "list events after the third")
	equal(t, "events after the third", events, appended[3:], normEvents)
	events, err = s.ListEvents(ctx, appended[4].ID, 10)
	must(t, err, "list events after the last")
	if len(events) != 0 {
		t.Fatalf("%d events after the last one", len(events))
	}
}

// testEventsDefaultLimit checks that limit <= 0 means 1000.
func testEventsDefaultLimit(t *testing.T, s store.Store) {
	const n = 1001
	ctx := t.Context()
	for i := range n {
		_, err := s.AppendEvent(ctx, store.Event{At: at(i), Type: "test", Message: fmt.Sprint(i)})
		must(t, err, "append event")
	}
	events, err := s.ListEvents(ctx, 0, 0)
	must(t, err, "list events")
	if len(events) != 1000 {
		t.Fatalf("limit 0 listed %d of %d events, want 1000", len(events), n)
	}
	rest, err := s.ListEvents(ctx, events[len(events)-1].ID, 0)
	must(t, err, "list the rest")
	if len(rest) != n-1000 {
		t.Fatalf("listed %d remaining events, want %d", len(rest), n-1000)
	}
}

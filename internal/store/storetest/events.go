package storetest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/hearth-project/hearth/internal/errdefs"
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
	paged := pageEvents(t, "events", 0, 2, len(appended), func(after int64, limit int) ([]store.Event, error) {
		return s.ListEvents(ctx, after, limit)
	})
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

// testQueryEvents checks that each filter returns exactly the events it
// matches, in id order, and pages like ListEvents.
func testQueryEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	var all []store.Event
	for i := range 60 {
		e := store.Event{At: at(i), Type: "vm.state", UserID: fmt.Sprintf("u-%d", i%3), Message: fmt.Sprint(i)}
		if i%4 == 0 {
			e.Type, e.LoginID = "login.state", fmt.Sprintf("login-%d", i%8)
		} else {
			e.VMID = fmt.Sprintf("vm-%d", i%5)
		}
		out, err := s.AppendEvent(ctx, e)
		must(t, err, "append event")
		all = append(all, out)
	}
	filters := []store.EventFilter{
		{},
		{UserID: "u-1"},
		{UserID: "nobody"},
		{LoginID: "login-4"},
		{LoginID: "login-4", UserID: "u-1"},
		{LoginID: "login-4", UserID: "u-2"},
		{VMID: "vm-3"},
		{VMID: "vm-3", UserID: "u-0"},
	}
	for _, f := range filters {
		var want []store.Event
		for _, e := range all {
			if f.Matches(e) {
				want = append(want, e)
			}
		}
		got, err := s.QueryEvents(ctx, f, 0, 0)
		must(t, err, fmt.Sprintf("query events %+v", f))
		equal(t, fmt.Sprintf("events %+v", f), got, want, normEvents)

		// Three at a time from the middle of the log.
		after := all[20].ID
		var wantAfter []store.Event
		for _, e := range want {
			if e.ID > after {
				wantAfter = append(wantAfter, e)
			}
		}
		paged := pageEvents(t, fmt.Sprintf("events %+v", f), after, 3, len(all), func(after int64, limit int) ([]store.Event, error) {
			return s.QueryEvents(ctx, f, after, limit)
		})
		equal(t, fmt.Sprintf("paged events %+v", f), paged, wantAfter, normEvents)
	}
}

// pageEvents reads the events after after through list, limit at a time,
// until a page is empty, and returns them all. It fails the test if a page
// is over the limit or paging takes more than maxPages pages.
func pageEvents(t *testing.T, what string, after int64, limit, maxPages int,
	list func(after int64, limit int) ([]store.Event, error),
) []store.Event {
	t.Helper()
	var paged []store.Event
	for page := 0; ; page++ {
		events, err := list(after, limit)
		must(t, err, "list a page of "+what)
		if len(events) > limit {
			t.Fatalf("%s: page %d has %d events, limit %d", what, page, len(events), limit)
		}
		if len(events) == 0 {
			return paged
		}
		paged = append(paged, events...)
		after = events[len(events)-1].ID
		if page > maxPages {
			t.Fatalf("%s: paging does not end", what)
		}
	}
}

// testPruneEvents checks retention: the oldest events go, in bounded
// batches, the horizon moves to the last one removed, and every event
// above it stays exactly as written.
func testPruneEvents(t *testing.T, s store.Store) {
	ctx := t.Context()
	h, err := s.EventHorizon(ctx)
	must(t, err, "horizon of an empty log")
	if h != 0 {
		t.Fatalf("horizon of an empty log is %d, want 0", h)
	}
	_, err = s.PruneEvents(ctx, store.EventRetention{Before: at(100), Batch: 0})
	mustFail(t, err, errdefs.ErrInvalid, "prune with batch 0")
	n, err := s.PruneEvents(ctx, store.EventRetention{Before: at(100), Batch: 10})
	must(t, err, "prune an empty log")
	if n != 0 {
		t.Fatalf("pruned %d events of an empty log", n)
	}

	// Times 0..29, except that event 12 is older than its predecessors
	// say (a writer's clock): pruning stops at the first event it keeps.
	var all []store.Event
	for i := range 30 {
		sec := i
		if i == 12 {
			sec = 5
		}
		e, err := s.AppendEvent(ctx, store.Event{At: at(sec), Type: "test", UserID: "u", Message: fmt.Sprint(i)})
		must(t, err, "append event")
		all = append(all, e)
	}
	n, err = s.PruneEvents(ctx, store.EventRetention{Batch: 10})
	must(t, err, "prune without limits")
	if n != 0 {
		t.Fatalf("a retention without limits pruned %d events", n)
	}
	// Older than second 10: events 0..9 and then 12, but 10 and 11 stay,
	// so 12 stays too.
	var total []int
	for {
		n, err := s.PruneEvents(ctx, store.EventRetention{Before: at(10), Batch: 4})
		must(t, err, "prune by age")
		if n > 4 {
			t.Fatalf("pruned %d events in one batch of 4", n)
		}
		total = append(total, n)
		if n < 4 {
			break
		}
		if len(total) > 10 {
			t.Fatal("pruning does not end")
		}
	}
	if !slices.Equal(total, []int{4, 4, 2}) {
		t.Fatalf("batches removed %v events, want [4 4 2]", total)
	}
	checkRetained(t, s, all[9].ID, all[10:])

	// Keep the newest 8: everything up to the 22nd goes, 12 included.
	n, err = s.PruneEvents(ctx, store.EventRetention{KeepRows: 8, Batch: 100})
	must(t, err, "prune by rows")
	if n != 12 {
		t.Fatalf("pruned %d events to keep 8 of 20, want 12", n)
	}
	checkRetained(t, s, all[21].ID, all[22:])

	// Either limit is enough: age says nothing here, rows say 2 more.
	n, err = s.PruneEvents(ctx, store.EventRetention{Before: at(0), KeepRows: 6, Batch: 100})
	must(t, err, "prune by rows with an age that keeps all")
	if n != 2 {
		t.Fatalf("pruned %d events, want 2", n)
	}
	checkRetained(t, s, all[23].ID, all[24:])

	// Everything may go; ids go on above the horizon.
	n, err = s.PruneEvents(ctx, store.EventRetention{Before: at(1000), Batch: 100})
	must(t, err, "prune everything")
	if n != 6 {
		t.Fatalf("pruned %d events, want the last 6", n)
	}
	checkRetained(t, s, all[29].ID, nil)
	e, err := s.AppendEvent(ctx, store.Event{At: at(2000), Type: "test", UserID: "u"})
	must(t, err, "append after pruning everything")
	if e.ID <= all[29].ID {
		t.Fatalf("new event got id %d, not above the horizon %d", e.ID, all[29].ID)
	}
	checkRetained(t, s, all[29].ID, []store.Event{e})
}

// checkRetained checks the horizon and that exactly want is left.
func checkRetained(t *testing.T, s store.Store, horizon int64, want []store.Event) {
	t.Helper()
	h, err := s.EventHorizon(t.Context())
	must(t, err, "event horizon")
	if h != horizon {
		t.Fatalf("horizon %d, want %d", h, horizon)
	}
	got, err := s.ListEvents(t.Context(), 0, 0)
	must(t, err, "list retained events")
	equal(t, "retained events", got, want, normEvents)
	got, err = s.QueryEvents(t.Context(), store.EventFilter{UserID: "u"}, 0, 0)
	must(t, err, "query retained events")
	equal(t, "retained events of the user", got, want, normEvents)
}

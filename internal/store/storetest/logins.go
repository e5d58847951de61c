package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

var terminalLoginStates = []store.LoginState{
	store.LoginCompleted, store.LoginFailed, store.LoginCancelled, store.LoginExpired,
}

// finish moves a login to a terminal state, naming a credential when the
// state needs one.
func finish(l *store.Login, to store.LoginState) {
	l.State = to
	if to == store.LoginCompleted {
		l.CredentialID = "cred-of-" + l.ID
	}
}

func testLogins(t *testing.T, s store.Store) {
	ctx := t.Context()
	l := newLogin("login-1", "u-1", "claude_code", at(0))
	before := time.Now()
	ev, err := s.CreateLogin(ctx, l)
	after := time.Now()
	must(t, err, "create login")
	checkStamp(t, "created event At", ev.At, before, after)
	wantEv := store.Event{ID: ev.ID, At: ev.At, Type: "login.created", UserID: "u-1", LoginID: l.ID,
		ToState: store.State(store.LoginStarting), Message: "claude_code"}
	equal(t, "created event", ev, wantEv, normEvent)
	events, err := s.ListEvents(ctx, 0, 0)
	must(t, err, "list events")
	equal(t, "logged events", events, []store.Event{wantEv}, normEvents)

	got, err := s.GetLogin(ctx, l.ID)
	must(t, err, "get login")
	equal(t, "get login", got, l, normLogin)

	// The same id again, even for another user or provider.
	dup := newLogin("login-1", "u-2", "codex", at(1))
	_, err = s.CreateLogin(ctx, dup)
	mustFail(t, err, store.ErrConflict, "create a login with a taken id")

	// A second active login for the same user and provider, in any active state.
	for _, st := range []store.LoginState{store.LoginStarting, store.LoginAwaitingUser, store.LoginCapturing} {
		second := newLogin("login-2", "u-1", "claude_code", at(2))
		second.State = st
		_, err = s.CreateLogin(ctx, second)
		mustFail(t, err, store.ErrConflict, "a second active login ("+string(st)+") for the same user and provider")
	}
	if n := eventCount(t, s); n != 1 {
		t.Fatalf("%d events after refused creates, want 1", n)
	}
	_, err = s.GetLogin(ctx, "login-2")
	mustFail(t, err, store.ErrNotFound, "get a login whose creation was refused")

	// Other providers and other users are independent.
	other := []store.Login{
		newLogin("login-3", "u-1", "codex", at(3)),
		newLogin("login-4", "u-2", "claude_code", at(4)),
	}
	for _, o := range other {
		_, err := s.CreateLogin(ctx, o)
		must(t, err, "create "+o.ID)
	}
	// A login created with zero optional times keeps them zero.
	zero := store.Login{ID: "login-zero", UserID: "u-3", Provider: "gemini_cli", State: store.LoginAwaitingUser}
	_, err = s.CreateLogin(ctx, zero)
	must(t, err, "create a login with zero times")
	gotZero, err := s.GetLogin(ctx, zero.ID)
	must(t, err, "get the login with zero times")
	equal(t, "login with zero times", gotZero, zero, normLogin)

	_, err = s.GetLogin(ctx, "login-nobody")
	mustFail(t, err, store.ErrNotFound, "get a missing login")
}

func testLoginsInvalid(t *testing.T, s store.Store) {
	ctx := t.Context()
	for name, mutate := range map[string]func(*store.Login){
		"no id":                      func(l *store.Login) { l.ID = "" },
		"no user":                    func(l *store.Login) { l.UserID = "" },
		"no provider":                func(l *store.Login) { l.Provider = "" },
		"unknown state":              func(l *store.Login) { l.State = "exploded" },
		"no state":                   func(l *store.Login) { l.State = "" },
		"created failed":             func(l *store.Login) { l.State = store.LoginFailed },
		"created completed":          func(l *store.Login) { finish(l, store.LoginCompleted) },
		"created with a CompletedAt": func(l *store.Login) { l.CompletedAt = at(9) },
	} {
		l := newLogin("login-bad", "u-1", "codex", at(0))
		mutate(&l)
		_, err := s.CreateLogin(ctx, l)
		mustFail(t, err, errdefs.ErrInvalid, "create a login with "+name)
	}
	if n := eventCount(t, s); n != 0 {
		t.Fatalf("%d events after invalid creates, want 0", n)
	}
	ls, err := s.ListLogins(ctx, store.LoginFilter{})
	must(t, err, "list logins")
	if len(ls) != 0 {
		t.Fatalf("invalid creates stored %q", loginIDs(ls))
	}
}

func testListLogins(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Created out of order; b1 and b2 share a creation time.
	create := []store.Login{
		newLogin("login-d", "u-1", "claude_code", at(3)),
		newLogin("login-c", "u-2", "codex", at(2)),
		newLogin("login-b2", "u-1", "codex", at(1)),
		newLogin("login-b1", "u-2", "claude_code", at(1)),
		newLogin("login-a", "u-1", "claude_code", at(0)), // finished below before login-d
	}
	// login-a must be terminal before login-d (same user and provider) exists.
	a, d := create[4], create[0]
	_, err := s.CreateLogin(ctx, a)
	must(t, err, "create login-a")
	_, _, err = s.UpdateLogin(ctx, a.ID, "gave up", func(l *store.Login) error {
		finish(l, store.LoginCancelled)
		return nil
	})
	must(t, err, "cancel login-a")
	for _, l := range append([]store.Login{d}, create[1:4]...) {
		_, err := s.CreateLogin(ctx, l)
		must(t, err, "create "+l.ID)
	}
	_, _, err = s.UpdateLogin(ctx, "login-c", "done", func(l *store.Login) error {
		finish(l, store.LoginCompleted)
		return nil
	})
	must(t, err, "complete login-c")

	for _, tc := range []struct {
		filter store.LoginFilter
		want   []string
	}{
		{store.LoginFilter{}, []string{"login-a", "login-b1", "login-b2", "login-c", "login-d"}},
		{store.LoginFilter{ActiveOnly: true}, []string{"login-b1", "login-b2", "login-d"}},
		{store.LoginFilter{UserID: "u-1"}, []string{"login-a", "login-b2", "login-d"}},
		{store.LoginFilter{UserID: "u-1", Provider: "claude_code"}, []string{"login-a", "login-d"}},
		{store.LoginFilter{UserID: "u-1", Provider: "claude_code", ActiveOnly: true}, []string{"login-d"}},
		{store.LoginFilter{Provider: "codex"}, []string{"login-b2", "login-c"}},
		{store.LoginFilter{Provider: "codex", ActiveOnly: true}, []string{"login-b2"}},
		{store.LoginFilter{UserID: "u-2", ActiveOnly: true}, []string{"login-b1"}},
		{store.LoginFilter{UserID: "u-nobody"}, nil},
		{store.LoginFilter{Provider: "gemini_cli"}, nil},
	} {
		ls, err := s.ListLogins(ctx, tc.filter)
		must(t, err, fmt.Sprintf("list logins with %+v", tc.filter))
		if got := loginIDs(ls); !slices.Equal(got, tc.want) {
			t.Errorf("list logins with %+v = %q, want %q", tc.filter, got, tc.want)
		}
	}

	// Listed logins carry every field.
	ls, err := s.ListLogins(ctx, store.LoginFilter{UserID: "u-2", Provider: "claude_code"})
	must(t, err, "list login-b1")
	if len(ls) != 1 {
		t.Fatalf("listed %d logins, want 1", len(ls))
	}
	equal(t, "listed login", ls[0], create[3], normLogin)
}

// testLoginAfterTerminal checks that each terminal state frees the user and
// provider for a new login.
func testLoginAfterTerminal(t *testing.T, s store.Store) {
	ctx := t.Context()
	for st, want := range map[store.LoginState]bool{
		store.LoginStarting: false, store.LoginAwaitingUser: false, store.LoginCapturing: false,
		store.LoginCompleted: true, store.LoginFailed: true, store.LoginCancelled: true, store.LoginExpired: true,
	} {
		if got := st.Terminal(); got != want {
			t.Errorf("%s.Terminal() = %v, want %v", st, got, want)
		}
	}
	for i, to := range terminalLoginStates {
		l := newLogin(fmt.Sprintf("login-%d", i), "u-1", "gemini_cli", at(i))
		_, err := s.CreateLogin(ctx, l)
		must(t, err, "create "+l.ID)
		blocked := newLogin(fmt.Sprintf("login-blocked-%d", i), "u-1", "gemini_cli", at(i))
		_, err = s.CreateLogin(ctx, blocked)
		mustFail(t, err, store.ErrConflict, "a second login while "+l.ID+" is active")
		_, _, err = s.UpdateLogin(ctx, l.ID, "over", func(l *store.Login) error {
			finish(l, to)
			return nil
		})
		must(t, err, "move "+l.ID+" to "+string(to))
	}
	l := newLogin("login-last", "u-1", "gemini_cli", at(10))
	_, err := s.CreateLogin(ctx, l)
	must(t, err, "create a login once every earlier one is over")
	active, err := s.ListLogins(ctx, store.LoginFilter{UserID: "u-1", ActiveOnly: true})
	must(t, err, "list active logins")
	if got := loginIDs(active); !slices.Equal(got, []string{"login-last"}) {
		t.Fatalf("active logins = %q, want [login-last]", got)
	}
}

func testUpdateLogin(t *testing.T, s store.Store) {
	ctx := t.Context()
	l := newLogin("login-1", "u-1", "codex", at(0))
	created, err := s.CreateLogin(ctx, l)
	must(t, err, "create login")

	// A state change returns and records a login.state event with the row.
	before := time.Now()
	got, ev, err := s.UpdateLogin(ctx, l.ID, "browser ready", func(l *store.Login) error {
		l.State = store.LoginAwaitingUser
		l.BrowserVMID = "vm-42"
		l.CompletedAt = at(99) // the store's to keep: ignored
		return nil
	})
	after := time.Now()
	must(t, err, "update state")
	checkStamp(t, "UpdatedAt", got.UpdatedAt, before, after)
	want := l
	want.State, want.BrowserVMID, want.UpdatedAt = store.LoginAwaitingUser, "vm-42", got.UpdatedAt
	equal(t, "updated login", got, want, normLogin)
	stored, err := s.GetLogin(ctx, l.ID)
	must(t, err, "get updated login")
	equal(t, "stored login", stored, want, normLogin)
	if ev == nil {
		t.Fatal("state change returned no event")
	}
	wantEv := store.Event{ID: ev.ID, At: got.UpdatedAt, Type: "login.state", UserID: "u-1", LoginID: l.ID,
		FromState: store.State(store.LoginStarting), ToState: store.State(store.LoginAwaitingUser), Message: "browser ready"}
	equal(t, "returned event", *ev, wantEv, normEvent)
	events, err := s.ListEvents(ctx, 0, 0)
	must(t, err, "list events")
	equal(t, "logged events", events, []store.Event{created, wantEv}, normEvents)

	// No state change: no event, UpdatedAt still moves.
	got2, ev2, err := s.UpdateLogin(ctx, l.ID, "extended", func(l *store.Login) error {
		l.ExpiresAt = at(3600)
		return nil
	})
	must(t, err, "update without a state change")
	if ev2 != nil {
		t.Fatalf("update without a state change returned event %+v", *ev2)
	}
	if got2.UpdatedAt.Before(got.UpdatedAt) {
		t.Fatalf("UpdatedAt went back from %v to %v", got.UpdatedAt, got2.UpdatedAt)
	}
	want.ExpiresAt, want.UpdatedAt = at(3600), got2.UpdatedAt
	equal(t, "login after an update without a state change", got2, want, normLogin)
	if n := eventCount(t, s); n != 2 {
		t.Fatalf("%d events after an update without a state change, want 2", n)
	}

	// Completing stamps CompletedAt with the update's time.
	got3, ev3, err := s.UpdateLogin(ctx, l.ID, "captured", func(l *store.Login) error {
		l.State = store.LoginCompleted
		l.CredentialID = "cred-1"
		return nil
	})
	must(t, err, "complete the login")
	if ev3 == nil || ev3.FromState != store.State(store.LoginAwaitingUser) || ev3.ToState != store.State(store.LoginCompleted) {
		t.Fatalf("completion event = %+v", ev3)
	}
	if got3.CompletedAt.IsZero() || !got3.CompletedAt.Equal(got3.UpdatedAt) {
		t.Fatalf("CompletedAt = %v, want the update's time %v", got3.CompletedAt, got3.UpdatedAt)
	}
	stored, err = s.GetLogin(ctx, l.ID)
	must(t, err, "get the completed login")
	equal(t, "stored completed login", stored, got3, normLogin)
}

// testUpdateLoginTerminal checks that a terminal login never changes state
// again, while its other fields may still change.
func testUpdateLoginTerminal(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i, from := range terminalLoginStates {
		l := newLogin(fmt.Sprintf("login-%d", i), "u-1", fmt.Sprintf("provider-%d", i), at(i))
		_, err := s.CreateLogin(ctx, l)
		must(t, err, "create "+l.ID)
		done, _, err := s.UpdateLogin(ctx, l.ID, "over", func(l *store.Login) error {
			finish(l, from)
			l.FailureReason = "reason"
			return nil
		})
		must(t, err, "finish "+l.ID)
		events := eventCount(t, s)

		for _, to := range append([]store.LoginState{store.LoginStarting, store.LoginCapturing}, terminalLoginStates...) {
			if to == from {
				continue
			}
			_, ev, err := s.UpdateLogin(ctx, l.ID, "again", func(l *store.Login) error {
				finish(l, to)
				l.FailureReason = "overwritten"
				return nil
			})
			mustFail(t, err, store.ErrConflict, fmt.Sprintf("move a %s login to %s", from, to))
			if ev != nil {
				t.Fatalf("refused update returned event %+v", *ev)
			}
		}
		stored, err := s.GetLogin(ctx, l.ID)
		must(t, err, "get "+l.ID)
		equal(t, "terminal login after refused updates", stored, done, normLogin)
		if n := eventCount(t, s); n != events {
			t.Fatalf("%d events after refused updates, want %d", n, events)
		}

		// Other fields of a finished login may change (e.g. its browser VM
		// is gone); CompletedAt stays.
		cleared, ev, err := s.UpdateLogin(ctx, l.ID, "browser gone", func(l *store.Login) error {
			l.BrowserVMID = ""
			return nil
		})
		must(t, err, "clear the browser vm of "+l.ID)
		if ev != nil {
			t.Fatalf("update without a state change returned event %+v", *ev)
		}
		if cleared.BrowserVMID != "" || !cleared.CompletedAt.Equal(done.CompletedAt) || cleared.State != from {
			t.Fatalf("after clearing the browser vm: %+v (was %+v)", cleared, done)
		}
	}
}

func testUpdateLoginRefused(t *testing.T, s store.Store) {
	ctx := t.Context()
	l := newLogin("login-1", "u-1", "codex", at(0))
	_, err := s.CreateLogin(ctx, l)
	must(t, err, "create login")
	events := eventCount(t, s)

	_, ev, err := s.UpdateLogin(ctx, l.ID, "never", func(l *store.Login) error {
		l.State = store.LoginFailed
		return errBoom
	})
	if !errors.Is(err, errBoom) || ev != nil {
		t.Fatalf("update with a failing fn: %v, event %v; want %v and no event", err, ev, errBoom)
	}
	for name, mutate := range map[string]func(*store.Login){
		"id":                          func(l *store.Login) { l.ID = "login-2" },
		"user":                        func(l *store.Login) { l.UserID = "u-2" },
		"provider":                    func(l *store.Login) { l.Provider = "claude_code" },
		"creation time":               func(l *store.Login) { l.CreatedAt = at(5) },
		"state to an unknown one":     func(l *store.Login) { l.State = "exploded" },
		"state to completed, no cred": func(l *store.Login) { l.State = store.LoginCompleted },
	} {
		_, ev, err := s.UpdateLogin(ctx, l.ID, "bad", func(l *store.Login) error {
			mutate(l)
			return nil
		})
		mustFail(t, err, errdefs.ErrInvalid, "update that changes the "+name)
		if ev != nil {
			t.Fatalf("refused update returned event %+v", *ev)
		}
	}
	stored, err := s.GetLogin(ctx, l.ID)
	must(t, err, "get login")
	equal(t, "login after refused updates", stored, l, normLogin)
	if n := eventCount(t, s); n != events {
		t.Fatalf("%d events after refused updates, want %d", n, events)
	}

	called := false
	_, ev, err = s.UpdateLogin(ctx, "login-nobody", "", func(*store.Login) error {
		called = true
		return nil
	})
	mustFail(t, err, store.ErrNotFound, "update a missing login")
	if called || ev != nil {
		t.Fatalf("update of a missing login called fn (%v) or returned event %v", called, ev)
	}
}

// testConcurrentCreateLogin has many goroutines create a login for the same
// user and provider at once: exactly one may win.
func testConcurrentCreateLogin(t *testing.T, s store.Store) {
	const n = 32
	ctx := t.Context()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []string
	)
	for i := range n {
		wg.Go(func() {
			l := newLogin(fmt.Sprintf("login-%02d", i), "u-1", "claude_code", at(i))
			_, err := s.CreateLogin(ctx, l)
			switch {
			case err == nil:
				mu.Lock()
				winners = append(winners, l.ID)
				mu.Unlock()
			case !errors.Is(err, store.ErrConflict):
				t.Errorf("concurrent create %s: %v", l.ID, err)
			}
		})
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d concurrent creates succeeded (%q), want exactly 1", len(winners), winners)
	}
	ls, err := s.ListLogins(ctx, store.LoginFilter{})
	must(t, err, "list logins")
	if got := loginIDs(ls); !slices.Equal(got, winners) {
		t.Fatalf("stored logins %q, want %q", got, winners)
	}
	events, err := s.ListEvents(ctx, 0, 0)
	must(t, err, "list events")
	if len(events) != 1 || events[0].LoginID != winners[0] {
		t.Fatalf("events %+v, want one for %s", events, winners[0])
	}
}

// testConcurrentFinishLogin has many goroutines move one login to a terminal
// state at once: exactly one transition may happen.
func testConcurrentFinishLogin(t *testing.T, s store.Store) {
	const n = 32
	ctx := t.Context()
	l := newLogin("login-1", "u-1", "codex", at(0))
	_, err := s.CreateLogin(ctx, l)
	must(t, err, "create login")
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		wins []store.LoginState
	)
	for i := range n {
		to := terminalLoginStates[i%len(terminalLoginStates)]
		wg.Go(func() {
			_, ev, err := s.UpdateLogin(ctx, l.ID, "race", func(l *store.Login) error {
				finish(l, to)
				return nil
			})
			switch {
			case err == nil && ev != nil:
				mu.Lock()
				wins = append(wins, to)
				mu.Unlock()
			case err == nil:
				// Already in the state this update asked for: no transition.
			case !errors.Is(err, store.ErrConflict):
				t.Errorf("concurrent finish: %v", err)
			}
		})
	}
	wg.Wait()
	if len(wins) != 1 {
		t.Fatalf("%d concurrent transitions out of an active state succeeded (%v), want 1", len(wins), wins)
	}
	got, err := s.GetLogin(ctx, l.ID)
	must(t, err, "get login")
	if got.State != wins[0] {
		t.Fatalf("login is %s, the winning update set %s", got.State, wins[0])
	}
	if n := eventCount(t, s); n != 2 {
		t.Fatalf("%d events, want 2 (created, one transition)", n)
	}
}

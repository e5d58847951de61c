package vm

import (
	"testing"

	"github.com/hearth-project/hearth/internal/store"
)

func TestTransitions(t *testing.T) {
	legal := []struct{ from, to store.State }{
		{store.StatePending, store.StateBooting},
		{store.StateBooting, store.StateReady},
		{store.StateReady, store.StateStopping},
		{store.StateStopping, store.StateStopped},
		{store.StateStopped, store.StateDestroyed},
		{store.StatePending, store.StateFailed},
		{store.StateBooting, store.StateFailed},
		{store.StateReady, store.StateFailed},
		{store.StateStopping, store.StateFailed},
		{store.StateFailed, store.StateDestroyed},
		{store.StatePending, store.StateStopping},
		{store.StateBooting, store.StateStopping},
	}
	isLegal := map[[2]store.State]bool{}
	for _, l := range legal {
		isLegal[[2]store.State{l.from, l.to}] = true
	}
	for _, from := range States() {
		for _, to := range States() {
			want := isLegal[[2]store.State{from, to}]
			if got := CanTransition(from, to); got != want {
				t.Errorf("%s -> %s: got %v, want %v", from, to, got, want)
			}
		}
	}
}

func TestReachable(t *testing.T) {
	cases := []struct {
		from, target store.State
		want         bool
	}{
		{store.StatePending, store.StateReady, true},
		{store.StateBooting, store.StateDestroyed, true},
		{store.StateFailed, store.StateReady, false},
		{store.StateFailed, store.StateDestroyed, true},
		{store.StateReady, store.StateReady, true},
		{store.StateDestroyed, store.StateReady, false},
		{store.StateStopped, store.StateFailed, false},
	}
	for _, c := range cases {
		if got := Reachable(c.from, c.target); got != c.want {
			t.Errorf("Reachable(%s, %s) = %v, want %v", c.from, c.target, got, c.want)
		}
	}
}

func TestParseState(t *testing.T) {
	for _, s := range States() {
		if got, err := ParseState(string(s)); err != nil || got != s {
			t.Errorf("ParseState(%s) = %s, %v", s, got, err)
		}
	}
	if _, err := ParseState("running"); err == nil {
		t.Error("running is not a state")
	}
}

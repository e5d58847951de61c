package vm

import (
	"fmt"

	"github.com/hearth-project/hearth/internal/errdefs"
	"github.com/hearth-project/hearth/internal/store"
)

// transitions lists, for each state, the states it may move to.
//
//	pending → booting → ready → stopping → stopped → destroyed
//	any of pending, booting, ready, stopping → failed → destroyed
//	pending, booting → stopping (deleted while starting)
var transitions = map[store.State][]store.State{
	store.StatePending:   {store.StateBooting, store.StateStopping, store.StateFailed},
	store.StateBooting:   {store.StateReady, store.StateStopping, store.StateFailed},
	store.StateReady:     {store.StateStopping, store.StateFailed},
	store.StateStopping:  {store.StateStopped, store.StateFailed},
	store.StateStopped:   {store.StateDestroyed},
	store.StateFailed:    {store.StateDestroyed},
	store.StateDestroyed: {},
}

// CanTransition reports whether from → to is a legal move.
func CanTransition(from, to store.State) bool {
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// checkTransition returns an ErrConflict naming both states if from → to is
// not allowed.
func checkTransition(from, to store.State) error {
	if CanTransition(from, to) {
		return nil
	}
	return fmt.Errorf("vm is %s, cannot become %s: %w", from, to, errdefs.ErrConflict)
}

// Reachable reports whether target can still be reached from s (s itself
// counts). A caller waiting for target can stop waiting when it cannot.
func Reachable(s, target store.State) bool {
	seen := map[store.State]bool{}
	var walk func(store.State) bool
	walk = func(x store.State) bool {
		if x == target {
			return true
		}
		if seen[x] {
			return false
		}
		seen[x] = true
		for _, n := range transitions[x] {
			if walk(n) {
				return true
			}
		}
		return false
	}
	return walk(s)
}

// States lists every state in lifecycle order.
func States() []store.State {
	return []store.State{store.StatePending, store.StateBooting, store.StateReady, store.StateStopping,
		store.StateStopped, store.StateFailed, store.StateDestroyed}
}

// ParseState validates a state name from a caller.
func ParseState(s string) (store.State, error) {
	for _, st := range States() {
		if string(st) == s {
			return st, nil
		}
	}
	return "", errdefs.Invalidf("unknown state %q (one of pending, booting, ready, stopping, stopped, failed, destroyed)", s)
}

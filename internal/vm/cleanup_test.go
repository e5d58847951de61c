package vm

import (
	"errors"
	"slices"
	"testing"
)

// TestCleanupStackRunsEveryStepAndJoinsErrors: steps are undone newest
// first, a failing step does not stop the ones after it, and every failure
// is returned.
func TestCleanupStackRunsEveryStepAndJoinsErrors(t *testing.T) {
	var ran []int
	errA, errB := errors.New("a failed"), errors.New("b failed")
	var c cleanupStack
	c.push(func() error { ran = append(ran, 1); return errA })
	c.push(func() error { ran = append(ran, 2); return nil })
	c.push(func() error { ran = append(ran, 3); return errB })
	err := c.run()
	if !slices.Equal(ran, []int{3, 2, 1}) {
		t.Fatalf("undone in order %v, want [3 2 1]", ran)
	}
	if !errors.Is(err, errA) || !errors.Is(err, errB) {
		t.Fatalf("run returned %v, want both failures", err)
	}
	if err := c.run(); err != nil || len(ran) != 3 {
		t.Fatalf("a second run redid steps: %v %v", ran, err)
	}
}
